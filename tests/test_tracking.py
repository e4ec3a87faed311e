"""MLflow tracking: batched metrics on a real file store, params redacted, resume continues the same run."""
from __future__ import annotations

from cluster.config import load_config, to_flat_dict
from cluster.tracking import Tracker, redact, redact_params


def test_redaction():
    assert redact("key sk-abcdefghijklmnop here") == "key *** here"
    out = redact_params({"reward.judge.api_key_env": "OPENAI_API_KEY", "x.api_key": "abc", "x.token": "t",
                         "x.url": "http://h/?k=sk-1234567890abc"})
    assert out["reward.judge.api_key_env"] == "OPENAI_API_KEY" and out["x.api_key"] == "***"
    assert out["x.token"] == "***" and "sk-1234567890abc" not in out["x.url"]


def test_tracker_logs_and_resumes(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    t = Tracker(uri, "exp", run_name="r", ray_metrics=False)
    cfg = load_config("cpu_demo")
    t.log_params(to_flat_dict(cfg))
    t.log_metrics({"reward/raw_mean": 0.5, "bad": float("nan"), "a b(c)": 1.0}, step=1)
    t2 = Tracker(uri, "exp", run_id=t.run_id, ray_metrics=False)  # resume: same run
    t2.log_params({"learner.lr": 123})  # already logged: not re-logged (MLflow params are immutable)
    t2.log_metrics({"reward/raw_mean": 0.7}, step=2)
    run = t2.client.get_run(t.run_id)
    assert run.data.params["learner.lr"] == str(cfg.learner.lr) != "123"
    hist = t2.client.get_metric_history(t.run_id, "reward/raw_mean")
    assert [(m.step, m.value) for m in hist] == [(1, 0.5), (2, 0.7)]
    assert "bad" not in run.data.metrics and "a b_c_" in run.data.metrics


def test_artifact_failures_are_counted_warnings_not_errors(tmp_path, monkeypatch):
    t = Tracker((tmp_path / "mlruns").as_uri(), "exp", ray_metrics=False)
    t.log_metrics({"loss/sft": 1.0}, step=7)
    assert t.log_artifact(tmp_path / "gone" / "normalizer_table.json", "normalizer") is False  # pruned / never there
    ok = tmp_path / "table.json"
    ok.write_text("{}")
    assert t.log_artifact(ok, "normalizer") is True

    def store_down(*a, **k):
        raise OSError("artifact store unreachable")

    monkeypatch.setattr(t.client, "log_artifact", store_down)
    assert t.log_artifact(ok, "normalizer") is False
    run = t.client.get_run(t.run_id)
    assert run.data.metrics["tracking/artifact_failures"] == 2
    assert [m.step for m in t.client.get_metric_history(t.run_id, "tracking/artifact_failures")] == [7, 7]
    assert "unreachable" in run.data.tags["artifact_failure"]
    assert [a.path for a in t.client.list_artifacts(t.run_id, "normalizer")] == ["normalizer/table.json"]
    assert Tracker(t.uri, "exp", run_id=t.run_id, ray_metrics=False).artifact_failures == 2  # a resumed run counts on


def test_progress_bar_labels_the_running_stage_and_what_it_shows(capsys):
    from cluster.tracking import Progress, progress_fields

    assert progress_fields("sft", {"loss/sft": 6.97}) == {"loss": 6.97}
    assert set(progress_fields("grpo", {"reward/raw_mean": 0.05, "throughput/tokens_per_s": 3e3})) == {"reward", "tok/s"}
    bar = Progress(total=3)
    bar.update("sft", **progress_fields("sft", {"loss/sft": 6.97}))
    bar.bar.refresh()
    sft_line = capsys.readouterr().err.split("\r")[-1]
    bar.update("grpo", **progress_fields("grpo", {"reward/raw_mean": 0.0515, "throughput/tokens_per_s": 3780.0}))
    bar.close()
    grpo_line = capsys.readouterr().err.split("\r")[-1]
    assert sft_line.startswith("sft step 1/3") and "loss=6.97" in sft_line and "reward" not in sft_line
    assert grpo_line.startswith("grpo step 2/3") and "reward=0.0515" in grpo_line and "tok/s=3.78e+03" in grpo_line
    assert "loss" not in grpo_line


def test_console_quiets_known_noise_only():
    import logging
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    from cluster.console import quiet_worker

    cpp = logging.getLogger("torch.utils.cpp_extension")
    level = cpp.level
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet_worker()
            warnings.warn_explicit("Use get_actor_id() instead", RayDeprecationWarning, "runtime_context.py", 468,
                                   module="ray.runtime_context")
            warnings.warn_explicit("ours", DeprecationWarning, "driver.py", 1, module="cluster.driver")
        assert [str(w.message) for w in seen] == ["ours"]
        assert cpp.getEffectiveLevel() == logging.ERROR  # DS_ACCELERATOR=cpu (tests/conftest.py)
    finally:
        cpp.setLevel(level)
