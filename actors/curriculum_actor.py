"""Ray shell over ``rewards.curriculum.IoUThresholdScheduler``: the run's single MedLoc-R1 threshold. The driver
calls ``observe`` once per step; reward workers read ``threshold``. Light: give it ``num_cpus=0``."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Union

import ray

from rewards.curriculum import IoUThresholdScheduler


@ray.remote(num_cpus=0)
class CurriculumActor:
    """Holds one ``IoUThresholdScheduler``; keyword arguments are the scheduler's."""

    def __init__(self, **kwargs: Any) -> None:
        self.sched = IoUThresholdScheduler(**kwargs)

    def threshold(self) -> float:
        return self.sched.threshold

    def observe(self, group_mean_rewards: Union[float, Iterable[float]],
                group_mean_ious: Union[float, Iterable[float]]) -> float:
        return self.sched.observe(group_mean_rewards, group_mean_ious)

    def diagnostics(self) -> dict[str, Any]:
        return dict(self.sched.diagnostics)

    def metrics(self, prefix: str = "curriculum") -> dict[str, float]:
        return self.sched.metrics(prefix)

    def state_dict(self) -> dict[str, Any]:
        return self.sched.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sched.load_state_dict(state)
