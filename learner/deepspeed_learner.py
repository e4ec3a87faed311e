"""One DeepSpeed learner rank: loads an HF vision-language model, trains it with the GRPO policy loss (or SFT),
keeps a policy version, exports weights for the rollout workers, checkpoints. A plain class: usable without Ray
(``actors/learner_actor.py`` is the thin Ray shell that runs N of these).

Batch format (``train_step`` / ``compute_logprobs``), per rank; right-padded; ``N`` samples, ``L`` positions::

    input_ids        LongTensor [N, L]   prompt + response tokens
    attention_mask   LongTensor [N, L]   1 on real tokens
    response_mask    LongTensor [N, L]   1 on generated tokens (a subset of attention_mask; never position 0)
    old_logprobs     FloatTensor [N, L]  behaviour log-prob of input_ids[:, t] given input_ids[:, :t], read only
                                         where response_mask = 1 (aligned with input_ids, not shifted)
    advantages       FloatTensor [N]
    ref_logprobs     FloatTensor [N, L]  optional, frozen reference policy, same alignment (for kl_coef > 0)
    temperature      FloatTensor [N]     optional sampling temperature per sample (logits are divided by it)
    multimodal       list[dict]          M unique media inputs, each with any of pixel_values [P, D],
                                         image_grid_thw [k, 3], pixel_values_videos [Q, D], video_grid_thw [v, 3],
                                         second_per_grid_ts [v]
    mm_index         LongTensor [N]      which ``multimodal`` entry sample i uses (-1: text only)

The media are stored once per prompt and referenced by the G samples of the group (``mm_index``), so a video is
shipped once and, inside a micro-batch, encoded by the vision tower once; its features are repeated per sample.
``sft_step`` takes the same keys with ``labels`` [N, L] (``-100`` on prompt and padding) instead of the GRPO keys.
``build_policy_batch`` / ``build_sft_batch`` make these from rollout groups / tokenised examples.

Distributed invariants (a lost peer raises after ``learner.collective_timeout_s`` instead of hanging): every rank
runs the same number of micro-batches (a rank with fewer runs zero-weight repeats) and, with world size > 1, calls the
vision tower in the same pattern (a tiny dummy input when it has no media but a peer has), because ZeRO-3 gathers
parameters and ZeRO-2 reduces gradients collectively, per module. Losses are normalised by global token / sequence
counts (all-reduced) so N ranks × M micro-batches give the gradient of the whole batch.

A micro-batch whose loss is NaN/inf on any rank drops the whole update on every rank (``skipped_nonfinite``); samples
with non-finite advantages or log-probs, or whose media do not match their placeholder tokens, are left out and
counted (``skipped_samples/<reason>``).
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from learner import checkpoint as ckpt
from learner import reference as refw
from learner.losses import IGNORE_INDEX, entropy_from_logits, policy_loss, sft_loss, token_logprobs
from learner.weight_sync import DEFAULT_BUCKET_BYTES, WeightPayload, iter_gathered, pack_weights

log = logging.getLogger(__name__)

MM_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
ROW_KEYS = ("input_ids", "attention_mask", "response_mask", "old_logprobs", "ref_logprobs", "labels",
            "mm_token_type_ids")
VEC_KEYS = ("advantages", "temperature", "mm_index")
_ALLREDUCE_BUCKET = 64 * 1024 * 1024


class LearnerError(RuntimeError):
    """A learner failure with a reason a user can act on."""


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block, and what it was again after it."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


# --------------------------------------------------------------------------------------------------------------
# batch construction (pure)
# --------------------------------------------------------------------------------------------------------------
def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def _as_1d_long(x: Any) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.long)
    return t.reshape(-1)


def _clean_media(mm: Optional[Mapping[str, Any]]) -> Optional[dict[str, torch.Tensor]]:
    if not mm:
        return None
    out: dict[str, torch.Tensor] = {}
    for k in MM_KEYS:
        v = mm.get(k)
        if v is None:
            continue
        t = torch.as_tensor(v)
        if k.endswith("grid_thw"):
            t = t.reshape(-1, 3).long()
        elif k == "second_per_grid_ts":
            t = t.reshape(-1).float()
        out[k] = t
    return out or None


def _pad_rows(rows: Sequence[torch.Tensor], value: float, dtype: torch.dtype) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.to(dtype)
    return out


def build_policy_batch(groups: Sequence[Any], advantages: Any, pad_id: int = 0) -> dict[str, Any]:
    """Training batch from rollout groups (``learner.experience.PromptGroup`` or anything with ``prompt_ids``,
    ``mm_inputs``, ``completions`` [each with ``response_ids``, ``logprobs``] and ``temperature``) and advantages
    ``[num_groups][G]``. Raises ``ValueError`` on structural mismatches (they are bugs upstream, not data)."""
    adv = [list(map(float, torch.as_tensor(a, dtype=torch.float64).reshape(-1).tolist())) for a in advantages]
    if len(adv) != len(groups):
        raise ValueError(f"{len(groups)} groups but {len(adv)} advantage rows")
    ids, resp, old, advs, temps, mm_index = [], [], [], [], [], []
    media: list[dict[str, torch.Tensor]] = []
    for gi, (g, a) in enumerate(zip(groups, adv)):
        comps = list(_get(g, "completions"))
        if len(a) != len(comps):
            raise ValueError(f"group {gi}: {len(comps)} completions but {len(a)} advantages")
        prompt = _as_1d_long(_get(g, "prompt_ids"))
        mm = _clean_media(_get(g, "mm_inputs"))
        midx = -1
        if mm is not None:
            media.append(mm)
            midx = len(media) - 1
        temp = float(_get(g, "temperature", 1.0) or 1.0)
        for ci, (c, ai) in enumerate(zip(comps, a)):
            r = _as_1d_long(_get(c, "response_ids"))
            lp = torch.as_tensor(_get(c, "logprobs"), dtype=torch.float32).reshape(-1)
            if len(lp) != len(r):
                raise ValueError(f"group {gi} completion {ci}: {len(r)} response tokens but {len(lp)} log-probs")
            ids.append(torch.cat([prompt, r]))
            resp.append(torch.cat([torch.zeros(len(prompt)), torch.ones(len(r))]))
            old.append(torch.cat([torch.zeros(len(prompt)), lp]))
            advs.append(ai)
            temps.append(temp)
            mm_index.append(midx)
    if not ids:
        raise ValueError("empty batch: no completions")
    input_ids = _pad_rows(ids, pad_id, torch.long)
    attn = _pad_rows([torch.ones(len(x)) for x in ids], 0, torch.long)
    return {"input_ids": input_ids, "attention_mask": attn,
            "response_mask": _pad_rows(resp, 0, torch.long), "old_logprobs": _pad_rows(old, 0.0, torch.float32),
            "advantages": torch.tensor(advs, dtype=torch.float32), "temperature": torch.tensor(temps),
            "multimodal": media, "mm_index": torch.tensor(mm_index, dtype=torch.long)}


def build_sft_batch(examples: Sequence[Any], pad_id: int = 0) -> dict[str, Any]:
    """SFT batch from tokenised examples: each has ``input_ids``, ``labels`` (same length, ``-100`` on the prompt)
    and optional ``mm_inputs`` (mapping or attribute)."""
    ids, labels, mm_index = [], [], []
    media: list[dict[str, torch.Tensor]] = []
    for i, ex in enumerate(examples):
        x = _as_1d_long(_get(ex, "input_ids"))
        y = _as_1d_long(_get(ex, "labels"))
        if len(x) != len(y):
            raise ValueError(f"example {i}: {len(x)} input ids but {len(y)} labels")
        mm = _clean_media(_get(ex, "mm_inputs"))
        if mm is not None:
            media.append(mm)
        mm_index.append(len(media) - 1 if mm is not None else -1)
        ids.append(x)
        labels.append(y)
    if not ids:
        raise ValueError("empty SFT batch")
    return {"input_ids": _pad_rows(ids, pad_id, torch.long),
            "attention_mask": _pad_rows([torch.ones(len(x)) for x in ids], 0, torch.long),
            "labels": _pad_rows(labels, IGNORE_INDEX, torch.long), "multimodal": media,
            "mm_index": torch.tensor(mm_index, dtype=torch.long)}


def batch_size(batch: Mapping[str, Any]) -> int:
    return int(batch["input_ids"].shape[0])


def slice_batch(batch: Mapping[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The given rows of a batch; ``multimodal`` keeps only the media those rows use (re-indexed)."""
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if k in ROW_KEYS or k in VEC_KEYS:
            if v is not None:
                out[k] = torch.as_tensor(v)[idx]
    media = list(batch.get("multimodal") or [])
    if "mm_index" in out:
        old = out["mm_index"].tolist()
        keep = sorted({m for m in old if m >= 0})
        remap = {m: j for j, m in enumerate(keep)}
        out["mm_index"] = torch.tensor([remap.get(m, -1) for m in old], dtype=torch.long)
        out["multimodal"] = [media[m] for m in keep]
    else:
        out["multimodal"] = []
        out["mm_index"] = torch.full((len(idx),), -1, dtype=torch.long)
    return out


def split_batch(batch: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    """Contiguous, near-equal slices for ``parts`` ranks (a prompt's samples stay together where possible). A rank
    that would get nothing gets a copy of row 0 with nothing to learn from (masked), so every rank can take part in
    the collectives."""
    n = batch_size(batch)
    sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]  # empty parts, if any, come last
    bounds = [sum(sizes[:i]) for i in range(parts + 1)]
    out = []
    for i in range(parts):
        rows = list(range(bounds[i], bounds[i + 1]))
        if rows:
            out.append(slice_batch(batch, rows))
        else:
            filler = slice_batch(batch, [0])
            for k in ("response_mask",):
                if k in filler:
                    filler[k] = torch.zeros_like(filler[k])
            if "labels" in filler:
                filler["labels"] = torch.full_like(filler["labels"], IGNORE_INDEX)
            out.append(filler)
    return out


# --------------------------------------------------------------------------------------------------------------
# the model wrapper: media encoding inside the engine's forward
# --------------------------------------------------------------------------------------------------------------
def _visual_of(model: nn.Module) -> Optional[nn.Module]:
    """The vision tower of an HF VLM (or of the model inside a LoRA ``PeftModel``); None for a text-only model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "model", None), "visual", None)


class _PolicyModule(nn.Module):
    """Runs the vision tower itself (once per unique media in the micro-batch, features repeated per sample; a dummy
    input when a peer rank needs the same call pattern), then the HF model with precomputed encoder outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _visual(self) -> Optional[nn.Module]:
        return _visual_of(self.model)

    def _dummy(self, visual: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = visual.config
        merge = int(cfg.spatial_merge_size)
        dim = int(cfg.in_channels) * int(cfg.temporal_patch_size) * int(cfg.patch_size) ** 2
        grid = torch.tensor([[1, merge, merge]], dtype=torch.long)
        dev = next(iter(self.model.get_input_embeddings().parameters())).device
        return torch.zeros(merge * merge, dim, device=dev), grid.to(dev)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mm_token_type_ids: torch.Tensor,
                media: dict[str, Any], need: tuple[bool, bool], logits_to_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        anchor = torch.zeros((), device=input_ids.device)
        enc: dict[str, Any] = {}
        visual = self._visual()
        extra: dict[str, Any] = {}
        for kind, grid_key, wanted in (("image", "image_grid_thw", need[0]), ("video", "video_grid_thw", need[1])):
            if not wanted or visual is None:
                continue
            spec = media.get(kind)
            if spec is None:  # a peer encodes this modality: same module calls here, contribution × 0
                pix, grid = self._dummy(visual)
                out = visual(pix.type(visual.dtype), grid_thw=grid)
                anchor = anchor + out.pooler_output.float().sum() * 0.0
                continue
            out = visual(spec["pixels"].type(visual.dtype), grid_thw=spec["unique_grid"])
            feats = out.pooler_output
            per_media = torch.split(feats, spec["unique_tokens"])
            rows = [per_media[j] for j in spec["row_media"]]
            enc[kind] = BaseModelOutputWithPooling(pooler_output=(torch.cat(rows, dim=0),))
            extra[grid_key] = spec["row_grid"]
            if kind == "video":
                extra["second_per_grid_ts"] = spec["row_seconds"]
        kwargs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                      logits_to_keep=logits_to_keep)
        if visual is not None:
            kwargs["mm_token_type_ids"] = mm_token_type_ids
            kwargs.update(extra)
            if enc:
                kwargs["mm_encoder_outputs"] = enc
        out = self.model(**kwargs)
        return out.logits, anchor


@dataclass
class StepSums:
    """What one ``train_step``/``sft_step`` sums over this rank's scored micro-batches, all-reduced into its metrics.
    The policy loss reports per-token means (``clip_frac``, ``approx_kl``, ``kl_ref``, ``ratio_mean``): they are
    summed weighted by the micro-batch's tokens, and divided by the global token count at the end."""

    loss: float = 0.0
    clip_frac: float = 0.0  # sum of clip_frac x tokens
    approx_kl: float = 0.0  # sum of approx_kl x tokens
    kl_ref: float = 0.0  # sum of kl_ref x tokens
    ratio_mean: float = 0.0  # sum of ratio_mean x tokens
    entropy: float = 0.0  # summed over the scored tokens
    tokens: float = 0.0
    ratio_max: float = 0.0  # a max, not a sum

    PER_TOKEN = ("clip_frac", "approx_kl", "kl_ref", "ratio_mean")

    def add(self, loss: float, policy_metrics: Mapping[str, Any], entropy: float, tokens: float) -> None:
        """One micro-batch: its loss, ``policy_loss``'s metrics (empty for SFT), summed entropy and token count."""
        self.loss += loss
        if policy_metrics:
            for k in self.PER_TOKEN:
                setattr(self, k, getattr(self, k) + float(policy_metrics[k]) * tokens)
            self.ratio_max = max(self.ratio_max, float(policy_metrics["ratio_max"]))
        self.entropy += entropy
        self.tokens += tokens

    def all_reduced(self, all_reduce: Callable[[torch.Tensor, str], torch.Tensor]) -> "StepSums":
        """The sums over every rank (``ratio_max``: the max), through ``all_reduce(tensor, op)``."""
        names = ("loss", *self.PER_TOKEN, "entropy", "tokens")
        summed = all_reduce(torch.tensor([getattr(self, k) for k in names], dtype=torch.float64), "sum")
        rmax = all_reduce(torch.tensor([self.ratio_max], dtype=torch.float64), "max")
        return StepSums(**{k: float(v) for k, v in zip(names, summed)}, ratio_max=float(rmax[0]))

    def policy_metrics(self) -> dict[str, float]:
        """The per-token means (over the global tokens) and ``ratio_max``."""
        ntok = max(self.tokens, 1.0)
        return {**{k: getattr(self, k) / ntok for k in self.PER_TOKEN}, "ratio_max": self.ratio_max}


# --------------------------------------------------------------------------------------------------------------
# the rank
# --------------------------------------------------------------------------------------------------------------
class DeepSpeedLearner:
    """One learner rank. ``setup()`` joins the process group (all ranks must call it concurrently), loads the model
    from ``model_path`` (default ``cfg.model.path``) and wraps it with ``deepspeed.initialize``.

    Uses ``cfg.learner`` (ZeRO stage, lr, micro-batch size, clip range, loss aggregation, KL, grad clipping, bf16,
    backend, collective timeout, ppo_epochs), ``cfg.model`` (path, freeze_vision_tower, gradient_checkpointing,
    attn_implementation) and ``cfg.rollout.max_new_tokens`` (the constant of ``seq-sum-max-len``).
    """

    def __init__(self, cfg: Any, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                 master_port: int = 29500, local_rank: int = 0, model_path: Optional[str] = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.cfg = cfg
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.master_addr, self.master_port = master_addr, int(master_port)
        self.model_path = str(model_path or cfg.model.path)
        self.version = 0
        self.optimizer_steps = 0
        self.counters: Counter = Counter()
        self.base_lr = float(cfg.learner.lr)
        self.engine: Any = None
        self.model: Optional[nn.Module] = None  # the HF model (inside the engine's wrapper)
        self._hf_ds_config: Any = None
        # KL reference (kl_coef > 0): a frozen model (a DeepSpeed engine at ZeRO-3), or None with LoRA while the
        # reference is the base model (the policy with its adapters disabled). Source: "path" (ref_model_path),
        # "initial" (the weights of model_path), "snapshot" (the policy copied at the start of a GRPO stage).
        self._ref: Any = None
        self._ref_source = "none"
        self._ref_ready = False
        self._ref_at: Optional[int] = None  # the policy version the reference equals (None: a configured path)

    # -- setup ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.engine.device if self.engine is not None else torch.device("cpu")

    def _backend(self) -> str:
        b = self.cfg.learner.backend
        if b == "auto":
            return "nccl" if torch.cuda.is_available() else "gloo"
        return b

    def ds_config(self) -> dict[str, Any]:
        lc = self.cfg.learner
        zero: dict[str, Any] = {"stage": int(lc.zero_stage)}
        if lc.zero_stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = False  # we gather ourselves (iter_gathered)
        if lc.zero_stage == 2:
            zero.update({"overlap_comm": torch.cuda.is_available(), "contiguous_gradients": True})
        return {
            "train_micro_batch_size_per_gpu": int(lc.micro_batch_size),
            "gradient_accumulation_steps": 1,
            # Variable-size batches (dynamic sampling): we own the accumulation boundary, step() closes it.
            "managed_gradient_accumulation": False,
            "gradient_clipping": float(lc.max_grad_norm),
            "zero_optimization": zero,
            "bf16": {"enabled": bool(lc.bf16)},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2 ** 31 - 1,
            "wall_clock_breakdown": False,
        }

    def _init_distributed(self) -> None:
        import deepspeed
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=float(self.cfg.learner.collective_timeout_s))
        os.environ.update(MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(self.local_rank),
                          LOCAL_WORLD_SIZE=os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if dist.is_initialized():
            if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
                raise LearnerError(f"this process already belongs to a process group of size {dist.get_world_size()}"
                                   f" (rank {dist.get_rank()}); cannot join as rank {self.rank}/{self.world_size}")
        backend = self._backend()
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        skip_shm_op = contextlib.nullcontext()
        if self.world_size == 1 and backend == "gloo":
            # One CPU rank: DeepSpeed's shared-memory all-reduce op serves ranks on one host and a lone rank never
            # all-reduces, but DeepSpeed's CPU backend JIT-loads it at every start: a ≈35 s build whenever its
            # cache (TORCH_EXTENSIONS_DIR, keyed by the venv path) is cold or was rebuilt by another checkout.
            ds_torch = importlib.import_module("deepspeed.comm.torch")  # the module, not torch (a name in the package)
            skip_shm_op = _replaced(ds_torch, "build_shm_op", lambda: None)
        with skip_shm_op:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout,
                                       rank=self.rank, world_size=self.world_size, verbose=False)

    def _from_pretrained(self, path: str) -> nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        from learner.model_io import check_checkpoint, use_reference_mrope

        path = str(check_checkpoint(path))  # config + safetensors, or a clear error (never pickle)
        dtype = torch.bfloat16 if self.cfg.learner.bf16 else torch.float32
        hf_cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        kwargs = dict(dtype=dtype, attn_implementation=self.cfg.model.attn_implementation, use_safetensors=True,
                      local_files_only=True)
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        except ValueError:
            log.info("%s is not an image-text-to-text model (%s); loading as a causal LM", path, type(hf_cfg).__name__)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        model.config.use_cache = False
        return use_reference_mrope(model)  # vLLM's (Qwen's) video positions, see learner.model_io

    def _load_model(self, ds_config: dict[str, Any]) -> nn.Module:
        mc = self.cfg.model
        if ds_config["zero_optimization"]["stage"] == 3:
            try:  # partitioned loading (each rank materialises only its shard); needs `accelerate`
                from transformers.integrations import HfDeepSpeedConfig

                self._hf_ds_config = HfDeepSpeedConfig(ds_config)
            except Exception as e:  # noqa: BLE001 - fall back to full loading, DeepSpeed partitions at initialize
                log.warning("ZeRO-3 without partitioned loading (%s): every rank loads the full model first", e)
        model = self._from_pretrained(self.model_path)
        if mc.freeze_vision_tower:
            visual = getattr(getattr(model, "model", None), "visual", None)
            if visual is not None:
                for p in visual.parameters():
                    p.requires_grad_(False)
        if mc.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self._lora:
            from learner.lora import LoraConfigError, apply_lora

            try:
                model = apply_lora(model, int(mc.lora_rank), int(mc.lora_alpha), list(mc.lora_target_modules),
                                   bool(mc.freeze_vision_tower), seed=int(getattr(self.cfg, "seed", 0)))
            except LoraConfigError as e:
                raise LearnerError(str(e)) from None
        return model

    def setup(self) -> dict[str, Any]:
        """Join the process group, load the model, build the engine. Returns a short description."""
        import deepspeed
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
        self._init_distributed()
        ds_config = self.ds_config()
        self.model = self._load_model(ds_config)
        self.model.train()
        wrapper = _PolicyModule(self.model)
        decay, no_decay = [], []  # no weight decay on biases and norms (1-D; ZeRO-3 keeps the full shape in ds_shape)
        for p in wrapper.parameters():
            if p.requires_grad:
                (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
        if not decay and not no_decay:
            raise LearnerError("no trainable parameters (everything frozen?)")
        groups = [{"params": decay, "weight_decay": float(self.cfg.learner.weight_decay)},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.base_lr)
        self.engine, _, _, _ = deepspeed.initialize(model=wrapper, optimizer=optimizer, config=ds_config)
        self._set_lr(self._lr_for(self.optimizer_steps))
        if self.engine.zero_optimization_stage() == 0:
            self.engine.enable_backward_allreduce = False  # we all-reduce ourselves to see the global grad norm
        self._setup_reference()
        n_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in self.model.parameters())
        n_train = sum(int(getattr(p, "ds_numel", p.numel())) for p in self.model.parameters() if p.requires_grad)
        return {"rank": self.rank, "world_size": self.world_size, "params": n_params, "trainable": n_train,
                "zero_stage": int(self.cfg.learner.zero_stage), "device": str(self.device),
                "backend": self._backend()}

    def _require_engine(self) -> None:
        if self.engine is None:
            raise LearnerError("call setup() first")

    # -- KL reference --------------------------------------------------------------------------------------
    @property
    def _kl(self) -> bool:
        return float(self.cfg.learner.kl_coef) > 0

    @property
    def _lora(self) -> bool:
        return int(getattr(self.cfg.model, "lora_rank", 0) or 0) > 0

    def _build_reference(self, path: str) -> Any:
        """A frozen copy of the model at ``path`` in eval mode: a plain module at ZeRO 0-2 (one full copy per rank),
        an optimizer-less DeepSpeed engine at ZeRO-3 (partitioned like the policy: 1/N of a copy per rank)."""
        model = self._from_pretrained(path)
        model.requires_grad_(False)
        module = _PolicyModule(model)
        if int(self.cfg.learner.zero_stage) == 3:
            import deepspeed

            conf = {"train_micro_batch_size_per_gpu": int(self.cfg.learner.micro_batch_size),
                    "zero_optimization": {"stage": 3}, "bf16": {"enabled": bool(self.cfg.learner.bf16)},
                    "steps_per_print": 2 ** 31 - 1, "wall_clock_breakdown": False}
            module, _, _, _ = deepspeed.initialize(model=module, config=conf)
        else:
            module.to(self.device)
        module.eval()  # (DeepSpeedEngine.eval returns None)
        return module

    def _setup_reference(self) -> None:
        """kl_coef = 0 loads nothing. Otherwise: ref_model_path's model; or, until the first GRPO step decides,
        the initial weights (a copy of model_path; nothing with LoRA: the adapters are disabled instead)."""
        self._ref, self._ref_source, self._ref_ready, self._ref_at = None, "none", False, None
        if not self._kl:
            return
        path = getattr(self.cfg.learner, "ref_model_path", None)
        if path:
            self._ref, self._ref_source, self._ref_ready = self._build_reference(str(path)), "path", True
            return
        self._ref_source, self._ref_at = "initial", 0
        if not self._lora:
            self._ref = self._build_reference(self.model_path)

    def _ensure_reference(self) -> None:
        """At the first GRPO step of a stage: the reference becomes the policy as it is now (a collective)."""
        if self._ref_ready or not self._kl:
            return
        if not (self.version == 0 and self._ref_source == "initial"):  # the initial weights are already there
            if self._ref is None:
                self._ref = self._build_reference(self.model_path)
            refw.copy_into(self._ref_model_module(), self._iter_weights())
            self._ref_source, self._ref_at = "snapshot", self.version
        self._ref_ready = True

    def _ref_model_module(self) -> nn.Module:
        """The reference's HF model (inside its ``_PolicyModule``, inside an engine at ZeRO-3)."""
        inner = getattr(self._ref, "module", self._ref)
        return inner.model

    @torch.no_grad()
    def _ref_logprobs(self, b: dict[str, Any]) -> torch.Tensor:
        """Reference log-probs on the response tokens, computed over the same micro-batches and logit window as the
        policy's training forward: at π_θ = π_ref they then equal the policy's bit for bit, so the k3 term has an
        exactly zero gradient (float noise there is what Adam turns into lr-sized moves of idle parameters)."""
        if self._ref is None:  # LoRA: the base model is the policy with its adapters disabled
            with self.model.disable_adapter():
                return self._logprobs(b, self.engine, scored="policy")
        return self._logprobs(b, self._ref, scored="policy")

    # -- collectives ---------------------------------------------------------------------------------------
    def _all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        import torch.distributed as dist

        if self.world_size == 1:
            return t
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dev = torch.device("cuda", torch.cuda.current_device()) if self._backend() == "nccl" else torch.device("cpu")
        buf = t.to(dev, dtype=torch.float64)
        dist.all_reduce(buf, op=ops[op])
        return buf.to(t.device, dtype=t.dtype)

    def _barrier(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1:
            dist.barrier()

    # -- LR ------------------------------------------------------------------------------------------------
    def _lr_for(self, step: int) -> float:
        warm = int(self.cfg.learner.warmup_steps)
        return self.base_lr * min(1.0, (step + 1) / warm) if warm > 0 else self.base_lr

    def _set_lr(self, lr: float) -> None:
        for g in self.engine.optimizer.param_groups:
            g["lr"] = lr

    def set_lr(self, lr: float) -> None:
        """New base learning rate (a stage with its own lr); warm-up, if configured, still applies."""
        self._require_engine()
        self.base_lr = float(lr)
        self._set_lr(self._lr_for(self.optimizer_steps))

    # -- batch preparation ---------------------------------------------------------------------------------
    def _to_rows(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        b: dict[str, Any] = {}
        for k, v in batch.items():
            if k in ROW_KEYS or k in VEC_KEYS:
                if v is not None:
                    b[k] = torch.as_tensor(v)
            elif k == "multimodal":
                b[k] = [_clean_media(m) or {} for m in (v or [])]
        if "input_ids" not in b or b["input_ids"].dim() != 2:
            raise ValueError("batch needs input_ids [N, L]")
        n, length = b["input_ids"].shape
        b.setdefault("attention_mask", torch.ones(n, length, dtype=torch.long))
        b.setdefault("mm_index", torch.full((n,), -1, dtype=torch.long))
        b.setdefault("multimodal", [])
        for k in ROW_KEYS:
            if k in b and tuple(b[k].shape) != (n, length):
                raise ValueError(f"batch[{k!r}] has shape {tuple(b[k].shape)}, expected {(n, length)}")
        for k in VEC_KEYS:
            if k in b and tuple(b[k].shape) != (n,):
                raise ValueError(f"batch[{k!r}] has shape {tuple(b[k].shape)}, expected {(n,)}")
        if (b["mm_index"] >= len(b["multimodal"])).any():
            raise ValueError(f"mm_index refers past the {len(b['multimodal'])} multimodal entries")
        return b

    def _media_ok(self, b: dict[str, Any], i: int) -> Optional[str]:
        """None when row i's placeholder tokens match its media, else the reason."""
        cfg = self.model.config
        img_id, vid_id = getattr(cfg, "image_token_id", None), getattr(cfg, "video_token_id", None)
        ids = b["input_ids"][i][b["attention_mask"][i].bool()]
        m = int(b["mm_index"][i])
        media = b["multimodal"][m] if m >= 0 else {}
        if media and _visual_of(self.model) is None:
            return "media_unsupported"  # a text-only model was given images/video
        visual_cfg = getattr(cfg, "vision_config", None)
        merge = int(getattr(visual_cfg, "spatial_merge_size", 2) or 2)
        for tok, pix_key, grid_key in ((img_id, "pixel_values", "image_grid_thw"),
                                       (vid_id, "pixel_values_videos", "video_grid_thw")):
            n_tok = int((ids == tok).sum()) if tok is not None else 0
            grid = media.get(grid_key)
            pix = media.get(pix_key)
            if grid is None or pix is None:
                if n_tok:
                    return "media_missing"
                continue
            patches = int(grid.prod(-1).sum())
            if pix.shape[0] != patches:
                return "media_shape"
            if n_tok != patches // (merge * merge):
                return "media_token_mismatch"
            if grid_key == "video_grid_thw" and "second_per_grid_ts" in media and \
                    media["second_per_grid_ts"].numel() != grid.shape[0]:
                return "media_shape"
        return None

    def _prepare(self, batch: Mapping[str, Any], kind: str) -> tuple[dict[str, Any], Counter]:
        """Validate, zero out unusable rows (counted by reason)."""
        b = self._to_rows(batch)
        skipped: Counter = Counter()
        n = b["input_ids"].shape[0]
        if kind == "policy":
            for k in ("response_mask", "advantages"):
                if k not in b:
                    raise ValueError(f"policy batch needs {k!r}")
            rmask = (b["response_mask"] > 0) & (b["attention_mask"] > 0)
            rmask[:, 0] = False
            b["response_mask"] = rmask.long()
        else:
            if "labels" not in b:
                raise ValueError("SFT batch needs 'labels'")
            rmask = (b["labels"] != IGNORE_INDEX) & (b["attention_mask"] > 0)
        usable = torch.ones(n, dtype=torch.bool)
        for i in range(n):
            reason = self._media_ok(b, i)
            if reason is None and kind == "policy":
                rm = rmask[i]
                if not math.isfinite(float(b["advantages"][i])):
                    reason = "nonfinite_advantage"
                elif "old_logprobs" in b and not torch.isfinite(b["old_logprobs"][i][rm]).all():
                    reason = "nonfinite_old_logprobs"
                elif "ref_logprobs" in b and not torch.isfinite(b["ref_logprobs"][i][rm]).all():
                    reason = "nonfinite_ref_logprobs"
            if reason is not None:
                skipped[reason] += 1
                usable[i] = False
        if not usable.all():
            keep = [i for i in range(n) if usable[i]]
            if keep:
                b = slice_batch(b, keep)
            else:  # nothing usable here: one text-only, fully masked row keeps this rank in the collectives
                b = self._filler_row(kind)
        if kind == "policy":
            b.setdefault("old_logprobs", None)
        return b, skipped

    def _filler_row(self, kind: str) -> dict[str, Any]:
        pad = self._pad_id()
        out: dict[str, Any] = {"input_ids": torch.tensor([[pad, pad]]), "attention_mask": torch.ones(1, 2).long(),
                               "multimodal": [], "mm_index": torch.tensor([-1])}
        if kind == "policy":
            out.update(response_mask=torch.zeros(1, 2).long(), advantages=torch.zeros(1),
                       old_logprobs=torch.zeros(1, 2))
        else:
            out["labels"] = torch.full((1, 2), IGNORE_INDEX)
        return out

    def _pad_id(self) -> int:
        cfg = self.model.config
        text = getattr(cfg, "text_config", cfg)
        for cand in (getattr(text, "pad_token_id", None), getattr(text, "eos_token_id", None), 0):
            if isinstance(cand, int) and cand not in (getattr(cfg, "image_token_id", None),
                                                      getattr(cfg, "video_token_id", None)):
                return cand
        return 0

    def _microbatches(self, n: int) -> list[list[int]]:
        mbs = int(self.cfg.learner.micro_batch_size)
        return [list(range(s, min(s + mbs, n))) for s in range(0, n, mbs)]

    def _mm_token_types(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        out = torch.zeros_like(ids, dtype=torch.int32)
        if getattr(cfg, "image_token_id", None) is not None:
            out[ids == cfg.image_token_id] = 1
        if getattr(cfg, "video_token_id", None) is not None:
            out[ids == cfg.video_token_id] = 2
        return out

    def _micro_inputs(self, b: dict[str, Any], rows: list[int], first_needed: int) -> dict[str, Any]:
        """Tensors for one micro-batch, trimmed to its longest row, media deduplicated."""
        dev = self.device
        am = b["attention_mask"][rows]
        width = max(int(am.sum(dim=1).max()), 2)
        ids = b["input_ids"][rows][:, :width]
        mb: dict[str, Any] = {"rows": rows, "width": width, "input_ids": ids.to(dev),
                              "attention_mask": am[:, :width].to(dev)}
        mb["mm_token_type_ids"] = (b["mm_token_type_ids"][rows][:, :width] if "mm_token_type_ids" in b
                                   else self._mm_token_types(ids)).to(dev)
        for k in ("response_mask", "old_logprobs", "ref_logprobs", "labels"):
            if b.get(k) is not None:
                mb[k] = b[k][rows][:, :width].to(dev)
        for k in ("advantages", "temperature"):
            if b.get(k) is not None:
                mb[k] = b[k][rows].to(dev)
        media: dict[str, Any] = {}
        mm_rows = [int(b["mm_index"][r]) for r in rows]
        merge = int(getattr(getattr(self.model.config, "vision_config", None), "spatial_merge_size", 2) or 2)
        for kind, pix_key, grid_key in (("image", "pixel_values", "image_grid_thw"),
                                        ("video", "pixel_values_videos", "video_grid_thw")):
            users = [m for m in mm_rows if m >= 0 and grid_key in b["multimodal"][m]]
            if not users:
                continue
            uniq = list(dict.fromkeys(users))
            pos = {m: j for j, m in enumerate(uniq)}
            spec = {
                "pixels": torch.cat([b["multimodal"][m][pix_key] for m in uniq]).to(dev),
                "unique_grid": torch.cat([b["multimodal"][m][grid_key] for m in uniq]).to(dev),
                "unique_tokens": [int(b["multimodal"][m][grid_key].prod(-1).sum()) // (merge * merge) for m in uniq],
                "row_media": [pos[m] for m in users],
                "row_grid": torch.cat([b["multimodal"][m][grid_key] for m in users]).to(dev),
            }
            if kind == "video":
                secs = [b["multimodal"][m].get("second_per_grid_ts",
                                               torch.ones(b["multimodal"][m][grid_key].shape[0])) for m in users]
                spec["row_seconds"] = torch.cat(secs).to(dev)
            media[kind] = spec
        mb["media"] = media
        # logits are needed from the position before the first scored token on
        mb["keep"] = max(width - max(first_needed - 1, 0), 2)
        return mb

    def _first_scored(self, b: dict[str, Any], rows: list[int], kind: str) -> int:
        # the token at t is scored from the logits at t - 1 (SFT labels are aligned with the inputs, HF convention)
        mask = b["response_mask"][rows] if kind == "policy" else (b["labels"][rows] != IGNORE_INDEX).long()
        nz = mask.nonzero()
        return int(nz[:, 1].min()) if len(nz) else 1

    def _need(self, mb: dict[str, Any]) -> tuple[bool, bool]:
        """Which vision-tower calls every rank makes for this micro-batch (collective agreement when world > 1)."""
        local = torch.tensor([float("image" in mb["media"]), float("video" in mb["media"])])
        agreed = self._all_reduce(local, "max")
        return bool(agreed[0] > 0), bool(agreed[1] > 0)

    def _forward(self, mb: dict[str, Any], module: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits for the last ``keep`` positions [n, keep, V] scaled by temperature, anchor scalar) of the policy
        engine (or of ``module``, the reference)."""
        logits, anchor = (module or self.engine)(mb["input_ids"], mb["attention_mask"], mb["mm_token_type_ids"], mb["media"],
                                     self._need(mb), int(mb["keep"]))
        logits = logits.float()
        if mb.get("temperature") is not None:
            t = mb["temperature"].float().clamp(min=1e-6)
            t = torch.where(mb["temperature"] > 0, t, torch.ones_like(t))
            logits = logits / t.view(-1, 1, 1)
        return logits, anchor

    @staticmethod
    def _aligned_logprobs(logits: torch.Tensor, ids: torch.Tensor, keep: int) -> torch.Tensor:
        """log p(ids[:, t] | ids[:, :t]) aligned with ids; positions before width - keep + 1 are 0."""
        n, width = ids.shape
        part = token_logprobs(logits[:, :-1], ids[:, width - keep + 1:])
        return torch.cat([part.new_zeros(n, width - keep + 1), part], dim=1)

    def _count_global(self, b: dict[str, Any], kind: str) -> tuple[float, float, int]:
        n = b["input_ids"].shape[0]
        if kind == "policy":
            mask = b["response_mask"]
        else:
            mask = torch.zeros_like(b["labels"])
            mask[:, 1:] = (b["labels"][:, 1:] != IGNORE_INDEX).long()
        tokens = float(mask.sum())
        seqs = float((mask.sum(dim=1) > 0).sum())
        n_micro = len(self._microbatches(n))
        stats = self._all_reduce(torch.tensor([tokens, seqs]), "sum")
        n_micro_all = int(self._all_reduce(torch.tensor([float(n_micro)]), "max")[0])
        return float(stats[0]), float(stats[1]), n_micro_all

    # -- stepping ------------------------------------------------------------------------------------------
    def _grads_allreduce_and_norm(self) -> float:
        """ZeRO-0 only: average gradients across ranks (bucketed) and return the global L2 norm (inf if non-finite)."""
        import torch.distributed as dist

        params = [p for p in self.engine.module.parameters() if p.requires_grad and p.grad is not None]
        if self.world_size > 1:
            bucket: list[torch.Tensor] = []
            size = 0

            def flush(ts: list[torch.Tensor]) -> None:
                if not ts:
                    return
                flat = torch.cat([t.reshape(-1) for t in ts])
                dist.all_reduce(flat)
                flat.div_(self.world_size)
                off = 0
                for t in ts:
                    t.copy_(flat[off: off + t.numel()].view_as(t))
                    off += t.numel()

            for p in params:
                if bucket and (size + p.grad.numel() * p.grad.element_size() > _ALLREDUCE_BUCKET
                               or p.grad.dtype != bucket[0].dtype):
                    flush(bucket)
                    bucket, size = [], 0
                bucket.append(p.grad)
                size += p.grad.numel() * p.grad.element_size()
            flush(bucket)
        if not params:
            return 0.0
        sq = torch.stack([p.grad.detach().float().pow(2).sum() for p in params]).sum()
        return float(sq.sqrt())

    def _finish_step(self, poisoned: bool) -> tuple[bool, float]:
        """Apply (or drop) the accumulated update. Returns (applied, grad_norm)."""
        stage = self.engine.zero_optimization_stage()
        if stage == 0:
            if poisoned:
                self.engine.zero_grad()
                return False, float("nan")
            norm = self._grads_allreduce_and_norm()
            if not math.isfinite(norm):
                self.engine.zero_grad()
                return False, norm
            self._set_lr(self._lr_for(self.optimizer_steps))
            self.engine.step()
            return True, norm
        self._set_lr(self._lr_for(self.optimizer_steps))
        self.engine.step()  # ZeRO optimisers drop a step whose global grad norm is not finite, and clear grads
        applied = bool(self.engine.was_step_applied())
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        if poisoned and applied:
            raise LearnerError("a step with a non-finite loss was applied by the optimizer; weights are suspect")
        return applied, norm

    def _run(self, batch: Mapping[str, Any], kind: str) -> dict[str, float]:
        self._require_engine()
        b, skipped = self._prepare(batch, kind)
        self.counters.update({f"skipped_samples/{k}": v for k, v in skipped.items()})
        g_tokens, g_seqs, n_micro = self._count_global(b, kind)
        lc = self.cfg.learner
        n_local = b["input_ids"].shape[0]
        micro = self._microbatches(n_local)
        epochs = int(lc.ppo_epochs) if kind == "policy" else 1
        if epochs > 1 and b.get("old_logprobs") is None:
            raise ValueError("learner.ppo_epochs > 1 needs the behaviour policy's old_logprobs in the batch")
        sums = StepSums()
        applied_steps, skipped_steps = 0, 0
        norms: list[float] = []
        if g_tokens == 0:
            self.counters["skipped_empty"] += 1
            out = {"loss": 0.0, "tokens": 0.0, "skipped_empty": 1.0, "skipped_nonfinite": 0.0}
            out.update({k: float(v) for k, v in skipped.items()})
            return out | self._common_metrics()
        # While no optimizer step separates the policy from its reference (the first GRPO step of a stage), the
        # reference log-probs are the training forward's own (epoch 0, detached; kept for later epochs): exactly
        # equal, so the k3 term and its gradient are exactly 0 on any rank layout, and no reference forward runs.
        ref_is_policy = False
        if kind == "policy" and self._kl:
            self._ensure_reference()
            if b.get("ref_logprobs") is None:
                ref_is_policy = self._ref_at == self.version
                b["ref_logprobs"] = (torch.zeros(b["input_ids"].shape) if ref_is_policy else self._ref_logprobs(b))
        for _epoch in range(epochs):
            poisoned = False
            for j in range(n_micro):
                rows, weight = (micro[j], 1.0) if j < len(micro) else (micro[0], 0.0)
                first = self._first_scored(b, rows, kind)
                mb = self._micro_inputs(b, rows, first)
                logits, anchor = self._forward(mb)
                ids = mb["input_ids"]
                if kind == "policy":
                    lp = self._aligned_logprobs(logits, ids, mb["keep"])
                    if ref_is_policy and _epoch == 0:
                        mb["ref_logprobs"] = lp.detach()
                        if weight > 0:
                            b["ref_logprobs"][rows, : mb["width"]] = lp.detach().float().cpu()
                    old = mb.get("old_logprobs")
                    old = old if old is not None else lp.detach()
                    loss, m = policy_loss(lp, old, mb["advantages"], mb["response_mask"], clip_low=lc.clip_low,
                                          clip_high=lc.clip_high, agg=lc.loss_agg,
                                          max_len=int(self.cfg.rollout.max_new_tokens),
                                          ref_logprobs=mb.get("ref_logprobs"), kl_coef=float(lc.kl_coef),
                                          num_tokens=g_tokens, num_seqs=g_seqs)
                    tok_mask = mb["response_mask"]
                else:
                    full = torch.cat([logits.new_zeros(ids.shape[0], ids.shape[1] - mb["keep"], logits.shape[-1]),
                                      logits], dim=1) if mb["keep"] < ids.shape[1] else logits
                    loss = sft_loss(full, mb["labels"], num_tokens=g_tokens)
                    m = {}
                    tok_mask = torch.zeros_like(mb["labels"])
                    tok_mask[:, 1:] = (mb["labels"][:, 1:] != IGNORE_INDEX).long()
                finite = self._all_reduce(torch.tensor([float(torch.isfinite(loss.detach()).item())]), "min")
                if finite[0] < 1:
                    poisoned = True
                    if self.engine.zero_optimization_stage() > 0:
                        # Every rank still runs this backward (ZeRO reductions are collective); NaN gradients make
                        # the optimizer's overflow check drop the whole step and clear the accumulated gradients.
                        self.engine.backward((logits.sum() + anchor) * float("nan"))
                    break
                self.engine.backward(loss * (self.world_size * weight) + anchor)
                if weight > 0:
                    with torch.no_grad():
                        sm = tok_mask[:, -(mb["keep"] - 1):].bool()
                        sums.add(float(loss.detach()), m, float(entropy_from_logits(logits[:, :-1][sm]).sum()),
                                 float(m["tokens"]) if m else float(tok_mask.sum()))
                del logits, loss
            applied, norm = self._finish_step(poisoned)
            norms.append(norm)
            if applied:
                applied_steps += 1
                self.optimizer_steps += 1
                self.version += 1
            else:
                skipped_steps += 1
                self.counters["skipped_nonfinite"] += 1
                break
        tot = sums.all_reduced(self._all_reduce)
        out = {"loss": tot.loss / max(epochs, 1) if not skipped_steps else float("nan"),
               "entropy": tot.entropy / max(tot.tokens, 1.0), "tokens": g_tokens,
               "sequences": g_seqs, "grad_norm": norms[-1] if norms else float("nan"),
               "skipped_nonfinite": float(skipped_steps), "optimizer_steps": float(applied_steps),
               "micro_batches": float(n_micro)}
        if kind == "policy":
            out.update(tot.policy_metrics())
        for k, v in skipped.items():
            out[f"skipped_samples/{k}"] = float(v)
        return out | self._common_metrics()

    def _common_metrics(self) -> dict[str, float]:
        return {"lr": float(self._lr_for(max(self.optimizer_steps - 1, 0))), "version": float(self.version),
                "step": float(self.optimizer_steps)}

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One GRPO update (``ppo_epochs`` optimizer steps) on this rank's slice; all ranks call it together.
        Metrics are global (identical on every rank)."""
        return self._run(batch, "policy")

    def sft_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One supervised update: cross-entropy on the tokens whose label is not -100. The next GRPO step takes a new
        KL reference (the policy at the start of the GRPO stage) unless ``learner.ref_model_path`` fixes it."""
        out = self._run(batch, "sft")
        if self._ref_source != "path":
            self._ref_ready = False
        return out

    @torch.no_grad()
    def compute_logprobs(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Current-policy log-probs ``[N, L]`` aligned with ``input_ids`` (0 at position 0 and on padding), for
        every row as given. A collective under ZeRO-3: all ranks call it, each with its own rows."""
        self._require_engine()
        return self._logprobs(self._to_rows(batch), self.engine)

    def _logprobs(self, b: dict[str, Any], module: Any, scored: Optional[str] = None) -> torch.Tensor:
        """Log-probs ``[N, L]`` of ``module`` (the policy engine or the reference) for prepared rows ``b``: every
        position, or (``scored="policy"``) only from each micro-batch's first response token on (0 before)."""
        n, length = b["input_ids"].shape
        out = torch.zeros(n, length)
        micro = self._microbatches(n)
        n_micro = int(self._all_reduce(torch.tensor([float(len(micro))]), "max")[0])
        was_training = module.training
        module.eval()
        try:
            for j in range(n_micro):
                rows = micro[j] if j < len(micro) else micro[0]
                first = self._first_scored(b, rows, scored) if scored else 1
                mb = self._micro_inputs(b, rows, first_needed=first)
                logits, _ = self._forward(mb, module)
                if j < len(micro):
                    lp = self._aligned_logprobs(logits, mb["input_ids"], mb["keep"])
                    lp = lp * mb["attention_mask"]
                    out[rows, : mb["width"]] = lp.float().cpu()
        finally:
            module.train(was_training)
        return out

    # -- weights -------------------------------------------------------------------------------------------
    def _iter_weights(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """The policy's full weights under the base model's names, in chunks (a collective under ZeRO-3); with LoRA
        the merged weights."""
        if self._lora:
            from learner.lora import iter_merged

            return iter_merged(self.model, bucket_bytes)
        return iter_gathered(self.model, bucket_bytes)

    def state_for_sync(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES, copy: bool = True
                       ) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, full named CPU tensors) on rank 0; (version, {}) elsewhere. All ranks must call it (ZeRO-3
        gathers the shards chunk by chunk). ``copy=False`` returns the live CPU parameters themselves where they are
        whole (no ZeRO-3): only for a caller that is done with them before the next optimizer step."""
        self._require_engine()
        out: dict[str, torch.Tensor] = {}
        for chunk in self._iter_weights(bucket_bytes):
            if self.rank == 0:
                for name, p in chunk:
                    # a ZeRO-3 parameter is whole only inside the gather: always copy it out
                    out[name] = p.detach().to("cpu", copy=copy or hasattr(p, "ds_id"))
        return self.version, out

    def weight_payload(self, copy: bool = True) -> Optional[WeightPayload]:
        """The object-store payload (rank 0; None elsewhere). All ranks must call it.

        ``copy=False``: on CPU without ZeRO-3, tensors over 1 MiB travel as views of the live parameters, so the
        object store's copy is the only one the sender makes (``bench.weight_sync``: the ``ours`` candidate).
        Only for a caller that puts the payload in the object store before the next step changes the parameters,
        as the learner actor does by returning it."""
        version, sd = self.state_for_sync(copy=copy)
        return pack_weights(version, sd, copy=False) if self.rank == 0 else None

    def init_weight_sync(self, master_addr: str, master_port: int, world_size: int,
                         backend: Optional[str] = None, timeout_s: Optional[float] = None) -> None:
        """GPU path: learner rank 0 hosts and joins the weight-sync group as its rank 0 (rollout workers join as
        1..world_size-1, concurrently); other learner ranks only prepare to take part in ZeRO-3 gathers."""
        from learner.weight_sync import BucketBroadcaster, init_sync_group

        self._require_engine()
        timeout = float(timeout_s or self.cfg.learner.collective_timeout_s)
        group = None
        if self.rank == 0:
            group = init_sync_group(master_addr, master_port, 0, world_size, backend or self._backend(), timeout)
        self._broadcaster = BucketBroadcaster(group, self.rank, timeout_s=timeout,
                                              device=None if group is not None else torch.device("cpu"))

    def broadcast_weights(self) -> int:
        """GPU path: send the current weights to the rollout workers (all learner ranks call it). Returns the
        version sent. Untested on GPU."""
        self._require_engine()
        if getattr(self, "_broadcaster", None) is None:
            raise LearnerError("call init_weight_sync() first")
        if self._lora:
            raise LearnerError("the bucketed broadcast sends parameters as they are; with model.lora_rank > 0 push "
                               "the merged weights through the object store (get_weights / weight_payload)")
        self._broadcaster.broadcast(self.model, self.version)
        return self.version

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _learner_state(self) -> dict[str, Any]:
        return {"version": self.version, "optimizer_steps": self.optimizer_steps, "base_lr": self.base_lr,
                "zero_stage": int(self.cfg.learner.zero_stage), "world_size": self.world_size,
                "counters": dict(self.counters),
                "reference": {"source": self._ref_source, "ready": self._ref_ready, "at": self._ref_at}}

    def save_checkpoint(self, directory: str | Path) -> str:
        """DeepSpeed state (weights, optimizer, per-rank shards) + ``learner_state.json``, atomically. All ranks."""
        self._require_engine()
        final = Path(directory)
        staging = ckpt.staging_path(final)
        if self.rank == 0:
            ckpt.prepare_staging(final)
        self._barrier()
        ckpt.save_engine_state(self.engine, staging, {"learner": self._learner_state()}, trainable_only=self._lora)
        if self._lora:  # the adapters alone, for peft users: <ckpt>/adapter/adapter_model.safetensors
            from learner.lora import adapter_state

            sd = adapter_state(self.model, write=self.rank == 0)
            if self.rank == 0:
                self.model.save_pretrained(str(staging / "adapter"), state_dict=sd, safe_serialization=True)
        if self._ref_ready and self._ref_source == "snapshot":
            refw.save_reference(self._ref_model_module(), staging, write=self.rank == 0)
        self._barrier()
        if self.rank == 0:
            ckpt.write_learner_state(staging, self._learner_state())
            ckpt.commit_staging(staging, final)
        self._barrier()
        return str(final)

    def load_checkpoint(self, directory: str | Path, load_optimizer: bool = True) -> int:
        """Restore weights (+ optimizer and counters); returns the restored policy version. All ranks.

        Files are unpickled with ``weights_only=True`` and a minimal allowlist (learner/checkpoint.py): a tampered
        file raises ``UnsafeCheckpointError`` and nothing in it runs; the learner may then be partly loaded."""
        self._require_engine()
        state = ckpt.read_learner_state(directory)
        if load_optimizer and (state.get("world_size") != self.world_size
                               or state.get("zero_stage") != int(self.cfg.learner.zero_stage)):
            raise LearnerError(f"checkpoint {directory} was written with world_size={state.get('world_size')}, "
                               f"zero_stage={state.get('zero_stage')}; this learner has world_size={self.world_size},"
                               f" zero_stage={self.cfg.learner.zero_stage}. Resume weights only "
                               f"(load_optimizer=False) or use the same layout")
        ckpt.load_engine_state(self.engine, directory, load_optimizer=load_optimizer, trainable_only=self._lora)
        self.version = int(state["version"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.base_lr = float(state.get("base_lr", self.base_lr))
        self.counters = Counter(state.get("counters", {}))
        self._set_lr(self._lr_for(self.optimizer_steps))
        self._restore_reference(directory, state.get("reference") or {})
        return self.version

    def _restore_reference(self, directory: str | Path, saved: Mapping[str, Any]) -> None:
        """The KL reference the checkpoint was trained against (a snapshot file, or the initial weights); a
        checkpoint taken before its GRPO stage began takes a new one at the next GRPO step."""
        if not self._kl or self._ref_source == "path":
            return
        source = saved.get("source")
        self._ref_ready = bool(saved.get("ready")) and source in ("initial", "snapshot")
        if not self._ref_ready:
            return
        if source == "snapshot":
            if self._ref is None:
                self._ref = self._build_reference(self.model_path)
            refw.load_reference(self._ref_model_module(), directory)
        elif self._ref_source == "snapshot":  # back to the initial weights
            self._ref = None if self._lora else self._build_reference(self.model_path)
        self._ref_source = source
        at = saved.get("at", 0 if source == "initial" else None)
        self._ref_at = int(at) if at is not None else None

    def export_hf(self, directory: str | Path, dtype: Optional[str] = None) -> str:
        """HF folder with safetensors weights (rank 0 writes; all ranks gather)."""
        self._require_engine()
        _, sd = self.state_for_sync()
        if self.rank == 0:
            dt = getattr(torch, dtype) if dtype else None
            base = self.model.get_base_model() if self._lora else self.model  # merged weights, base names
            ckpt.export_hf(base, sd, directory, source_dir=self.model_path, dtype=dt)
        self._barrier()
        return str(directory)

    def shutdown(self) -> None:
        import torch.distributed as dist

        self.engine = None
        self._ref = None
        if dist.is_initialized():
            import deepspeed.comm as ds_comm

            # through DeepSpeed, so its cached group references (deepspeed.utils.groups) are released too and a
            # later learner in this process can initialise again
            if ds_comm.is_initialized():
                ds_comm.destroy_process_group()
            else:
                dist.destroy_process_group()
