"""Tracking: one MLflow run per job (batched metric logging), Ray dashboard gauges, and a console progress bar.

An artifact that cannot be logged (a missing file, an unreachable store) is a logged warning counted in MLflow
as ``tracking/artifact_failures``, never the end of a training run.

MLflow calls go through ``MlflowClient.log_batch`` once per step: over HTTP a call costs ~56 ms, so one
call per metric would dominate a fast step. API keys never reach params: the config holds only the *name* of
the environment variable that holds a key, and ``redact`` masks anything that looks like a secret anyway.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("medgrpo")

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


def run_tracking_uri(run_dir: str | Path) -> str:
    """The MLflow store a run logged to: its saved config's ``tracking.mlflow_uri``, else the default beside it."""
    from cluster.config import load_config

    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    configured = load_config(str(saved)).tracking.mlflow_uri if saved.exists() else None
    return resolve_tracking_uri(configured, str(run_dir))


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
        run = self.client.get_run(run_id)
        self.experiment_id = run.info.experiment_id
        self.artifact_failures = int(run.data.metrics.get(self.ARTIFACT_FAILURES, 0))  # a resumed run counts on
        self._step = 0  # the last step metrics were logged at
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

        self._step = step
        ts = int(time.time() * 1000)
        items = [Metric(_clean(k), float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])
        if self._ray_metrics:
            self._set_gauges(metrics)

    ARTIFACT_FAILURES = "tracking/artifact_failures"

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> bool:
        """Copy a file or folder into the run's artifacts; True when it was. A failure is a warning counted in
        ``tracking/artifact_failures`` (the last one's reason in the ``artifact_failure`` tag), never raised."""
        try:
            if not Path(path).exists():
                raise FileNotFoundError(f"{path} does not exist")
            self.client.log_artifact(self.run_id, str(path), artifact_path)
            return True
        except Exception as e:  # an artifact is a copy for browsing: losing one must not end a training run
            self.artifact_failures += 1
            reason = f"{type(e).__name__}: {e}"[:500]
            log.warning("artifact %s not logged to MLflow (%s); the run goes on (%s=%d)", path, reason,
                        self.ARTIFACT_FAILURES, self.artifact_failures)
            try:
                self.log_metrics({self.ARTIFACT_FAILURES: self.artifact_failures}, step=self._step)
                self.set_tag("artifact_failure", f"{path}: {reason}")
            except Exception as e2:  # the store itself is down: the log line above is all there is
                log.warning("MLflow unreachable while counting an artifact failure: %s", e2)
            return False

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


def progress_fields(kind: str, metrics: dict[str, float]) -> dict[str, float]:
    """What the progress bar shows for a step of a stage of ``kind``: SFT its loss, GRPO its mean raw reward and
    generation throughput."""
    if kind == "sft":
        return {"loss": metrics.get("loss/sft", float("nan"))}
    return {"reward": metrics.get("reward/raw_mean", float("nan")),
            "tok/s": metrics.get("throughput/tokens_per_s", 0.0)}


class Progress:
    """A one-line console progress bar over the job's steps, labelled with the running stage:
    ``sft step 12/340 |███      | [00:10<04:30, loss=5.2]`` (tqdm, no extra dependency)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "step") -> None:
        self.bar = None
        self.stage = ""
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                            bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| [{elapsed}<{remaining}{postfix}]")

    def update(self, stage: str, **fields: float) -> None:
        """One step of ``stage`` done; ``fields`` (name=value) replace the ones shown."""
        if self.bar is None:
            return
        if stage != self.stage:
            self.stage = stage
            self.bar.set_description_str(f"{stage} step", refresh=False)
        self.bar.set_postfix_str(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in fields.items()), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
