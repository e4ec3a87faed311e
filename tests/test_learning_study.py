"""The learning study (bench/learning.py): every variant's config resolves, the aggregation, and a quick run."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import learning as L
from cluster.config import load_config


def test_every_variant_resolves_to_a_valid_config(tmp_path):
    for name in L.VARIANTS:
        cfg = load_config("cpu_demo", L.variant_overrides(name, tmp_path / name, L.QUICK, tmp_path / "t.json"))
        kinds = [s.kind for s in cfg.stages]
        assert kinds == (["sft"] if name == "sft_only" else ["sft", "grpo"]), name
        assert cfg.stages[0].steps == L.QUICK["sft_steps"]
    cfg = lambda n: load_config("cpu_demo", L.variant_overrides(n, tmp_path, L.QUICK, tmp_path / "t.json"))  # noqa
    assert cfg("sft_grpo").normalizer.mode == "streaming" and cfg("sft_grpo").curriculum.enabled
    assert cfg("norm_off").normalizer.mode == "off"
    assert cfg("norm_static").normalizer.table_file == str(tmp_path / "t.json")
    assert cfg("tau_fixed_0.5").curriculum.tau0 == cfg("tau_fixed_0.5").curriculum.tau_max == 0.5
    assert not cfg("raw_iou").curriculum.enabled
    assert cfg("drgrpo").learner.advantage == "drgrpo" and cfg("drgrpo").learner.loss_agg == "seq-sum-max-len"
    with pytest.raises(ValueError, match="normalizer table"):
        L.variant_overrides("norm_static", tmp_path, L.QUICK)
    assert all(set(v) <= set(L.VARIANTS) for v in L.GROUPS.values())


def test_summary_and_aggregate():
    assert L.summarize([1.0, 3.0, None]) == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "n": 2}
    assert L.summarize([None]) == {"mean": None, "std": None, "n": 0}
    run = lambda v, s, x: {"variant": v, "seed": s, "eval": {"nap_acc": x, "dvc_f1": None},  # noqa: E731
                           "eval_source_mean": {"nap_acc": x / 2}, "baseline": {"nap_acc": 0.33},
                           "reward_by_source": {"A": {"first": 0.1, "last": x}}}
    agg = L.aggregate([run("sft_only", 0, 0.5), run("sft_only", 1, 0.7), run("sft_grpo", 0, 0.9)])
    assert agg["sft_only"]["nap_acc"]["mean"] == pytest.approx(0.6) and agg["sft_only"]["seeds"] == [0, 1]
    assert agg["sft_only"]["source_mean/nap_acc"]["mean"] == pytest.approx(0.3) and "dvc_f1" not in agg["sft_only"]
    assert agg["sft_grpo"]["reward/A/last"] == {"mean": 0.9, "std": 0.0, "n": 1}
    text = L.format_group("stages", agg)
    assert "0.600±0.141" in text and "baseline" in text and "0.330±0.000" in text
    with pytest.raises(ValueError, match="unknown group"):
        L.run_study(["nope"], [0], Path("."), L.QUICK)


@pytest.mark.ray
@pytest.mark.timeout(1200)  # two short training jobs on a local Ray
def test_quick_study_runs_a_group_end_to_end(ray_local, synth_dir, tiny_model_dir, tmp_path):
    mode = {"sft_steps": 1, "grpo_steps": 2, "eval_max_samples": 4}
    extra = [f"model.path={tiny_model_dir}", f"data.train_files=[{synth_dir}/train.jsonl]",
             f"data.eval_files=[{synth_dir}/eval.jsonl]", "data.tasks=[tal,next_action]", "data.prompts_per_step=2",
             "data.max_frames=4", "rollout.group_size=2", "rollout.max_new_tokens=8", "normalizer.min_samples=2",
             "curriculum.window=2", f"tracking.mlflow_uri={tmp_path.as_uri()}/mlruns"]
    res = L.run_study(["stages"], [0], tmp_path / "study", mode, extra)
    assert [r["variant"] for r in res["runs"]] == ["sft_only", "sft_grpo"]
    for r in res["runs"]:
        assert r["eval"]["nap_acc"] is not None and r["baseline"]["nap_acc"] is not None
    assert res["runs"][0]["tau"] == [] and res["runs"][1]["tau"]  # SFT only: no GRPO step, no τ
    table = res["runs"][1]["normalizer_table"]  # what norm_static of the same seed loads
    assert table and Path(table).exists()
    assert set(res["aggregate"]) == {"sft_only", "sft_grpo"}
    assert "sft_only" in L.format_group("stages", res["aggregate"])
