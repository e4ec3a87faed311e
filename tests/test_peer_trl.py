"""bench/peer_trl.py without TRL: the two systems' configurations say the same thing, the steady-state rate is computed
from the right steps, and the benchmark records a skip (not a failure) when the benchmark venv is absent."""
from __future__ import annotations

import json

import pytest

from bench import peer_trl
from bench.peer_trl import Settings, medgrpo_overrides, steady_rate, trl_config_kwargs
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
    assert cfg.normalizer.mode == "off"
    lc = cfg.learner
    assert (lc.lr, lc.micro_batch_size, lc.clip_low, lc.clip_high, lc.kl_coef) == (1e-4, 12, 0.2, 0.3, 0.0)
    assert _cfg(0).rollout.max_staleness == 0
    with pytest.raises(ValueError, match="staleness"):
        _cfg(2)


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
