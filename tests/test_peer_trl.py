"""bench/peer_trl.py without TRL: the two systems' configurations say the same thing (threads included), the
steady-state rate, time-to-learn crossings and per-round ratios are computed from the right steps and runs, the docs
block renders from a record, and the benchmark records a skip (not a failure) when the benchmark venv is absent."""
from __future__ import annotations

import json

import pytest

from bench import peer_trl
from bench.peer_trl import (Settings, first_crossing, medgrpo_overrides, round_ratios, steady_rate, thread_env,
                             trl_config_kwargs)
from cluster.config import load_config


def _cfg(staleness: int, s: Settings = Settings()):
    return load_config("cpu_demo", medgrpo_overrides(s, model_path="m", train_file="d/images_train.jsonl",
                                                     run_dir="r", mlflow_uri="file:///tmp/ml", staleness=staleness))


def test_medgrpo_config_is_one_grpo_stage_on_the_image_tasks():
    s = Settings(group_size=4, prompts_per_step=3, max_new_tokens=20, steps=7, lr=1e-4)
    cfg = _cfg(1, s)
    assert [(st.kind, st.steps) for st in cfg.stages] == [("grpo", 7)]  # cpu_demo's SFT stage is gone
    assert cfg.eval_every == 0 and cfg.checkpoint_every == 0
    assert cfg.data.train_files == ["d/images_train.jsonl"] and cfg.data.eval_files == []
    assert cfg.data.tasks == ["vqa_mc", "box_grounding", "image_cls"] and cfg.data.prompts_per_step == 3
    r = cfg.rollout
    assert (r.group_size, r.max_new_tokens, r.max_staleness, r.dynamic_sampling) == (4, 20, 1, False)
    assert cfg.normalizer.mode == "off" and cfg.reward.format_gate is True
    lc = cfg.learner
    assert (lc.lr, lc.micro_batch_size, lc.clip_low, lc.clip_high, lc.kl_coef) == (1e-4, 12, 0.2, 0.3, 0.0)
    assert _cfg(0).rollout.max_staleness == 0
    with pytest.raises(ValueError, match="staleness"):
        _cfg(2)


def test_learn_task_is_one_label_classification_without_the_format_gate():
    s = Settings(task="learn", lr=2e-3)
    cfg = _cfg(0, s)
    assert cfg.data.tasks == ["image_cls"] and cfg.reward.format_gate is False and cfg.learner.lr == 2e-3
    with pytest.raises(ValueError, match="race or learn"):
        Settings(task="other").validate()


def test_both_sides_get_the_same_cores():
    s = Settings(threads=2)
    assert thread_env("trl", s) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    # medgrpo: rollout actor and learner, one thread each (the job's processes inherit OMP_NUM_THREADS)
    assert thread_env("medgrpo_async", s)["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="even number"):
        Settings(threads=3).validate()


def test_trl_config_matches_the_medgrpo_settings():
    s = Settings(group_size=4, prompts_per_step=3, max_new_tokens=20, steps=7, lr=1e-4)
    kw = trl_config_kwargs(s, "out")
    # 3 prompts x G=4 completions per optimizer step, one generation per step, nothing reused
    assert kw["per_device_train_batch_size"] == 12 and kw["num_generations"] == 4
    assert kw["gradient_accumulation_steps"] == 1 and kw["steps_per_generation"] == 1 and kw["num_iterations"] == 1
    assert (kw["max_steps"], kw["max_completion_length"], kw["learning_rate"]) == (7, 20, 1e-4)
    assert (kw["epsilon"], kw["epsilon_high"], kw["beta"], kw["loss_type"]) == (0.2, 0.3, 0.0, "dapo")
    # GRPOConfig's defaults (bf16, gradient checkpointing) would make TRL do different work than medgrpo
    assert kw["bf16"] is False and kw["gradient_checkpointing"] is False and kw["use_vllm"] is False


def test_steady_rate_leaves_out_warmup_and_last_step():
    # steps end at 1, 2, 4, 7, 11 s; warm-up 2 -> steps 2 and 3 (0-based) ran from 2 s to 7 s: 2 x 16 / 5
    rate, kept = steady_rate([1.0, 2.0, 4.0, 7.0, 11.0], start=0.0, samples_per_step=16, warmup=2)
    assert kept == [2, 3] and rate == pytest.approx(6.4)
    rate0, kept0 = steady_rate([1.0, 3.0, 4.0], start=0.5, samples_per_step=2, warmup=0)
    assert kept0 == [0, 1] and rate0 == pytest.approx(4 / 2.5)
    with pytest.raises(ValueError, match="no steady state"):
        steady_rate([1.0, 2.0, 3.0], start=0.0, samples_per_step=16, warmup=2)
    with pytest.raises(ValueError, match="steps >= warmup"):
        Settings(steps=3, warmup=2).validate()


def test_median_phases_over_kept_steps():
    rows = [{"generate": 9.0}, {"generate": 1.0, "train": 2.0}, {"generate": 3.0, "train": 4.0}, {"generate": 2.0}]
    assert peer_trl.median_phases(rows, [1, 2, 3]) == {"generate": 2.0, "train": 3.0}


def test_skips_cleanly_without_the_benchmark_venv(tmp_path, monkeypatch):
    monkeypatch.setattr(peer_trl, "BENCH_VENV", tmp_path / "no-venv")
    out = tmp_path / "r.json"
    monkeypatch.setattr("sys.argv", ["x", "--quick"])
    rec = peer_trl.main(["--quick", "--json", str(out)])
    assert "skipped" in rec["summary"] and any("setup_env.sh" in n for n in rec["notes"])
    saved = json.loads(out.read_text())["runs"]
    assert [r["benchmark"] for r in saved] == ["peer_trl"]


def test_first_crossing_uses_the_trailing_mean():
    rewards = [0.0, 0.2, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0]
    # trailing 3-step means: -, -, 0.27, 0.53, 0.8, 0.93, 1.0, 1.0
    assert first_crossing(rewards, 0.5, window=3) == 3
    assert first_crossing(rewards, 0.9, window=3) == 5
    assert first_crossing(rewards, 1.01, window=3) is None
    assert first_crossing([1.0, float("nan"), 1.0], 0.6, window=3) == 2  # NaN counts 0: mean 0.67 at step 2
    assert first_crossing([1.0], 0.5, window=5) == 0  # a run shorter than the window: its own steps


def test_round_ratios_pair_runs_of_one_round():
    rows = [{"system": "trl", "kind": "short", "round": 0, "job_s": 10.0},
            {"system": "trl", "kind": "short", "round": 1, "job_s": 12.0},
            {"system": "medgrpo_async", "kind": "short", "round": 0, "job_s": 5.0},
            {"system": "medgrpo_async", "kind": "short", "round": 1, "job_s": None},
            {"system": "medgrpo_async", "kind": "long", "round": 1, "job_s": 1.0},
            {"system": "trl", "kind": "short", "round": 0, "samples_s": 10.0},
            {"system": "medgrpo_async", "kind": "short", "round": 0, "samples_s": 15.0}]
    assert round_ratios(rows, "medgrpo_async", "job_s", "short") == [2.0]  # TRL / medgrpo: medgrpo 2x faster
    assert round_ratios(rows, "medgrpo_async", "samples_s", "short", faster="higher") == [1.5]
    assert round_ratios(rows, "medgrpo_sync", "job_s", "short") == []


def test_docs_block_renders_from_a_record(tmp_path):
    def run(system, r, job, start, learn):
        return {"system": system, "kind": "short", "round": r, "job_s": job, "startup_s": start, "steps_s": 1.0,
                "shutdown_s": 0.5, "samples_s": 20.0 / job, "tokens_per_step": 512.0, "reward_first": 0.0,
                "reward_last": 0.0, "learn_s_0.5": learn, "learn_steps_0.5": 3}

    rows = [run("trl", r, 10.0 + r, 5.0, 8.0) for r in range(3)] + \
        [run(s, r, 8.0 + r, 4.0, 4.0) for s in ("medgrpo_sync", "medgrpo_async") for r in range(3)]
    figs = peer_trl.figures(rows)
    job = next(f for f in figs if f["key"] == "job_s" and f["kind"] == "short")
    assert job["medgrpo_async"] == pytest.approx(11 / 9) and job["medgrpo_async_rounds"] == 3
    rec = {"command": "python -m bench.peer_trl", "wall_s": 60.0, "summary": {"load_1m_range": "1.0-2.0"},
           "env": {"date": "2026-12-06T06:10:00+00:00", "git_commit": "abc1234", "git_dirty": False, "cores": 2},
           "tables": {"figures": figs, "systems_short": peer_trl.per_system(rows, "short", ["job_s", "startup_s",
                      "steps_s", "shutdown_s", "samples_s", "tokens_per_step", "reward_first", "reward_last"])}}
    block = peer_trl.render_markdown(rec)
    assert "| whole job, short runs | **1.22** (1.20-1.25, 3 rounds)" in block
    assert "| TRL GRPOTrainer | 11 (10–12) |" in block and "| cores / threads |" in block
    doc = tmp_path / "b.md"
    doc.write_text(f"intro\n{peer_trl.BEGIN}\nOLD-BLOCK\n{peer_trl.END}\ntail\n")
    peer_trl.write_docs(doc, block)
    text = doc.read_text()
    assert "OLD-BLOCK" not in text and text.startswith("intro\n") and text.endswith(f"{peer_trl.END}\ntail\n")
    assert block in text
    with pytest.raises(ValueError, match="no <!-- peer_trl:begin -->"):
        peer_trl.write_docs(_no_block(tmp_path), block)


def _no_block(tmp_path):
    p = tmp_path / "plain.md"
    p.write_text("nothing here\n")
    return p
