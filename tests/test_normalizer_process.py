"""RewardNormalizer.process after its speed-up: grouping of key spellings, one quantile computation per key per
step (the sketch's cache), and the same results as the per-key API."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rewards.normalizer import RewardNormalizer
from rewards.quantile_sketch import QuantileSketch


def test_sketch_quantile_cache_is_cleared_by_updates_and_merges():
    sk = QuantileSketch(64)
    sk.update([0.0, 1.0, 2.0, 3.0, 4.0])
    first = sk.quantiles([0.25, 0.5, 0.75])
    np.testing.assert_array_equal(first, [1.0, 2.0, 3.0])  # numpy linear method on 0..4
    first[0] = 99.0  # callers may scribble on the answer: the cache keeps its own copy
    np.testing.assert_array_equal(sk.quantiles((0.25, 0.5, 0.75)), [1.0, 2.0, 3.0])
    sk.update([5.0, 6.0, 7.0, 8.0])  # 0..8 now
    np.testing.assert_array_equal(sk.quantiles([0.25, 0.5, 0.75]), [2.0, 4.0, 6.0])
    other = QuantileSketch(64)
    other.update([9.0, 10.0, 11.0, 12.0])  # 0..12
    sk.merge(other)
    np.testing.assert_array_equal(sk.quantiles([0.25, 0.5, 0.75]), [3.0, 6.0, 9.0])
    assert sk.quantile(0.5) == 6.0 and sk.quantiles([0.5, 1.0]).tolist() == [6.0, 12.0]
    assert sk.quantiles(np.array([[0.5], [1.0]])).tolist() == [[6.0], [12.0]]  # other shapes are not served cached
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sk.quantiles([0.25, math.nan, 0.75])  # NaN never hits the cache


def test_process_computes_quantiles_once_per_key(monkeypatch):
    n = RewardNormalizer(mode="streaming", min_samples=4, seed=1)
    n.update("A/tal", np.arange(100.0))
    n.update("B/vqa", np.arange(50.0))
    calls = []
    real = QuantileSketch._weighted_sorted

    def counting(self):  # the sort behind every uncached quantiles() call
        calls.append(self)
        return real(self)

    monkeypatch.setattr(QuantileSketch, "_weighted_sorted", counting)
    keys = ["A/tal", ("B", "vqa"), ("A", "tal"), "B/vqa"]
    out, metrics = n.process(keys, [1.0, 2.0, 3.0, math.inf])
    assert len(calls) == 2  # one per key, although normalize and stats (twice) each ask for the quantiles
    assert list(metrics) == ["A/tal", "B/vqa"]
    assert metrics["A/tal"]["batch_count"] == 2 and metrics["B/vqa"]["batch_nonfinite"] == 1
    assert metrics["A/tal"]["batch_raw_mean"] == 2.0 and metrics["B/vqa"]["batch_raw_mean"] == 2.0
    assert math.isnan(out[3]) and metrics["B/vqa"]["count"] == 51 and metrics["B/vqa"]["nonfinite"] == 1


def test_process_matches_update_then_normalize_and_stats():
    """Same outputs, metrics and state as the per-key API, over several steps with mixed key spellings."""
    rng = np.random.default_rng(3)
    fast = RewardNormalizer(mode="streaming", min_samples=8, sketch_size=64, seed=5)
    slow = RewardNormalizer(mode="streaming", min_samples=8, sketch_size=64, seed=5)
    spellings = {"A/tal": ["A/tal", ("A", "tal"), ["A", "tal"]], "B/vqa/judge": ["B/vqa/judge", ("B", "vqa", "judge")]}
    for step in range(12):
        names = rng.choice(sorted(spellings), size=40)
        keys = [spellings[k][rng.integers(len(spellings[k]))] for k in names]
        scores = rng.beta(2.0, 3.0, size=40)
        scores[rng.random(40) < 0.1] = np.nan
        out, metrics = fast.process(keys, scores)
        expect = np.full(40, np.nan)
        for name in dict.fromkeys(names):  # first-appearance order, as process reports them
            slow.update(name, scores[names == name])
        for name in dict.fromkeys(names):
            expect[names == name] = slow.normalize(name, scores[names == name])
        np.testing.assert_array_equal(out, expect)
        assert list(metrics) == list(dict.fromkeys(names))
        for name, m in metrics.items():
            st = slow.stats(name)
            assert {k: m[k] for k in st} == st
            fin = np.isfinite(scores[names == name])
            assert m["batch_count"] == int((names == name).sum()) and m["batch_nonfinite"] == int((~fin).sum())
            assert m["batch_raw_mean"] == pytest.approx(float(scores[names == name][fin].mean()), rel=1e-15)
    assert fast.state_dict() == slow.state_dict()


def test_process_rejects_bad_keys_and_handles_an_empty_batch():
    n = RewardNormalizer()
    out, metrics = n.process([], [])
    assert out.shape == (0,) and metrics == {}
    with pytest.raises(TypeError, match="str or tuple"):
        n.process(["A/tal", 3], [0.1, 0.2])
    with pytest.raises(TypeError, match="str or tuple"):
        n.process(["A/tal", {"a": 1}], [0.1, 0.2])
    with pytest.raises(ValueError, match="2 keys but 1 scores"):
        n.process(["A/tal", "A/tal"], [0.1])
    assert n.keys() == []  # nothing was observed by the refused calls
