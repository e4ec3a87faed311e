"""Benchmark plumbing (bench/): interleaved timing bookkeeping, ratios, tables, the results file, run_all's failure
handling, and the pieces of the benchmarks whose answers can be computed by hand. No timed assertions."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import common
from bench.common import Timing, append_results, compare, fmt_bytes, fmt_num, ratio, render_table


def test_compare_interleaves_and_rotates_order():
    log: list[str] = []
    cands = {name: (lambda n=name: log.append(n)) for name in "abc"}
    out = compare(cands, rounds=3, min_time=0.0, warmup=1)
    # warm-up once each, then one call per candidate per round (min_time 0), order rotated every round
    assert log == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(t.per_round) == 3 and t.calls == 3 for t in out.values())


def test_compare_rejects_zero_rounds():
    with pytest.raises(ValueError, match="rounds"):
        compare({"a": lambda: None}, rounds=0)


def test_ratio_is_median_of_per_round_ratios():
    num, den = Timing([2.0, 4.0, 6.0]), Timing([1.0, 1.0, 2.0])
    assert ratio(num, den) == 3.0  # per round: 2, 4, 3
    assert Timing([1.0, 3.0, 2.0]).spread == 1.0  # (3 - 1) / 2


def test_formatting():
    assert fmt_num(1234567.0) == "1.23M"
    assert fmt_num(0.00123) == "0.00123"
    assert fmt_num(12345) == "12,345"
    assert fmt_num(float("nan")) == "-" and fmt_num(None) == "-"
    assert fmt_num(True) == "yes"
    assert fmt_bytes(512) == "512 B"
    assert fmt_bytes(16104) == "15.7 KiB"
    assert fmt_bytes(3 * 1024 ** 3) == "3.0 GiB"


def test_render_table():
    rows = [{"name": "x", "v": 1.5}, {"name": "long", "v": 20.0}]
    text = render_table("T", rows, [("name", "name", str), ("v", "value", fmt_num)])
    assert text.splitlines() == ["T", "-----------", "name  value", "----  -----", "x       1.5",
                                 "long     20"]
    numbers = render_table("N", [{"a": 1}, {"a": 100}], [("a", "a", fmt_num)])
    assert numbers.splitlines()[2:] == ["  a", "---", "  1", "100"]


def test_append_results_creates_appends_and_refuses_foreign_files(tmp_path):
    p = tmp_path / "r.json"
    append_results(p, {"benchmark": "a", "x": float("nan"), "t": (1, 2)})
    append_results(p, {"benchmark": "b"})
    doc = json.loads(p.read_text())
    assert [r["benchmark"] for r in doc["runs"]] == ["a", "b"]
    assert doc["runs"][0]["x"] is None and doc["runs"][0]["t"] == [1, 2]
    foreign = tmp_path / "other.json"
    foreign.write_text('{"something": 1}')
    with pytest.raises(ValueError, match="not a benchmark results file"):
        append_results(foreign, {"benchmark": "c"})
    assert foreign.read_text() == '{"something": 1}'
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        append_results(broken, {"benchmark": "c"})


def test_run_all_records_failures_and_missing_records(tmp_path, monkeypatch):
    from bench import run_all

    def fake_run_one(name, quick, json_path, extra=()):
        if name == "normalizer":
            append_results(json_path, {"benchmark": "normalizer", "summary": {"x": 1}})
            return {"benchmark": name, "returncode": 0, "wall_s": 0.1, "output_tail": ""}
        if name == "video":
            return {"benchmark": name, "returncode": 0, "wall_s": 0.1, "output_tail": ""}  # no record appended
        return {"benchmark": name, "returncode": 1, "wall_s": 0.1, "output_tail": "Traceback ..."}

    monkeypatch.setattr(run_all, "run_one", fake_run_one)
    out = tmp_path / "results.json"
    rc = run_all.main(["--quick", "--out", str(out), "--only", "normalizer", "video", "learner"])
    doc = json.loads(out.read_text())
    assert rc == 1
    assert [r["benchmark"] for r in doc["runs"]] == ["normalizer"]
    failed = {f["benchmark"]: f for f in doc["run_all"]["failures"]}
    assert set(failed) == {"video", "learner"}
    assert failed["learner"]["returncode"] == 1 and "no results" in failed["video"]["error"]
    assert doc["run_all"]["quick"] is True


# -- benchmark pieces with hand-computed answers ------------------------------------------------------------------
def test_rank_errors_treat_ties_as_exact():
    from bench.normalizer import rank_errors

    data = np.array([0.0, 0.0, 0.0, 1.0, 1.0])  # F(0-) = 0, F(0) = 0.6, F(1-) = 0.6, F(1) = 1
    assert rank_errors(data, [0.0, 0.0, 1.0], [0.25, 0.5, 0.75]) == [0.0, 0.0, 0.0]
    assert rank_errors(data, [1.0], [0.25]) == pytest.approx([0.35])  # 0.6 - 0.25
    assert rank_errors(data, [0.5], [0.9]) == pytest.approx([0.3])  # 0.9 - F(0.5) = 0.9 - 0.6


def test_window_baseline_keeps_the_last_scores():
    from bench.normalizer import WindowNormalizer

    w = WindowNormalizer(size=4, min_samples=2)
    assert w.normalize("k/x", np.array([1.0])).tolist() == [1.0]  # unseen key: raw pass-through
    for chunk in ([1.0, 2.0, 3.0], [4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]):
        w.update("k/x", np.array(chunk))
    assert sorted(w.window("k/x").tolist()) == [7.0, 8.0, 9.0, 10.0]
    # median of the window is 8.5: a score there maps to exactly 0.5; IQR = 9.25 - 7.75 = 1.5
    out = w.normalize("k/x", np.array([8.5, 10.0]))
    assert out[0] == 0.5 and out[1] == pytest.approx(1 / (1 + math.exp(-3.0 * 1.5 / 1.5)))


def test_normalizer_memory_row_before_compaction():
    from bench.normalizer import memory

    (row,) = memory([1000], [2048], seed=0)
    # under 2048 scores the sketch keeps every one at weight 1: 8 bytes each
    assert row["items"] == 1000 and row["data_bytes"] == 8000 and row["vs_all_scores"] == 1.0


def test_normalizer_throughput_rows():
    from bench.normalizer import throughput

    rows = throughput([3], [2], rounds=1, min_time=0.0, seed=0)
    assert len(rows) == 1 and rows[0]["batch"] == 3 and rows[0]["keys_per_step"] == 2
    assert all(rows[0][k] > 0 for k in ("process_samples_s", "core_samples_s", "window_samples_s"))


def test_weight_sync_models_have_the_planned_sizes():
    from bench.weight_sync import build_model

    m = build_model(("linear", 256, 15), seed=0)
    assert sum(p.numel() for p in m.parameters()) == 15 * (256 * 256 + 256)
    small = build_model(("small", 50, 64), seed=0)
    assert [p.numel() for p in small.parameters()] == [64] * 50
    again = build_model(("small", 50, 64), seed=0)
    assert all((a == b).all() for a, b in zip(small.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="unknown model spec"):
        build_model(("conv", 1, 1), seed=0)


def test_video_raw_baseline_decodes_the_frames_load_frames_uses(tmp_path):
    pytest.importorskip("decord")
    from bench.video import native_indices, raw_decord, write_clip
    from data.schema import Instance
    from data.video import load_frames

    path = tmp_path / "c.mp4"
    write_clip(path, 112, 84, 10, 2.0, seed=0)  # 20 native frames at 10 fps
    inst = Instance(id="c", qa_type="tal", data_source="b", question="", video=str(path), fps=2.0)
    vf = load_frames(inst, 16, 48 * 28 * 28, 4 * 28 * 28, "decord")
    assert vf.frame_indices.tolist() == [0, 1, 2, 3]  # k / 2 s < 2 s
    idx = native_indices(str(path), inst, vf.frame_indices)
    assert idx == [0, 5, 10, 15]  # floor(k / 2 * 10)
    assert raw_decord(str(path), idx).shape == (4, 84, 112, 3)


def test_parser_defaults():
    args = common.parser("x", "d").parse_args([])
    assert args.quick is False and args.json is None and args.threads == 1


def test_report_records_the_reproducing_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("sys.argv", ["x", "--quick", "--json", str(tmp_path / "r.json"), "--seed", "3"])
    args = common.parser("demo", "d").parse_args(["--quick", "--json", str(tmp_path / "r.json"), "--seed", "3"])
    rep = common.Report("demo", args)
    rep.summary["ratio"] = 0.5
    rep.targets["ratio"] = ">= 0.8"
    rec = rep.finish()
    assert rec["command"] == "python -m bench.demo --quick --seed 3" and rec["quick"] is True
    saved = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    assert saved["summary"] == {"ratio": 0.5} and saved["env"]["cores"] >= 1
    assert "[target: >= 0.8]" in capsys.readouterr().out


# -- step anatomy, judge and rollout benchmarks: their pure pieces -------------------------------------------------
def _step(step_s, **phases):
    return {"time/step_s": step_s, **{f"time/{k}_s": v for k, v in phases.items()}}


def test_step_anatomy_steady_state_drops_warmup_and_last_step():
    from bench.step_anatomy import steady

    steps = [{"i": i} for i in range(6)]
    assert [s["i"] for s in steady(steps, warmup=2, drop_last=1)] == [2, 3, 4]
    assert [s["i"] for s in steady(steps, warmup=0, drop_last=0)] == list(range(6))
    with pytest.raises(ValueError, match="no steady state"):
        steady(steps[:3], warmup=2, drop_last=1)


def test_step_anatomy_phases_overhead_and_shares():
    from bench.step_anatomy import anatomy, phase_seconds

    # no driver overhead metric: step - (generate + reward + normalize + train + sync) = 2.0 - 1.8 = 0.2
    s1 = {**_step(2.0, generate=1.0, reward=0.3, normalize=0.1, train=0.3, sync=0.1), "bench/decode_s": 0.25}
    p1 = phase_seconds(s1)
    assert p1["overhead"] == pytest.approx(0.2) and p1["decode"] == 0.25 and math.isnan(p1["judge"])
    # the driver's own metrics win over the benchmark's; a phase that did not run counts 0
    s2 = {**_step(1.0, generate=0.5, train=0.4, decode=0.1, overhead=0.05), "bench/decode_s": 9.0}
    p2 = phase_seconds(s2)
    assert p2["overhead"] == 0.05 and p2["decode"] == 0.1 and p2["sync"] == 0.0
    an = anatomy([s1, {**s2, "bench/decode_s": 0.3}])
    assert an["step"]["mean_s"] == pytest.approx(1.5)
    assert an["generate"]["mean_s"] == pytest.approx(0.75) and an["generate"]["share"] == pytest.approx(0.5)
    assert an["overhead"]["mean_s"] == pytest.approx(0.125)  # (0.2 + 0.05) / 2
    assert an["decode"]["mean_s"] == pytest.approx(0.175)  # (0.25 + 0.1) / 2


def test_phase_timer_counts_the_drivers_own_work_apart_from_waiting():
    """time/cpu/<phase>_s: the timing thread's CPU inside a phase (work), not the time it sat waiting."""
    import time

    from common.timing import PhaseTimer

    t = PhaseTimer()
    with t.phase("train"):
        time.sleep(0.2)  # waiting on an actor
    with t.phase("reward"):
        end = time.thread_time() + 0.1
        while time.thread_time() < end:  # building a batch
            pass
    m = t.metrics()
    assert m["time/train_s"] >= 0.2 and m["time/cpu/train_s"] < 0.05
    assert m["time/cpu/reward_s"] >= 0.1 and t.cpu_total(["train", "reward"]) == pytest.approx(
        m["time/cpu/train_s"] + m["time/cpu/reward_s"])


def test_step_anatomy_samples_per_s():
    from bench.step_anatomy import samples_per_s

    steps = [{"accounting/prompts_trained": 4, "bench/wall_s": 2.0}, {"accounting/prompts_trained": 2,
                                                                     "bench/wall_s": 1.0}]
    assert samples_per_s(steps, group_size=4) == pytest.approx((4 + 2) * 4 / 3.0)
    assert samples_per_s([{"time/step_s": 0.5}], 4, time_key="time/step_s") == 0.0  # nothing trained


def test_step_anatomy_overrides_keep_only_the_grpo_loop():
    from pathlib import Path

    from bench.step_anatomy import RunSpec, overrides
    from cluster.config import load_config

    assets = {"model": "/m", "train": "/d/train.jsonl", "eval": "/d/eval.jsonl", "root": "/tmp/x"}
    ov = overrides(RunSpec("async+judge", 1, True), assets, 5, Path("/tmp/x/run"), "http://127.0.0.1:9/v1", 0)
    cfg = load_config("cpu_demo", ov)
    assert [(s.kind, s.steps) for s in cfg.stages] == [("grpo", 5)]
    assert cfg.eval_every == 0 and cfg.checkpoint_every == 0 and cfg.rollout.max_staleness == 1
    assert cfg.reward.judge.backend == "openai" and cfg.reward.judge.base_url == "http://127.0.0.1:9/v1"
    assert not cfg.rollout.dynamic_sampling and not cfg.tracking.progress_bar
    with pytest.raises(ValueError, match="stub"):
        overrides(RunSpec("sync+judge", 0, True), assets, 5, Path("/tmp/x/run"), None, 0)


def test_judge_ideal_rate_and_fake_backend_cost():
    from bench.judge import FakeBackend, ideal_items_per_s

    # 64 items in batches of 8: 8 calls × 20 ms + 64 × 1 ms = 0.224 s
    assert ideal_items_per_s(64, 8, 0.02, 0.001) == pytest.approx(64 / 0.224)
    assert ideal_items_per_s(10, 4, 0.1, 0.0) == pytest.approx(10 / 0.3)  # ceil(10 / 4) = 3 calls
    slept: list[float] = []
    be = FakeBackend(0.02, 0.001, sleep=slept.append)
    replies = be.complete([[{"role": "user", "content": "x"}]] * 3)
    assert slept == [pytest.approx(0.023)] and be.calls == 1 and be.items == 3 and len(replies) == 3
    with pytest.raises(ValueError):
        FakeBackend(-1.0, 0.0)


def test_judge_core_batches_distinct_caption_pairs():
    from rewards.judge import JudgeCore
    from bench.judge import FakeBackend, caption_pairs
    from rewards.config import JudgeConfig

    pairs = caption_pairs(20)
    assert len(set(pairs)) == 20
    be = FakeBackend(0.0, 0.0)
    core = JudgeCore(JudgeConfig(batch_size=8, cache_size=100), backend=be)
    out = core.score(pairs, "vs")
    assert be.calls == 3 and be.items == 20  # 8 + 8 + 4
    assert all(o.ok and o.score == pytest.approx(3.6) for o in out)  # the fake's reply: mean of 4, 5, 3, 4, 2
    core.score(pairs, "vs")  # all cached: no further call
    assert be.calls == 3 and core.metrics()["judge/cache_hits"] == 20


def test_rollout_response_tokens_cut_at_the_first_stop():
    from bench.learner import response_tokens

    assert response_tokens([[5, 6, 2, 7, 7], [5, 5, 5], [2, 2]], {2}) == [[5, 6, 2], [5, 5, 5], [2]]
