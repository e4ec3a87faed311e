"""Tracking: one MLflow run per job (batched metric logging), Ray dashboard gauges, and a console progress bar.

MLflow calls go through ``MlflowClient.log_batch`` once per step: over HTTP a call costs ~56 ms, so one
call per metric would dominate a fast step. API keys never reach params: the config holds only the *name* of
the environment variable that holds a key, and ``redact`` masks anything that looks like a secret anyway.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password)(?!_env)", re.I)
_SECRET_VALUE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,})\b")


def redact(value: Any) -> Any:
    """Mask strings that look like API keys (``sk-...``, ``hf_...``)."""
    if isinstance(value, str):
        return _SECRET_VALUE.sub("***", value)
    return value


def redact_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if _SECRET_KEY.search(k.rsplit(".", 1)[-1]) else redact(v)) for k, v in params.items()}


def resolve_tracking_uri(configured: Optional[str], run_dir: str) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return Path(run_dir).resolve().parent.joinpath("mlruns").as_uri()


class Tracker:
    """MLflow run + Ray gauges. ``run_id`` resumes an existing run (``medgrpo resume``)."""

    def __init__(self, uri: str, experiment: str, run_name: Optional[str] = None, run_id: Optional[str] = None,
                 ray_metrics: bool = True) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            run = self.client.create_run(exp_id, run_name=run_name)
            run_id = run.info.run_id
        self.run_id = run_id
        self.experiment_id = self.client.get_run(run_id).info.experiment_id
        self._mlflow = mlflow
        self._gauges: dict[str, Any] = {}
        self._ray_metrics = ray_metrics

    # -- params / metrics ----------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:6000]) for k, v in redact_params(params).items() if k not in existing]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(_clean(k), float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])
        if self._ray_metrics:
            self._set_gauges(metrics)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, redact(value))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    # -- Ray dashboard ---------------------------------------------------------------------------------------
    HEADLINE = ("reward/raw_mean", "reward/norm_mean", "throughput/tokens_per_s", "time/step_s", "policy/version",
                "curriculum/tau", "accounting/prompts_dropped", "loss/policy")

    def _set_gauges(self, metrics: dict[str, float]) -> None:
        try:
            import ray
            from ray.util.metrics import Gauge
        except ImportError:  # pragma: no cover
            return
        if not ray.is_initialized():
            return
        for name in self.HEADLINE:
            if name not in metrics:
                continue
            gauge = self._gauges.get(name)
            if gauge is None:
                gauge = self._gauges[name] = Gauge("medgrpo_" + re.sub(r"[^a-zA-Z0-9_]", "_", name),
                                                   description=f"medgrpo {name}", tag_keys=("run",))
                gauge.set_default_tags({"run": self.run_id[:8]})
            gauge.set(float(metrics[name]))


def _clean(key: str) -> str:
    """MLflow metric names allow alphanumerics, _ - . space / : ; other characters become _."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", key)


class Progress:
    """A one-line console progress bar: step, reward, throughput, ETA (no extra dependency beyond tqdm)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "grpo") -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                            bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {postfix} [{elapsed}<{remaining}]")

    def update(self, **fields: float) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in fields.items()},
                             refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
