"""The README's main job: synthetic MedVidBench + tiny Qwen2.5-VL, SFT then GRPO on a local Ray, and a
baseline/before/after table of eval metrics (with where to find the MLflow run); ``demo_report.json`` in the run
folder keeps the full results with the date and commit.

Re-runnable: the synthetic data and the tiny model are reused when they check out (``synth_problem``,
``model_problem``) and rebuilt when not; each run is a fresh demo that replaces the previous one in its
``run_dir`` (``overwrite=true`` unless ``resume`` or ``overwrite`` is given), while the MLflow store beside it
keeps every run.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from cluster.config import TrainConfig, load_config
from cluster.run_dir import existing_state, read_run_id
from common.files import write_json
from rewards.leaderboard import flat_metrics

REPORT = "demo_report.json"


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


def synth_problem(synth_dir: Path, seed: int) -> Optional[str]:
    """None when ``synth_dir`` holds a whole synthetic MedVidBench of ``seed``, else what is wrong with it."""
    from data.synthetic import GENERATOR_VERSION, load_manifest

    try:
        manifest = load_manifest(synth_dir)
    except (OSError, ValueError) as e:
        return f"no usable manifest.json ({type(e).__name__})"
    if (manifest.get("version") != GENERATOR_VERSION or manifest.get("seed") != seed or manifest.get("blind")
            or any(manifest.get("args", {}).get(k) != v for k, v in SYNTH_ARGS.items())):
        return (f"written by generator version {manifest.get('version')} with seed {manifest.get('seed')} and other "
                f"settings than the demo's")
    for rel in manifest.get("files", {}).values():  # a split the demo does not ask for is an empty file
        if not (synth_dir / rel).is_file():
            return f"{rel} is missing"
    media = [f"videos/{vid}.mp4" for vid in manifest.get("videos", {})]
    media += [img["file"] for img in manifest.get("images", {}).values() if "file" in img]
    for rel in media:
        p = synth_dir / rel
        if not p.is_file() or p.stat().st_size == 0:
            return f"{rel} is missing or empty"
    return None


def model_problem(model_dir: Path, corpus: list[str], seed: int) -> Optional[str]:
    """None when ``model_dir`` holds the tiny model built from ``corpus`` with ``seed``, else what is wrong."""
    from data.tiny_model import INFO_FILE

    try:
        info = json.loads((model_dir / INFO_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"no usable {INFO_FILE} ({type(e).__name__})"
    digest = hashlib.sha256("\n".join(t for t in corpus if t.strip()).encode("utf-8")).hexdigest()
    if info.get("seed") != seed or info.get("corpus_sha256") != digest:
        return "built with another seed or from other data"
    for rel in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "processor_config.json"):
        p = model_dir / rel
        if not p.is_file() or p.stat().st_size == 0:
            return f"{rel} is missing or empty"
    try:
        from safetensors import safe_open

        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            if not list(f.keys()):
                return "model.safetensors holds no tensors"
    except Exception as e:  # a truncated or foreign file: rebuild rather than fail at load
        return f"model.safetensors unreadable ({type(e).__name__})"
    return None


def prepare_inputs(cfg: TrainConfig) -> None:
    """Synthetic data and tiny model of ``cfg``: reused when they check out, (re)built when not."""
    from data.synthetic import generate
    from data.tiny_model import build_tiny_model, corpus_of

    synth_dir = Path(cfg.data.train_files[0]).parent
    t0 = time.perf_counter()
    problem = synth_problem(synth_dir, cfg.seed)
    if problem is None:
        print(f"[demo] reusing the synthetic MedVidBench in {synth_dir}")
    else:
        if (synth_dir / "manifest.json").exists():
            print(f"[demo] {synth_dir}: {problem}; regenerating it")
        generate(str(synth_dir), seed=cfg.seed, **SYNTH_ARGS)
        print(f"[demo] synthetic MedVidBench written to {synth_dir} ({time.perf_counter() - t0:.1f} s)")
    model_dir = Path(cfg.model.path)
    corpus = corpus_of(sorted(synth_dir.glob("*.jsonl")))
    problem = model_problem(model_dir, corpus, cfg.seed)
    if problem is None:
        print(f"[demo] reusing the tiny Qwen2.5-VL in {model_dir}")
    else:
        if model_dir.exists():
            print(f"[demo] {model_dir}: {problem}; rebuilding it")
        build_tiny_model(cfg.model.path, corpus_texts=corpus, seed=cfg.seed)
        print(f"[demo] tiny Qwen2.5-VL written to {cfg.model.path}")


def demo_config(overrides: Optional[Sequence[str]] = None) -> TrainConfig:
    """The ``cpu_demo`` preset with ``overrides``; a fresh demo replaces the previous one in its run_dir unless the
    overrides say otherwise (``overwrite=false``, or ``resume=auto`` to continue it)."""
    overrides = list(overrides or [])
    cfg = load_config("cpu_demo", overrides)
    if cfg.resume == "never" and not any(o.split("=", 1)[0].strip() == "overwrite" for o in overrides):
        cfg = load_config("cpu_demo", ["overwrite=true", *overrides])
    return cfg


def run_demo(overrides: Optional[Sequence[str]] = None) -> int:
    from cluster import console
    from cluster.driver import Trainer

    console.quiet_driver()
    cfg = demo_config(overrides)
    t0 = time.perf_counter()
    prepare_inputs(cfg)
    run_dir = Path(cfg.run_dir)
    if cfg.overwrite and cfg.resume == "never" and existing_state(run_dir):
        previous = read_run_id(run_dir)
        print(f"[demo] a fresh demo replaces the previous run in {run_dir}"
              f"{' (run ' + previous + ')' if previous else ''}; every run stays in the MLflow store")
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
              "mlflow_uri": trainer.tracker.uri, "run_id": trainer.tracker.run_id, "medgrpo_run_id": trainer.run_id}
    write_json(run_dir / REPORT, report, indent=2, default=str)
    print("\nEval on the held-out synthetic split (greedy decoding), against constant-prediction baselines "
          "fitted on the training split (majority answer; mean segment/box):")
    print(demo_table(baseline, before, after))
    print(f"\nMLflow run {trainer.tracker.run_id} at {trainer.tracker.uri}"
          f"  (view: mlflow ui --backend-store-uri {trainer.tracker.uri})")
    print(f"report: {run_dir / REPORT}  total {report['seconds']:.0f} s")
    return 0
