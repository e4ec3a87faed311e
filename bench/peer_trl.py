"""Peer comparison: medgrpo's training job against TRL's ``GRPOTrainer``, end to end, on equal resources.

Both systems train the tiny Qwen2.5-VL (``data.tiny_model``, tokenizer trained on the synthetic corpus) with GRPO
on synthetic MedVidBench **image** rows (TRL's GRPOTrainer takes images for vision-language models but not video),
with the same group size G, prompts per step, max new tokens, number of steps, learning rate, clipping (0.2 / 0.3,
token-mean loss), gradient clipping, AdamW, sampling (temperature 1, top-p 1, no top-k), float32, sdpa attention,
no gradient checkpointing, no KL term, one optimizer step per generated batch, and the same reward:
``rewards.task_scores.score`` passed to TRL as its reward function. ``SETTINGS_TABLE`` lists every setting for both
sides and where it is set. medgrpo runs with ``normalizer.mode=off`` (its reward is then the raw task score too) and
``rollout.dynamic_sampling=false`` (every step trains prompts_per_step x G samples, as TRL does).

**Equal cores**: the machine's 2 cores for both. TRL is one process with ``Settings.threads`` (2) torch intra-op
threads; medgrpo's two compute processes, the rollout actor and the learner, get 1 thread each (1 + 1 = 2; the
driver, reward worker and normalizer do no torch compute; ``OMP_NUM_THREADS=1`` in the job, checked inside both
actors after the run).

* **medgrpo** runs through its real training entry, ``cluster.driver.Trainer`` (local Ray, rollout actor, reward
  worker, normalizer actor, DeepSpeed ZeRO-0 learner actor, weight push every step, MLflow file store), with a
  config built from ``configs/cpu_demo.yaml`` plus overrides (one GRPO stage, no SFT, no eval, no checkpoints):
  ``sync`` (``rollout.max_staleness=0``) and ``async`` (``rollout.max_staleness=1``), in the main venv.
* **TRL** ``GRPOTrainer`` (transformers generate, no vLLM, ``use_cpu``, ``report_to=none``) runs in the separate
  benchmark venv ``.venv-bench`` (``bash bench/setup_env.sh``); TRL is not a dependency of medgrpo.

Three kinds of run, each a fresh subprocess per system, interleaved round by round (order rotated each round):

* ``short`` and ``long`` (``--short-steps`` 20, ``--long-steps`` 200) on the three image tasks with the MedGRPO
  format gate: the untrained model's answers nearly all fail it (reward 0), so both sides do the same work every
  step (the race). Figures: **steady-state samples/s** (the long runs: samples / wall time over the steps after the
  first ``warmup`` and before the last) and **whole-job wall time** (process launch to exit: start-up, every step,
  shut-down) of each length.
* ``learn`` (``--learn-steps``): a reward the tiny model can learn: ``image_cls`` rows that all carry the same label
  (the label the tokenizer writes in the fewest tokens), scored by the same ``score`` without the format gate (the
  answer earns 1 when it names that label and no other). Figure: **time to learn**, the wall time from process
  launch and the steps until the trailing mean reward (``LEARN_WINDOW`` steps) first reaches each threshold.

Every figure is a ratio TRL / medgrpo of two runs of the same round (> 1: medgrpo faster), the median over rounds
with the per-round range. Generated tokens per step are counted from the token ids each side generated (medgrpo:
the rollout groups' ``response_ids``; TRL: the ``completion_mask`` of ``_generate_and_score_completions``, both up
to and including the stop token). Start-up is split into parts (imports, Ray start, actors, data, MLflow, ...) and
the steady step into phases (medgrpo's ``time/*`` metrics, the driver's own CPU time inside them; TRL's by wrapping
``_generate``, ``_calculate_rewards``, the rest of ``_generate_and_score_completions`` and the rest of the step).

Without ``.venv-bench`` the benchmark records a skip (a note, exit 0). A run that fails or cannot be compared is
counted in ``failures`` (exit 1). ``--quick``: 1 round of ``short`` (5 steps) and ``learn`` (6 steps), no ``long``.
``--docs FILE``: after the run (or with ``--render RESULTS`` instead of a run: from the last peer_trl record of that
results file), rewrite the block between ``<!-- peer_trl:begin -->`` and ``<!-- peer_trl:end -->`` in FILE.

Run: ``python -m bench.peer_trl [--quick] [--rounds N] [--kinds short,long,learn] [--json PATH] [--docs FILE]``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from bench.common import REPO, Report, fmt_num, parser

BENCH_VENV = REPO / ".venv-bench"
TASKS = ("vqa_mc", "box_grounding", "image_cls")
LEARN_TASK = "image_cls"
SYSTEMS = ("trl", "medgrpo_sync", "medgrpo_async")
MEDGRPO = ("medgrpo_sync", "medgrpo_async")
KINDS = ("short", "long", "learn")
#: Phases shown per system (missing ones are "-"); their sum is about the step's wall time.
PHASES = ("generate", "reward", "prep", "normalize", "train", "sync", "overhead")
#: Shown beside them, not part of the sum: medgrpo's rollout-actor generate() seconds for the step's prompts, and
#: the driver's own CPU seconds inside its waited phases (batch building, Ray (de)serialization).
SUB_PHASES = ("gen_actor", "driver_in_phases")
WORKER_TIMEOUT_S = 1800
STARTUP_PARTS = ("python", "imports", "ray_init", "actors", "data", "budget", "dataset", "model", "other_init",
                 "rest")
IMAGES_PER_TASK = 24  # training image rows per image qa_type (the learn task keeps the image_cls rows of one label)
LEARN_WINDOW = 5  # steps in the trailing mean reward that time-to-learn thresholds
THRESHOLDS = (0.5, 0.9)
#: Learning rate of the learn runs (both sides): at the race's 2e-4 medgrpo sync reached 0.9 in 59 steps but TRL
#: stayed near its starting reward (≈0.05) for 50 steps; at 2e-3 both cross 0.9 within 100 steps (probes, Dec 6).
LEARN_LR = 2e-3


@dataclass(frozen=True)
class Settings:
    """What both systems get, identically (``threads``: the cores both get; see the module docstring)."""

    group_size: int = 4
    prompts_per_step: int = 4
    max_new_tokens: int = 32
    steps: int = 20
    warmup: int = 2
    lr: float = 2e-4
    clip_low: float = 0.2
    clip_high: float = 0.3
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    seed: int = 0
    threads: int = 2
    task: str = "race"  # "race": the image tasks, format-gated; "learn": one-label image_cls, no format gate

    @property
    def samples_per_step(self) -> int:
        return self.group_size * self.prompts_per_step

    @property
    def format_gate(self) -> bool:
        return self.task == "race"

    @property
    def tasks(self) -> tuple[str, ...]:
        return TASKS if self.task == "race" else (LEARN_TASK,)

    def validate(self) -> None:
        if self.group_size < 2 or self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ValueError(f"need group_size >= 2, prompts_per_step >= 1, max_new_tokens >= 1: {self}")
        if self.steps < self.warmup + 2:
            raise ValueError(f"steps={self.steps} leave no steady state after warmup={self.warmup} and the last "
                             f"step; need steps >= warmup + 2")
        if self.threads < 2 or self.threads % 2:
            raise ValueError(f"threads={self.threads}: an even number >= 2 (medgrpo splits them between its rollout "
                             f"actor and its learner)")
        if self.task not in ("race", "learn"):
            raise ValueError(f"task={self.task!r}: race or learn")


#: Every setting of the race for both sides: (setting, medgrpo: value and where, TRL: value and where).
SETTINGS_TABLE: tuple[tuple[str, str, str], ...] = (
    ("model", "tiny Qwen2.5-VL, float32, sdpa: `model.path/dtype/attn_implementation`",
     "same folder, `from_pretrained(dtype=float32, attn_implementation='sdpa')` in `run_trl`"),
    ("data", "synthetic image rows: `data.train_files`, `data.tasks`",
     "the same rows, same user turn (image, question): `_trl_dataset`"),
    ("prompts per step x G", "`data.prompts_per_step` x `rollout.group_size`",
     "`per_device_train_batch_size` = prompts x G, `num_generations` = G"),
    ("completion length", "`rollout.max_new_tokens`", "`max_completion_length`"),
    ("sampling", "`rollout.temperature` 1, `rollout.top_p` 1, no top-k (special and vision tokens suppressed)",
     "`temperature` 1, `top_p` 1, `top_k` 0"),
    ("optimizer", "AdamW (torch), `learner.lr`, `weight_decay` 0, `warmup_steps` 0, constant lr",
     "`optim=adamw_torch`, `learning_rate`, `weight_decay` 0, `lr_scheduler_type=constant`"),
    ("loss", "PPO-clip 0.2/0.3, token-mean, no KL: `learner.clip_low/clip_high/loss_agg/kl_coef`",
     "`epsilon` 0.2, `epsilon_high` 0.3, `loss_type=dapo`, `beta` 0"),
    ("advantage", "group mean/std: `learner.advantage=grpo`", "`scale_rewards=group`"),
    ("grad clip", "`learner.max_grad_norm` 1.0", "`max_grad_norm` 1.0"),
    ("updates per batch", "one: `learner.ppo_epochs` 1, micro-batch = the step's samples",
     "one: `steps_per_generation` 1, `num_iterations` 1, `gradient_accumulation_steps` 1"),
    ("reward", "`rewards.task_scores.score` in the reward worker; `reward.format_gate`; `normalizer.mode=off`",
     "the same `score` as the reward function (`format_gate` likewise)"),
    ("cores / threads", "2 cores: rollout actor 1 + learner 1 torch thread (`OMP_NUM_THREADS=1` in the job)",
     "2 cores: 2 torch threads (`OMP_NUM_THREADS=2`, `torch.set_num_threads`)"),
    ("batch per step", "`rollout.dynamic_sampling=false` (no refills)", "no dynamic sampling"),
)


# -- the two configurations (pure; tested in tests/test_peer_trl.py) ---------------------------------------------
def medgrpo_overrides(s: Settings, *, model_path: str, train_file: str, run_dir: str, mlflow_uri: str,
                      staleness: int) -> list[str]:
    """``configs/cpu_demo.yaml`` overrides: one GRPO stage of ``s.steps`` steps on ``s.tasks``, nothing else."""
    if staleness not in (0, 1):
        raise ValueError(f"staleness={staleness}: 0 (sync) or 1 (async)")
    return [
        f"run_dir={run_dir}", f"seed={s.seed}", f"model.path={model_path}", "model.dtype=float32",
        "model.attn_implementation=sdpa", "model.gradient_checkpointing=false",
        f"data.train_files=[{train_file}]", "data.eval_files=[]", f"data.tasks=[{','.join(s.tasks)}]",
        f"data.prompts_per_step={s.prompts_per_step}",
        f"stages=[{{name: grpo, kind: grpo, steps: {s.steps}}}]", "eval_every=0", "checkpoint_every=0",
        f"rollout.group_size={s.group_size}", f"rollout.max_new_tokens={s.max_new_tokens}",
        f"rollout.temperature={s.temperature}", "rollout.top_p=1.0", f"rollout.max_staleness={staleness}",
        "rollout.dynamic_sampling=false", "normalizer.mode=off", f"reward.format_gate={str(s.format_gate).lower()}",
        f"learner.lr={s.lr}", "learner.warmup_steps=0", "learner.weight_decay=0.0", "learner.kl_coef=0.0",
        f"learner.micro_batch_size={s.samples_per_step}", "learner.ppo_epochs=1", "learner.advantage=grpo",
        "learner.loss_agg=token-mean", f"learner.clip_low={s.clip_low}", f"learner.clip_high={s.clip_high}",
        f"learner.max_grad_norm={s.max_grad_norm}", "learner.bf16=false",
        "tracking.progress_bar=false", f"tracking.mlflow_uri={mlflow_uri}",
    ]


def trl_config_kwargs(s: Settings, output_dir: str) -> dict[str, Any]:
    """``trl.GRPOConfig`` keyword arguments matching ``medgrpo_overrides`` (GRPOConfig's own defaults differ:
    bf16 and gradient checkpointing on, lr 1e-6, logging every 10 steps)."""
    return {
        "output_dir": output_dir, "seed": s.seed, "data_seed": s.seed, "max_steps": s.steps,
        "per_device_train_batch_size": s.samples_per_step, "gradient_accumulation_steps": 1,
        "steps_per_generation": 1, "num_generations": s.group_size, "num_iterations": 1,
        "max_completion_length": s.max_new_tokens, "temperature": s.temperature, "top_p": 1.0, "top_k": 0,
        "learning_rate": s.lr, "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "optim": "adamw_torch", "max_grad_norm": s.max_grad_norm, "beta": 0.0, "epsilon": s.clip_low,
        "epsilon_high": s.clip_high, "loss_type": "dapo", "scale_rewards": "group",
        "bf16": False, "fp16": False, "use_cpu": True, "gradient_checkpointing": False, "use_vllm": False,
        "report_to": "none", "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no",
        "dataloader_num_workers": 0, "disable_tqdm": True, "remove_unused_columns": False, "log_completions": False,
    }


def thread_env(system: str, s: Settings) -> dict[str, str]:
    """The worker process's thread settings: TRL all ``s.threads`` in its one process; medgrpo's job one per
    process (its rollout actor and learner are the two that compute)."""
    n = str(s.threads if system == "trl" else s.threads // 2)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


# -- pure figures (tested in tests/test_peer_trl.py) -------------------------------------------------------------
def steady_rate(step_ends: Sequence[float], start: float, samples_per_step: int, warmup: int
                ) -> tuple[float, list[int]]:
    """(samples/s over the steady steps, their 0-based indices). ``step_ends[i]``: when step i ended;
    ``start``: when step 0 began. Steady = without the first ``warmup`` steps and the last one."""
    n = len(step_ends)
    if n < warmup + 2:
        raise ValueError(f"{n} steps leave no steady state after {warmup} warm-up steps and the last one")
    kept = list(range(warmup, n - 1))
    t0 = step_ends[warmup - 1] if warmup > 0 else start
    secs = step_ends[n - 2] - t0
    if secs <= 0:
        raise ValueError(f"non-increasing step end times: {list(step_ends)}")
    return len(kept) * samples_per_step / secs, kept


def median_phases(rows: Sequence[Mapping[str, float]], kept: Sequence[int]) -> dict[str, float]:
    """Median seconds per phase over the kept steps (a phase absent from every kept step is left out)."""
    out: dict[str, float] = {}
    for p in (*PHASES, *SUB_PHASES):
        vals = [float(rows[i][p]) for i in kept if p in rows[i] and rows[i][p] is not None]
        if vals:
            out[p] = statistics.median(vals)
    return out


def first_crossing(rewards: Sequence[float], threshold: float, window: int = LEARN_WINDOW) -> Optional[int]:
    """0-based index of the first step at which the mean reward of the last ``window`` steps (fewer at the start:
    those so far) reaches ``threshold``; None if it never does. NaN rewards count as 0."""
    vals = [r if _is_num(r) else 0.0 for r in rewards]
    for i in range(len(vals)):
        tail = vals[max(0, i - window + 1): i + 1]
        if i + 1 >= min(window, len(vals)) and sum(tail) / len(tail) >= threshold:
            return i
    return None


def round_ratios(rows: Sequence[Mapping[str, Any]], system: str, key: str, kind: str,
                 faster: str = "lower") -> list[float]:
    """Per round: TRL's ``key`` over ``system``'s (``faster="lower"``: times, > 1 = medgrpo faster) or ``system``'s
    over TRL's (``"higher"``: rates), pairing the runs of one round; rounds where either value is missing or not
    positive are left out."""
    def by_round(sys_name: str) -> dict[int, float]:
        return {r["round"]: r[key] for r in rows if r["system"] == sys_name and r["kind"] == kind
                and _is_num(r.get(key)) and r[key] > 0}

    trl, mine = by_round("trl"), by_round(system)
    out = []
    for rnd in sorted(set(trl) & set(mine)):
        out.append(trl[rnd] / mine[rnd] if faster == "lower" else mine[rnd] / trl[rnd])
    return out


def spread(vals: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and n of per-round values (NaN when there are none)."""
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


# -- workers (one per subprocess) ---------------------------------------------------------------------------------
def _timed(fn: Any, sink: dict[str, float], key: str) -> Any:
    """``fn`` wrapped to add its wall seconds to ``sink[key]``."""
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            sink[key] = sink.get(key, 0.0) + time.perf_counter() - t0
    return wrapper


#: Short names of the processes of a local medgrpo job (the first pattern found in the command line wins).
PROCESS_NAMES = (("gcs_server", "gcs_server"), ("raylet", "raylet"), ("DashboardAgent", "dashboard_agent"),
                 ("dashboard/agent.py", "dashboard_agent"), ("RuntimeEnvAgent", "runtime_env_agent"),
                 ("runtime_env/agent", "runtime_env_agent"), ("ray-dashboard-", "dashboard"),
                 ("dashboard.py", "dashboard"), ("log_monitor", "log_monitor"), ("monitor.py", "autoscaler_monitor"),
                 ("RolloutActor", "rollout_actor"), ("LearnerRank", "learner"), ("_LearnerRankImpl", "learner"),
                 ("RewardWorker", "reward_worker"), ("NormalizerActor", "normalizer"), ("ray::IDLE", "idle_worker"),
                 ("default_worker.py", "worker_starting"), ("bench.peer_trl", "driver"))


def process_tree_cpu(root: int) -> list[dict[str, Any]]:
    """Every live process descended from ``root`` (and ``root``): pid, short name (``PROCESS_NAMES``), CPU
    seconds so far (user + system) and start time (epoch s). Linux ``/proc`` only; elsewhere []."""
    proc = Path("/proc")
    if not (proc / "stat").exists():
        return []
    tick = os.sysconf("SC_CLK_TCK")
    boot = next(float(line.split()[1]) for line in (proc / "stat").read_text().splitlines() if line.startswith("btime"))
    table: dict[int, tuple[int, float, float, str]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        f = stat[stat.rindex(")") + 2:].split()  # fields after "pid (comm)": state is f[0], ppid f[1]
        table[int(d.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick, boot + int(f[19]) / tick, cmd)
    keep, frontier = {root}, [root]
    while frontier:
        kids = [pid for pid, (ppid, *_rest) in table.items() if ppid in frontier and pid not in keep]
        keep.update(kids)
        frontier = kids
    out = []
    for pid in sorted(keep & set(table)):
        _, cpu, started, cmd = table[pid]
        name = next((short for pat, short in PROCESS_NAMES if pat in cmd), cmd.split(" ")[0].rsplit("/", 1)[-1])
        out.append({"pid": pid, "name": name, "cpu_s": cpu, "started": started})
    return out


def cpu_by_name(procs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """CPU seconds per process name (several processes of one name summed)."""
    out: dict[str, float] = {}
    for p in procs:
        out[p["name"]] = out.get(p["name"], 0.0) + float(p["cpu_s"])
    return out


def _torch_threads(_: Any = None) -> int:
    """This process's torch intra-op threads (called inside the actors too, by ``__ray_call__``)."""
    import torch

    return torch.get_num_threads()


def run_medgrpo(spec: Mapping[str, Any], staleness: int, entry: float) -> dict[str, Any]:
    """One medgrpo training run through ``cluster.driver.Trainer``; per-step end times, ``time/*`` metrics,
    generated tokens, rewards, start-up parts. ``entry``: when this worker process started running Python code."""
    import logging

    import cluster.driver as driver
    from cluster.config import load_config
    from cluster.driver import Trainer

    startup: dict[str, float] = {"imports": time.time() - entry}
    # start-up accounting only (this subprocess runs one trainer)
    driver.connect_ray = _timed(driver.connect_ray, startup, "ray_init")  # type: ignore[assignment]
    for meth, key in (("_start_actors", "actors"), ("_load_data", "data"), ("_answers_over_budget", "budget")):
        setattr(Trainer, meth, _timed(getattr(Trainer, meth), startup, key))
    s = Settings(**spec["settings"])
    run_dir = Path(spec["root"]) / f"medgrpo-{'async' if staleness else 'sync'}-{os.getpid()}"
    cfg = load_config("cpu_demo", medgrpo_overrides(
        s, model_path=spec["model"], train_file=spec["train_file"], run_dir=str(run_dir),
        mlflow_uri=(Path(spec["root"]) / "mlruns").as_uri(), staleness=staleness))
    logging.getLogger("medgrpo").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    startup["other_init"] = time.perf_counter() - t0 - sum(startup.get(k, 0.0) for k in
                                                           ("ray_init", "actors", "data", "budget"))
    startup_cpu = cpu_by_name(process_tree_cpu(os.getpid()))  # every process of the job, up to the first step
    import ray

    rows: list[dict[str, float]] = []
    ends: list[float] = []
    orig_log = trainer.tracker.log_metrics
    orig_collect = trainer.actors.collect_rollouts
    acc = {"generate": 0.0, "tokens": 0}

    def collect_rollouts(*a: Any, **k: Any) -> Any:
        # the rollout actor's own generate() seconds (PromptGroup.extra), whether this step waited for them or
        # (async) they ran during the previous step; and the token ids it generated (to the stop token)
        out = orig_collect(*a, **k)
        acc["generate"] += sum(float(g.extra.get("generate_s", 0.0)) for g in out[1])
        acc["tokens"] += sum(len(c.response_ids) for g in out[1] for c in g.completions)
        return out

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        if "time/step_s" not in metrics:  # start-up metrics (data counts, answer budget), not a step
            orig_log(metrics, step=step)
            return
        ends.append(time.time())  # the step's work is done; logging belongs to the next interval
        row = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and (k.startswith("time/") or k.startswith("accounting/")
                                                   or k == "reward/raw_mean")}
        row["bench/actor_generate_s"], row["bench/tokens"] = acc["generate"], acc["tokens"]
        acc["generate"], acc["tokens"] = 0.0, 0
        rows.append(row)
        orig_log(metrics, step=step)

    trainer.actors.collect_rollouts = collect_rollouts  # type: ignore[method-assign]
    trainer.tracker.log_metrics = log_metrics  # type: ignore[method-assign]
    try:
        start = time.time()
        trainer.run()
        last_end = time.time()
        # what the two compute actors run with (no new worker process: __ray_call__ runs in the actor)
        threads = ray.get([trainer.actors.rollouts[0].__ray_call__.remote(_torch_threads),
                           trainer.actors.learner.ranks[0].__ray_call__.remote(_torch_threads)], timeout=120)
        check_s = time.time() - last_end
    finally:
        trainer.close()
    phases = []
    for r in rows:
        p = {k: r[f"time/{k}_s"] for k in ("generate", "reward", "normalize", "train", "sync", "overhead")
             if f"time/{k}_s" in r}
        p["gen_actor"] = r["bench/actor_generate_s"]  # a part of "generate" (sync) or hidden in the step (async)
        if "time/driver_in_phases_s" in r:
            p["driver_in_phases"] = r["time/driver_in_phases_s"]
        phases.append(p)
    return {"entry": entry, "start": start, "step_ends": ends, "phases": phases,
            "prompts_trained": [int(r.get("accounting/prompts_trained", 0)) for r in rows],
            "gen_tokens": [r["bench/tokens"] for r in rows], "reward_mean": [r.get("reward/raw_mean") for r in rows],
            "startup": startup, "startup_cpu": startup_cpu, "bench_only_s": check_s, "torch_threads": _torch_threads(),
            "actor_torch_threads": {"rollout": threads[0], "learner": threads[1]}}


def _trl_dataset(train_file: str, tasks: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """(datasets.Dataset of conversational image prompts with their uid, {uid: Instance})."""
    from datasets import Dataset
    from PIL import Image

    from data.reader import read_instances

    res = read_instances(train_file)
    insts = [i for i in res.instances if i.qa_type in tasks and i.image]
    if not insts:
        raise RuntimeError(f"{train_file}: no image rows of {tasks} (skipped: {dict(res.counts_by_reason)})")
    rows = []
    for i in insts:
        with Image.open(i.image) as im:
            img = im.convert("RGB")
        # the same user turn medgrpo builds (learner.model_io.prompt_messages): the image, then the question
        rows.append({"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": i.question}]}],
                     "image": img, "uid": i.uid})
    return Dataset.from_list(rows), {i.uid: i for i in insts}


def run_trl(spec: Mapping[str, Any], entry: float) -> dict[str, Any]:
    """One TRL GRPOTrainer run on the same model, data and settings; per-step end times, phases, tokens, rewards."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.task_scores import score

    s = Settings(**spec["settings"])
    torch.set_num_threads(s.threads)
    startup: dict[str, float] = {"imports": time.time() - entry}
    t0 = time.perf_counter()
    dataset, by_uid = _trl_dataset(spec["train_file"], s.tasks)
    startup["dataset"] = time.perf_counter() - t0
    seen_reasons: dict[str, int] = {}

    def medgrpo_task_score(prompts: list, completions: list, uid: list, **_: Any) -> list[float]:
        """rewards.task_scores.score: (format gate x) task metric, as medgrpo's reward worker calls it."""
        out = []
        for c, u in zip(completions, uid):
            text = c[-1]["content"] if isinstance(c, list) else c
            if isinstance(text, list):  # structured content: its text parts
                text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
            res = score(by_uid[u], text, iou_threshold=None, format_gate=s.format_gate, require_think=False)
            if res.reason:
                seen_reasons[res.reason] = seen_reasons.get(res.reason, 0) + 1
            out.append(float(res.score))
        return out

    t0 = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(spec["model"], dtype=torch.float32, attn_implementation="sdpa",
                                                        use_safetensors=True, local_files_only=True)
    processor = AutoProcessor.from_pretrained(spec["model"], local_files_only=True)
    processor.tokenizer.padding_side = "left"
    startup["model"] = time.perf_counter() - t0
    out_dir = Path(spec["root"]) / f"trl-{os.getpid()}"
    args = GRPOConfig(**trl_config_kwargs(s, str(out_dir)))

    ends: list[float] = []
    marks: dict[str, float] = {"start": math.nan}
    acc: dict[str, float] = {"generate": 0.0, "reward": 0.0, "gen_and_score": 0.0, "tokens": 0.0}
    phases: list[dict[str, float]] = []
    tokens: list[float] = []
    step_begin = [0.0]

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            marks["start"] = time.time()

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            step_begin[0] = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            now = time.perf_counter()
            ends.append(time.time())
            step_s = now - step_begin[0]
            phases.append({"generate": acc["generate"], "reward": acc["reward"],
                           "prep": acc["gen_and_score"] - acc["generate"] - acc["reward"],
                           "train": step_s - acc["gen_and_score"]})
            tokens.append(acc["tokens"])
            for k in acc:
                acc[k] = 0.0

    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=[medgrpo_task_score], args=args,
                          train_dataset=dataset, callbacks=[Clock()])
    startup["other_init"] = time.perf_counter() - t0
    startup_cpu = {"driver": time.process_time()}  # one process: all of TRL's start-up CPU

    # phase timing and token counting only: the methods run unchanged
    gen_and_score: Callable[..., Any] = trainer._generate_and_score_completions  # noqa: SLF001

    def counted(*a: Any, **k: Any) -> Any:
        out = gen_and_score(*a, **k)
        acc["tokens"] += float(out["completion_mask"].sum())  # generated ids up to and including the stop token
        return out

    trainer._generate = _timed(trainer._generate, acc, "generate")  # noqa: SLF001
    trainer._calculate_rewards = _timed(trainer._calculate_rewards, acc, "reward")  # noqa: SLF001
    trainer._generate_and_score_completions = _timed(counted, acc, "gen_and_score")  # noqa: SLF001
    trainer.train()
    rewards = [float(h["reward"]) for h in trainer.state.log_history if "reward" in h]
    # GRPOTrainer trains every generated sample (no dynamic sampling): prompts_per_step prompts per step
    return {"entry": entry, "start": marks["start"], "step_ends": ends, "phases": phases,
            "prompts_trained": [s.prompts_per_step] * len(ends), "gen_tokens": tokens, "reward_mean": rewards,
            "startup": startup, "startup_cpu": startup_cpu, "bench_only_s": 0.0,
            "torch_threads": torch.get_num_threads(),
            "reward_reasons": seen_reasons}


# -- orchestration ------------------------------------------------------------------------------------------------
def bench_python() -> Optional[Path]:
    """The benchmark venv's interpreter, if it is there."""
    p = BENCH_VENV / "bin" / "python"
    return p if p.is_file() and os.access(p, os.X_OK) else None


def learn_label(model_dir: str, labels: Sequence[str]) -> str:
    """The label the tokenizer writes in the fewest tokens (after a space, as inside an answer); the first such."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return min(labels, key=lambda lab: len(tok.encode(" " + lab, add_special_tokens=False)))


def build_assets(root: Path, seed: int) -> dict[str, str]:
    """Synthetic MedVidBench (its image rows are used) and the tiny Qwen2.5-VL, as ``medgrpo synth`` and
    ``medgrpo tiny-model`` build them; plus the learn task's file: the image_cls rows of one label."""
    from data.synthetic import SEVERITY_CLASSES, generate
    from data.tiny_model import build_tiny_model, corpus_of

    # one clip per video qa_type keeps generation short; their questions and answers still reach the tokenizer
    files = generate(root / "synth", n_per_task=1, n_images_per_task=IMAGES_PER_TASK, frames_variant=False, seed=seed)
    model = build_tiny_model(root / "model", corpus_texts=corpus_of(sorted((root / "synth").glob("*.jsonl"))),
                             seed=seed)
    label = learn_label(str(model), SEVERITY_CLASSES)
    rows = [json.loads(line) for line in files["images_train"].read_text(encoding="utf-8").splitlines() if line]
    keep = [r for r in rows if r["qa_type"] == LEARN_TASK and r["struc_info"]["label"] == label]
    learn_file = files["images_train"].with_name("learn_train.jsonl")  # beside it: the image paths are relative
    learn_file.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    return {"race_file": str(files["images_train"]), "learn_file": str(learn_file), "model": str(model),
            "learn_label": label, "learn_rows": str(len(keep))}


def _launch(system: str, spec_path: Path, out_path: Path, python: Path, s: Settings) -> dict[str, Any]:
    """Run one worker subprocess; returns its result dict plus launch time, or {"error": ...}."""
    env = dict(os.environ)
    env.update({"TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu", "MLFLOW_ALLOW_FILE_STORE": "true",
                "RAY_USAGE_STATS_ENABLED": "0", "MEDGRPO_DASHBOARD": env.get("MEDGRPO_DASHBOARD", "0"),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", **thread_env(system, s)})
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [str(python), "-m", "bench.peer_trl", "--worker", system, "--spec", str(spec_path), "--out", str(out_path)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    launched = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
                              check=False)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        rc, tail = 124, f"timed out after {WORKER_TIMEOUT_S} s"
    wall = time.time() - launched
    if rc != 0 or not out_path.exists():
        return {"error": f"{system}: exit {rc}", "tail": tail, "wall_s": wall}
    res = json.loads(out_path.read_text(encoding="utf-8"))
    res.update(launched=launched, load_1m=load, wall_s=wall)
    return res


def summarize(system: str, kind: str, res: Mapping[str, Any], s: Settings) -> dict[str, Any]:
    """One run's row: whole-job time, start-up (with parts), shut-down, steady samples/s and phases, tokens per
    step, and (every kind) the steps and seconds until the trailing mean reward reaches each threshold."""
    ends = res["step_ends"]
    if len(ends) != s.steps:
        raise RuntimeError(f"{system}: {len(ends)} steps logged, expected {s.steps}")
    short = [i for i, n in enumerate(res["prompts_trained"]) if n != s.prompts_per_step]
    if short:
        raise RuntimeError(f"{system}: steps {short} trained fewer than {s.prompts_per_step} prompts: the work per "
                           f"step differs from the peer's")
    rate, kept = steady_rate(ends, res["start"], s.samples_per_step, s.warmup)
    walls = [ends[0] - res["start"]] + [b - a for a, b in zip(ends, ends[1:])]
    step_s = statistics.median(walls[i] for i in kept)
    tokens = [float(x) for x in res.get("gen_tokens", []) if x is not None]
    job_s = res["wall_s"] - res.get("bench_only_s", 0.0)  # launch to exit, less the benchmark's own checks
    row: dict[str, Any] = {
        "system": system, "kind": kind, "steps": s.steps, "job_s": job_s, "samples_s": rate,
        "samples_s_median_step": s.samples_per_step / step_s, "step_s": step_s,
        "startup_s": res["start"] - res["launched"], "steps_s": ends[-1] - res["start"],
        "shutdown_s": job_s - (ends[-1] - res["launched"]),
        "warmup_s": ends[s.warmup - 1] - res["start"] if s.warmup else 0.0,
        "tokens_per_step": statistics.median(tokens) if tokens else math.nan,
        "tokens_total": sum(tokens) if tokens else math.nan,
        "reward_first": _mean(res["reward_mean"][:LEARN_WINDOW]),
        "reward_last": _mean(res["reward_mean"][-LEARN_WINDOW:]),
        "load_1m_at_launch": res.get("load_1m")}
    row.update({f"{p}_s": v for p, v in median_phases(res["phases"], kept).items()})
    su = {"python": res["entry"] - res["launched"], **res.get("startup", {})}
    su["rest"] = row["startup_s"] - sum(su.values())
    row.update({f"su_{k}_s": v for k, v in su.items()})
    cpu = res.get("startup_cpu", {})
    row["startup_cpu_s"] = sum(cpu.values()) if cpu else math.nan
    row.update({f"cpu_{k}_s": v for k, v in cpu.items()})
    for thr in THRESHOLDS:
        i = first_crossing(res["reward_mean"], thr)
        row[f"learn_steps_{thr}"] = (i + 1) if i is not None else None
        row[f"learn_s_{thr}"] = (ends[i] - res["launched"]) if i is not None else None
    return row


def _mean(vals: Sequence[Any]) -> float:
    got = [float(v) for v in vals if _is_num(v)]
    return statistics.fmean(got) if got else math.nan


# -- the record and its docs block ---------------------------------------------------------------------------------
def figures(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every headline ratio (TRL / medgrpo for times, medgrpo / TRL for rates: > 1 = medgrpo better), per medgrpo
    mode: median over rounds with the per-round range."""
    out = []
    have = {(r["system"], r["kind"]) for r in rows}
    rate_kind = "long" if ("trl", "long") in have else "short"
    specs: list[tuple[str, str, str, str]] = [
        (f"steady samples/s ({rate_kind} runs)", "samples_s", rate_kind, "higher"),
        ("whole job, short runs", "job_s", "short", "lower"),
        ("whole job, long runs", "job_s", "long", "lower"),
        ("start-up (short runs)", "startup_s", "short", "lower"),
        *((f"time to learn: reward {t} (s from launch)", f"learn_s_{t}", "learn", "lower") for t in THRESHOLDS),
        *((f"time to learn: reward {t} (steps)", f"learn_steps_{t}", "learn", "lower") for t in THRESHOLDS),
    ]
    for label, key, kind, faster in specs:
        if ("trl", kind) not in have:
            continue
        row: dict[str, Any] = {"figure": label, "key": key, "kind": kind}
        for system in MEDGRPO:
            sp = spread(round_ratios(rows, system, key, kind, faster))
            row[f"{system}"] = sp["median"]
            row[f"{system}_range"] = (f"{sp['min']:.2f}-{sp['max']:.2f}" if sp["n"] else "-")
            row[f"{system}_rounds"] = sp["n"]
        out.append(row)
    return out


def per_system(rows: Sequence[Mapping[str, Any]], kind: str, keys: Sequence[str]) -> list[dict[str, Any]]:
    """Median over rounds of ``keys`` per system for one kind of run, with min and max for the timed figures."""
    out = []
    for system in SYSTEMS:
        mine = [r for r in rows if r["system"] == system and r["kind"] == kind]
        if not mine:
            continue
        row: dict[str, Any] = {"system": system, "runs": len(mine)}
        for k in keys:
            vals = [r[k] for r in mine if _is_num(r.get(k))]
            row[k] = statistics.median(vals) if vals else math.nan
            row[f"{k}_min"] = min(vals) if vals else math.nan
            row[f"{k}_max"] = max(vals) if vals else math.nan
        out.append(row)
    return out


def _is_num(v: Any) -> bool:
    """A finite int or float (records hold None or NaN where a figure is missing)."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def _total_table(title: str, rows: Sequence[Mapping[str, Any]], cols: Sequence[str],
                 names: Mapping[str, str]) -> list[str]:
    """Markdown lines: a table of each system's ``total`` and its parts ``cols``, under ``title``."""
    return ["", title, "", "| system | total | " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) + 1),
            *(f"| {names[r['system']]} | {fmt_num(r['total'])} | " + " | ".join(fmt_num(r.get(c)) for c in cols)
              + " |" for r in rows)]


def _md_range(row: Mapping[str, Any], key: str) -> str:
    v, lo, hi = row.get(key), row.get(f"{key}_min"), row.get(f"{key}_max")
    if not _is_num(v):
        return "–"
    return f"{fmt_num(v)} ({fmt_num(lo)}–{fmt_num(hi)})" if lo != hi else fmt_num(v)


def render_markdown(record: Mapping[str, Any]) -> str:
    """The docs block of one peer_trl record: settings table, headline ratios, per-system figures, start-up parts,
    steady-step phases, learning."""
    env, t, summ = record["env"], record["tables"], record["summary"]
    names = {"trl": "TRL GRPOTrainer", "medgrpo_sync": "medgrpo sync", "medgrpo_async": "medgrpo async"}
    lines = [f"Record: `{record['command']}`, {env['date']}, git `{env['git_commit']}`"
             f"{' (uncommitted changes)' if env.get('git_dirty') else ''}, {record['wall_s']:.0f} s, "
             f"{env['cores']} cores, 1-minute load {summ.get('load_1m_range', '-')} at the launches. "
             f"Settings: {summ.get('settings', '-')}.", "",
             "| setting | medgrpo (where) | TRL (where) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in SETTINGS_TABLE]
    lines += ["", "| figure (> 1: medgrpo better; median of per-round ratios, range) | medgrpo sync | medgrpo async |",
              "|---|---:|---:|"]
    for f in t.get("figures", []):
        cells = [f"**{fmt_num(f[s])}** ({f[s + '_range']}, {f[s + '_rounds']} rounds)" if f[s + "_rounds"] else "–"
                 for s in MEDGRPO]
        lines.append(f"| {f['figure']} | {cells[0]} | {cells[1]} |")
    for kind, title in (("short", "short runs"), ("long", "long runs"), ("learn", "learn runs")):
        rows = t.get(f"systems_{kind}", [])
        if not rows:
            continue
        lines += ["", f"Per system, {title} (median over rounds, min–max):", "",
                  "| system | whole job s | start-up s | steps s | shut-down s | samples/s | gen tokens/step |"
                  " reward first→last |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {names[r['system']]} | {_md_range(r, 'job_s')} | {_md_range(r, 'startup_s')} | "
                         f"{_md_range(r, 'steps_s')} | {_md_range(r, 'shutdown_s')} | {_md_range(r, 'samples_s')} | "
                         f"{fmt_num(r['tokens_per_step'])} | "
                         f"{fmt_num(r['reward_first'])}→{fmt_num(r['reward_last'])} |")
    su = t.get("startup", [])
    if su:
        parts = [p for p in STARTUP_PARTS if any(_is_num(r.get(p)) for r in su)]
        lines += _total_table("Start-up parts (s, medians of the short runs):", su, parts, names)
    cpu = t.get("startup_cpu", [])
    if cpu:
        procs = [k for k in cpu[0] if k not in ("system", "total")
                 and any(_is_num(r.get(k)) and r[k] > 0 for r in cpu)]
        lines += _total_table("Start-up CPU seconds by process (user + system, launch to the first step; medians):",
                              cpu, procs, names)
    ph = t.get("phases", [])
    if ph:
        cols = [p for p in (*PHASES, *SUB_PHASES) if any(_is_num(r.get(f"{p}_s")) for r in ph)]
        lines += ["", f"Steady step, s per phase (medians, {ph[0].get('kind', '')} runs; gen_actor and "
                  "driver_in_phases are parts, not added):", "",
                  "| system | step s | " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) + 1)]
        for r in ph:
            lines.append(f"| {names[r['system']]} | {fmt_num(r['step_s'])} | "
                         + " | ".join(fmt_num(r.get(f"{c}_s")) for c in cols) + " |")
    lr = t.get("learn", [])
    if lr:
        heads = [f"reward {th}: steps / s from launch" for th in THRESHOLDS]
        lines += ["", f"Time to learn (trailing mean of {LEARN_WINDOW} steps; each round's runs):", "",
                  "| round | system | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
        for r in lr:
            cells = [f"{fmt_num(r.get(f'learn_steps_{th}'))} / {fmt_num(r.get(f'learn_s_{th}'))}"
                     if r.get(f"learn_steps_{th}") else "not reached" for th in THRESHOLDS]
            lines.append(f"| {r['round']} | {names[r['system']]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BEGIN, END = "<!-- peer_trl:begin -->", "<!-- peer_trl:end -->"


def write_docs(docs: Path, block: str) -> None:
    """Replace the text between ``BEGIN`` and ``END`` in ``docs`` with ``block`` (both markers must be there)."""
    text = docs.read_text(encoding="utf-8")
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"{docs}: no {BEGIN} ... {END} block to regenerate")
    docs.write_text(text[: i + len(BEGIN)] + "\n" + block + "\n" + text[j:], encoding="utf-8")


def last_record(results: Path) -> dict[str, Any]:
    """The last peer_trl record of a results file that is not a skip."""
    runs = [r for r in json.loads(results.read_text(encoding="utf-8"))["runs"]
            if r.get("benchmark") == "peer_trl" and "skipped" not in r.get("summary", {}) and "figures" in r["tables"]]
    if not runs:
        raise ValueError(f"{results}: no peer_trl record with figures")
    return runs[-1]


# -- main ---------------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("peer_trl", __doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default: 1 quick, 3 full)")
    ap.add_argument("--kinds", default="", help="comma list of short,long,learn (default: all; quick: short,learn)")
    ap.add_argument("--short-steps", type=int, default=0, help="steps of a short run (default 5 quick, 20 full)")
    ap.add_argument("--long-steps", type=int, default=200, help="steps of a long run (default 200)")
    ap.add_argument("--learn-steps", type=int, default=0, help="steps of a learn run (default 6 quick, 100 full)")
    ap.add_argument("--learn-lr", type=float, default=LEARN_LR, help=f"learning rate of the learn runs, both sides "
                    f"(default {LEARN_LR})")
    ap.add_argument("--docs", metavar="FILE", help="rewrite the peer_trl block of this markdown file")
    ap.add_argument("--render", metavar="RESULTS", help="no run: render the last record of RESULTS (with --docs)")
    ap.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args: argparse.Namespace = ap.parse_args(argv)
    if args.worker:  # inside a subprocess: run one system, write its result
        entry = time.time()
        spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
        if args.worker == "trl":
            res = run_trl(spec, entry)
        else:
            res = run_medgrpo(spec, staleness=1 if args.worker == "medgrpo_async" else 0, entry=entry)
        Path(args.out).write_text(json.dumps(res), encoding="utf-8")
        return res
    if args.render:
        block = render_markdown(last_record(Path(args.render)))
        if args.docs:
            write_docs(Path(args.docs), block)
        print(block)
        return {}

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rep = Report("peer_trl", args, uses_torch=True)
    bench_py = bench_python()
    if bench_py is None:
        rep.summary["skipped"] = "no .venv-bench (bash bench/setup_env.sh)"
        rep.note(f"skipped: the benchmark venv {BENCH_VENV} is absent; create it with `bash bench/setup_env.sh`")
        return rep.finish()
    rounds = args.rounds or (1 if args.quick else 3)
    kinds = [k for k in (args.kinds.split(",") if args.kinds else (["short", "learn"] if args.quick else KINDS))]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SystemExit(f"--kinds: {bad} not in {KINDS}")
    base = Settings(seed=args.seed)
    settings = {"short": replace(base, steps=args.short_steps or (5 if args.quick else 20)),
                "long": replace(base, steps=args.long_steps),
                "learn": replace(base, steps=args.learn_steps or (6 if args.quick else 100), task="learn",
                                 lr=args.learn_lr)}
    for k in kinds:
        settings[k].validate()
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-peer-trl-") as tmp:
        root = Path(tmp)
        assets = build_assets(root, args.seed)
        pythons = {"trl": bench_py, "medgrpo_sync": Path(sys.executable), "medgrpo_async": Path(sys.executable)}
        for r in range(rounds):
            order = list(SYSTEMS[r % 3:] + SYSTEMS[: r % 3])
            for kind in kinds:
                s = replace(settings[kind], seed=args.seed + r)  # same seed for the three systems of a round
                spec_path = root / f"spec-{kind}-{r}.json"
                train_file = assets["learn_file"] if s.task == "learn" else assets["race_file"]
                spec_path.write_text(json.dumps({"settings": asdict(s), "root": str(root), "model": assets["model"],
                                                 "train_file": train_file}), encoding="utf-8")
                for system in order:
                    out = root / f"result-{system}-{kind}-{r}.json"
                    res = _launch(system, spec_path, out, pythons[system], s)
                    if "error" in res:
                        failures.append({"round": r, "kind": kind, **res})
                        rep.note(f"round {r} {kind}: {res['error']}: {res['tail'][-600:]}")
                        continue
                    try:
                        row = summarize(system, kind, res, s)
                    except (RuntimeError, ValueError, KeyError) as e:  # a run that cannot be compared: reported
                        failures.append({"round": r, "kind": kind, "error": f"{system}: {e}", "tail": "",
                                         "wall_s": res["wall_s"]})
                        rep.note(f"round {r} {kind}: {system}: {e}")
                        continue
                    row["round"] = r
                    rows.append(row)
                    loads.append(res["load_1m"])
                    extra.setdefault(system, {"torch_threads": res.get("torch_threads"),
                                              "actor_torch_threads": res.get("actor_torch_threads")})
                    if res.get("reward_reasons"):
                        extra[system].setdefault("reward_reasons", {})[kind] = res["reward_reasons"]
                    print(f"round {r} {kind} {system}: job {row['job_s']:.1f} s (start-up {row['startup_s']:.1f}, "
                          f"steps {row['steps_s']:.1f}, shut-down {row['shutdown_s']:.1f}), "
                          f"{fmt_num(row['samples_s'])} samples/s steady, {fmt_num(row['tokens_per_step'])} "
                          f"tokens/step, reward {fmt_num(row['reward_first'])}->{fmt_num(row['reward_last'])}, "
                          f"load {fmt_num(row['load_1m_at_launch'])}", flush=True)

    rep.tables["runs"] = rows
    rep.tables["failures"] = failures
    rep.tables["process_threads"] = [{"system": k, **v} for k, v in extra.items()]
    figs = figures(rows)
    rep.table("figures", "TRL / medgrpo for times, medgrpo / TRL for rates (> 1: medgrpo better); median of "
              "per-round ratios and their range", figs,
              [("figure", "figure", str), *((s, s, fmt_num) for s in MEDGRPO),
               *((f"{s}_range", f"{s} range", str) for s in MEDGRPO)])
    keys = ("job_s", "startup_s", "steps_s", "shutdown_s", "samples_s", "samples_s_median_step", "step_s",
            "tokens_per_step", "reward_first", "reward_last")
    for kind in kinds:
        tab = per_system(rows, kind, keys)
        rep.table(f"systems_{kind}", f"{kind} runs ({settings[kind].steps} steps, task {settings[kind].task}): "
                  "medians over rounds", tab,
                  [("system", "system", str), ("runs", "runs", fmt_num), *((k, k, fmt_num) for k in keys)])
    su_kind = "short" if "short" in kinds else kinds[0]
    su_rows = []
    for r in per_system(rows, su_kind, ["startup_s", *(f"su_{p}_s" for p in STARTUP_PARTS)]):
        su_rows.append({"system": r["system"], "total": r["startup_s"],
                        **{p: r[f"su_{p}_s"] for p in STARTUP_PARTS}})
    rep.table("startup", f"start-up, process launch to the first step (s, medians of the {su_kind} runs): python = "
              "interpreter start; imports; ray_init / actors (rollout, reward, normalizer, DeepSpeed learner) / data /"
              " budget (answer lengths vs the tokenizer) for medgrpo; dataset / model for TRL; other_init = the rest "
              "of the trainer's constructor (medgrpo: MLflow run; TRL: GRPOTrainer, accelerate); rest = up to the "
              "first step", su_rows,
              [("system", "system", str), ("total", "total", fmt_num), *((p, p, fmt_num) for p in STARTUP_PARTS)])
    names = sorted({k[4:-2] for r in rows if r["kind"] == su_kind for k in r if k.startswith("cpu_")})
    cpu_rows = [{"system": r["system"], "total": r["startup_cpu_s"], **{n: r[f"cpu_{n}_s"] for n in names}}
                for r in per_system(rows, su_kind, ["startup_cpu_s", *(f"cpu_{n}_s" for n in names)])]
    rep.table("startup_cpu", f"start-up CPU seconds (user + system) by process, launch to the first step (medians of "
              f"the {su_kind} runs; TRL is one process)", cpu_rows,
              [("system", "system", str), ("total", "total", fmt_num), *((n, n, fmt_num) for n in names)])
    ph_kind = "long" if "long" in kinds else su_kind
    ph_rows = [{**r, "kind": ph_kind} for r in per_system(rows, ph_kind,
                                                          ["step_s", *(f"{p}_s" for p in (*PHASES, *SUB_PHASES))])]
    rep.table("phases", f"steady step, s per phase (medians, {ph_kind} runs)", ph_rows,
              [("system", "system", str), ("step_s", "step s", fmt_num),
               *((f"{p}_s", p, fmt_num) for p in (*PHASES, *SUB_PHASES))])
    if "learn" in kinds:
        learn_rows = [{k: r.get(k) for k in ("round", "system", "reward_first", "reward_last",
                                             *(f"learn_{m}_{t}" for t in THRESHOLDS for m in ("steps", "s")))}
                      for r in rows if r["kind"] == "learn"]
        rep.table("learn", f"time to learn ({assets['learn_rows']} image_cls rows labelled {assets['learn_label']!r}"
                  f", no format gate, lr {settings['learn'].lr}): first step whose trailing {LEARN_WINDOW}-step "
                  "mean reward reaches the threshold, and its end in s from launch", learn_rows,
                  [("round", "round", fmt_num), ("system", "system", str), ("reward_first", "reward first", fmt_num),
                   ("reward_last", "reward last", fmt_num),
                   *((f"learn_{m}_{t}", f"{m} to {t}", fmt_num) for t in THRESHOLDS for m in ("steps", "s"))])
    for f in figs:
        for system in MEDGRPO:
            rep.summary[f"{system}/{f['key']}/{f['kind']}"] = f[system]
    rep.summary["load_1m_range"] = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
    rep.summary["settings"] = ", ".join(f"{k}: {settings[k].steps} steps" for k in kinds) + \
        f"; G={base.group_size} x {base.prompts_per_step} prompts, {base.max_new_tokens} new tokens, " \
        f"{base.threads} cores each, learn lr {settings['learn'].lr}, label {assets['learn_label']!r}"
    rep.summary["failures"] = len(failures)
    rep.targets["medgrpo_async/job_s/short"] = ">= 1 (whole 20-step job no slower than TRL's)"
    rep.targets["medgrpo_async/job_s/long"] = ">= 1.3 (whole 200-step job)"
    rep.targets["medgrpo_async/startup_s/short"] = ">= 1 (start-up no slower than TRL's)"
    for t in THRESHOLDS:
        rep.targets[f"medgrpo_async/learn_s_{t}/learn"] = ">= 1 (time to learn no worse than TRL's)"
    rep.note("tiny model (~0.4 M params) on CPU: fixed per-step and per-job costs (Ray, actor processes, weight "
             "push, logging) weigh far more than on a 7B model on GPU; the ratios say how the jobs compare here")
    record = rep.finish()
    if args.docs and not failures:
        write_docs(Path(args.docs), render_markdown(record))
    return record


if __name__ == "__main__":
    record = main()
    sys.exit(1 if record.get("summary", {}).get("failures") else 0)
