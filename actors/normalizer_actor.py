"""Ray shell over ``rewards.normalizer.RewardNormalizer``: the one normalizer of a run, called once per step by the
driver (``process``), checkpointed through ``state_dict``/``load_state_dict``. Light: give it ``num_cpus=0``.

With ``snapshot_path`` it survives a crash: its state is snapshotted after every update (``actors.snapshot``), an
instance Ray restarts resumes from there, and a retried ``process`` with the same ``call_id`` is not applied twice.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import ray

from actors.snapshot import ActorSnapshot
from rewards.normalizer import RewardNormalizer, load_table


@ray.remote(num_cpus=0)
class NormalizerActor:
    """Holds a ``RewardNormalizer``. Pass the table as a mapping (``table``), or a path (``table_file``) that
    this actor's node can read; the other keyword arguments are ``RewardNormalizer``'s."""

    def __init__(self, table: Optional[Mapping[str, Any]] = None, table_file: Optional[str] = None,
                 snapshot_path: Optional[str] = None, **kwargs: Any) -> None:
        if table is None and table_file:
            table = load_table(table_file)
        self.norm = RewardNormalizer(table=table, **kwargs)
        self.snapshot = ActorSnapshot(snapshot_path)
        state = self.snapshot.load(ray.get_runtime_context().was_current_actor_reconstructed)
        if state is not None:
            self.norm.load_state_dict(state)

    def ping(self) -> str:
        return repr(self.norm)

    def process(self, keys: Sequence[Any], scores: Sequence[float], call_id: Optional[str] = None
                ) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
        """``RewardNormalizer.process``; ``call_id`` (e.g. the step) makes a retry after a restart idempotent."""
        replayed, result = self.snapshot.replay(call_id)
        if replayed:
            return np.asarray(result[0], dtype=np.float64), result[1]
        out, metrics = self.norm.process(keys, scores)
        self.snapshot.save(self.norm.state_dict(), call_id, [out, metrics])
        return out, metrics

    def normalize(self, key: Any, scores: Sequence[float]) -> np.ndarray:
        return self.norm.normalize(key, scores)

    def update(self, key: Any, scores: Sequence[float]) -> int:
        n = self.norm.update(key, scores)
        self.snapshot.save(self.norm.state_dict())
        return n

    def stats(self, key: Any) -> dict[str, Any]:
        return self.norm.stats(key)

    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.norm.metrics()

    def flat_metrics(self, prefix: str = "normalizer") -> dict[str, float]:
        return self.norm.flat_metrics(prefix)

    def restores(self) -> int:
        """How many times this actor came back from its snapshot after a crash."""
        return self.snapshot.restores

    def state_dict(self) -> dict[str, Any]:
        return self.norm.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.norm.load_state_dict(state)
        self.snapshot.save(self.norm.state_dict())

    def save_table(self, path: str) -> int:
        return self.norm.save_table(path)
