"""Task-balanced prompt sampler: mixes tasks and data sources with configurable weights, seeded and resumable.

Rule. Instances are grouped into buckets by ``(qa_type, data_source)``. A draw first picks a bucket with
probability proportional to ``task_weight(qa_type) * source_weight(data_source)`` — independent of how many
instances the bucket holds — then takes the bucket's next instance. So an instance's probability is
``task_weight * source_weight / (bucket size * sum over active buckets of task_weight * source_weight)``.
Consequence to keep in mind: with equal weights a task present in three sources gets three times the share of a
task present in one source; lower its weight to compensate. Weight keys may name a qa_type or its task family
(``tag``, ``rc``, ...; the qa_type wins), a missing key weighs 1.0, and a bucket of weight 0 is never drawn.

Inside a bucket, instances are drawn without replacement in a shuffled order; when the bucket is exhausted a new
epoch starts with a fresh shuffle. Everything is a pure function of ``seed``, the instance list (its order
included) and the calls made: bucket choice ``n`` uses a random stream seeded by ``(seed, n)``, the order of a
bucket's epoch ``e`` by ``(seed, bucket, e)``. ``state_dict()`` therefore only stores counters, and a sampler
restored with ``load_state_dict`` (over the same instances) continues with exactly the sequence an uninterrupted
sampler would have produced. ``set_tasks`` (stage curricula) only changes which buckets are active; bucket
positions are kept, so a task resumed later continues its epoch.
"""
from __future__ import annotations

import hashlib
import logging
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from data.schema import Instance, task_family

log = logging.getLogger(__name__)
STATE_VERSION = 1
BucketKey = tuple[str, str]  # (qa_type, data_source)


def _u64(*parts: str | int) -> int:
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


@dataclass
class _Bucket:
    key: BucketKey
    members: list[int]  # positions in the instance list, ascending
    epoch: int = 0
    pos: int = 0
    _order: Optional[np.ndarray] = None

    def order(self, seed: int) -> np.ndarray:
        if self._order is None:
            rng = np.random.default_rng([seed, 1, _u64(*self.key), self.epoch])
            self._order = rng.permutation(len(self.members))
        return self._order

    def take(self, seed: int) -> int:
        member = self.members[int(self.order(seed)[self.pos])]
        self.pos += 1
        if self.pos == len(self.members):
            self.epoch, self.pos, self._order = self.epoch + 1, 0, None
        return member


class TaskBalancedSampler:
    """Draws prompts mixing tasks and sources; see the module docstring for the weighting rule."""

    def __init__(self, instances: Sequence[Instance], task_weights: Optional[Mapping[str, float]] = None,
                 source_weights: Optional[Mapping[str, float]] = None, seed: int = 0,
                 tasks: Optional[Sequence[str]] = None) -> None:
        if not instances:
            raise ValueError("TaskBalancedSampler needs at least one instance")
        self.instances = list(instances)
        self.task_weights = dict(task_weights or {})
        self.source_weights = dict(source_weights or {})
        for name, weights in (("task_weights", self.task_weights), ("source_weights", self.source_weights)):
            for k, w in weights.items():
                if not float(w) >= 0.0 or float(w) == float("inf"):
                    raise ValueError(f"{name}[{k!r}]={w} must be a finite number >= 0")
        self.seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
        groups: dict[BucketKey, list[int]] = {}
        for i, inst in enumerate(self.instances):
            groups.setdefault((inst.qa_type, inst.data_source), []).append(i)
        self._buckets = {key: _Bucket(key, members) for key, members in sorted(groups.items())}
        self._warn_unused_keys()
        self.draws = 0
        self._tasks: Optional[list[str]] = None
        self._active: list[BucketKey] = []
        self._cum: list[float] = []
        self.set_tasks(tasks)

    # -- weights -----------------------------------------------------------------------------------------------
    def _task_weight(self, qa_type: str) -> float:
        if qa_type in self.task_weights:
            return float(self.task_weights[qa_type])
        return float(self.task_weights.get(task_family(qa_type), 1.0))

    def bucket_weight(self, key: BucketKey) -> float:
        """Unnormalised weight of a ``(qa_type, data_source)`` bucket: task weight x source weight."""
        return self._task_weight(key[0]) * float(self.source_weights.get(key[1], 1.0))

    def _warn_unused_keys(self) -> None:
        qa_types = {k[0] for k in self._buckets}
        names = qa_types | {task_family(q) for q in qa_types}
        unused = sorted(set(self.task_weights) - names)
        unused_src = sorted(set(self.source_weights) - {k[1] for k in self._buckets})
        if unused or unused_src:
            log.warning("sampler weights name no instance: tasks %s, sources %s", unused, unused_src)

    def probabilities(self) -> dict[BucketKey, float]:
        """Probability of each active bucket on the next draw."""
        total = self._cum[-1]
        prev = 0.0
        out = {}
        for key, c in zip(self._active, self._cum):
            out[key] = (c - prev) / total
            prev = c
        return out

    # -- tasks -------------------------------------------------------------------------------------------------
    @property
    def tasks(self) -> Optional[list[str]]:
        return None if self._tasks is None else list(self._tasks)

    def set_tasks(self, tasks: Optional[Sequence[str]]) -> None:
        """Restrict draws to these qa_types or task families (None or empty: all). Raises on names that match
        no instance, and when the remaining buckets all weigh 0."""
        chosen = list(tasks) if tasks else None
        keys = list(self._buckets)
        if chosen is not None:
            unknown = [t for t in chosen if not any(t in (k[0], task_family(k[0])) for k in keys)]
            if unknown:
                available = sorted({k[0] for k in keys})
                raise ValueError(f"tasks {unknown} match no instance; available qa_types: {', '.join(available)}")
            keys = [k for k in keys if k[0] in chosen or task_family(k[0]) in chosen]
        active, cum, total = [], [], 0.0
        for key in keys:
            w = self.bucket_weight(key)
            if w > 0:
                total += w
                active.append(key)
                cum.append(total)
        if not active:
            raise ValueError(f"every bucket of tasks {chosen or 'all'} has weight 0")
        self._tasks, self._active, self._cum = chosen, active, cum

    # -- drawing -----------------------------------------------------------------------------------------------
    def _next_bucket(self) -> _Bucket:
        u = np.random.default_rng([self.seed, 0, self.draws]).random() * self._cum[-1]
        self.draws += 1
        return self._buckets[self._active[min(bisect_right(self._cum, u), len(self._active) - 1)]]

    def next_index(self) -> int:
        """Position (in the instance list) of the next drawn instance."""
        return self._next_bucket().take(self.seed)

    def next_batch(self, n: int) -> list[Instance]:
        """The next ``n`` instances (a batch may repeat an instance only if its bucket wraps around)."""
        if n < 0:
            raise ValueError(f"batch size {n} must be >= 0")
        return [self.instances[self.next_index()] for _ in range(n)]

    def __len__(self) -> int:
        """Number of instances in the active buckets."""
        return sum(len(self._buckets[k].members) for k in self._active)

    # -- checkpointing -----------------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for inst in self.instances:
            h.update(f"{inst.id}\x1f{inst.qa_type}\x1f{inst.data_source}\x1e".encode())
        return h.hexdigest()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: counters only (see the module docstring)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "draws": self.draws,
            "tasks": self.tasks,
            "fingerprint": self._fingerprint(),
            "buckets": [[q, s, b.epoch, b.pos] for (q, s), b in self._buckets.items() if b.epoch or b.pos],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``. Raises ValueError if it was saved over a different instance list."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"sampler state version {state.get('version')!r}; expected {STATE_VERSION}")
        if state.get("fingerprint") != self._fingerprint():
            raise ValueError("sampler state was saved over a different instance list (ids, tasks, sources or order "
                             "differ); resuming would not continue the same sequence")
        for bucket in self._buckets.values():
            bucket.epoch, bucket.pos, bucket._order = 0, 0, None
        for q, s, epoch, pos in state.get("buckets", []):
            bucket = self._buckets[(q, s)]
            if not 0 <= int(pos) < len(bucket.members):
                raise ValueError(f"sampler state: position {pos} out of range for bucket {(q, s)}")
            bucket.epoch, bucket.pos = int(epoch), int(pos)
        self.seed = int(state["seed"])
        self.draws = int(state["draws"])
        self.set_tasks(state.get("tasks"))
