"""LoRA adapters (``peft``) on the learner's model: ``model.lora_rank`` / ``lora_alpha`` / ``lora_target_modules``.

* ``apply_lora``: wraps the HF model in a ``PeftModel`` whose only trainable parameters are the adapters, on the
  language model's modules named in ``lora_target_modules`` (and on the vision tower's modules of those names when
  ``model.freeze_vision_tower`` is false). A target that matches no linear module is a start-up error naming the key.
* ``iter_merged``: the merged weights ``W + (lora_alpha / lora_rank) · B · A`` under the **base model's** names, in
  chunks (gathered under ZeRO-3): what the rollout actors load and the HF export writes, so the hf/vLLM backends
  take them unchanged.
* ``adapter_state``: the adapter tensors alone (for ``PeftModel.save_pretrained``: adapter_model.safetensors).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import nn

from learner.weight_sync import DEFAULT_BUCKET_BYTES, _full_shape, _gathered, iter_gathered

ADAPTER = "default"
_PREFIX = "base_model.model."
_VISUAL = r"(.*\.)?visual\..*"


class LoraConfigError(ValueError):
    """A LoRA setting that cannot be applied to this model; the message names the key."""


def apply_lora(model: nn.Module, rank: int, alpha: int, targets: list[str], freeze_vision_tower: bool,
               seed: int = 0) -> nn.Module:
    """The ``PeftModel`` around ``model`` (adapters initialised so that B·A = 0: the policy starts as the base; A
    drawn from ``seed``, so every rank and every run starts from the same adapters)."""
    import re

    from peft import LoraConfig, get_peft_model

    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if freeze_vision_tower:
        linear = [n for n in linear if not re.fullmatch(_VISUAL, n)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise LoraConfigError(f"model.lora_target_modules: {missing} match no linear module of the "
                              f"{'language model' if freeze_vision_tower else 'model'}; its linear modules are named "
                              f"{', '.join(names[:20])}")
    cfg = LoraConfig(r=int(rank), lora_alpha=int(alpha), target_modules=list(targets), lora_dropout=0.0,
                     bias="none", exclude_modules=_VISUAL if freeze_vision_tower else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, cfg)


def base_name(name: str) -> str:
    """``base_model.model.X.base_layer.weight`` -> ``X.weight`` (the name in the base model)."""
    name = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
    return name.replace(".base_layer.", ".")


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def iter_merged(peft_model: nn.Module, bucket_bytes: int = DEFAULT_BUCKET_BYTES
                ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Merged full weights under the base model's names, in chunks of about ``bucket_bytes``. Under ZeRO-3 every
    rank must iterate to the end (a collective). Merged tensors are new; the others are the (gathered) parameters
    themselves: copy what you keep."""
    from peft.tuners.lora import LoraLayer

    layers = {n: m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    units: list[tuple[str, list[torch.Tensor], Any]] = []
    for name, p in peft_model.named_parameters():
        if _is_adapter(name):
            continue
        owner = name.rsplit(".base_layer.", 1)[0] if name.endswith(".base_layer.weight") else None
        layer = layers.get(owner) if owner else None
        if layer is not None and ADAPTER in layer.lora_A:
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            units.append((base_name(name), [p, a, b], float(layer.scaling[ADAPTER])))
        else:
            units.append((base_name(name), [p], None))
    chunk: list[tuple[str, list[torch.Tensor], Any]] = []
    size = 0
    for unit in units:
        nbytes = sum(math.prod(_full_shape(t)) * t.element_size() for t in unit[1])
        if chunk and size + nbytes > bucket_bytes:
            yield from _merged(chunk)
            chunk, size = [], 0
        chunk.append(unit)
        size += nbytes
    if chunk:
        yield from _merged(chunk)


def _merged(chunk: list[tuple[str, list[torch.Tensor], Any]]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    flat = [(f"{i}.{j}", t) for i, (_, ts, _) in enumerate(chunk) for j, t in enumerate(ts)]
    for _ in _gathered(flat):
        out = []
        with torch.no_grad():
            for name, ts, scale in chunk:
                if scale is None:
                    out.append((name, ts[0]))
                else:
                    w, a, b = ts
                    out.append((name, (w.float() + scale * (b.float() @ a.float())).to(w.dtype)))
        yield out


def adapter_state(peft_model: nn.Module, write: bool) -> dict[str, torch.Tensor]:
    """The adapter tensors (gathered; CPU copies on the rank with ``write``, {} elsewhere). All ranks call it."""
    out: dict[str, torch.Tensor] = {}
    named = [(n, p) for n, p in peft_model.named_parameters() if _is_adapter(n)]
    for chunk in iter_gathered(named):
        if write:
            out.update({n: p.detach().to("cpu", copy=True) for n, p in chunk})
    return out
