"""Ray shell over ``rewards.curriculum.IoUThresholdScheduler``: the run's single MedLoc-R1 threshold. The driver
calls ``observe`` once per step; reward workers read ``threshold``. Light: give it ``num_cpus=0``.

With ``snapshot_path`` it survives a crash like the normalizer (``actors.snapshot``): τ and the sliding window come
back from the last observation, and a retried ``observe`` with the same ``call_id`` is not counted twice."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Union

import ray

from actors.snapshot import ActorSnapshot
from rewards.curriculum import IoUThresholdScheduler


@ray.remote(num_cpus=0)
class CurriculumActor:
    """Holds one ``IoUThresholdScheduler``; keyword arguments are the scheduler's."""

    def __init__(self, snapshot_path: Optional[str] = None, **kwargs: Any) -> None:
        self.sched = IoUThresholdScheduler(**kwargs)
        self.snapshot = ActorSnapshot(snapshot_path)
        state = self.snapshot.load(ray.get_runtime_context().was_current_actor_reconstructed)
        if state is not None:
            self.sched.load_state_dict(state)

    def threshold(self) -> float:
        return self.sched.threshold

    def observe(self, group_mean_rewards: Union[float, Iterable[float]],
                group_mean_ious: Union[float, Iterable[float]], call_id: Optional[str] = None) -> float:
        replayed, result = self.snapshot.replay(call_id)
        if replayed:
            return float(result)
        tau = self.sched.observe(group_mean_rewards, group_mean_ious)
        self.snapshot.save(self.sched.state_dict(), call_id, tau)
        return tau

    def diagnostics(self) -> dict[str, Any]:
        return dict(self.sched.diagnostics)

    def metrics(self, prefix: str = "curriculum") -> dict[str, float]:
        return self.sched.metrics(prefix)

    def restores(self) -> int:
        return self.snapshot.restores

    def state_dict(self) -> dict[str, Any]:
        return self.sched.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sched.load_state_dict(state)
        self.snapshot.save(self.sched.state_dict())
