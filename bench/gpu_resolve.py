"""Does the GPU install resolve? Runs pip's resolver (``pip install --dry-run``, no download of wheels it can
read metadata for, nothing installed) for ``-e ".[gpu]" -c constraints/gpu.txt`` against PyPI and records what it
picked (torch, torchvision, transformers, vllm, deepspeed, ray, ...) or pip's error, in one JSON.

    python -m bench.gpu_resolve [--out bench/results_gpu_resolve.json]

Needs network to PyPI (minutes the first time). Not part of the test suite: the record is kept in the repo.
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

REPO = Path(__file__).resolve().parent.parent
WATCH = ("torch", "torchvision", "transformers", "vllm", "deepspeed", "ray", "tokenizers", "safetensors",
         "sentence-transformers", "xformers", "flashinfer-python", "numpy")


def resolve(python: str = sys.executable, index_url: str = "https://pypi.org/simple") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
               str(report), "--index-url", index_url, "-e", ".[gpu]", "-c", "constraints/gpu.txt"]
        # only PyPI: this machine's local wheel folders and indexes hold CPU builds that must not be picked
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        out = {"command": " ".join(cmd[1:]).replace(str(report), "REPORT"), "returncode": proc.returncode,
               "seconds": round(time.perf_counter() - t0, 1), "python": sys.version.split()[0],
               "date": time.strftime("%Y-%m-%d", time.gmtime())}
        if proc.returncode == 0 and report.exists():
            items = json.loads(report.read_text())["install"]
            picked = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}
            out["resolves"] = True
            out["packages"] = len(picked)
            out["picked"] = {k: picked[k] for k in WATCH if k in picked}
        else:
            out["resolves"] = False
            out["error"] = (proc.stderr or proc.stdout)[-3000:]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results_gpu_resolve.json"))
    args = ap.parse_args()
    rec = resolve()
    Path(args.out).write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps(rec, indent=1))
    return 0 if rec["resolves"] else 1


if __name__ == "__main__":
    sys.exit(main())
