"""Start-up and shut-down of one medgrpo job, this checkout against another (e.g. the commit before a start-up change).

Each run is a fresh process that runs a 3-step async GRPO job (``cluster.driver.Trainer`` on ``configs/cpu_demo.yaml``
with ``bench.peer_trl``'s race overrides: the tiny model, the synthetic image rows) from one checkout, with that
checkout's code and venv, and times: process launch to the end of ``Trainer(cfg)`` (**start-up**), the steps,
``close()``, and launch to process exit (**job**); plus the CPU seconds of every process of the job up to the end of
start-up (``bench.peer_trl.process_tree_cpu``). The two checkouts run interleaved, order alternating, each with its
own ``TORCH_EXTENSIONS_DIR`` warmed by one untimed run first (a cold DeepSpeed op cache costs the old code a JIT
build; that first-run cost is reported separately as ``cold_startup_s``). Only stable entry points of the other
checkout are used (``cluster.config.load_config``, ``cluster.driver.Trainer``), so it can be any recent commit.

Run: ``python -m bench.startup_ab --other PATH [--rounds 3] [--json PATH]`` (PATH: a checkout with a ``.venv``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from bench.common import REPO, Report, fmt_num, parser

KEYS = ("startup_s", "steps_s", "close_s", "exit_s", "job_s", "startup_cpu_s")


def worker(repo: str, assets: str, launched: float) -> dict[str, Any]:
    """Inside the run's process: one 3-step async job from ``repo``; its timings."""
    entry = time.time()
    sys.path.insert(0, repo)
    import logging

    from cluster.config import load_config
    from cluster.driver import Trainer

    # this checkout's process accounting, loaded from its file (``bench`` on sys.path is the other checkout's)
    spec = importlib.util.spec_from_file_location("startup_ab_peer_trl", Path(__file__).with_name("peer_trl.py"))
    helpers = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = helpers  # type: ignore[union-attr]  # (its dataclasses look their module up)
    spec.loader.exec_module(helpers)  # type: ignore[union-attr]

    a = json.loads(Path(assets).read_text(encoding="utf-8"))
    run_dir = Path(a["root"]) / f"run-{os.getpid()}"
    cfg = load_config("cpu_demo", [
        f"run_dir={run_dir}", f"model.path={a['model']}", f"data.train_files=[{a['race_file']}]", "data.eval_files=[]",
        "data.tasks=[vqa_mc,box_grounding,image_cls]", "stages=[{name: grpo, kind: grpo, steps: 3}]", "eval_every=0",
        "checkpoint_every=0", "rollout.max_new_tokens=32", "rollout.max_staleness=1", "rollout.dynamic_sampling=false",
        "normalizer.mode=off", "tracking.progress_bar=false",
        f"tracking.mlflow_uri={(Path(a['root']) / 'mlruns').as_uri()}"])
    logging.getLogger("medgrpo").setLevel(logging.WARNING)
    trainer = Trainer(cfg)
    ready = time.time()
    cpu = helpers.cpu_by_name(helpers.process_tree_cpu(os.getpid()))
    trainer.run()
    ran = time.time()
    trainer.close()
    return {"imports_s": entry - launched, "startup_s": ready - launched, "steps_s": ran - ready,
            "close_s": time.time() - ran, "startup_cpu_s": sum(cpu.values()), "cpu": cpu, "end": time.time()}


def _run(repo: Path, assets: Path, ext_dir: Path, out: Path) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               DS_ACCELERATOR="cpu", MLFLOW_ALLOW_FILE_STORE="true", RAY_USAGE_STATS_ENABLED="0",
               MEDGRPO_DASHBOARD="0", HF_HUB_OFFLINE="1", TORCH_EXTENSIONS_DIR=str(ext_dir),
               PYTHONPATH=str(repo))
    launched = time.time()
    # this file run as a script: every package (cluster, actors, bench, ...) comes from ``repo``
    cmd = [str(repo / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--worker", str(repo), "--assets",
           str(assets), "--launched", repr(launched), "--out", str(out)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1200, check=False)
    job = time.time() - launched
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{repo}: exit {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    res = json.loads(out.read_text(encoding="utf-8"))
    res.update(job_s=job, exit_s=launched + job - res.pop("end"), load_1m=load)
    return res


def _commit(repo: Path) -> str:
    p = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True, check=False)
    return p.stdout.strip() or "?"


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("startup_ab", __doc__.split("\n")[0])
    ap.add_argument("--other", help="the other checkout (with a .venv)")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 1 quick, 3 full)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--assets", help=argparse.SUPPRESS)
    ap.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        res = worker(args.worker, args.assets, args.launched)
        Path(args.out).write_text(json.dumps(res), encoding="utf-8")
        return res
    if not args.other:
        raise SystemExit("--other PATH (a checkout to compare with) is required")
    from bench.peer_trl import build_assets

    rep = Report("startup_ab", args)
    trees = {"this": REPO, "other": Path(args.other).resolve()}
    commits = {k: _commit(p) for k, p in trees.items()}
    rounds = args.rounds or (1 if args.quick else 3)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-ab-") as tmp:
        root = Path(tmp)
        assets = root / "assets.json"
        assets.write_text(json.dumps({**build_assets(root, args.seed), "root": str(root)}), encoding="utf-8")
        cold = {}
        for name, repo in trees.items():  # warm each checkout's DeepSpeed op cache (its first run: cold)
            cold[name] = _run(repo, assets, root / f"ext-{name}", root / f"cold-{name}.json")["startup_s"]
        for r in range(rounds):
            for name in (("this", "other") if r % 2 else ("other", "this")):
                res = _run(trees[name], assets, root / f"ext-{name}", root / f"r{r}-{name}.json")
                rows.append({"round": r, "tree": name, "commit": commits[name], **res})
                print(f"round {r} {name} ({commits[name]}): start-up {res['startup_s']:.1f} s, job {res['job_s']:.1f} s"
                      f", start-up CPU {res['startup_cpu_s']:.1f} s, load {res['load_1m']:.1f}", flush=True)
    table = []
    for name in trees:
        mine = [x for x in rows if x["tree"] == name]
        row: dict[str, Any] = {"tree": name, "commit": commits[name], "cold_startup_s": cold[name]}
        for k in KEYS:
            vals = [x[k] for x in mine]
            row[k] = statistics.median(vals)
            row[f"{k}_range"] = f"{min(vals):.1f}-{max(vals):.1f}"
        table.append(row)
    rep.table("trees", f"medians over {rounds} rounds (s); ranges in the JSON", table,
              [("tree", "tree", str), ("commit", "commit", str), ("cold_startup_s", "cold start-up", fmt_num),
               *((k, k, fmt_num) for k in KEYS)])
    rep.tables["runs"] = rows
    per = {k: [a[k] / b[k] for a, b in zip([x for x in rows if x["tree"] == "other"],
                                            [x for x in rows if x["tree"] == "this"])] for k in KEYS}
    for k in ("startup_s", "job_s", "startup_cpu_s"):
        rep.summary[f"other_over_this/{k}"] = statistics.median(per[k])
        rep.summary[f"other_over_this/{k}_range"] = f"{min(per[k]):.2f}-{max(per[k]):.2f}"
    rep.summary["commits"] = f"this {commits['this']}, other {commits['other']}"
    rep.summary["load_1m_range"] = f"{min(x['load_1m'] for x in rows):.1f}-{max(x['load_1m'] for x in rows):.1f}"
    return rep.finish()


if __name__ == "__main__":
    main()
