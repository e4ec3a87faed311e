"""`medgrpo report RUN_DIR` (cluster/report.py): PNGs from the run's MLflow store and its demo_report.json."""
from __future__ import annotations

import json

import pytest

from cluster.report import render_report
from cluster.tracking import Tracker

PNG = b"\x89PNG\r\n\x1a\n"


def _run(tmp_path, name="run"):
    run_dir = tmp_path / name
    run_dir.mkdir()
    t = Tracker((tmp_path / "mlruns").as_uri(), "exp", run_name=name, ray_metrics=False)
    t.set_tag("run_dir", str(run_dir.resolve()))
    return run_dir, t


def test_plots_from_mlflow_metrics(tmp_path):
    run_dir, t = _run(tmp_path)
    t.log_metrics({"baseline/nap_acc": 0.33, "baseline/source_mean/nap_acc": 0.3}, step=0)
    t.log_metrics({"eval/nap_acc": 0.2, "eval/source_mean/nap_acc": 0.25}, step=1)
    for step in range(1, 4):
        t.log_metrics({"loss/sft": 5.0 / step}, step=step)
    for step in range(4, 8):
        t.log_metrics({"reward/raw/A/tal": 0.1 * step, "reward/raw/A/stg": 0.3, "reward/raw/B/tal": 0.5,
                       "reward/raw_mean": 0.4, "curriculum/tau": 0.3 + 0.05 * step}, step=step)
    t.log_metrics({"eval/nap_acc": 0.7, "eval/source_mean/nap_acc": 0.65}, step=7)
    t.finish()
    res = render_report(run_dir, tracking_uri=(tmp_path / "mlruns").as_uri())
    assert set(res["drawn"]) == {"reward_by_source", "tau", "sft_loss", "eval"} and res["missing"] == []
    for path in res["drawn"].values():
        assert open(path, "rb").read(8) == PNG
    assert res["eval"]["pooled"]["nap_acc"] == {"baseline": 0.33, "before": 0.2, "after": 0.7}
    assert res["eval"]["source_mean"]["nap_acc"] == {"baseline": 0.3, "before": 0.25, "after": 0.65}
    from cluster.report import metric_series, reward_by_source, find_run

    client, run_id = find_run(run_dir, (tmp_path / "mlruns").as_uri())
    by_src = reward_by_source(metric_series(client, run_id))
    assert by_src["A"][0] == (4, pytest.approx((0.4 + 0.3) / 2)) and by_src["B"][-1] == (7, 0.5)
    assert json.loads((run_dir / "report" / "report.json").read_text())["run_id"] == run_id


def test_demo_report_gives_the_eval_plot_and_missing_series_are_named(tmp_path):
    run_dir, t = _run(tmp_path)
    t.log_metrics({"loss/sft": 1.0}, step=1)
    t.finish()
    part = lambda v: {"table": {"cvs_acc": v, "dvc_llm": None}, "source_mean": {"cvs_acc": v / 2},  # noqa: E731
                      "columns": ["cvs_acc", "dvc_llm"]}
    (run_dir / "demo_report.json").write_text(json.dumps({"baseline": part(0.25), "before": part(0.0),
                                                          "after": part(0.5)}))
    res = render_report(run_dir, tmp_path / "out", tracking_uri=(tmp_path / "mlruns").as_uri())
    assert res["eval"]["columns"] == ["cvs_acc"]
    assert res["eval"]["pooled"]["cvs_acc"] == {"baseline": 0.25, "before": 0.0, "after": 0.5}
    assert res["eval"]["source_mean"]["cvs_acc"]["after"] == 0.25
    assert (tmp_path / "out" / "eval.png").read_bytes()[:8] == PNG
    assert any(m.startswith("tau") for m in res["missing"]) and any(m.startswith("reward_by_source")
                                                                    for m in res["missing"])


def test_unknown_run_dir_is_a_clear_error(tmp_path):
    _run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no MLflow run tagged run_dir="):
        render_report(tmp_path / "other", tracking_uri=(tmp_path / "mlruns").as_uri())
