"""Run every benchmark, one after the other, each in its own process, into one results JSON.

``python -m bench.run_all [--quick] [--out bench/results.json] [--only NAME ...]``

Each benchmark runs as ``python -m bench.<name> [--quick] --json <tmp>`` (a fresh process: Ray and the
DeepSpeed process group start clean, and no benchmark's threads or memory linger into the next). The output file is
replaced, atomically, once all have run: ``{"version", "run_all": {...}, "runs": [record, ...]}`` with one record
per benchmark (format in ``bench/common.py``). A benchmark that fails or times out is reported in
``run_all.failures`` with the tail of its output; the others still run, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from bench.common import REPO, RESULTS_VERSION, env_info

BENCHMARKS = ("normalizer", "video", "weight_sync", "broadcast", "learner", "learner_zero", "rollout_batch", "judge",
              "step_anatomy", "peer_trl", "similarity")
TIMEOUT_S = {"quick": 600, "full": 3600}


def run_one(name: str, quick: bool, json_path: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run one benchmark module in a subprocess; returns {name, returncode, wall_s, output_tail}."""
    cmd = [sys.executable, "-m", f"bench.{name}", "--json", str(json_path), *extra]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    print(f"\n=== bench.{name} ({'quick' if quick else 'full'}) ===", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S["quick" if quick else "full"], check=False)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        def _text(b: Any) -> str:
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        rc, stdout, stderr = 124, _text(e.stdout), _text(e.stderr) + f"\n[timed out after {e.timeout} s]"
    print(stdout, end="", flush=True)
    if rc != 0 and stderr:
        print(stderr[-4000:], file=sys.stderr, flush=True)
    out = stdout + stderr
    return {"benchmark": name, "returncode": rc, "wall_s": round(time.perf_counter() - t0, 1),
            "output_tail": out[-4000:]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="every benchmark in its quick mode (< 60 s each, but step_anatomy: it starts the trainer "
                         "three times, ~3-5 min)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results.json"), help="results file (replaced)")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    args = ap.parse_args(argv)
    names = list(args.only or BENCHMARKS)
    out = Path(args.out)
    started = env_info()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-run-all-") as tmp:
        part = Path(tmp) / "results.json"
        results = [run_one(n, args.quick, part) for n in names]
        runs = json.loads(part.read_text(encoding="utf-8"))["runs"] if part.exists() else []
    failures = [r for r in results if r["returncode"] != 0]
    recorded = {r.get("benchmark") for r in runs}
    for r in results:  # exit 0 but no record would be a bug in the benchmark: say so
        if r["returncode"] == 0 and r["benchmark"] not in recorded:
            failures.append({**r, "returncode": None, "error": "exited 0 but appended no results"})
    argv_s = " ".join(sys.argv[1:] if argv is None else argv)
    doc = {"version": RESULTS_VERSION,
           "run_all": {"command": f"python -m bench.run_all {argv_s}".strip(), "quick": args.quick,
                       "env": started, "wall_s": round(time.perf_counter() - t0, 1),
                       "benchmarks": [{k: r[k] for k in ("benchmark", "returncode", "wall_s")} for r in results],
                       "failures": failures},
           "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp_out.replace(out)
    print(f"\nwrote {out}: {len(runs)} benchmark record(s), {len(failures)} failure(s), "
          f"{doc['run_all']['wall_s']} s")
    for f in failures:
        print(f"  FAILED bench.{f['benchmark']}: returncode {f['returncode']}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
