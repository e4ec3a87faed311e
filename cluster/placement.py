"""Resource reservation: placement groups for the rollout actors, the learner ranks, the reward workers and the
judge, colocated (rollout i shares learner rank i's GPU, vLLM sleeping while the learner trains) or separate.

``plan`` is pure: it turns the config into bundles per role. ``reserve`` creates the placement groups and waits
for them (with a timeout, naming the role that cannot be placed). Roles that ask for no resources at all
(``num_cpus=0``, ``num_gpus=0``: the light actors of a CPU test) are scheduled without a placement group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from cluster.config import TrainConfig


@dataclass
class RolePlan:
    bundles: list[dict[str, float]]
    strategy: str
    # per actor of the role: (placement group key, bundle index) and the resources the actor itself asks for
    slots: list[tuple[str, int]] = field(default_factory=list)
    actor_resources: dict[str, float] = field(default_factory=dict)


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {k: v for k, v in (("CPU", float(cpus)), ("GPU", float(gpus))) if v > 0}


def plan(cfg: TrainConfig) -> dict[str, RolePlan]:
    r, lr, rw, j = cfg.rollout, cfg.learner, cfg.reward, cfg.reward.judge
    strategy = cfg.cluster.placement_strategy
    roles: dict[str, RolePlan] = {}
    if cfg.cluster.colocate:
        if r.num_actors != lr.num_ranks:
            raise ValueError(f"cluster.colocate=true needs rollout.num_actors ({r.num_actors}) == learner.num_ranks "
                             f"({lr.num_ranks}): rollout actor i shares learner rank i's device")
        # one bundle per device holds rollout actor i and learner rank i (e.g. num_gpus 0.5 each: vLLM sleeps
        # while the learner trains)
        bundle = _bundle(r.num_cpus + lr.num_cpus, r.num_gpus + lr.num_gpus)
        if bundle:
            slots = [("train", i) for i in range(lr.num_ranks)]
            roles["learner"] = RolePlan([bundle] * lr.num_ranks, strategy, slots,
                                        {"num_cpus": lr.num_cpus, "num_gpus": lr.num_gpus})
            roles["rollout"] = RolePlan([], strategy, slots, {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus})
    else:
        for name, n, cpus, gpus in (("rollout", r.num_actors, r.num_cpus, r.num_gpus),
                                    ("learner", lr.num_ranks, lr.num_cpus, lr.num_gpus)):
            bundle = _bundle(cpus, gpus)
            if bundle:
                roles[name] = RolePlan([bundle] * n, strategy, [(name, i) for i in range(n)],
                                       {"num_cpus": cpus, "num_gpus": gpus})
    bundle = _bundle(rw.num_cpus, 0)
    if bundle:
        roles["reward"] = RolePlan([bundle] * rw.num_workers, "SPREAD" if strategy.endswith("SPREAD") else "PACK",
                                   [("reward", -1)] * rw.num_workers, {"num_cpus": rw.num_cpus})
    if j.backend != "none" and j.num_gpus > 0:
        roles["judge"] = RolePlan([_bundle(0, j.num_gpus)], "PACK", [("judge", 0)], {"num_gpus": j.num_gpus})
    return roles


class Reservation:
    """The placement groups of a run; ``options(role, i)`` are the ``.options`` for actor i of a role."""

    def __init__(self, cfg: TrainConfig, timeout_s: Optional[float] = None) -> None:
        import ray
        from ray.util.placement_group import placement_group

        self.plans = plan(cfg)
        self.groups: dict[str, Any] = {}
        timeout = timeout_s if timeout_s is not None else cfg.cluster.get_timeout_s
        for role, p in self.plans.items():
            key = p.slots[0][0]
            if key in self.groups or not p.bundles:
                continue
            pg = placement_group(p.bundles, strategy=p.strategy, name=f"{role}-pg")
            ready, _ = ray.wait([pg.ready()], timeout=timeout)
            if not ready:
                ray.util.remove_placement_group(pg)
                self.release()
                raise RuntimeError(f"cannot reserve {role}: {len(p.bundles)} × {p.bundles[0]} not available within "
                                   f"{timeout:.0f} s (cluster resources: {ray.cluster_resources()})")
            self.groups[key] = pg

    def options(self, role: str, index: int) -> dict[str, Any]:
        p = self.plans.get(role)
        if p is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        key, bundle = p.slots[index] if index < len(p.slots) else p.slots[-1]
        opts = dict(p.actor_resources)
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=self.groups[key], placement_group_bundle_index=bundle)
        return opts

    def placement_group(self, role: str) -> Any:
        p = self.plans.get(role)
        return self.groups[p.slots[0][0]] if p is not None else None

    def release(self) -> None:
        import ray

        for pg in self.groups.values():
            ray.util.remove_placement_group(pg)
        self.groups = {}
