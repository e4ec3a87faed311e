"""The README's main job: synthetic MedVidBench + tiny Qwen2.5-VL, SFT then GRPO on a local Ray, and a
baseline/before/after table of eval metrics (with where to find the MLflow run); ``demo_report.json`` in the run
folder keeps the full results with the date and commit."""
from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from cluster.config import load_config
from common.files import write_json
from rewards.leaderboard import flat_metrics


def demo_table(baseline: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
    """Baseline / before / after per metric, pooled over the eval rows (``all``) and as the mean of the
    per-source means (``src-mean``); ``>`` marks an after-value above its baseline. Arguments are
    ``rewards.leaderboard.evaluate`` results (the baseline one from ``rewards.baselines.baseline_table``)."""
    def fmt(v: Optional[float]) -> str:
        return f"{v:8.3f}" if isinstance(v, (int, float)) else f"{'-':>8}"

    keys = [k for k in after["columns"] if after["table"].get(k) is not None]
    width = max((len(k) for k in keys), default=10)
    lines = []
    for label, part in (("all (pooled over the eval rows)", "table"), ("src-mean (mean of per-source means)",
                                                                       "source_mean")):
        lines.append(f"{label}")
        lines.append(f"  {'metric':<{width}}  {'baseline':>8}  {'before':>8}  {'after':>8}")
        for k in keys:
            b, x, a = baseline[part].get(k), before[part].get(k), after[part].get(k)
            mark = " >" if isinstance(b, (int, float)) and isinstance(a, (int, float)) and a > b else ""
            lines.append(f"  {k:<{width}}  {fmt(b)}  {fmt(x)}  {fmt(a)}{mark}")
    sources = list(after.get("by_source", {}))
    if sources:
        lines.append("after, per source (baseline in brackets)")
        for k in keys:
            cells = [f"{s}={fmt(after['by_source'][s].get(k)).strip()}"
                     f"({fmt(baseline['by_source'].get(s, {}).get(k)).strip()})" for s in sources]
            lines.append(f"  {k:<{width}}  " + "  ".join(cells))
    n = after.get("counts", {}).get("n", {})
    lines.append("eval rows per metric: " + ", ".join(f"{k} {n.get(k, 0)}" for k in keys))
    return "\n".join(lines)


# 48 training and 16 eval rows per task (balanced classes: 3 next actions, 4 CVS classes, 3 skill levels); the
# demo trains no image task
SYNTH_ARGS = {"n_per_task": 48, "n_eval_per_task": 16, "n_images_per_task": 0, "n_eval_images_per_task": 0}


def _current_synth(synth_dir: Path, seed: int) -> bool:
    """Whether ``synth_dir`` holds this generator version's data for ``SYNTH_ARGS`` and ``seed``."""
    from data.synthetic import GENERATOR_VERSION, load_manifest

    try:
        m = load_manifest(synth_dir)
    except (OSError, ValueError):
        return False
    return (m.get("version") == GENERATOR_VERSION and m.get("seed") == seed and not m.get("blind")
            and all(m["args"].get(k) == v for k, v in SYNTH_ARGS.items()))


def _commit() -> str:
    """The checkout's commit (with ``+dirty`` when it has local changes), or ``unknown``."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_demo(overrides: Optional[Sequence[str]] = None) -> int:
    from cluster.driver import Trainer
    from data.synthetic import generate
    from data.tiny_model import build_tiny_model

    cfg = load_config("cpu_demo", list(overrides or []))
    synth_dir = Path(cfg.data.train_files[0]).parent
    t0 = time.perf_counter()
    if not _current_synth(synth_dir, cfg.seed):
        generate(str(synth_dir), seed=cfg.seed, **SYNTH_ARGS)
        print(f"[demo] synthetic MedVidBench written to {synth_dir} ({time.perf_counter() - t0:.1f} s)")
    if not (Path(cfg.model.path) / "config.json").exists():
        from data.reader import read_instances

        corpus = []
        for f in sorted(synth_dir.glob("*.jsonl")):
            for inst in read_instances(f).instances:
                corpus += [inst.question] + ([inst.answer] if inst.answer else [])
        build_tiny_model(cfg.model.path, corpus_texts=corpus, seed=cfg.seed)
        print(f"[demo] tiny Qwen2.5-VL written to {cfg.model.path}")

    trainer = Trainer(cfg)
    try:
        baseline = trainer.baseline()
        before = trainer.evaluate_result()
        trainer.run()
        after = trainer.evaluate_result()
        trainer.tracker.log_metrics(flat_metrics(after, "final/"), step=trainer.global_step)
    finally:
        trainer.close()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": _commit(), "overrides": list(overrides or []), "seconds": time.perf_counter() - t0,
              "baseline": baseline, "before": before, "after": after,
              "mlflow_uri": trainer.tracker.uri, "run_id": trainer.tracker.run_id}
    write_json(Path(cfg.run_dir) / "demo_report.json", report, indent=2, default=str)
    print("\nEval on the held-out synthetic split (greedy decoding), against constant-prediction baselines "
          "fitted on the training split (majority answer; mean segment/box):")
    print(demo_table(baseline, before, after))
    print(f"\nMLflow run {trainer.tracker.run_id} at {trainer.tracker.uri}"
          f"  (view: mlflow ui --backend-store-uri {trainer.tracker.uri})")
    print(f"report: {Path(cfg.run_dir) / 'demo_report.json'}  total {report['seconds']:.0f} s")
    return 0
