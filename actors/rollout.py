"""Rollout actor: decodes each prompt's video once, generates G samples with the configured backend (the hf
backend batches all prompts of a call into one ``generate``), and keeps its weights in step with the learner
(versioned; the version it serves is stamped on every sample)."""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Optional

import ray
from actors.rollout_backends import GenerationBackend, HFBackend, PromptError, VLLMBackend
from data.schema import Instance
from learner.experience import PromptGroup, RolloutFailure
from learner.weight_sync import WeightPayload, WeightReceiver


class RolloutWorker:
    """The rollout logic without Ray, so it can be tested and benchmarked directly; ``RolloutActor`` wraps it."""

    def __init__(self, model_path: str, *, backend: str = "hf", dtype: str = "float32", device: str = "cpu",
                 attn_implementation: str = "sdpa", max_frames: int = 16, max_pixels: int = 48 * 28 * 28,
                 min_pixels: int = 4 * 28 * 28, video_backend: str = "auto", knowledge: Optional[dict] = None,
                 vllm_kwargs: Optional[dict] = None, batch_prompts: bool = True,
                 max_batch_prompts: int = 0) -> None:
        """``batch_prompts``: the hf backend generates all prompts of a ``generate`` call in one batch
        (``max_batch_prompts`` > 0 caps the prompts per batch, e.g. to bound GPU memory); see ``generate``."""
        if max_batch_prompts < 0:
            raise ValueError(f"max_batch_prompts must be >= 0 (0 = no cap), got {max_batch_prompts}")
        if backend == "hf":
            self.engine: GenerationBackend = HFBackend(model_path, dtype=dtype, device=device,
                                                       attn_implementation=attn_implementation)
        elif backend == "vllm":
            self.engine = VLLMBackend(model_path, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels,
                                      **(vllm_kwargs or {}))
        else:
            raise ValueError(f"rollout backend {backend!r}; allowed: hf, vllm")
        self.processor = self.engine.processor
        self.video_opts = dict(max_frames=max_frames, max_pixels=max_pixels, min_pixels=min_pixels,
                               backend=video_backend)
        self.knowledge = knowledge or {}
        self.batch_prompts = batch_prompts
        self.max_batch_prompts = max_batch_prompts
        self.version = 0
        # what the engine was asked to do, in order: ("generate", version), ("sleep", level), ("wake_up", tags),
        # ("load", version); the last 1000 (the driver's sleep/wake order is checked from here)
        self._events: deque = deque(maxlen=1000)
        # the checksum covers the received buffers (before any cast to this copy's dtype): always verified
        self.receiver = WeightReceiver(version=-1, strict=True, verify=True, allow_same_version=True)

    # -- prompts -------------------------------------------------------------------------------------------
    def encode_prompt(self, inst: Instance) -> tuple[dict[str, Any], dict[str, Any]]:
        """Decode the instance's media once and build (model inputs, raw media for vLLM)."""
        from data.prompting import load_media, prompt_inputs

        media = load_media(inst, **self.video_opts)
        return prompt_inputs(self.processor, inst, media, knowledge=self.knowledge,
                             max_pixels=self.video_opts["max_pixels"], min_pixels=self.video_opts["min_pixels"],
                             with_text=self.engine.needs_prompt_text)

    def encode_sft(self, instances: list[Instance]) -> list[dict[str, Any] | RolloutFailure]:
        """SFT examples (prompt ids, reference answer ids, vision tensors) through the same prompt path."""
        from data.prompting import answer_ids

        out: list[dict[str, Any] | RolloutFailure] = []
        for inst in instances:
            try:
                inputs, _ = self.encode_prompt(inst)
            except Exception as e:  # reported like a rollout failure
                out.append(_media_failure(inst, e))
                continue
            mm = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
            prompt = inputs["input_ids"][0].tolist()
            answer = answer_ids(self.processor, inst.answer or "")
            out.append({"instance_id": inst.uid, "input_ids": prompt + answer,
                        "labels": [-100] * len(prompt) + answer, "mm_inputs": mm})
        return out

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` under this model's tokenizer (the driver's answer-length check at start-up:
        the tokenizer is loaded here already, so the driver need not import transformers for it)."""
        from data.answer_budget import count_tokens

        return count_tokens(self.processor.tokenizer, texts)

    # -- generation ----------------------------------------------------------------------------------------
    def generate(self, instances: list[Instance], n: int, *, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, batched: Optional[bool] = None
                 ) -> list[PromptGroup | RolloutFailure]:
        """G = ``n`` completions per instance, in instance order; a prompt whose media fails is a ``RolloutFailure``.

        ``batched`` (default: the worker's ``batch_prompts``) hands all prompts to the backend at once
        (``generate_batch``; ``max_batch_prompts`` > 0 cuts them into chunks, chunk seeded ``seed + start * n``
        with ``start`` the index of its first prompt): the hf backend runs one ``generate`` over prompts x G rows
        seeded once, vLLM gets every prompt in one ``LLM.generate`` call, prompt j of the chunk seeded with chunk
        seed + j * n. Otherwise each prompt is its own call seeded ``seed + i * n``. So with vLLM, prompt i is always
        seeded ``seed + i * n`` and its G samples use the streams ``seed + i * n + j``: distinct across the call.
        Both give the same prompt ids and vision inputs; greedy output is the same, and sampled output differs only
        through the RNG stream (for vLLM, when no prompt failed, not at all). A prompt the engine could not serve
        is a ``RolloutFailure`` with reason ``engine:<what>``.
        """
        batched = self.batch_prompts if batched is None else batched
        self._events.append(("generate", self.version))
        out: list[PromptGroup | RolloutFailure | None] = [None] * len(instances)
        encoded: list[tuple[int, dict[str, Any], dict[str, Any], float]] = []
        for i, inst in enumerate(instances):
            t0 = time.perf_counter()
            try:
                inputs, raw = self.encode_prompt(inst)
            except Exception as e:  # corrupt video, path outside roots, ...: reported, never a crash mid-run
                out[i] = _media_failure(inst, e)
                continue
            decode_s = time.perf_counter() - t0
            if batched:
                encoded.append((i, inputs, raw, decode_s))
                continue
            t1 = time.perf_counter()
            completions = self.engine.generate(inputs, raw, n, max_new_tokens=max_new_tokens,
                                               temperature=temperature, top_p=top_p, seed=seed + i * n)
            out[i] = self._group(inst, inputs, completions, temperature,
                                 {"decode_s": decode_s, "generate_s": time.perf_counter() - t1})
        step = self.max_batch_prompts or len(encoded) or 1
        for start in range(0, len(encoded), step):
            chunk = encoded[start:start + step]
            t1 = time.perf_counter()
            per_prompt = self.engine.generate_batch([inp for _, inp, _, _ in chunk], n, max_new_tokens=max_new_tokens,
                                                    temperature=temperature, top_p=top_p, seed=seed + start * n,
                                                    raw_list=[raw for _, _, raw, _ in chunk])
            # the batch's wall time split evenly, so summing generate_s over groups gives the time spent
            gen_s = (time.perf_counter() - t1) / len(chunk)
            for (i, inputs, _, decode_s), completions in zip(chunk, per_prompt):
                out[i] = self._group(instances[i], inputs, completions, temperature,
                                     {"decode_s": decode_s, "generate_s": gen_s, "batch_prompts": len(chunk)})
        if any(g is None for g in out):  # every prompt is a group or a failure; anything else is a bug here
            raise RuntimeError("rollout lost a prompt: " + ", ".join(inst.uid for inst, g in zip(instances, out)
                                                                    if g is None))
        return out  # type: ignore[return-value]

    def _group(self, inst: Instance, inputs: dict[str, Any], completions: list | PromptError, temperature: float,
               extra: dict[str, Any]) -> PromptGroup | RolloutFailure:
        if isinstance(completions, PromptError):
            return RolloutFailure(inst.uid, completions.reason, completions.detail)
        mm = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        return PromptGroup(
            instance_id=inst.uid, qa_type=inst.qa_type, data_source=inst.data_source,
            prompt_ids=inputs["input_ids"][0].tolist(), mm_inputs=mm, completions=completions,
            policy_version=self.version, temperature=temperature, extra=extra)

    # -- weights -------------------------------------------------------------------------------------------
    def apply_weights(self, payload: WeightPayload) -> int:
        """Load a versioned weight payload (object-store path) through the engine's ``apply_payload``: the version
        must move forward and every name/shape match (hf: checked before writing, the checksum after; vllm: the
        checksum too before vLLM sees the tensors)."""
        self._events.append(("load", payload.version))
        self.version = self.engine.apply_payload(payload, self.receiver)
        return self.version

    def init_weight_sync(self, master_addr: str, master_port: int, rank: int, world_size: int,
                         backend: str = "nccl", timeout_s: float = 300.0) -> None:
        """Join the learner's weight-sync group (``rollout.weight_path=nccl``): inside the vLLM engine's worker
        (``actors.vllm_worker``); the learner's ranks must join concurrently."""
        self.engine.init_weight_sync(master_addr, master_port, rank, world_size, backend, self.version, timeout_s)

    def receive_weights(self) -> int:
        """Take one bucketed broadcast from the learner (which must broadcast concurrently); the new version."""
        self.version = self.receiver.version = self.engine.receive_weights()
        return self.version

    def checksum(self) -> str:
        """``weights_checksum`` of the rollout copy's weights (vllm: of the weights last loaded into the engine)."""
        return self.engine.checksum()

    def sleep(self, level: int = 1) -> None:
        """Release the engine's memory (level 1: weights to host memory, KV cache dropped) until ``wake_up``."""
        self._events.append(("sleep", level))
        self.engine.sleep(level)

    def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Restore ``tags`` (``weights``, ``kv_cache``; None: both) after ``sleep``."""
        self._events.append(("wake_up", tuple(tags) if tags is not None else ("weights", "kv_cache")))
        self.engine.wake_up(tags)

    def events(self) -> list[tuple]:
        """The engine calls so far, oldest first (see ``__init__``)."""
        return list(self._events)


def _media_failure(inst: Instance, e: Exception) -> RolloutFailure:
    """A prompt whose media could not be loaded, with the loader's reason (``VideoError.reason``) when it has one."""
    return RolloutFailure(inst.uid, f"media:{getattr(e, 'reason', type(e).__name__)}", str(e)[:300])


@ray.remote
class RolloutActor(RolloutWorker):
    """Ray shell over ``RolloutWorker`` (named ``rollout-<i>`` by the driver so the dashboard shows its role)."""

    def ping(self) -> int:
        return self.version
