"""Shared benchmark plumbing: interleaved side-by-side timing, environment capture, readable tables, JSON results.

Measurement rule (the machine is shared and noisy): a figure that matters is a *ratio* of two candidates timed in
the same process, interleaved round by round (``compare``), with the candidates' order rotated each round so a
slow phase of the machine hits all of them. The ratio reported is the median of the per-round ratios; absolute
rates are printed too but are only comparable within one run.

Results file (``--json PATH``, appended to): ``{"runs": [record, ...]}``, one record per benchmark invocation with
``benchmark``, ``command``, ``quick``, ``env`` (date, cores, load, versions, git commit), ``wall_s``, ``tables``
(name -> list of row dicts), ``summary`` (headline figures), ``targets`` and ``notes``.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
RESULTS_VERSION = 1
#: The real MedVidBench examples (``{qa_type: {question, answer}}``): the shared copy, else the test fixture.
SHARED_EXAMPLES = REPO.parent / "shared" / "data" / "medvidbench_examples.json"
FIXTURE_EXAMPLES = REPO / "tests" / "fixtures" / "medvidbench_examples.json"
_PACKAGES = ("numpy", "torch", "ray", "deepspeed", "transformers", "decord", "av")


# -- timing ------------------------------------------------------------------------------------------------------
def time_per_call(fn: Callable[[], Any], min_time: float, max_calls: int = 1_000_000) -> tuple[float, int]:
    """Call ``fn`` until ``min_time`` seconds have passed (at least once); return (seconds per call, calls)."""
    calls = 0
    t0 = time.perf_counter()
    elapsed = 0.0
    while calls < max_calls and (calls == 0 or elapsed < min_time):
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
    return elapsed / calls, calls


@dataclass
class Timing:
    """Per-round seconds per call of one candidate (``compare``)."""

    per_round: list[float] = field(default_factory=list)
    calls: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.per_round)

    @property
    def best(self) -> float:
        return min(self.per_round)

    @property
    def spread(self) -> float:
        """(max - min) / median over the rounds: how noisy this candidate's timing was."""
        return (max(self.per_round) - min(self.per_round)) / self.median if self.median > 0 else math.nan


def compare(candidates: Mapping[str, Callable[[], Any]], rounds: int = 3, min_time: float = 0.2,
            warmup: int = 1, max_calls: int = 1_000_000) -> dict[str, Timing]:
    """Time every candidate in ``rounds`` interleaved rounds (order rotated each round) after ``warmup`` calls each.

    Each round calls a candidate repeatedly for at least ``min_time`` seconds (``max_calls`` at most) and records
    its mean seconds per call for that round.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    out = {name: Timing() for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            sec, calls = time_per_call(candidates[name], min_time, max_calls)
            out[name].per_round.append(sec)
            out[name].calls += calls
    return out


def ratio(num: Timing, den: Timing) -> float:
    """Median over rounds of ``num / den`` seconds per call (> 1: ``num`` is slower)."""
    return statistics.median(a / b for a, b in zip(num.per_round, den.per_round))


# -- environment -------------------------------------------------------------------------------------------------
def _git(*args: str) -> Optional[str]:
    try:
        # --no-optional-locks: never take .git/index.lock (others may be using the checkout)
        res = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def env_info() -> dict[str, Any]:
    """Where and when a benchmark ran: date, cores, load, platform, package versions, git commit."""
    versions: dict[str, Optional[str]] = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        cores_usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores_usable = os.cpu_count()
    gpu = "none"
    torch_mod = sys.modules.get("torch")
    if torch_mod is not None and torch_mod.cuda.is_available():
        gpu = torch_mod.cuda.get_device_name(0)
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": os.cpu_count(), "cores_usable": cores_usable,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": gpu, "platform": platform.platform(), "python": platform.python_version(),
        "versions": versions, "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


# -- formatting --------------------------------------------------------------------------------------------------
def fmt_num(x: Any, digits: int = 3) -> str:
    """Compact human form: 1234567 -> '1.23M', 0.00123 -> '0.00123', NaN/None -> '-'."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "-"
        ax = abs(x)
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if ax >= scale:
                return f"{x / scale:.{digits}g}{suffix}"
        return f"{x:.{digits}g}"
    return str(x)


def fmt_bytes(n: Optional[float]) -> str:
    if n is None or not math.isfinite(float(n)):
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - loop always returns


Column = tuple[str, str, Callable[[Any], str]]  # (row key, header, formatter)


def render_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A plain-text table under a title line: text columns left-aligned, numbers right-aligned."""
    cells = [[h for _, h, _ in columns]] + [[f(r.get(k)) for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    left = [bool(rows) and all(isinstance(r.get(k), str) for r in rows) for k, _, _ in columns]
    lines = [title, "-" * max(len(title), sum(widths) + 2 * (len(widths) - 1))]
    for j, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(row, widths, left)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- results -----------------------------------------------------------------------------------------------------
def _json_safe(x: Any) -> Any:
    """NaN/inf -> None (strict JSON), tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (TypeError, ValueError):
            return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def append_results(path: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Append one benchmark record to a results file (created if absent); atomic replace of the file.

    Raises ValueError if the file exists but is not a results file (it is never overwritten then).
    """
    p = Path(path)
    doc: dict[str, Any] = {"version": RESULTS_VERSION, "runs": []}
    if p.exists() and p.stat().st_size > 0:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON ({e}); refusing to overwrite it") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
            raise ValueError(f"{p} is not a benchmark results file (expected {{'runs': [...]}}); refusing to overwrite")
    doc["runs"].append(_json_safe(dict(record)))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p


class Report:
    """Collects one benchmark's tables and headline figures, prints them, and appends them to a results file."""

    def __init__(self, benchmark: str, args: argparse.Namespace, uses_torch: bool = False) -> None:
        self.benchmark = benchmark
        self.args = args
        threads = getattr(args, "threads", 0)
        if uses_torch:
            import torch

            if threads > 0:
                torch.set_num_threads(threads)
            threads = torch.get_num_threads()
        self.env = env_info()
        self.env["torch_threads"] = threads if uses_torch else None
        self.t0 = time.perf_counter()
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.summary: dict[str, Any] = {}
        self.targets: dict[str, str] = {}
        self.notes: list[str] = []

    def table(self, name: str, title: str, rows: list[dict[str, Any]], columns: Sequence[Column]) -> None:
        self.tables[name] = rows
        print("\n" + render_table(title, rows, columns), flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def record(self) -> dict[str, Any]:
        kept, skip = [], False
        for a in sys.argv[1:]:  # the command that reproduces the figures; where they were written is incidental
            if skip:
                skip = False
            elif a == "--json":
                skip = True
            elif not a.startswith("--json="):
                kept.append(a)
        argv = " ".join(kept)
        return {"benchmark": self.benchmark, "command": f"python -m bench.{self.benchmark} {argv}".strip(),
                "quick": bool(getattr(self.args, "quick", False)), "env": self.env,
                "wall_s": round(time.perf_counter() - self.t0, 2), "tables": self.tables, "summary": self.summary,
                "targets": self.targets, "notes": self.notes}

    def finish(self) -> dict[str, Any]:
        """Print the summary; append the record to ``--json`` when given. Returns the record."""
        rec = self.record()
        width = max((len(k) for k in self.summary), default=0)
        print(f"\nsummary ({self.benchmark}, {rec['wall_s']} s, {self.env['date']}, {self.env['cores']} cores, "
              f"load {self.env['loadavg_1m_at_start']} at start, gpu: {self.env['gpu']}"
              + (f", torch threads: {self.env['torch_threads']}" if self.env["torch_threads"] else "") + ")")
        for k, v in self.summary.items():
            target = f"   [target: {self.targets[k]}]" if k in self.targets else ""
            print(f"  {k.ljust(width)}  {fmt_num(v) if not isinstance(v, str) else v}{target}")
        if getattr(self.args, "json", None):
            p = append_results(self.args.json, rec)
            print(f"appended to {p}")
        return rec


def parser(benchmark: str, description: str) -> argparse.ArgumentParser:
    """The common command line: ``--quick``, ``--json PATH``, ``--seed``, ``--threads``."""
    ap = argparse.ArgumentParser(prog=f"python -m bench.{benchmark}", description=description)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds: finishes in under a minute")
    ap.add_argument("--json", metavar="PATH", help="append the results to this JSON file ({'runs': [...]})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated data (default 0)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads in this process (default 1; 0 = torch's default). On a shared "
                         "2-core machine two OpenMP threads stall under load: the same generate() call measured "
                         "0.07-2.4 s with 2 threads and a steady 0.14 s with 1")
    return ap


def load_judge_stub() -> Any:
    """tests/judge_http_stub.py (tests/ is not a package): the local OpenAI-compatible judge endpoint."""
    path = REPO / "tests" / "judge_http_stub.py"
    spec = importlib.util.spec_from_file_location("medgrpo_judge_http_stub", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the judge HTTP stub from {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def examples_path() -> Optional[Path]:
    """The real MedVidBench examples: the shared copy when present, else the test fixture, else None."""
    for p in (SHARED_EXAMPLES, FIXTURE_EXAMPLES):
        if p.is_file():
            return p
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a rendezvous the caller starts right away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_local_ray(num_cpus: int = 2, env_vars: Optional[Mapping[str, str]] = None) -> bool:
    """Start a local Ray (quiet: no dashboard, no driver logs) unless one is already up; returns whether it started
    one here (the caller then shuts it down). The workers get ``PYTHONPATH`` = the repository, usage stats off,
    plus ``env_vars``."""
    import ray

    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **(env_vars or {})}
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": env})
    return True


def require_groups(groups: Sequence[Any], what: str = "") -> list[Any]:
    """``groups`` from ``RolloutWorker.generate`` as a list, or RuntimeError naming the failed ones (a failed prompt
    comes back as an error record with no ``completions``); ``what`` says which prompts, for the message."""
    bad = [g for g in groups if not hasattr(g, "completions")]
    if bad:
        on = f" on {what}" if what else ""
        raise RuntimeError(f"rollout failed{on}: {len(bad)} of {len(groups)} groups, e.g. {bad[:2]}")
    return list(groups)


def synth_tiny_model(root: Path, seed: int, n_per_task: int = 2) -> tuple[list[Any], str]:
    """Synthetic MedVidBench under ``root/synth`` and the tiny Qwen2.5-VL under ``root/model`` (tokenizer trained
    on the train split's non-empty questions and answers); returns the train instances and the model path."""
    from data.reader import read_instances
    from data.synthetic import generate
    from data.tiny_model import build_tiny_model

    files = generate(root / "synth", n_per_task=n_per_task, seed=seed)
    instances = read_instances(files["train"]).instances
    corpus = [t for i in instances for t in (i.question, i.answer) if t]
    return instances, str(build_tiny_model(root / "model", corpus_texts=corpus, seed=seed))
