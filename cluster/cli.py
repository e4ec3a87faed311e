"""The `medgrpo` command line: config, synth, tiny-model, to-parquet, eval, train, resume, demo, report, mlflow-ui.

Every subcommand imports what it needs lazily so `medgrpo config` stays fast and needs no Ray or torch.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

from cluster.config import ConfigError, load_config, to_yaml
from cluster.tracking import redact, run_tracking_uri
from rewards.similarity import DEFAULT_MODEL as SIMILARITY_MODEL


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.preset, args.overrides)
    print(redact(to_yaml(cfg)), end="")  # a key pasted into a field by mistake is not echoed to the terminal
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from data.synthetic import generate

    written = generate(args.out, n_per_task=args.n_per_task, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))
    return 0


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from data.tiny_model import build_tiny_model

    corpus = None
    if args.data:
        from data.reader import read_instances

        corpus = []
        for f in sorted(Path(args.data).glob("*.jsonl")):
            for inst in read_instances(f).instances:
                corpus.append(inst.question)
                if inst.answer:
                    corpus.append(inst.answer)
    path = build_tiny_model(args.out, corpus_texts=corpus, seed=args.seed)
    print(f"tiny Qwen2.5-VL saved to {path}")
    return 0


def _cmd_to_parquet(args: argparse.Namespace) -> int:
    from data.parquet import write_parquet
    from data.reader import read_instances

    result = read_instances(args.input, data_roots=args.data_root or None)
    write_parquet(result.instances, args.output)
    print(f"wrote {len(result.instances)} instances to {args.output}; skipped {len(result.skipped)}"
          f" {dict(result.counts_by_reason) if result.skipped else ''}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from cluster.evaluation import run_eval

    return run_eval(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from cluster.driver import train

    cfg = load_config(args.preset, args.overrides)
    train(cfg)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from cluster.driver import train

    run_dir = Path(args.run_dir)
    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"resume: {saved} not found; allowed: a run directory written by `medgrpo train`")
    cfg = load_config(str(saved), ["resume=auto", *args.overrides])
    train(cfg)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cluster.demo import run_demo

    return run_demo(args.overrides)


def _cmd_report(args: argparse.Namespace) -> int:
    from cluster.report import render_report

    try:
        result = render_report(args.run_dir, args.out)
    except FileNotFoundError as e:
        print(f"medgrpo report: error: {e}", file=sys.stderr)
        return 2
    for name, path in result["drawn"].items():
        print(f"{name}: {path}")
    for m in result["missing"]:
        print(f"not drawn: {m}")
    return 0


def mlflow_ui_command(store_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The argument list (run without a shell) serving MLflow's UI on ``store_uri``, bound to ``host:port``."""
    scheme = urlparse(store_uri).scheme
    if scheme == "":  # a plain path, as MLflow accepts for a file store
        store_uri = Path(store_uri).resolve().as_uri()
    elif scheme not in ("file", "sqlite"):
        raise ConfigError(f"mlflow-ui: runs are tracked at {store_uri!r}, a server of its own: open it there; "
                          f"allowed here: a file:// or sqlite:// store")
    if not 0 < port < 65536:
        raise ConfigError(f"mlflow-ui: --port {port} is out of range; allowed: 1..65535")
    # one worker: a single-user UI; uvicorn's multi-worker supervisor also kills workers that start slowly
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri, "--host", host,
            "--port", str(port), "--workers", "1"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cmd_mlflow_ui(args: argparse.Namespace) -> int:
    cmd = mlflow_ui_command(args.backend_store_uri or run_tracking_uri(args.run_dir), args.host, args.port)
    if not _is_loopback(args.host):
        print(f"medgrpo: warning: the MLflow UI has no authentication; --host {args.host} lets anyone who can "
              f"reach this machine read every run's params and artifacts", file=sys.stderr)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    env = dict(os.environ, MLFLOW_ALLOW_FILE_STORE=os.environ.get("MLFLOW_ALLOW_FILE_STORE", "true"))
    print(f"MLflow UI on http://{args.host}:{args.port} (store {cmd[cmd.index('--backend-store-uri') + 1]}); "
          f"Ctrl-C stops it", file=sys.stderr)
    try:
        return subprocess.run(cmd, env=env, check=False).returncode
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medgrpo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("config", help="print the resolved config of a preset with overrides")
    c.add_argument("preset")
    c.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. learner.lr=1e-6")
    c.set_defaults(fn=_cmd_config)

    s = sub.add_parser("synth", help="generate the synthetic MedVidBench (MP4 + frames + image sets)")
    s.add_argument("--out", default="runs/synth")
    s.add_argument("--n-per-task", type=int, default=24)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_synth)

    t = sub.add_parser("tiny-model", help="build the tiny offline Qwen2.5-VL checkpoint folder")
    t.add_argument("--out", default="runs/tiny-qwen2.5-vl")
    t.add_argument("--data", default="runs/synth", help="synthetic data folder whose text trains the tokenizer")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=_cmd_tiny_model)

    q = sub.add_parser("to-parquet", help="convert a MedVidBench JSON/JSONL file to Parquet")
    q.add_argument("input")
    q.add_argument("output")
    q.add_argument("--data-root", action="append", help="allowed media root (repeatable)")
    q.set_defaults(fn=_cmd_to_parquet)

    e = sub.add_parser("eval", help="score predictions against MedVidBench references (leaderboard table)")
    e.add_argument("--references", required=True)
    e.add_argument("--predictions", required=True)
    e.add_argument("--out", help="write the metrics JSON here")
    e.add_argument("--judge", default="none", choices=["none", "openai", "hf", "vllm"])
    e.add_argument("--judge-model", default="")
    e.add_argument("--judge-base-url", default="http://127.0.0.1:8000/v1")
    e.add_argument("--judge-api-key-env", default="OPENAI_API_KEY")
    e.add_argument("--similarity-model", default=SIMILARITY_MODEL,
                   help="sentence-similarity model for the *_sim columns (bundled offline, or a local folder); "
                        "none: skip them")
    e.add_argument("--data-root", action="append", help="allowed media root (repeatable)")
    e.add_argument("--baseline-from", help="training references to fit the baseline columns on (majority answer, "
                                           "mean segment/box); default: the references themselves")
    e.set_defaults(fn=_cmd_eval)

    tr = sub.add_parser("train", help="run SFT/GRPO training (local Ray, or the cluster in RAY_ADDRESS)")
    tr.add_argument("preset")
    tr.add_argument("overrides", nargs="*")
    tr.set_defaults(fn=_cmd_train)

    r = sub.add_parser("resume", help="resume a run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*")
    r.set_defaults(fn=_cmd_resume)

    d = sub.add_parser("demo", help="the CPU demo: synthetic data, tiny model, SFT then GRPO, before/after table")
    d.add_argument("overrides", nargs="*")
    d.set_defaults(fn=_cmd_demo)

    rp = sub.add_parser("report", help="PNG plots of a run (reward per source, tau, SFT loss, eval vs baselines)")
    rp.add_argument("run_dir")
    rp.add_argument("--out", help="folder for the PNGs (default RUN_DIR/report)")
    rp.set_defaults(fn=_cmd_report)

    m = sub.add_parser("mlflow-ui", help="serve the MLflow UI on a run's tracking store (127.0.0.1 by default)")
    m.add_argument("run_dir", nargs="?", default="runs/demo", help="a run directory written by `medgrpo train`")
    m.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; the UI has no authentication)")
    m.add_argument("--port", type=int, default=5000)
    m.add_argument("--backend-store-uri", help="serve this MLflow store instead of the run's")
    m.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    m.set_defaults(fn=_cmd_mlflow_ui)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except ConfigError as e:
        print(f"medgrpo: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
