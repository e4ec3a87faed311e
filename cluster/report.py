"""``medgrpo report RUN_DIR``: PNG plots of a run from its MLflow store and report files.

Role: reading a finished (or running) run's records and drawing them with matplotlib (Agg, no display). Plots,
written to ``RUN_DIR/report/`` unless told otherwise:

* ``reward_by_source.png``: GRPO raw reward per data source over steps (the mean over that source's
  ``reward/raw/<source>/<qa_type>`` series at each step) beside the pooled ``reward/raw_mean``;
* ``tau.png``: the MedLoc-R1 IoU threshold τ (``curriculum/tau``) over steps;
* ``sft_loss.png``: ``loss/sft`` over steps;
* ``eval.png``: eval metrics before / after with the constant-prediction baselines, pooled and as the mean of the
  per-source means: from ``demo_report.json`` when the run has one, else the first and last ``eval/*`` values
  and ``baseline/*`` in MLflow.

A plot whose series the run never logged is left out and named in ``missing``. ``report.json`` lists what was
drawn and the numbers the eval plot shows.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Union

Series = list[tuple[int, float]]


def find_run(run_dir: Union[str, Path], tracking_uri: Optional[str] = None) -> tuple[Any, str]:
    """``(MlflowClient, run_id)`` of the newest MLflow run whose ``run_dir`` tag is this folder (the driver sets
    it). Raises ``FileNotFoundError`` naming the store when there is none."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    from cluster.tracking import run_tracking_uri

    uri = tracking_uri or run_tracking_uri(run_dir)
    client = MlflowClient(tracking_uri=uri)
    target = str(Path(run_dir).resolve())
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in (client.search_runs(exps, order_by=["attributes.start_time DESC"], max_results=5000)
                        if exps else []) if r.data.tags.get("run_dir") == target]  # compared here: no quoting
    if not runs:
        raise FileNotFoundError(f"report: no MLflow run tagged run_dir={target} in {uri}")
    return client, runs[0].info.run_id


def metric_series(client: Any, run_id: str) -> dict[str, Series]:
    """Every metric of the run as ``name -> [(step, value), ...]`` sorted by step (the last value per step)."""
    out: dict[str, Series] = {}
    for name in client.get_run(run_id).data.metrics:
        by_step = {m.step: m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.timestamp)}
        out[name] = sorted(by_step.items())
    return out


def reward_by_source(series: dict[str, Series]) -> dict[str, Series]:
    """``reward/raw/<source>/<qa_type>`` series averaged per source at each step."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, pts in series.items():
        parts = name.split("/")
        if len(parts) == 4 and parts[:2] == ["reward", "raw"]:
            for step, v in pts:
                acc[parts[2]][step].append(v)
    return {src: sorted((s, sum(v) / len(v)) for s, v in steps.items()) for src, steps in sorted(acc.items())}


def eval_summary(run_dir: Path, series: dict[str, Series]) -> Optional[dict[str, Any]]:
    """``{"source", "columns", "pooled"|"source_mean": {col: {baseline, before, after}}}`` or None."""
    report = run_dir / "demo_report.json"
    if report.exists():
        doc = json.loads(report.read_text(encoding="utf-8"))
        cols = [c for c in doc["after"]["columns"] if doc["after"]["table"].get(c) is not None]
        out: dict[str, Any] = {"source": str(report), "columns": cols}
        for label, part in (("pooled", "table"), ("source_mean", "source_mean")):
            out[label] = {c: {k: doc[k].get(part, {}).get(c) for k in ("baseline", "before", "after")} for c in cols}
        return out
    cols = sorted(n[len("eval/"):] for n in series if n.startswith("eval/") and n.count("/") == 1)
    if not cols:
        return None
    out = {"source": "mlflow eval/* (first and last) and baseline/*", "columns": cols}
    for label, pre in (("pooled", ""), ("source_mean", "source_mean/")):
        out[label] = {}
        for c in cols:
            ev, base = series.get(f"eval/{pre}{c}", []), series.get(f"baseline/{pre}{c}", [])
            out[label][c] = {"baseline": base[-1][1] if base else None, "before": ev[0][1] if len(ev) > 1 else None,
                             "after": ev[-1][1] if ev else None}
    return out


def _line_plot(path: Path, title: str, ylabel: str, lines: dict[str, Series]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, pts in lines.items():
        ax.plot([s for s, _ in pts], [v for _, v in pts], label=label, marker="." if len(pts) < 60 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _eval_plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = summary["columns"]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(cols)), 4), sharey=True)
    for ax, (label, title) in zip(axes, (("pooled", "pooled over the eval rows"),
                                         ("source_mean", "mean of the per-source means"))):
        x = np.arange(len(cols))
        for i, (key, colour) in enumerate((("baseline", "#999999"), ("before", "#9ecae1"), ("after", "#08519c"))):
            vals = [summary[label][c][key] for c in cols]
            ax.bar(x + (i - 1) * 0.27, [v if v is not None else 0.0 for v in vals], 0.27, label=key, color=colour)
        ax.set_xticks(x)
        ax.set_xticklabels(cols, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("metric")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_report(run_dir: Union[str, Path], out_dir: Optional[Union[str, Path]] = None,
                  tracking_uri: Optional[str] = None) -> dict[str, Any]:
    """Draw the plots of the module docstring for ``run_dir``; returns (and writes as ``report.json``) what was
    drawn, what was missing and the eval numbers."""
    run_dir = Path(run_dir)
    client, run_id = find_run(run_dir, tracking_uri)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    series = metric_series(client, run_id)
    drawn: dict[str, str] = {}
    missing: list[str] = []
    by_source = reward_by_source(series)
    if by_source:
        lines = dict(by_source)
        if "reward/raw_mean" in series:
            lines["all (pooled)"] = series["reward/raw_mean"]
        _line_plot(out / "reward_by_source.png", "GRPO raw reward per data source", "raw reward", lines)
        drawn["reward_by_source"] = str(out / "reward_by_source.png")
    else:
        missing.append("reward_by_source (no reward/raw/<source>/<qa_type> metrics: no GRPO step)")
    for key, metric, title, ylabel in (("tau", "curriculum/tau", "MedLoc-R1 IoU threshold τ", "τ"),
                                       ("sft_loss", "loss/sft", "SFT loss", "loss")):
        if series.get(metric):
            _line_plot(out / f"{key}.png", title, ylabel, {metric: series[metric]})
            drawn[key] = str(out / f"{key}.png")
        else:
            missing.append(f"{key} (no {metric} metric)")
    summary = eval_summary(run_dir, series)
    if summary is not None:
        _eval_plot(out / "eval.png", summary)
        drawn["eval"] = str(out / "eval.png")
    else:
        missing.append("eval (no demo_report.json and no eval/* metrics)")
    result = {"run_dir": str(run_dir), "run_id": run_id, "drawn": drawn, "missing": missing, "eval": summary}
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result
