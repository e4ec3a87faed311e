"""Reward normalizer (SPEC §1) and its KLL quantile sketch: formula, modes, accuracy, memory bound, state, files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.normalizer import RewardNormalizer, canonical_key, flatten_metrics, load_table, logistic_normalize
from rewards.quantile_sketch import QuantileSketch

SIG_15 = 1.0 / (1.0 + math.exp(-1.5))  # 0.8175744761936437


def rank_error(x: np.ndarray, v: float, q: float) -> float:
    """Distance from q to the rank interval [F(v-), F(v)] of v in the exact sample (0 when v is a right answer)."""
    return max(0.0, float(np.mean(x < v)) - q, q - float(np.mean(x <= v)))


def _dist(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if name == "uniform":
        return rng.uniform(size=n)
    if name == "normal":
        return rng.normal(2.0, 3.0, size=n)
    if name == "bimodal":
        return np.where(rng.uniform(size=n) < 0.3, rng.normal(-5, 1, n), rng.normal(5, 0.5, n))
    if name == "heavy_tailed":
        return rng.standard_cauchy(n)
    if name == "binary":
        return (rng.uniform(size=n) < 0.3).astype(float)
    if name == "discrete":
        return rng.integers(0, 5, n) / 4.0
    if name == "constant":
        return np.full(n, 0.7)
    if name == "sorted":
        return np.sort(rng.exponential(size=n))
    raise KeyError(name)


DISTS = ["uniform", "normal", "bimodal", "heavy_tailed", "binary", "discrete", "constant", "sorted"]


# -- keys and formula --------------------------------------------------------------------------------------------
def test_keys_tuple_and_string_are_the_same():
    assert canonical_key(("AVOS", "tal")) == canonical_key("AVOS/tal") == "AVOS/tal"
    assert canonical_key(("AVOS", "video_summary_gpt", "judge")) == "AVOS/video_summary_gpt/judge"
    assert canonical_key(("a/b", "c")) == "a%2Fb/c" != canonical_key(("a%2Fb", "c"))  # escaped, injective
    for bad in ("AVOS", "a/b/c/d", ("a", ""), ("a", "b", "c", "d"), 3):
        with pytest.raises((ValueError, TypeError)):
            canonical_key(bad)


def test_logistic_hand_values():
    q = (0.2, 0.5, 0.8)  # IQR 0.6, k 3 -> z = 5 (x - 0.5)
    out = logistic_normalize(np.array([0.5, 0.8, 0.2, 1e6, -1e6]), q, k=3.0, eps=1e-3)
    assert out[0] == 0.5
    assert out[1] == pytest.approx(SIG_15, abs=1e-15)
    assert out[2] == pytest.approx(1 - SIG_15, abs=1e-15)
    assert out[3] == 1.0 and out[4] == 0.0  # no overflow warning, saturated
    # Zero IQR falls back to eps: z = 3 * 0.0005 / 0.001 = 1.5
    assert logistic_normalize(np.array([0.5005]), (0.5, 0.5, 0.5), k=3.0, eps=1e-3)[0] == pytest.approx(SIG_15)


# -- modes ---------------------------------------------------------------------------------------------------------
def test_median_maps_to_half_in_every_mode():
    rng = np.random.default_rng(1)
    table = {"AVOS/tal": (0.1, 0.3, 0.6)}
    x = rng.uniform(0.0, 1.0, 500)
    for mode in ("static", "streaming", "warm"):
        n = RewardNormalizer(mode=mode, table=table, min_samples=32)
        n.update(("AVOS", "tal"), x)
        p50 = n.quantiles("AVOS/tal")[1]
        assert n.normalize("AVOS/tal", [p50])[0] == 0.5, mode
    assert RewardNormalizer(mode="static", table=table).normalize("AVOS/tal", [0.3])[0] == 0.5
    off = RewardNormalizer(mode="off")
    off.update("AVOS/tal", x)
    np.testing.assert_array_equal(off.normalize("AVOS/tal", [0.25, 3.0]), [0.25, 3.0])  # identity
    assert off.stats("AVOS/tal")["source"] == "off" and off.stats("AVOS/tal")["count"] == 500


def test_streaming_uses_exact_quantiles_for_small_streams():
    n = RewardNormalizer(mode="streaming", min_samples=32)
    x = np.arange(100, dtype=float)  # numpy linear: 24.75, 49.5, 74.25
    n.update("S/q", x)
    assert n.quantiles("S/q") == (24.75, 49.5, 74.25)
    # z = 3 * (74.25 - 49.5) / 49.5 = 1.5
    assert n.normalize("S/q", [74.25])[0] == pytest.approx(SIG_15)
    assert n.stats("S/q")["source"] == "stream"


def test_min_samples_passthrough_then_table_then_stream():
    n = RewardNormalizer(mode="streaming", min_samples=32)
    n.update("A/tal", np.linspace(0, 1, 31))
    st = n.stats("A/tal")
    assert st["source"] == "passthrough" and st["quantiles"] is None and st["count"] == 31
    np.testing.assert_array_equal(n.normalize("A/tal", [0.9, 0.1]), [0.9, 0.1])
    assert n.stats("A/tal")["passthrough"] == 2
    with pytest.raises(KeyError, match="passes raw scores through"):
        n.quantiles("A/tal")
    n.update("A/tal", [0.5])
    assert n.stats("A/tal")["source"] == "stream"
    # With a table entry, too-few samples use the table instead of passing through.
    t = RewardNormalizer(mode="streaming", min_samples=32, table={"A/tal": [0.0, 0.2, 0.4]})
    t.update("A/tal", [0.9] * 5)
    assert t.stats("A/tal")["source"] == "static"
    assert t.normalize("A/tal", [0.2])[0] == 0.5


def test_static_missing_key_passes_through_and_is_counted():
    n = RewardNormalizer(mode="static", table={"A/tal": (0.0, 0.2, 0.4)})
    np.testing.assert_array_equal(n.normalize("B/stg", [0.3, 0.7]), [0.3, 0.7])
    st = n.stats("B/stg")
    assert st["source"] == "passthrough" and st["missing_table"] == 2
    n.update("A/tal", np.full(100, 0.9))  # static mode ignores the stream for normalization
    assert n.quantiles("A/tal") == (0.0, 0.2, 0.4)
    assert n.normalize("A/tal", [0.4])[0] == pytest.approx(SIG_15)  # z = 3 * 0.2 / 0.4


def test_warm_blends_table_toward_stream():
    n = RewardNormalizer(mode="warm", table={"A/tal": (0.0, 1.0, 2.0)}, warm_samples=100, min_samples=32)
    n.update("A/tal", np.arange(10, dtype=float))
    assert n.stats("A/tal")["source"] == "static"  # below min_samples: the table alone
    n2 = RewardNormalizer(mode="warm", table={"A/tal": (0.0, 1.0, 2.0)}, warm_samples=100, min_samples=32)
    n2.update("A/tal", np.arange(100, dtype=float))  # stream (24.75, 49.5, 74.25), w = 100 / 200
    st = n2.stats("A/tal")
    assert st["source"] == "blend" and st["stream_weight"] == 0.5
    assert st["quantiles"] == pytest.approx((12.375, 25.25, 38.125))
    assert n2.normalize("A/tal", [25.25])[0] == 0.5
    assert n2.normalize("A/tal", [38.125])[0] == pytest.approx(SIG_15)  # 3 * 12.875 / 25.75
    # A key missing from the table behaves as streaming.
    n2.update("B/stg", np.arange(100, dtype=float))
    assert n2.stats("B/stg")["source"] == "stream"


def test_nonfinite_scores_skipped_counted_and_nan_out():
    n = RewardNormalizer(mode="streaming", min_samples=2)
    added = n.update("A/tal", [0.1, float("nan"), 0.3, float("inf"), -float("inf")])
    assert added == 2
    st = n.stats("A/tal")
    assert st["count"] == 2 and st["nonfinite"] == 3
    out = n.normalize("A/tal", [0.2, float("nan"), float("inf")])
    assert out[0] == 0.5 and np.isnan(out[1]) and np.isnan(out[2])


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        RewardNormalizer(mode="median")
    with pytest.raises(ValueError, match="table"):
        RewardNormalizer(mode="static")
    with pytest.raises(ValueError, match="p25 <= p50 <= p75"):
        RewardNormalizer(mode="static", table={"A/tal": (0.5, 0.2, 0.9)})
    with pytest.raises(ValueError, match="finite"):
        RewardNormalizer(mode="static", table={"A/tal": (0.1, float("nan"), 0.9)})
    with pytest.raises(ValueError, match="keys but"):
        RewardNormalizer().process(["A/tal"], [0.1, 0.2])


# -- the batch API ------------------------------------------------------------------------------------------------
def test_process_updates_first_then_normalizes_in_input_order():
    n = RewardNormalizer(mode="streaming", min_samples=4)
    keys = [("A", "tal"), "B/stg", "A/tal", ("A", "tal"), "B/stg", "A/tal"]
    scores = [0.0, 5.0, 1.0, 2.0, 6.0, 3.0]
    out, metrics = n.process(keys, scores)
    # A/tal has 4 scores 0,1,2,3 this step: p25 .75, p50 1.5, p75 2.25 -> z = 2 (x - 1.5)
    expected_a = [1 / (1 + math.exp(-2 * (x - 1.5))) for x in (0.0, 1.0, 2.0, 3.0)]
    np.testing.assert_allclose(out[[0, 2, 3, 5]], expected_a, rtol=1e-12)
    np.testing.assert_array_equal(out[[1, 4]], [5.0, 6.0])  # B/stg: only 2 samples -> passthrough
    assert metrics["A/tal"]["source"] == "stream" and metrics["B/stg"]["source"] == "passthrough"
    assert metrics["A/tal"]["batch_count"] == 4 and metrics["A/tal"]["batch_norm_mean"] == pytest.approx(0.5)
    assert metrics["B/stg"]["batch_raw_mean"] == 5.5
    late = RewardNormalizer(mode="streaming", min_samples=4, update_first=False)
    out2, _ = late.process(keys, scores)
    np.testing.assert_array_equal(out2, scores)  # normalized with the (empty) previous quantiles
    assert late.stats("A/tal")["count"] == 4
    flat = n.flat_metrics()
    assert flat["normalizer/keys_stream"] == 1 and flat["normalizer/keys_passthrough"] == 1
    assert flat["normalizer/A/tal/p50"] == 1.5 and "normalizer/B/stg/p50" not in flat
    step = flatten_metrics(metrics, prefix="")
    assert step["A/tal/batch_norm_mean"] == pytest.approx(0.5) and step["B/stg/batch_count"] == 2.0
    assert all(isinstance(v, float) for v in step.values())


# -- accuracy and memory of the sketch ----------------------------------------------------------------------------
@pytest.mark.parametrize("dist", DISTS)
def test_rank_error_after_10k_samples(dist):
    rng = np.random.default_rng(7)
    x = _dist(dist, 10_000, rng)
    n = RewardNormalizer(mode="streaming", sketch_size=2048)
    for i in range(0, x.size, 64):  # a realistic step size
        n.update("S/q", x[i:i + 64])
    p25, p50, p75 = n.quantiles("S/q")
    for v, q in ((p25, 0.25), (p50, 0.5), (p75, 0.75)):
        assert rank_error(x, v, q) <= 0.01, (dist, q, v)
    sk = n._keys["S/q"].sketch
    qs = np.linspace(0.01, 0.99, 99)
    worst = max(rank_error(x, v, q) for v, q in zip(sk.quantiles(qs), qs))
    assert worst <= 0.01, (dist, worst)
    assert sk.size <= 2048 and sk.n == 10_000


def test_sketch_equals_numpy_quantile_before_first_compaction():
    x = np.random.default_rng(3).normal(size=1000)
    sk = QuantileSketch(2048)
    sk.update(x)
    qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    np.testing.assert_allclose(sk.quantiles(qs), np.quantile(x, qs), rtol=0, atol=1e-14)


def test_memory_bounded_with_100k_samples():
    rng = np.random.default_rng(0)
    sk = QuantileSketch(2048)
    sizes = []
    for i in range(0, 100_000, 100):
        sk.update(rng.normal(size=100))
        sizes.append(sk.size)
    assert max(sizes) <= 2048 and sk.n == 100_000
    state = sk.state_dict()
    assert sum(len(lv) for lv in state["levels"]) <= 2048
    assert len(json.dumps(state)) < 2048 * 26  # a float is at most ~24 chars of JSON
    sk.update(rng.normal(size=200_000))  # one huge batch stays bounded too
    assert sk.size <= 2048
    small = QuantileSketch(64)
    small.update(rng.normal(size=100_000))
    assert small.size <= 64


def test_sketch_merge_of_worker_sketches():
    rng = np.random.default_rng(5)
    x = rng.normal(size=20_000)
    a, b = RewardNormalizer(), RewardNormalizer(seed=1)
    for i in range(0, 10_000, 50):
        a.update("S/q", x[i:i + 50])
        b.update("S/q", x[10_000 + i:10_000 + i + 50])
    a.merge(b)
    assert a.stats("S/q")["count"] == 20_000
    for v, q in zip(a.quantiles("S/q"), (0.25, 0.5, 0.75)):
        assert rank_error(x, v, q) <= 0.01
    assert a._keys["S/q"].sketch.size <= 2048


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6), max_size=300), min_size=1, max_size=8), st.integers(0, 2**32))
def test_sketch_invariants_property(batches, seed):
    """Any batches: weight conserved, size bounded, quantiles ordered and within [min, max]."""
    sk = QuantileSketch(64, seed=seed)
    for b in batches:
        sk.update(b)
        assert sk.size <= 64
    flat = [v for b in batches for v in b]
    assert sk.n == len(flat)
    if flat:
        q = sk.quantiles([0.0, 0.25, 0.5, 0.75, 1.0])
        assert np.all(np.diff(q) >= 0) and q[0] == min(flat) and q[-1] == max(flat)
        back = QuantileSketch.from_state(json.loads(json.dumps(sk.state_dict())))
        np.testing.assert_array_equal(back.quantiles([0.25, 0.5, 0.75]), sk.quantiles([0.25, 0.5, 0.75]))


def test_sketch_rejects_nonfinite_and_bad_state():
    sk = QuantileSketch(128)
    with pytest.raises(ValueError, match="non-finite"):
        sk.update([1.0, float("nan")])
    sk.update(np.arange(1000.0))
    state = sk.state_dict()
    state["n"] += 1
    with pytest.raises(ValueError, match="inconsistent"):
        QuantileSketch.from_state(state)
    with pytest.raises(ValueError):
        QuantileSketch(8)


# -- state ----------------------------------------------------------------------------------------------------------
def test_state_round_trip_exact_and_after_further_updates():
    rng = np.random.default_rng(11)
    kw = dict(mode="warm", table={"A/tal": (0.1, 0.4, 0.7)}, min_samples=16, sketch_size=256, warm_samples=50)
    a = RewardNormalizer(**kw)
    for _ in range(40):
        keys = ["A/tal"] * 32 + [("B", "stg")] * 32 + [("C", "rc", "judge")] * 8
        a.process(keys, np.concatenate([rng.uniform(size=32), rng.beta(2, 5, 32), [np.nan] + list(rng.uniform(size=7))]))
    assert a._keys["A/tal"].sketch.size < a._keys["A/tal"].sketch.n  # compactions happened
    state = json.loads(json.dumps(a.state_dict()))  # checkpoints go through JSON
    b = RewardNormalizer(**kw)
    b.load_state_dict(state)
    probe = np.linspace(-0.5, 1.5, 41)
    for key in ("A/tal", "B/stg", "C/rc/judge"):
        np.testing.assert_array_equal(a.normalize(key, probe), b.normalize(key, probe))
        assert a.stats(key) == b.stats(key)
    for _ in range(10):  # identical continuation: same compaction coins, same outputs
        keys = ["A/tal"] * 40 + ["B/stg"] * 40
        scores = rng.normal(size=80)
        oa, ma = a.process(keys, scores)
        ob, mb = b.process(keys, scores)
        np.testing.assert_array_equal(oa, ob)
        assert ma == mb
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="version"):
        b.load_state_dict({"version": 99})


# -- table files -----------------------------------------------------------------------------------------------------
def test_table_files_json_csv_and_save_round_trip(tmp_path):
    js = tmp_path / "t.json"
    js.write_text(json.dumps({"quantiles": {"AVOS/tal": {"p25": 0.1, "p50": 0.2, "p75": 0.5, "count": 9},
                                            "CoPESD/stg": [0.0, 0.1, 0.3]}}))
    n = RewardNormalizer.from_table_file(js)
    assert n.mode == "static" and n.table == {"AVOS/tal": (0.1, 0.2, 0.5), "CoPESD/stg": (0.0, 0.1, 0.3)}
    assert n.normalize(("AVOS", "tal"), [0.2])[0] == 0.5
    cs = tmp_path / "t.csv"
    cs.write_text("data_source,qa_type,part,p25,p50,p75\nAVOS,video_summary_gpt,judge,0.25,0.5,0.75\n"
                  "NurViD,next_action,,0,1,1\n")
    assert load_table(cs) == {"AVOS/video_summary_gpt/judge": (0.25, 0.5, 0.75), "NurViD/next_action": (0.0, 1.0, 1.0)}
    # A streaming run writes the table a static run then uses.
    s = RewardNormalizer(mode="streaming", min_samples=10)
    s.update("A/tal", np.arange(100.0) / 7)
    s.update("B/stg", [1.0, 2.0])  # passthrough: not written
    for name in ("out.json", "out.csv"):
        assert s.save_table(tmp_path / name) == 1
        back = load_table(tmp_path / name)
        assert back == {"A/tal": s.quantiles("A/tal")}  # exact: floats written with repr
    bad = tmp_path / "bad.csv"
    bad.write_text("key,p25,p50\nA/tal,0,1\n")
    with pytest.raises(ValueError, match="header"):
        load_table(bad)
    bad.write_text("key,p25,p50,p75\nA/tal,0,1,x\n")
    with pytest.raises(ValueError, match="line 2"):
        load_table(bad)
    with pytest.raises(ValueError, match="suffix"):
        load_table(js.rename(tmp_path / "t.yaml"))
