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
