"""How a config dataclass declares its fields, so ``cluster.config.load_config`` can check every value.

``choice(default, *allowed)`` for a fixed set of values, ``bounded(default, lo, hi)`` for a bounded number;
``list_of``/``dict_of`` for mutable defaults. The component configs beside their consumers (rewards/config.py,
learner/config.py, actors/config.py, data/config.py) use these; cluster/config.py composes them into
``TrainConfig`` and validates.
"""
from __future__ import annotations

from dataclasses import field
from typing import Any, Optional


def choice(default: Any, *allowed: Any) -> Any:
    return field(default=default, metadata={"choices": tuple(allowed)})


def bounded(default: Any, lo: Optional[float] = None, hi: Optional[float] = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


def list_of(*items: Any) -> Any:
    return field(default_factory=lambda: list(items))


def dict_of(**items: Any) -> Any:
    return field(default_factory=lambda: dict(items))
