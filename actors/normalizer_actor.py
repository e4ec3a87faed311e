"""Ray shell over ``rewards.normalizer.RewardNormalizer``: the one normalizer of a run, called once per step by the
driver (``process``), checkpointed through ``state_dict``/``load_state_dict``. Light: give it ``num_cpus=0``."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import ray

from rewards.normalizer import RewardNormalizer, load_table


@ray.remote(num_cpus=0)
class NormalizerActor:
    """Holds a ``RewardNormalizer``. Pass the table as a mapping (``table``), or a path (``table_file``) that
    this actor's node can read; the other keyword arguments are ``RewardNormalizer``'s."""

    def __init__(self, mode: str = "streaming", k: float = 3.0, eps: float = 1e-3, min_samples: int = 32,
                 table: Optional[Mapping[str, Any]] = None, sketch_size: int = 2048,
                 table_file: Optional[str] = None, **kwargs: Any) -> None:
        if table is None and table_file:
            table = load_table(table_file)
        self.norm = RewardNormalizer(mode=mode, k=k, eps=eps, min_samples=min_samples, table=table,
                                     sketch_size=sketch_size, **kwargs)

    def ping(self) -> str:
        return repr(self.norm)

    def process(self, keys: Sequence[Any], scores: Sequence[float]) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
        return self.norm.process(keys, scores)

    def normalize(self, key: Any, scores: Sequence[float]) -> np.ndarray:
        return self.norm.normalize(key, scores)

    def update(self, key: Any, scores: Sequence[float]) -> int:
        return self.norm.update(key, scores)

    def stats(self, key: Any) -> dict[str, Any]:
        return self.norm.stats(key)

    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.norm.metrics()

    def flat_metrics(self, prefix: str = "normalizer") -> dict[str, float]:
        return self.norm.flat_metrics(prefix)

    def state_dict(self) -> dict[str, Any]:
        return self.norm.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.norm.load_state_dict(state)

    def save_table(self, path: str) -> int:
        return self.norm.save_table(path)
