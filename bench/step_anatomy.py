"""Step anatomy of the real training loop: where one GRPO step's time goes, sync vs async, judge off vs on.

Runs ``cluster.driver.Trainer`` itself (``configs/cpu_demo.yaml`` with overrides: one GRPO stage of a few steps,
no SFT, no eval, no checkpoint, no progress bar; tiny Qwen2.5-VL and synthetic MedVidBench built in a temporary
folder; MLflow on a file store there) in several configurations, interleaved round by round (order rotated):

* ``sync``        ``rollout.max_staleness=0``: generate, then reward, normalize, train, push weights;
* ``async``       ``rollout.max_staleness=1``: the next step's rollouts generate while this step scores and trains;
* ``sync+judge``  (and ``async+judge`` in full mode): the LLM judge on (``reward.judge.backend=openai``) against
  the local OpenAI-compatible HTTP stub of ``tests/judge_http_stub.py``, each request answered after
  ``--judge-delay`` seconds (a hosted API's latency).

Per step it records the driver's own timings (``time/step_s``, ``time/generate_s``, ``time/reward_s``,
``time/normalize_s``, ``time/train_s``, ``time/sync_s``; ``time/decode_s``, ``time/judge_s`` and
``time/overhead_s`` when the driver reports them) by wrapping ``Trainer.tracker.log_metrics``. Where the driver
does not report one, the benchmark measures it from outside: ``decode`` = the rollout actors' video decode time
of the step's groups (``PromptGroup.extra['decode_s']``, read by wrapping ``ActorSet.collect_rollouts``);
``overhead`` = step time minus the five driver phases; the judge's cost = the reward phase with the judge on minus
the same phase with it off (same seed, same prompts). It also times what the driver's ``time/step_s`` leaves out:
the MLflow ``log_batch`` after each step (``tracking``) and the step's full wall time, from one step's log call to
the next (``wall``). Driver overhead is reported as an upper bound too: ``overhead`` (step time outside the phases)
plus the driver's own CPU time inside the phases (``time/driver_in_phases_s``: building the learner's batch,
(de)serializing Ray arguments and results, reward bookkeeping; its main thread's ``time.thread_time``), which phase
time would otherwise hide.

Steady state: the first ``WARMUP_STEPS`` steps (lazy model loads, the first DeepSpeed step, the first look-ahead)
and the last step (no look-ahead in async) are left out. ``rollout.dynamic_sampling=false`` so every step trains
the same number of samples (refill rounds would make the work per step differ between configurations).

Run: ``python -m bench.step_anatomy [--quick] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from bench.common import REPO, Report, fmt_num, load_judge_stub, parser

WARMUP_STEPS = 2
#: The phases the driver times itself, in loop order; their sum is the step minus the driver's own overhead.
DRIVER_PHASES = ("generate", "reward", "normalize", "train", "sync")
#: Sub-phases: measured inside a driver phase (shown, never added to the sum).
SUB_PHASES = {"decode": "generate", "judge": "reward"}
PHASE_ORDER = ("generate", "decode", "reward", "judge", "normalize", "train", "sync", "overhead")


@dataclass
class RunSpec:
    """One configuration of the trainer to time."""

    name: str
    staleness: int
    judge: bool


@dataclass
class RunResult:
    """Per-step metric dicts of one trainer run (as logged, plus the benchmark's own ``bench/...`` entries)."""

    spec: RunSpec
    steps: list[dict[str, float]] = field(default_factory=list)
    group_size: int = 0
    setup_s: float = 0.0


# -- pure helpers (tested in tests/test_bench.py) -----------------------------------------------------------------
def steady(steps: Sequence[Mapping[str, float]], warmup: int = WARMUP_STEPS, drop_last: int = 1
           ) -> list[Mapping[str, float]]:
    """The steady-state steps: without the first ``warmup`` and the last ``drop_last``. Raises if none are left."""
    kept = list(steps[warmup: len(steps) - drop_last if drop_last else None])
    if not kept:
        raise ValueError(f"{len(steps)} steps leave no steady state after {warmup} warm-up and {drop_last} last "
                         f"step(s) are dropped; run more steps")
    return kept


def phase_seconds(step: Mapping[str, float]) -> dict[str, float]:
    """One step's seconds per phase. ``overhead`` = the driver's ``time/overhead_s`` if logged, else step time
    minus the five driver phases (missing phases count 0: the driver logs a phase only when it ran). Sub-phases
    (``decode``, ``judge``) come from the driver's metric when logged, else from the benchmark's own measurement
    (``bench/decode_s``); absent, they are NaN (not measured)."""
    out = {p: float(step.get(f"time/{p}_s", 0.0)) for p in DRIVER_PHASES}
    if "time/overhead_s" in step:
        out["overhead"] = float(step["time/overhead_s"])
    else:
        out["overhead"] = float(step["time/step_s"]) - sum(out[p] for p in DRIVER_PHASES)
    for sub in SUB_PHASES:
        v = step.get(f"time/{sub}_s", step.get(f"bench/{sub}_s"))
        out[sub] = float(v) if v is not None else float("nan")
    return out


def anatomy(steps: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean seconds per step and share of the mean step (``time/step_s``) for every phase, over ``steps``."""
    if not steps:
        raise ValueError("no steps")
    per = [phase_seconds(s) for s in steps]
    step_mean = statistics.fmean(float(s["time/step_s"]) for s in steps)
    out: dict[str, dict[str, float]] = {}
    for p in PHASE_ORDER:
        mean = statistics.fmean(x[p] for x in per)
        out[p] = {"mean_s": mean, "share": mean / step_mean if step_mean > 0 else float("nan")}
    out["step"] = {"mean_s": step_mean, "share": 1.0}
    return out


def samples_per_s(steps: Sequence[Mapping[str, float]], group_size: int, time_key: str = "bench/wall_s") -> float:
    """Trained samples (``accounting/prompts_trained`` × G) per second of ``time_key`` summed over ``steps``."""
    secs = sum(float(s[time_key]) for s in steps)
    samples = sum(float(s.get("accounting/prompts_trained", 0.0)) * group_size for s in steps)
    return samples / secs if secs > 0 else float("nan")


# -- running the trainer ------------------------------------------------------------------------------------------
def build_assets(root: Path, seed: int) -> dict[str, str]:
    """Synthetic MedVidBench + the tiny Qwen2.5-VL (tokenizer trained on its questions and answers), as the demo."""
    from data.synthetic import generate
    from data.tiny_model import build_tiny_model, corpus_of

    files = generate(root / "synth", n_per_task=4, seed=seed)
    model = build_tiny_model(root / "model", corpus_texts=corpus_of((files["train"], files["eval"])), seed=seed)
    return {"train": str(files["train"]), "eval": str(files["eval"]), "model": str(model), "root": str(root)}


def overrides(spec: RunSpec, assets: Mapping[str, str], steps: int, run_dir: Path, judge_url: Optional[str],
              seed: int) -> list[str]:
    """cpu_demo overrides for one run: one GRPO stage of ``steps`` steps, nothing but the loop."""
    ov = [f"run_dir={run_dir}", f"seed={seed}", f"model.path={assets['model']}",
          f"data.train_files=[{assets['train']}]", f"data.eval_files=[{assets['eval']}]",
          f"stages=[{{name: grpo, kind: grpo, steps: {steps}}}]", "eval_every=0", "checkpoint_every=0",
          "reward.num_cpus=0", "rollout.dynamic_sampling=false", f"rollout.max_staleness={spec.staleness}",
          "tracking.progress_bar=false", f"tracking.run_name={run_dir.name}",
          f"tracking.mlflow_uri={(Path(assets['root']) / 'mlruns').as_uri()}"]
    if spec.judge:
        if not judge_url:
            raise ValueError("a judge run needs the stub's URL")
        ov += ["reward.judge.backend=openai", f"reward.judge.base_url={judge_url}", "reward.judge.model=stub",
               "reward.judge.api_key_env=MEDGRPO_BENCH_NO_KEY"]
    return ov


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The driver logs at INFO, and the judge warns once about the missing API key: keep the tables readable."""
    loggers = [logging.getLogger(n) for n in ("medgrpo", "rewards.judge_backends", "mlflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def init_ray() -> None:
    """A local Ray for the runs, set up as ``cluster.driver.connect_ray`` does (same worker environment) but
    without the dashboard and without forwarding the actors' logs: the driver then reuses it."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in ("DS_ACCELERATOR", "MLFLOW_ALLOW_FILE_STORE", "HF_HUB_OFFLINE",
                                      "TOKENIZERS_PARALLELISM") if k in os.environ}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    ray.init(namespace="medgrpo", include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})


def instrument(trainer: Any, sink: list[dict[str, float]], judge_server: Any = None) -> None:
    """Wrap the trainer's ``tracker.log_metrics`` (to keep every step's metrics, time the MLflow call and the step's
    wall time) and ``actors.collect_rollouts`` (to sum the rollout actors' decode and generate time per step)."""
    acc = {"decode": 0.0, "actor_generate": 0.0}
    orig_collect: Callable[..., Any] = trainer.actors.collect_rollouts
    orig_log: Callable[..., Any] = trainer.tracker.log_metrics
    state = {"last_end": time.perf_counter(), "requests": len(judge_server.requests) if judge_server else 0}

    def collect_rollouts(pending: Any, timeout: float) -> Any:
        prompts, groups, failures = orig_collect(pending, timeout)
        for g in groups:
            acc["decode"] += float(g.extra.get("decode_s", 0.0))
            acc["actor_generate"] += float(g.extra.get("generate_s", 0.0))
        return prompts, groups, failures

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        t0 = time.perf_counter()
        orig_log(metrics, step)
        t1 = time.perf_counter()
        row = dict(metrics)
        row["bench/step"] = step
        row["bench/decode_s"] = acc["decode"]
        row["bench/actor_generate_s"] = acc["actor_generate"]
        row["bench/tracking_s"] = t1 - t0
        row["bench/wall_s"] = t1 - state["last_end"]
        if judge_server is not None:
            n = len(judge_server.requests)
            row["bench/judge_requests"] = n - state["requests"]
            state["requests"] = n
        acc["decode"] = acc["actor_generate"] = 0.0
        state["last_end"] = t1
        sink.append(row)

    trainer.actors.collect_rollouts = collect_rollouts
    trainer.tracker.log_metrics = log_metrics


def run_once(spec: RunSpec, assets: Mapping[str, str], steps: int, run_dir: Path, judge_server: Any,
             seed: int) -> RunResult:
    """Build a Trainer for ``spec``, run its ``steps`` GRPO steps, close it; the per-step metrics come back."""
    from cluster.config import load_config
    from cluster.driver import Trainer

    cfg = load_config("cpu_demo", overrides(spec, assets, steps, run_dir, judge_server.url if judge_server else None,
                                            seed))
    res = RunResult(spec, group_size=cfg.rollout.group_size)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        res.setup_s = time.perf_counter() - t0
        instrument(trainer, res.steps, judge_server if spec.judge else None)
        trainer.run()
    finally:
        trainer.close()
    if len(res.steps) != steps:
        raise RuntimeError(f"{spec.name}: expected {steps} logged steps, got {len(res.steps)}")
    return res


# -- report -------------------------------------------------------------------------------------------------------
def _fmt_share(x: Any) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f} %"


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("step_anatomy", __doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=0, help="GRPO steps per run (default 6 quick, 10 full)")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 1 quick, 3 full)")
    ap.add_argument("--judge-delay", type=float, default=1.0,
                    help="seconds the judge stub waits before each reply (default 1.0: a hosted model writing a "
                         "rubric reply of a few hundred tokens)")
    args: argparse.Namespace = ap.parse_args(argv)
    for k, v in (("DS_ACCELERATOR", "cpu"), ("TOKENIZERS_PARALLELISM", "false"), ("MLFLOW_ALLOW_FILE_STORE", "true"),
                 ("RAY_USAGE_STATS_ENABLED", "0"), ("MEDGRPO_DASHBOARD", "0")):
        os.environ.setdefault(k, v)
    rep = Report("step_anatomy", args, uses_torch=True)
    steps = args.steps or (6 if args.quick else 10)
    rounds = args.rounds or (1 if args.quick else 3)
    if steps < WARMUP_STEPS + 2:
        raise SystemExit(f"--steps must be >= {WARMUP_STEPS + 2} (warm-up, at least one steady step, the last step)")
    specs = [RunSpec("sync", 0, False), RunSpec("async", 1, False), RunSpec("sync+judge", 0, True)]
    if not args.quick:
        specs.append(RunSpec("async+judge", 1, True))

    stub = load_judge_stub()
    delay = args.judge_delay
    server = stub.JudgeServer(backlog=128, delay_s=delay)
    results: dict[str, list[RunResult]] = {s.name: [] for s in specs}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-step-anatomy-") as tmp, _quiet():
            assets = build_assets(Path(tmp), args.seed)
            init_ray()
            for r in range(rounds):
                order = specs[r % len(specs):] + specs[: r % len(specs)]
                for spec in order:
                    run_dir = Path(tmp) / f"run-{spec.name.replace('+', '-')}-{r}"
                    res = run_once(spec, assets, steps, run_dir, server, args.seed)
                    results[spec.name].append(res)
                    st = steady(res.steps)
                    print(f"round {r + 1}/{rounds} {spec.name}: setup {res.setup_s:.1f} s, steady step "
                          f"{statistics.fmean(s['bench/wall_s'] for s in st):.3f} s", flush=True)
    finally:
        server.close()
        import ray

        if ray.is_initialized():
            ray.shutdown()

    # per configuration: the steady steps of every round pooled
    pooled = {name: [s for res in rs for s in steady(res.steps)] for name, rs in results.items()}
    an = {name: anatomy(st) for name, st in pooled.items()}
    measured = {k for st in pooled.values() for s in st for k in s if k.startswith("time/")}
    if "time/judge_s" not in measured:  # the judge's cost: reward phase with the judge on minus off
        for name in an:
            base = name.replace("+judge", "")
            if name != base and base in an:
                cost = an[name]["reward"]["mean_s"] - an[base]["reward"]["mean_s"]
                an[name]["judge"] = {"mean_s": cost, "share": cost / an[name]["step"]["mean_s"]}
    g = {name: rs[0].group_size for name, rs in results.items()}
    rows = []
    for p in (*PHASE_ORDER, "step"):
        row: dict[str, Any] = {"phase": p if p not in SUB_PHASES else f"  {p} (in {SUB_PHASES[p]})"}
        for name in pooled:
            row[f"{name}_s"] = an[name][p]["mean_s"]
            row[f"{name}_share"] = an[name][p]["share"]
        rows.append(row)
    cols: list[Any] = [("phase", "phase", str)]
    for name in pooled:
        cols += [(f"{name}_s", f"{name} s", fmt_num), (f"{name}_share", f"{name} %", _fmt_share)]
    rep.table("phases", f"Mean seconds per steady-state step and share of time/step_s ({steps} steps per run, "
              f"{rounds} round(s), steps {WARMUP_STEPS + 1}..{steps - 1} of each run)", rows, cols)

    extra_rows = []
    for name, st in pooled.items():
        wall = statistics.fmean(s["bench/wall_s"] for s in st)
        step_s = an[name]["step"]["mean_s"]
        tracking = statistics.fmean(s["bench/tracking_s"] for s in st)
        row = {"config": name, "steps": len(st), "samples_per_step": statistics.fmean(
                   s.get("accounting/prompts_trained", 0.0) * g[name] for s in st),
               "step_s": step_s, "wall_s": wall, "tracking_s": tracking,
               "overhead_share": an[name]["overhead"]["share"],
               "overhead_wall_share": (wall - sum(an[name][p]["mean_s"] for p in DRIVER_PHASES)) / wall,
               "driver_in_phases_s": statistics.fmean(s.get("time/driver_in_phases_s", float("nan")) for s in st),
               "overhead_upper_share": (an[name]["overhead"]["mean_s"] + statistics.fmean(
                   s.get("time/driver_in_phases_s", float("nan")) for s in st)) / step_s,
               "actor_busy_s": statistics.fmean(s["bench/decode_s"] + s["bench/actor_generate_s"] for s in st),
               "samples_s": samples_per_s(st, g[name]),
               "setup_s": statistics.fmean(res.setup_s for res in results[name]),
               "judge_requests": (statistics.fmean(s.get("bench/judge_requests", 0.0) for s in st)
                                  if name.endswith("judge") else None),
               # cumulative judge counters of each run's last step, summed over the rounds
               "judge_missing": (sum(res.steps[-1].get("judge/missing", 0.0) for res in results[name])
                                 if name.endswith("judge") else None)}
        extra_rows.append(row)
    rep.table("steps", "Per configuration: step time as the driver logs it (time/step_s) and as a user sees it (wall: "
              "log call to log call, incl. the MLflow log_batch); driver overhead = step minus its five phases",
              extra_rows, [
                  ("config", "config", str), ("steps", "steady steps", fmt_num),
                  ("samples_per_step", "samples/step", fmt_num), ("step_s", "step_s", fmt_num),
                  ("wall_s", "wall s", fmt_num), ("tracking_s", "mlflow log s", fmt_num),
                  ("overhead_share", "overhead / step", _fmt_share),
                  ("overhead_wall_share", "(overhead + log) / wall", _fmt_share),
                  ("driver_in_phases_s", "driver CPU in phases s", fmt_num),
                  ("overhead_upper_share", "upper bound / step", _fmt_share),
                  ("actor_busy_s", "rollout actor busy s", fmt_num), ("samples_s", "samples/s", fmt_num),
                  ("judge_requests", "judge req/step", fmt_num), ("judge_missing", "judge missing", fmt_num),
                  ("setup_s", "setup s", fmt_num)])

    # async vs sync (and judge on vs off), per round, then the median over rounds
    def per_round(num: str, den: str, fn: Callable[[RunResult], float]) -> dict[str, Any]:
        vals = [fn(a) / fn(b) for a, b in zip(results[num], results[den])]
        return {"value": statistics.median(vals), "per_round": ", ".join(f"{v:.3g}" for v in vals)}

    def sps(res: RunResult) -> float:
        return samples_per_s(steady(res.steps), res.group_size)

    def reward_s(res: RunResult) -> float:
        return statistics.fmean(s.get("time/reward_s", 0.0) for s in steady(res.steps))

    ratios = [{"comparison": "async / sync samples/s", **per_round("async", "sync", sps)},
              {"comparison": "sync+judge / sync samples/s", **per_round("sync+judge", "sync", sps)}]
    if "async+judge" in results:
        ratios.append({"comparison": "async+judge / sync+judge samples/s",
                       **per_round("async+judge", "sync+judge", sps)})
    costs = [reward_s(a) - reward_s(b) for a, b in zip(results["sync+judge"], results["sync"])]
    ratios.append({"comparison": "judge's cost in the reward phase, s/step (sync+judge - sync)",
                   "value": statistics.median(costs), "per_round": ", ".join(f"{v:.3g}" for v in costs)})
    rep.table("ratios", "Side by side (median over rounds of the per-round figure)", ratios,
              [("comparison", "comparison", str), ("value", "value", fmt_num), ("per_round", "per round", str)])

    rep.summary["async_vs_sync_samples_s"] = ratios[0]["value"]
    rep.summary["judge_vs_no_judge_samples_s"] = ratios[1]["value"]
    if "async+judge" in results:
        rep.summary["async_vs_sync_samples_s_with_judge"] = ratios[2]["value"]
    rep.summary["judge_cost_s_per_step"] = ratios[-1]["value"]
    rep.summary["driver_overhead_share_sync"] = an["sync"]["overhead"]["share"]
    rep.summary["driver_overhead_share_async"] = an["async"]["overhead"]["share"]
    rep.summary["driver_overhead_incl_log_share_sync"] = extra_rows[0]["overhead_wall_share"]
    # upper bound: plus the driver's own work inside the phases (batch building, serialization)
    rep.summary["driver_overhead_upper_share_sync"] = extra_rows[0]["overhead_upper_share"]
    rep.summary["driver_overhead_upper_share_async"] = extra_rows[1]["overhead_upper_share"]
    rep.targets["driver_overhead_upper_share_sync"] = "< 5 %"
    rep.targets["driver_overhead_share_sync"] = "< 5 %"
    rep.targets["driver_overhead_share_async"] = "< 5 %"
    rep.summary["driver_time_metrics"] = ", ".join(sorted(measured))
    for sub in SUB_PHASES:
        if f"time/{sub}_s" not in measured:
            rep.note(f"the driver logs no time/{sub}_s: " + (
                "decode = the rollout actors' decode time, summed by the benchmark from PromptGroup.extra"
                if sub == "decode" else
                "the judge runs inside the reward workers, concurrently with rule scoring and similarity; its row "
                "is reward_s with the judge on minus reward_s with it off (pooled means, same prompts)"))
    if "time/overhead_s" not in measured:
        rep.note("the driver logs no time/overhead_s: overhead = time/step_s minus the five phases, computed here")
    rep.note("async: 'generate' is the driver's wait for look-ahead rollouts started during the previous step, and "
             "'sync' includes waiting for the rollout actor to finish the look-ahead it is generating (it runs one "
             "call at a time: apply_weights queues behind generate); the rollout actor's own busy time (decode + "
             "generate) is the 'rollout actor busy s' column")
    rep.note(f"judge stub delay {delay:g} s per request; tiny model (0.3 M params) on CPU: shares describe this "
             "setup, not a 7B model on GPUs")
    return rep.finish()


if __name__ == "__main__":
    main()
