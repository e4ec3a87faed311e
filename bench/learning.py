"""Learning study: the comparisons the methods exist for, several seeds each, mean ± spread on held-out data.

``python -m bench.learning [--quick] [--seeds N] [--only GROUP,...] [--out DIR] [--json PATH]``

Every variant is the CPU demo's job (``configs/cpu_demo.yaml``: synthetic multi-source MedVidBench whose
sources differ in difficulty, the tiny Qwen2.5-VL) with a few overrides; one run per (variant, seed), each
evaluated greedily on the held-out split against the constant-prediction baselines (``rewards.baselines``).
Comparisons (``GROUPS``):

* ``stages``: SFT only vs SFT → GRPO;
* ``normalization``: cross-dataset normalization off vs static (the quantile table the streaming run of the same
  seed saved) vs streaming, with the per-source raw reward at the start and end of GRPO;
* ``tau``: the adaptive MedLoc-R1 τ curriculum vs a fixed τ = 0.5 vs the raw IoU reward, with τ's trajectory;
* ``advantage``: GRPO vs Dr. GRPO (no std division, constant length normaliser).

The base variant (``sft_grpo``: streaming normalization, adaptive τ, GRPO) serves every group. ``--quick``
shortens the stages (``QUICK``) so 3 seeds of every variant fit about 15 minutes on an idle 2-core machine; the
full mode uses the demo's stage lengths. Results: a table per group on stdout and one JSON record (per-run
metrics, per-variant mean / sample std / n) appended to ``--json``. No variant special-cases the data.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

VARIANTS: dict[str, list[str]] = {
    "sft_grpo": [],
    "sft_only": ["@sft_only"],
    "norm_off": ["normalizer.mode=off"],
    "norm_static": ["normalizer.mode=static", "@static_table"],
    "tau_fixed_0.5": ["curriculum.tau0=0.5", "curriculum.tau_max=0.5"],
    "raw_iou": ["curriculum.enabled=false"],
    "drgrpo": ["learner.advantage=drgrpo", "learner.loss_agg=seq-sum-max-len"],
}
GROUPS: dict[str, list[str]] = {
    "stages": ["sft_only", "sft_grpo"],
    "normalization": ["norm_off", "norm_static", "sft_grpo"],
    "tau": ["sft_grpo", "tau_fixed_0.5", "raw_iou"],
    "advantage": ["sft_grpo", "drgrpo"],
}
BASE = ["normalizer.mode=streaming", "curriculum.enabled=true", "learner.advantage=grpo", "eval_every=0",
        "tracking.progress_bar=false"]
QUICK = {"sft_steps": 60, "grpo_steps": 12, "eval_max_samples": 40}
FULL = {"sft_steps": 300, "grpo_steps": 40, "eval_max_samples": 1000}
HEADLINE = ("nap_acc", "cvs_acc", "sa_acc", "tag_miou@0.3", "tag_miou@0.5", "stg_miou")


def variant_overrides(name: str, run_dir: Path, mode: dict[str, int], table_file: Optional[Path] = None,
                      extra: Sequence[str] = ()) -> list[str]:
    """The ``load_config`` overrides of one run of variant ``name``."""
    sft, grpo = mode["sft_steps"], mode["grpo_steps"]
    stages = f"stages=[{{name: sft, kind: sft, steps: {sft}, lr: 3.0e-3, prompts_per_step: 16}}"
    out = [f"run_dir={run_dir}", *BASE, f"data.eval_max_samples={mode['eval_max_samples']}",
           f"checkpoint_every={sft + grpo}"]
    for o in VARIANTS[name]:
        if o == "@sft_only":
            stages += "]"
            out.append(f"checkpoint_every={sft}")
        elif o == "@static_table":
            if table_file is None:
                raise ValueError(f"variant {name} needs the normalizer table of the streaming run of its seed")
            out.append(f"normalizer.table_file={table_file}")
        else:
            out.append(o)
    if not stages.endswith("]"):
        stages += f", {{name: grpo, kind: grpo, steps: {grpo}}}]"
    return [*out, stages, *extra]


def summarize(values: Sequence[Optional[float]]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and n of the non-missing values."""
    got = [float(v) for v in values if v is not None]
    if not got:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(got), "std": statistics.stdev(got) if len(got) > 1 else 0.0, "n": len(got)}


def _window(series: list[tuple[int, float]], first: bool, k: int = 3) -> Optional[float]:
    pts = series[:k] if first else series[-k:]
    return statistics.fmean(v for _, v in pts) if pts else None


def run_one(name: str, seed: int, out: Path, mode: dict[str, int], table_file: Optional[Path] = None,
            extra: Sequence[str] = ()) -> dict[str, Any]:
    """Train and evaluate one (variant, seed); returns its metrics record."""
    from cluster.config import load_config
    from cluster.driver import Trainer
    from cluster.report import metric_series, reward_by_source

    run_dir = out / f"{name}-s{seed}"
    cfg = load_config("cpu_demo", [*variant_overrides(name, run_dir, mode, table_file, extra), f"seed={seed}",
                                   "resume=never"])
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        baseline = trainer.baseline()
        trainer.run()
        after = trainer.evaluate_result()
        series = metric_series(trainer.tracker.client, trainer.tracker.run_id)
    finally:
        trainer.close()
    rewards = reward_by_source(series)
    table_path = None
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*"))
    if ckpts and (ckpts[-1] / "normalizer_table.json").exists():
        table_path = str(ckpts[-1] / "normalizer_table.json")
    return {
        "variant": name, "seed": seed, "seconds": time.perf_counter() - t0,
        "eval": after["table"], "eval_source_mean": after["source_mean"], "eval_by_source": after["by_source"],
        "baseline": baseline["table"], "baseline_source_mean": baseline["source_mean"],
        "reward_by_source": {s: {"first": _window(v, True), "last": _window(v, False)} for s, v in rewards.items()},
        "tau": [v for _, v in series.get("curriculum/tau", [])],
        "sft_loss_last": _window(series.get("loss/sft", []), False),
        "normalizer_table": table_path,
    }


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: ``summarize`` of every eval column (pooled and source-mean) and of the per-source raw reward
    at the end of GRPO, over its seeds."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for name, rs in by_variant.items():
        cols = sorted({c for r in rs for c, v in r["eval"].items() if v is not None})
        agg: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        for c in cols:
            agg[c] = summarize([r["eval"].get(c) for r in rs])
            agg[f"source_mean/{c}"] = summarize([r["eval_source_mean"].get(c) for r in rs])
            agg[f"baseline/{c}"] = summarize([r["baseline"].get(c) for r in rs])
        sources = sorted({s for r in rs for s in r["reward_by_source"]})
        for s in sources:
            for k in ("first", "last"):
                agg[f"reward/{s}/{k}"] = summarize([r["reward_by_source"].get(s, {}).get(k) for r in rs])
        out[name] = agg
    return out


def format_group(group: str, agg: dict[str, dict[str, Any]]) -> str:
    """One group's table: a row per variant, mean ± std over seeds of the headline columns."""
    names = [n for n in GROUPS[group] if n in agg]
    cols = [c for c in HEADLINE if any(c in agg[n] for n in names)]
    extra = sorted({k for n in names for k in agg[n] if k.startswith("reward/") and k.endswith("/last")})
    lines = [f"{group}: mean ± std over seeds (held-out, pooled); baseline = constant prediction"]
    header = ["variant", *cols, *extra]
    rows = [header]
    for n in names:
        rows.append([n, *(_pm(agg[n].get(c)) for c in cols + extra)])
    rows.append(["baseline", *(_pm(agg[names[0]].get(f"baseline/{c}")) for c in cols), *([""] * len(extra))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _pm(s: Optional[dict[str, Any]]) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.3f}±{s['std']:.3f}"


def prepare(seed: int = 0) -> None:
    """The demo's synthetic data and tiny model under ``runs/`` (as ``medgrpo demo`` builds them)."""
    from cluster.config import load_config
    from cluster.demo import SYNTH_ARGS, _current_synth
    from data.synthetic import generate

    cfg = load_config("cpu_demo")
    synth = Path(cfg.data.train_files[0]).parent
    if not _current_synth(synth, seed):
        generate(str(synth), seed=seed, **SYNTH_ARGS)
    if not (Path(cfg.model.path) / "config.json").exists():
        from data.tiny_model import build_tiny_model, corpus_of

        build_tiny_model(cfg.model.path, corpus_texts=corpus_of(sorted(synth.glob("*.jsonl"))), seed=seed)


def run_study(groups: Sequence[str], seeds: Sequence[int], out: Path, mode: dict[str, int],
              extra: Sequence[str] = ()) -> dict[str, Any]:
    """Every variant the ``groups`` need, for every seed (the streaming base first: the static variant loads its
    table); returns ``{"runs", "aggregate"}``."""
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown group(s) {unknown}; allowed: {', '.join(GROUPS)}")
    names = []
    for g in groups:
        names += [n for n in GROUPS[g] if n not in names]
    if "norm_static" in names:
        names = ["sft_grpo"] + [n for n in names if n != "sft_grpo"]
    runs = []
    for seed in seeds:
        table = None
        for name in names:
            rec = run_one(name, seed, out, mode, Path(table) if table else None, extra)
            if name == "sft_grpo":
                table = rec["normalizer_table"]
            runs.append(rec)
            print(f"[study] {name} seed {seed}: {rec['seconds']:.0f} s", file=sys.stderr, flush=True)
    return {"runs": runs, "aggregate": aggregate(runs)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"short stages {QUICK}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups of {', '.join(GROUPS)}")
    p.add_argument("--out", default="runs/study")
    p.add_argument("--json", help="append the results record to this file")
    a = p.parse_args(argv)
    mode = QUICK if a.quick else FULL
    groups = [g for g in a.only.split(",") if g]
    t0 = time.perf_counter()
    prepare()
    result = run_study(groups, list(range(a.seeds)), Path(a.out), mode)
    for g in groups:
        print(format_group(g, result["aggregate"]))
        print()
    record = {"benchmark": "learning", "quick": a.quick, "mode": mode, "groups": groups, "seeds": a.seeds,
              "wall_s": time.perf_counter() - t0, **result}
    if a.json:
        from bench.common import append_results

        append_results(a.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
