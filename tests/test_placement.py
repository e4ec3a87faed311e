"""Placement: the config becomes bundles per role (separate or colocated), and the groups are really reserved."""
from __future__ import annotations

import pytest
import ray

from cluster.config import load_config
from cluster.placement import Reservation, plan


def test_plan_separate_gpu_roles():
    p = plan(load_config("medgrpo_7b", ["reward.num_cpus=1"]))
    assert p["rollout"].bundles == [{"CPU": 1.0, "GPU": 1.0}] * 4
    assert p["learner"].bundles == [{"CPU": 1.0, "GPU": 1.0}] * 4
    assert p["reward"].bundles == [{"CPU": 1.0}] * 4 and "judge" not in p  # the judge is an HTTP endpoint


def test_plan_colocated_shares_one_bundle_per_device():
    cfg = load_config("medgrpo_7b", ["cluster.colocate=true", "rollout.num_gpus=0.5", "learner.num_gpus=0.5",
                                     "rollout.num_cpus=1", "learner.num_cpus=1"])
    p = plan(cfg)
    assert p["learner"].bundles == [{"CPU": 2.0, "GPU": 1.0}] * 4 and p["rollout"].bundles == []
    assert p["rollout"].slots == p["learner"].slots == [("train", i) for i in range(4)]
    with pytest.raises(ValueError, match="rollout.num_actors"):
        plan(load_config("medgrpo_7b", ["cluster.colocate=true", "rollout.num_actors=2"]))


def test_light_roles_need_no_placement_group():
    assert plan(load_config("cpu_demo", ["reward.num_cpus=0"])) == {}


def test_reservation_on_local_ray(ray_local):
    cfg = load_config("cpu_demo", ["rollout.num_cpus=0.25", "learner.num_cpus=0.25", "reward.num_cpus=0.25",
                                   "cluster.get_timeout_s=30"])
    res = Reservation(cfg)
    try:
        assert set(res.groups) == {"rollout", "learner", "reward"}

        @ray.remote
        def where():
            return ray.get_runtime_context().get_placement_group_id()

        opts = res.options("rollout", 0)
        assert ray.get(where.options(**opts).remote(), timeout=60) == res.groups["rollout"].id.hex()
    finally:
        res.release()
    too_big = load_config("cpu_demo", ["rollout.num_cpus=64", "cluster.get_timeout_s=2"])
    with pytest.raises(RuntimeError, match="cannot reserve rollout"):
        Reservation(too_big)
