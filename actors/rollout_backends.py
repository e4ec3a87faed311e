"""Generation backends behind one interface: ``hf`` (transformers generate, CPU or GPU) and ``vllm`` (GPU only).

Both return, per prompt, G ``Completion``s with the behaviour log-prob of every generated token, computed as
``log_softmax(logits / T)`` (raw logits when T = 0, greedy) — the same definition the learner uses when it
recomputes log-probs, so the PPO ratio is 1 at step 0 with identical weights.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Protocol

import numpy as np
import torch

from learner.experience import Completion, first_stop


class GenerationBackend(Protocol):
    def generate(self, inputs: dict[str, Any], raw_media: dict[str, Any], n: int, *, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int) -> list[Completion]: ...

    def generate_batch(self, inputs_list: list[dict[str, Any]], n: int, *, max_new_tokens: int,
                       temperature: float, top_p: float, seed: int,
                       raw_list: Optional[list[dict[str, Any]]] = None) -> list[list[Completion]]: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...


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


def _stop_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
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

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        missing = []
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = params.get(name, buffers.get(name))
                if target is None:
                    missing.append(name)
                    continue
                target.copy_(torch.as_tensor(tensor).to(target.dtype))
        if missing:
            raise KeyError(f"weights not in the rollout model: {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    def sleep(self) -> None:  # nothing to release on CPU
        pass

    def wake_up(self) -> None:
        pass


def _vllm_request(raw_media: dict[str, Any]) -> dict[str, Any]:
    """vLLM's prompt dict: the chat-formatted text plus the already-decoded frames or image (decoded once)."""
    request: dict[str, Any] = {"prompt": raw_media["prompt_text"]}
    if raw_media.get("frames") is not None:
        request["multi_modal_data"] = {"video": np.asarray(raw_media["frames"])}
        request["mm_processor_kwargs"] = {"fps": float(raw_media.get("fps", 1.0)), "do_sample_frames": False}
    elif raw_media.get("image") is not None:
        request["multi_modal_data"] = {"image": raw_media["image"]}
        request["mm_processor_kwargs"] = {}
    return request


def _vllm_completion(o: Any) -> Completion:
    """One vLLM ``CompletionOutput`` (token ids, per-token log-prob dicts with ``logprobs=0``) as a Completion."""
    ids = list(o.token_ids)
    lps = [float(step[tok].logprob) for tok, step in zip(ids, o.logprobs or [])]
    if len(lps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(lps)} log-probs for {len(ids)} tokens")
    return Completion(response_ids=ids, logprobs=lps, text=o.text,
                      finish_reason="stop" if o.finish_reason == "stop" else "length")


class VLLMBackend:
    """vLLM on GPU: ``n = G`` sampling with per-token log-probs, Qwen2.5-VL image/video inputs, sleep/wake.

    The HF processor on the rollout side still builds the token ids and vision tensors the learner needs; vLLM gets
    the prompt text and the already-decoded frames (no second decode). Not runnable without a GPU.
    """

    def __init__(self, model_path: str, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.5,
                 tensor_parallel_size: int = 1, enable_sleep_mode: bool = False, seed: int = 0,
                 max_model_len: Optional[int] = None) -> None:
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - GPU extra
            raise RuntimeError("rollout.backend=vllm needs the GPU extra: pip install 'medgrpo[gpu]' on a CUDA "
                               "machine; on CPU use rollout.backend=hf") from e
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        self.stop_ids = _stop_ids(self.tokenizer)
        self.logit_bias = {i: -100.0 for i in _suppressed_ids(self.tokenizer, self.stop_ids)}
        kwargs: dict[str, Any] = dict(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                      tensor_parallel_size=tensor_parallel_size, enable_sleep_mode=enable_sleep_mode,
                                      seed=seed, limit_mm_per_prompt={"image": 1, "video": 1},
                                      logprobs_mode="processed_logprobs", enable_prefix_caching=True)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)
        self._asleep = False

    def generate(self, inputs: dict[str, Any], raw_media: dict[str, Any], n: int, *, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int) -> list[Completion]:
        return self.generate_batch([inputs], n, raw_list=[raw_media], max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed)[0]

    def generate_batch(self, inputs_list: list[dict[str, Any]], n: int, *, max_new_tokens: int,
                       temperature: float, top_p: float, seed: int,
                       raw_list: Optional[list[dict[str, Any]]] = None) -> list[list[Completion]]:
        """G samples for each prompt, all prompts in ONE ``LLM.generate`` call (vLLM schedules them together).

        Prompt ``i`` is sampled with its own seed ``seed + i``: vLLM seeds each request separately, so the samples
        are those of a per-prompt call seeded ``seed + i``, whatever else is in the batch."""
        from vllm import SamplingParams

        if raw_list is None or len(raw_list) != len(inputs_list):
            raise ValueError("the vllm backend needs the raw media (prompt text, frames) of every prompt")
        if not raw_list:
            return []
        params = [SamplingParams(n=n, temperature=max(temperature, 0.0), top_p=top_p, max_tokens=max_new_tokens,
                                 logprobs=0, seed=seed + i, stop_token_ids=sorted(self.stop_ids),
                                 skip_special_tokens=True, logit_bias=self.logit_bias or None)
                  for i in range(len(raw_list))]
        outs = self.llm.generate([_vllm_request(raw) for raw in raw_list], params, use_tqdm=False)
        if len(outs) != len(raw_list):
            raise RuntimeError(f"vLLM returned {len(outs)} outputs for {len(raw_list)} prompts")
        return [[_vllm_completion(o) for o in out.outputs] for out in outs]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:  # pragma: no cover - GPU
        weights = list(named_tensors)

        def _load(worker: Any, w: list = weights) -> None:
            worker.model_runner.model.load_weights(w)

        self.llm.collective_rpc(_load)
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:  # pragma: no cover - GPU
        if not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:  # pragma: no cover - GPU
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False
