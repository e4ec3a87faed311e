"""The README's main command run twice in a row (a short demo): the second run is a fresh demo that replaces the
first in runs/demo, reusing the synthetic data and tiny model; a damaged model is rebuilt."""
from __future__ import annotations

import json

import pytest

from cluster.checkpoints import CheckpointManager
from cluster.demo import demo_config, prepare_inputs, run_demo

pytestmark = pytest.mark.ray
SHORT = ["stages=[{name: sft, kind: sft, steps: 2}, {name: grpo, kind: grpo, steps: 1}]", "checkpoint_every=1",
         "data.eval_max_samples=2", "data.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8",
         "tracking.progress_bar=false"]


def test_demo_twice_in_a_row(ray_local, tmp_path, capsys):
    runs = tmp_path / "runs"  # the preset's runs/ folders, absolute: the test's Ray workers run elsewhere
    short = SHORT + [f"run_dir={runs}/demo", f"model.path={runs}/tiny-qwen2.5-vl",
                     f"data.train_files=[{runs}/synth/train.jsonl]", f"data.eval_files=[{runs}/synth/eval.jsonl]"]
    assert run_demo(short) == 0
    first = json.loads((tmp_path / "runs/demo/demo_report.json").read_text())
    model = tmp_path / "runs/tiny-qwen2.5-vl/model.safetensors"
    manifest = tmp_path / "runs/synth/manifest.json"
    stamps = (model.stat().st_mtime_ns, manifest.stat().st_mtime_ns)
    capsys.readouterr()

    assert run_demo(short) == 0
    out = capsys.readouterr().out
    second = json.loads((tmp_path / "runs/demo/demo_report.json").read_text())
    assert "reusing the synthetic MedVidBench" in out and "reusing the tiny Qwen2.5-VL" in out
    assert "replaces the previous run" in out
    assert (model.stat().st_mtime_ns, manifest.stat().st_mtime_ns) == stamps
    assert second["medgrpo_run_id"] != first["medgrpo_run_id"] and second["run_id"] != first["run_id"]
    ckpts = tmp_path / "runs/demo/checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["ckpt-00000002", "ckpt-00000003"]
    assert {CheckpointManager.run_of(p) for p in ckpts.iterdir()} == {second["medgrpo_run_id"]}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=second["mlflow_uri"])
    for report in (first, second):  # both runs stay in the MLflow store, the first one whole
        run = client.get_run(report["run_id"])
        assert run.info.status == "FINISHED" and run.data.metrics.get("tracking/artifact_failures", 0) == 0
        assert "normalizer/normalizer_table.json" in {a.path for a in client.list_artifacts(report["run_id"],
                                                                                            "normalizer")}

    model.write_bytes(model.read_bytes()[:100])  # a damaged model is rebuilt, the valid data kept
    prepare_inputs(demo_config(short))
    out = capsys.readouterr().out
    assert "rebuilding it" in out and "reusing the synthetic MedVidBench" in out
    assert model.stat().st_size > 1000
