"""Normalizer and curriculum actors on a real local Ray: one call per step, state survives kill + re-create."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.ray
T = 60  # seconds: every ray.get has a timeout


def test_normalizer_actor_state_survives_kill(ray_local):
    ray = ray_local
    from actors.normalizer_actor import NormalizerActor
    from rewards.normalizer import RewardNormalizer

    kw = dict(mode="streaming", min_samples=8, sketch_size=128)
    actor = NormalizerActor.options(num_cpus=0).remote(**kw)
    local = RewardNormalizer(**kw)  # the same steps run locally must give the same answers
    rng = np.random.default_rng(0)
    keys = [("AVOS", "tal")] * 40 + ["CoPESD/stg"] * 40
    for _ in range(5):
        scores = rng.uniform(size=80)
        out, metrics = ray.get(actor.process.remote(keys, scores), timeout=T)
        expected, _ = local.process(keys, scores)
        np.testing.assert_array_equal(out, expected)
    assert metrics["AVOS/tal"]["source"] == "stream" and metrics["AVOS/tal"]["count"] == 200
    state = ray.get(actor.state_dict.remote(), timeout=T)
    ray.kill(actor)
    again = NormalizerActor.options(num_cpus=0).remote(**kw)
    ray.get(again.load_state_dict.remote(state), timeout=T)
    assert ray.get(again.metrics.remote(), timeout=T) == local.metrics()
    scores = rng.normal(size=80)
    out, _ = ray.get(again.process.remote(keys, scores), timeout=T)
    np.testing.assert_array_equal(out, local.process(keys, scores)[0])
    flat = ray.get(again.flat_metrics.remote(), timeout=T)
    assert flat["normalizer/keys_stream"] == 2.0
    ray.kill(again)


def test_curriculum_actor_state_survives_kill(ray_local):
    ray = ray_local
    from actors.curriculum_actor import CurriculumActor

    actor = CurriculumActor.options(num_cpus=0).remote(window=4)
    taus = [ray.get(actor.observe.remote([0.9, 0.9], [0.6]), timeout=T) for _ in range(5)]
    assert taus == [0.3, 0.3, 0.3, 0.45, 0.45]
    state = ray.get(actor.state_dict.remote(), timeout=T)
    ray.kill(actor)
    again = CurriculumActor.options(num_cpus=0).remote()  # default settings; the state brings window=4
    ray.get(again.load_state_dict.remote(state), timeout=T)
    assert ray.get(again.threshold.remote(), timeout=T) == 0.45
    assert ray.get(again.observe.remote([0.9, 0.9], [0.6]), timeout=T) == 0.6  # the window refresh carried over
    d = ray.get(again.diagnostics.remote(), timeout=T)
    assert d["raised"] and d["tau"] == 0.45
    ray.kill(again)
