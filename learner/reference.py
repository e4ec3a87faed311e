"""The frozen reference policy's weights (SPEC §6: the β·k3 term of the policy loss pulls π_θ toward π_ref).

The learner (``learner.deepspeed_learner``) decides *which* reference it holds; this module moves weights into and
out of it: ``copy_into`` writes named full tensors (a policy snapshot, chunk by chunk) into a module whose
parameters may be ZeRO-3 partitioned, and ``save_reference`` / ``load_reference`` keep a snapshot in a learner
checkpoint as safetensors (``reference.safetensors``, never a pickle) so that a resumed run keeps its reference.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from learner.weight_sync import DEFAULT_BUCKET_BYTES, iter_gathered

REF_FILE = "reference.safetensors"


def copy_into(dst: nn.Module, chunks: Iterable[list[tuple[str, torch.Tensor]]]) -> None:
    """Copy ``(name, full tensor)`` chunks into ``dst``'s parameters of the same names; every parameter of ``dst``
    must be covered. ZeRO-3 partitioned parameters are gathered per chunk, written and re-partitioned: a collective,
    so every rank calls it with the same chunks (each rank writes the same values)."""
    params = dict(dst.named_parameters())
    todo = set(params)
    for chunk in chunks:
        unknown = [n for n, _ in chunk if n not in params]
        if unknown:
            raise KeyError(f"reference has no parameter(s) {unknown[:3]}: the policy and reference models differ")
        targets = [params[n] for n, _ in chunk]
        parted = [p for p in targets if hasattr(p, "ds_id")]
        if parted:
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters(parted, modifier_rank=0)
        else:
            ctx = nullcontext()
        with ctx, torch.no_grad():
            for (name, src), p in zip(chunk, targets):
                p.copy_(src.to(device=p.device, dtype=p.dtype))
                todo.discard(name)
    if todo:
        raise KeyError(f"the snapshot does not cover the reference's parameter(s) {sorted(todo)[:3]}")


def save_reference(module: nn.Module, directory: str | Path, write: bool) -> None:
    """Every rank (ZeRO-3 gathers); the rank with ``write`` writes ``directory/reference.safetensors``."""
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    for chunk in iter_gathered(module):
        if write:
            out.update({n: p.detach().to("cpu", copy=True).contiguous() for n, p in chunk})
    if write:
        save_file(out, str(Path(directory) / REF_FILE))


def load_reference(module: nn.Module, directory: str | Path) -> None:
    """Every rank: restore ``module`` from ``directory/reference.safetensors`` (safetensors: no code runs)."""
    from safetensors.torch import load_file

    path = Path(directory) / REF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: the learner state names a reference snapshot but {REF_FILE} is missing")
    sd = load_file(str(path))
    chunks: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, t in sd.items():  # gathered DEFAULT_BUCKET_BYTES at a time under ZeRO-3, not all at once
        if chunks[-1] and size + t.numel() * t.element_size() > DEFAULT_BUCKET_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append((name, t))
        size += t.numel() * t.element_size()
    copy_into(module, chunks)
