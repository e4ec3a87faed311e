"""Peer comparison: medgrpo's training loop against TRL's ``GRPOTrainer`` on the same tiny model, data and budget.

Both systems train the tiny Qwen2.5-VL (``data.tiny_model``, tokenizer trained on the synthetic corpus) with GRPO
on the synthetic MedVidBench **image** rows (``vqa_mc``, ``box_grounding``, ``image_cls``: TRL's GRPOTrainer takes
images for vision-language models but not video), with the same group size G, prompts per step, max new tokens,
number of steps, learning rate, clipping (0.2 / 0.3, token-mean loss), gradient clipping, sampling (temperature 1,
top-p 1, no top-k), float32, sdpa attention, no gradient checkpointing, no KL term (no reference model), one
optimizer step per generated batch, and the same reward: ``rewards.task_scores.score`` (format gate x task metric,
in [0, 1]) passed to TRL as its reward function. medgrpo runs with ``normalizer.mode=off`` (its reward is then the
raw task score too) and ``rollout.dynamic_sampling=false`` (every step trains the same prompts_per_step x G samples,
as TRL does; refill rounds would make the work per step differ).

* **medgrpo** runs through its real training entry, ``cluster.driver.Trainer`` (local Ray, rollout actor, reward
  worker, normalizer actor, DeepSpeed ZeRO-0 learner actor, weight push every step, MLflow file store), with a
  config built from ``configs/cpu_demo.yaml`` plus overrides (one GRPO stage, no SFT, no eval, no checkpoints):
  ``sync`` (``rollout.max_staleness=0``) and ``async`` (``rollout.max_staleness=1``: the next step's rollouts run
  while this step trains), in the main venv.
* **TRL** ``GRPOTrainer`` (transformers generate, no vLLM, ``use_cpu``, ``report_to=none``) runs in the separate
  benchmark venv ``.venv-bench`` (``bash bench/setup_env.sh``); TRL is not a dependency of medgrpo.

Each run is a fresh subprocess with one torch thread per process (``OMP_NUM_THREADS=1``; medgrpo's Ray actors
inherit it, and the worker checks it inside an actor). Runs are interleaved round by round, the order rotated each
round. Per run: wall time of every step (one step's end to the next), from which **samples/s in the steady state** =
samples / wall time over the steps left after the first ``warmup`` steps and the last step (async's last step has no
look-ahead to overlap); **start-up** (process launch to the first step) and the warm-up steps are reported
separately (with its parts: imports, Ray start, actor creation, ...). ``samples/s (median step)`` = samples per step /
the median steady step, less sensitive to other users' load spikes. Per-phase seconds per steady step: medgrpo's own
``time/*`` metrics (generate, reward, normalize, train, sync, overhead) plus ``gen_actor``, the rollout actor's own
``generate()`` seconds (``PromptGroup.extra``; in async it runs during the previous step); TRL's by wrapping its
methods (``_generate``, ``_calculate_rewards``, the rest of ``_generate_and_score_completions`` as ``prep``, and the
rest of the step, forward/backward/optimizer/logging, as ``train``). Generated tokens per step are recorded for both
(equal work check). The ratios ``medgrpo_sync / trl`` and ``medgrpo_async / trl`` (> 1: medgrpo faster) are medians
of per-round ratios; their per-round range is reported too.

Without ``.venv-bench`` the benchmark records a skip (a note, exit 0) instead of failing, so ``bench.run_all`` can
list it. A run that fails or cannot be compared is counted in ``failures`` (exit 1). ``--quick`` (5 steps, 1 round)
takes about 4 minutes: three fresh trainers, two of them starting Ray.

Run: ``python -m bench.peer_trl [--quick] [--json PATH]`` (setup: ``bash bench/setup_env.sh``).
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from bench.common import REPO, Report, fmt_num, parser

BENCH_VENV = REPO / ".venv-bench"
TASKS = ("vqa_mc", "box_grounding", "image_cls")
SYSTEMS = ("trl", "medgrpo_sync", "medgrpo_async")
#: Phases shown per system (missing ones are "-"); their sum is about the step's wall time.
PHASES = ("generate", "reward", "prep", "normalize", "train", "sync", "overhead")
#: Shown beside them, not part of the sum: medgrpo's rollout-actor generate() seconds for the step's prompts.
SUB_PHASES = ("gen_actor",)
WORKER_TIMEOUT_S = 900
STARTUP_PARTS = ("python", "imports", "ray_init", "actors", "dataset", "model", "other_init", "rest")
IMAGES_PER_TASK = 8  # training image rows per image qa_type: 24 prompts, 6 steps of 4 per epoch


@dataclass(frozen=True)
class Settings:
    """What both systems get, identically."""

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

    @property
    def samples_per_step(self) -> int:
        return self.group_size * self.prompts_per_step

    def validate(self) -> None:
        if self.group_size < 2 or self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ValueError(f"need group_size >= 2, prompts_per_step >= 1, max_new_tokens >= 1: {self}")
        if self.steps < self.warmup + 2:
            raise ValueError(f"steps={self.steps} leave no steady state after warmup={self.warmup} and the last "
                             f"step; need steps >= warmup + 2")


# -- the two configurations (pure; tested in tests/test_bench.py) ------------------------------------------------
def medgrpo_overrides(s: Settings, *, model_path: str, train_file: str, run_dir: str, mlflow_uri: str,
                      staleness: int) -> list[str]:
    """``configs/cpu_demo.yaml`` overrides: one GRPO stage of ``s.steps`` steps on the image tasks, nothing else."""
    if staleness not in (0, 1):
        raise ValueError(f"staleness={staleness}: 0 (sync) or 1 (async)")
    return [
        f"run_dir={run_dir}", f"seed={s.seed}", f"model.path={model_path}", "model.dtype=float32",
        "model.attn_implementation=sdpa", "model.gradient_checkpointing=false",
        f"data.train_files=[{train_file}]", "data.eval_files=[]", f"data.tasks=[{','.join(TASKS)}]",
        f"data.prompts_per_step={s.prompts_per_step}",
        f"stages=[{{name: grpo, kind: grpo, steps: {s.steps}}}]", "eval_every=0", "checkpoint_every=0",
        f"rollout.group_size={s.group_size}", f"rollout.max_new_tokens={s.max_new_tokens}",
        f"rollout.temperature={s.temperature}", "rollout.top_p=1.0", f"rollout.max_staleness={staleness}",
        "rollout.dynamic_sampling=false", "normalizer.mode=off",
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


# -- workers (one per subprocess) ---------------------------------------------------------------------------------
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _timed(fn: Any, sink: dict[str, float], key: str) -> Any:
    """``fn`` wrapped to add its wall seconds to ``sink[key]``."""
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            sink[key] = sink.get(key, 0.0) + time.perf_counter() - t0
    return wrapper


def run_medgrpo(spec: Mapping[str, Any], staleness: int, entry: float) -> dict[str, Any]:
    """One medgrpo training run through ``cluster.driver.Trainer``; per-step end times and ``time/*`` metrics.
    ``entry``: when this worker process started running Python code (start-up accounting)."""
    import logging

    _one_thread()
    import cluster.driver as driver
    from cluster.config import load_config
    from cluster.driver import Trainer

    startup: dict[str, float] = {"imports": time.time() - entry}
    # start-up accounting only (this subprocess runs one trainer): Ray start, actor creation
    driver.connect_ray = _timed(driver.connect_ray, startup, "ray_init")  # type: ignore[assignment]
    Trainer._start_actors = _timed(Trainer._start_actors, startup, "actors")  # type: ignore[method-assign]
    s = Settings(**spec["settings"])
    run_dir = Path(spec["root"]) / f"medgrpo-{'async' if staleness else 'sync'}-{os.getpid()}"
    cfg = load_config("cpu_demo", medgrpo_overrides(
        s, model_path=spec["model"], train_file=spec["train_file"], run_dir=str(run_dir),
        mlflow_uri=(Path(spec["root"]) / "mlruns").as_uri(), staleness=staleness))
    logging.getLogger("medgrpo").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    startup["other_init"] = time.perf_counter() - t0 - startup.get("ray_init", 0.0) - startup.get("actors", 0.0)
    try:
        import ray
        import torch

        rows: list[dict[str, float]] = []
        ends: list[float] = []
        orig_log = trainer.tracker.log_metrics
        orig_collect = trainer.actors.collect_rollouts
        actor_s = {"generate": 0.0}

        def collect_rollouts(*a: Any, **k: Any) -> Any:
            # the rollout actor's own generate() seconds (PromptGroup.extra), whether this step waited for them or
            # (async) they ran during the previous step
            out = orig_collect(*a, **k)
            actor_s["generate"] += sum(float(g.extra.get("generate_s", 0.0)) for g in out[1])
            return out

        def log_metrics(metrics: dict[str, float], step: int) -> None:
            ends.append(time.time())  # the step's work is done; logging belongs to the next interval
            row = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and (k.startswith("time/") or k.startswith("accounting/")
                                                       or k in ("reward/raw_mean", "throughput/tokens_per_s"))}
            row["bench/actor_generate_s"] = actor_s["generate"]
            actor_s["generate"] = 0.0
            rows.append(row)
            orig_log(metrics, step=step)

        trainer.actors.collect_rollouts = collect_rollouts  # type: ignore[method-assign]
        trainer.tracker.log_metrics = log_metrics  # type: ignore[method-assign]
        start = time.time()
        trainer.run()

        @ray.remote(num_cpus=0)
        def _threads() -> int:  # what an actor process of this Ray gets (they inherit OMP_NUM_THREADS)
            import torch as t

            return t.get_num_threads()

        actor_threads = ray.get(_threads.remote(), timeout=120)
    finally:
        trainer.close()
    phases = []
    for r in rows:
        p = {k: r[f"time/{k}_s"] for k in ("generate", "reward", "normalize", "train", "sync", "overhead")
             if f"time/{k}_s" in r}
        if "overhead" not in p and "time/step_s" in r:
            p["overhead"] = r["time/step_s"] - sum(p.values())
        p["gen_actor"] = r["bench/actor_generate_s"]  # a part of "generate" (sync) or hidden in the step (async)
        phases.append(p)
    trained = [int(r.get("accounting/prompts_trained", 0)) for r in rows]
    # generated tokens of the step's samples (the driver logs tokens / generate seconds)
    tokens = [r.get("throughput/tokens_per_s", math.nan) * r.get("time/generate_s", math.nan) for r in rows]
    return {"entry": entry, "start": start, "step_ends": ends, "phases": phases, "prompts_trained": trained,
            "gen_tokens": tokens, "reward_mean": [r.get("reward/raw_mean", math.nan) for r in rows],
            "startup": startup, "torch_threads": torch.get_num_threads(), "actor_torch_threads": actor_threads}


def _trl_dataset(train_file: str) -> tuple[Any, dict[str, Any]]:
    """(datasets.Dataset of conversational image prompts with their uid, {uid: Instance})."""
    from datasets import Dataset
    from PIL import Image

    from data.reader import read_instances

    res = read_instances(train_file)
    insts = [i for i in res.instances if i.qa_type in TASKS and i.image]
    if not insts:
        raise RuntimeError(f"{train_file}: no image rows of {TASKS} (skipped: {dict(res.counts_by_reason)})")
    rows = []
    for i in insts:
        with Image.open(i.image) as im:
            img = im.convert("RGB")
        # the same user turn medgrpo builds (learner.model_io.prompt_messages): the image, then the question
        rows.append({"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": i.question}]}],
                     "image": img, "uid": i.uid})
    return Dataset.from_list(rows), {i.uid: i for i in insts}


def run_trl(spec: Mapping[str, Any], entry: float) -> dict[str, Any]:
    """One TRL GRPOTrainer run on the same model, data and settings; per-step end times and phases."""
    _one_thread()
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.task_scores import score

    startup: dict[str, float] = {"imports": time.time() - entry}
    s = Settings(**spec["settings"])
    t0 = time.perf_counter()
    dataset, by_uid = _trl_dataset(spec["train_file"])
    startup["dataset"] = time.perf_counter() - t0
    seen_reasons: dict[str, int] = {}

    def medgrpo_task_score(prompts: list, completions: list, uid: list, **_: Any) -> list[float]:
        """rewards.task_scores.score: format gate x task metric, as medgrpo's reward worker calls it."""
        out = []
        for c, u in zip(completions, uid):
            text = c[-1]["content"] if isinstance(c, list) else c
            if isinstance(text, list):  # structured content: its text parts
                text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
            res = score(by_uid[u], text, iou_threshold=None, format_gate=True, require_think=False)
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
    acc = {"generate": 0.0, "reward": 0.0, "gen_and_score": 0.0}
    phases: list[dict[str, float]] = []
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
            for k in acc:
                acc[k] = 0.0

    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=[medgrpo_task_score], args=args,
                          train_dataset=dataset, callbacks=[Clock()])
    startup["other_init"] = time.perf_counter() - t0

    # phase timing only: the methods run unchanged
    trainer._generate = _timed(trainer._generate, acc, "generate")  # noqa: SLF001
    trainer._calculate_rewards = _timed(trainer._calculate_rewards, acc, "reward")  # noqa: SLF001
    trainer._generate_and_score_completions = _timed(  # noqa: SLF001
        trainer._generate_and_score_completions, acc, "gen_and_score")  # noqa: SLF001
    trainer.train()
    rewards = [float(h["reward"]) for h in trainer.state.log_history if "reward" in h]
    tokens = [float(h["completions/mean_length"]) * s.samples_per_step for h in trainer.state.log_history
              if "completions/mean_length" in h]
    # GRPOTrainer trains every generated sample (no dynamic sampling): prompts_per_step prompts per step
    return {"entry": entry, "start": marks["start"], "step_ends": ends, "phases": phases,
            "prompts_trained": [s.prompts_per_step] * len(ends), "gen_tokens": tokens, "reward_mean": rewards,
            "startup": startup, "torch_threads": torch.get_num_threads(), "reward_reasons": seen_reasons}


# -- orchestration ------------------------------------------------------------------------------------------------
def bench_python() -> Optional[Path]:
    """The benchmark venv's interpreter, if it is there."""
    p = BENCH_VENV / "bin" / "python"
    return p if p.is_file() and os.access(p, os.X_OK) else None


def build_assets(root: Path, seed: int) -> dict[str, str]:
    """Synthetic MedVidBench (its image rows are used) and the tiny Qwen2.5-VL, as ``medgrpo synth`` and
    ``medgrpo tiny-model`` build them."""
    from data.synthetic import generate
    from data.tiny_model import build_tiny_model, corpus_of

    # the image rows are what both systems train on; one clip per video qa_type keeps generation short, and their
    # questions and answers still reach the tokenizer's corpus
    files = generate(root / "synth", n_per_task=1, n_images_per_task=IMAGES_PER_TASK, frames_variant=False, seed=seed)
    model = build_tiny_model(root / "model", corpus_texts=corpus_of(sorted((root / "synth").glob("*.jsonl"))),
                             seed=seed)
    return {"train_file": str(files["images_train"]), "model": str(model)}


def _launch(system: str, spec_path: Path, out_path: Path, python: Path) -> dict[str, Any]:
    """Run one worker subprocess; returns its result dict plus launch time, or {"error": ...}."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                "DS_ACCELERATOR": "cpu", "MLFLOW_ALLOW_FILE_STORE": "true", "RAY_USAGE_STATS_ENABLED": "0",
                "MEDGRPO_DASHBOARD": env.get("MEDGRPO_DASHBOARD", "0"), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
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
    res["launched"] = launched
    res["load_1m"] = load
    res["wall_s"] = wall
    return res


def summarize(system: str, res: Mapping[str, Any], s: Settings) -> dict[str, Any]:
    """One run's row: steady samples/s, start-up, warm-up steps, median phases over the steady steps."""
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
    tokens = [res["gen_tokens"][i] for i in kept if i < len(res.get("gen_tokens", []))]
    tokens = [x for x in tokens if x is not None and math.isfinite(x)]
    row = {"system": system, "samples_s": rate, "samples_s_median_step": s.samples_per_step / step_s,
           "startup_s": res["start"] - res["launched"],
           "warmup_s": ends[s.warmup - 1] - res["start"] if s.warmup else 0.0, "step_s": step_s,
           "tokens_per_step": statistics.median(tokens) if tokens else math.nan, "total_s": res["wall_s"],
           "load_1m_at_launch": res.get("load_1m")}
    row.update({f"{p}_s": v for p, v in median_phases(res["phases"], kept).items()})
    su = {"python": res["entry"] - res["launched"], **res.get("startup", {})}
    su["rest"] = row["startup_s"] - sum(su.values())
    row.update({f"su_{k}_s": v for k, v in su.items()})
    return row


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("peer_trl", __doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default: 1 quick, 3 full)")
    ap.add_argument("--steps", type=int, default=0, help="training steps per run (default: 5 quick, 20 full)")
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

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rep = Report("peer_trl", args, uses_torch=True)
    bench_py = bench_python()
    if bench_py is None:
        rep.summary["skipped"] = "no .venv-bench (bash bench/setup_env.sh)"
        rep.note(f"skipped: the benchmark venv {BENCH_VENV} is absent; create it with `bash bench/setup_env.sh`")
        return rep.finish()
    rounds = args.rounds or (1 if args.quick else 3)
    s = Settings(steps=args.steps or (5 if args.quick else 20), seed=args.seed)
    s.validate()
    rows_by: dict[str, list[dict[str, Any]]] = {k: [] for k in SYSTEMS}
    failures: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-peer-trl-") as tmp:
        root = Path(tmp)
        assets = build_assets(root, args.seed)
        spec_path = root / "spec.json"
        spec_path.write_text(json.dumps({"settings": asdict(s), "root": str(root), **assets}), encoding="utf-8")
        pythons = {"trl": bench_py, "medgrpo_sync": Path(sys.executable), "medgrpo_async": Path(sys.executable)}
        for r in range(rounds):
            order = list(SYSTEMS[r % 3:] + SYSTEMS[: r % 3])
            for system in order:
                out = root / f"result-{system}-{r}.json"
                res = _launch(system, spec_path, out, pythons[system])
                if "error" in res:
                    failures.append({"round": r, **res})
                    rep.note(f"round {r}: {res['error']}: {res['tail'][-600:]}")
                    continue
                try:
                    row = summarize(system, res, s)
                except (RuntimeError, ValueError, KeyError) as e:  # a run that cannot be compared: reported
                    failures.append({"round": r, "error": f"{system}: {e}", "tail": "", "wall_s": res["wall_s"]})
                    rep.note(f"round {r}: {system}: {e}")
                    continue
                row["round"] = r
                rows_by[system].append(row)
                extra.setdefault(system, {"torch_threads": res.get("torch_threads"),
                                          "actor_torch_threads": res.get("actor_torch_threads"),
                                          "reward_reasons": res.get("reward_reasons")})
                print(f"round {r} {system}: {fmt_num(row['samples_s'])} samples/s steady "
                      f"({fmt_num(row['samples_s_median_step'])} by median step), start-up "
                      f"{row['startup_s']:.1f} s, load {fmt_num(row['load_1m_at_launch'])} at launch", flush=True)

    def med(system: str, key: str) -> float:
        vals = [row[key] for row in rows_by[system]
                if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        return statistics.median(vals) if vals else math.nan

    table = []
    for system in SYSTEMS:
        if not rows_by[system]:
            continue
        row = {"system": system, "runs": len(rows_by[system])}
        for key in ("samples_s", "samples_s_median_step", "step_s", "tokens_per_step", "startup_s", "warmup_s",
                    *(f"{p}_s" for p in (*PHASES, *SUB_PHASES))):
            row[key] = med(system, key)
        table.append(row)
    rep.table("systems", f"GRPO on the tiny Qwen2.5-VL, image tasks, G={s.group_size} x {s.prompts_per_step} prompts "
              f"= {s.samples_per_step} samples/step, max {s.max_new_tokens} new tokens, {s.steps} steps "
              f"(steady: steps {s.warmup + 1}..{s.steps - 1}); medians over {rounds} round(s); phases in s per "
              f"steady step", table, [
                  ("system", "system", str), ("runs", "runs", fmt_num), ("samples_s", "samples/s", fmt_num),
                  ("samples_s_median_step", "samples/s (median step)", fmt_num), ("step_s", "step s", fmt_num),
                  ("tokens_per_step", "gen tokens/step", fmt_num), ("startup_s", "start-up s", fmt_num),
                  ("warmup_s", f"first {s.warmup} steps s", fmt_num),
                  *((f"{p}_s", p, fmt_num) for p in (*PHASES, *SUB_PHASES))])

    su_keys = [k for k in STARTUP_PARTS if any(f"su_{k}_s" in r for rows in rows_by.values() for r in rows)]
    rep.table("startup", "start-up, process launch to the first step (s, medians): python = interpreter start; "
              "imports; ray_init / actors (rollout, reward, normalizer, DeepSpeed learner: model loads, engine "
              "init) for medgrpo; dataset / model for TRL; other_init = the rest of the trainer's constructor "
              "(medgrpo: data, MLflow run; TRL: GRPOTrainer, accelerate); rest = up to the first step",
              [{"system": k, "total": med(k, "startup_s"), **{p: med(k, f"su_{p}_s") for p in su_keys}}
               for k in SYSTEMS if rows_by[k]],
              [("system", "system", str), ("total", "total", fmt_num), *((p, p, fmt_num) for p in su_keys)])

    def per_round(system: str, key: str = "samples_s") -> list[float]:
        """``key``(system) / ``key``(trl) for each round both ran, pairing the runs of the same round."""
        trl = {row["round"]: row[key] for row in rows_by["trl"]}
        return [row[key] / trl[row["round"]] for row in rows_by[system] if row["round"] in trl]

    def ratio_of(system: str, key: str = "samples_s") -> float:
        """Median over rounds of ``per_round``."""
        per = per_round(system, key)
        return statistics.median(per) if per else math.nan

    def ratio_range(system: str) -> str:
        per = per_round(system)
        return f"{min(per):.2f}-{max(per):.2f}" if per else "-"

    rep.tables["runs"] = [row for rows in rows_by.values() for row in rows]
    rep.summary["medgrpo_sync_vs_trl"] = ratio_of("medgrpo_sync")
    rep.summary["medgrpo_async_vs_trl"] = ratio_of("medgrpo_async")
    rep.summary["per_round_range_sync_vs_trl"] = ratio_range("medgrpo_sync")
    rep.summary["per_round_range_async_vs_trl"] = ratio_range("medgrpo_async")
    rep.summary["medgrpo_sync_vs_trl_median_step"] = ratio_of("medgrpo_sync", "samples_s_median_step")
    rep.summary["medgrpo_async_vs_trl_median_step"] = ratio_of("medgrpo_async", "samples_s_median_step")
    rep.summary["trl_samples_s"] = med("trl", "samples_s")
    rep.summary["medgrpo_sync_samples_s"] = med("medgrpo_sync", "samples_s")
    rep.summary["medgrpo_async_samples_s"] = med("medgrpo_async", "samples_s")
    rep.summary["startup_s_trl_sync_async"] = " / ".join(fmt_num(med(k, "startup_s")) for k in SYSTEMS)
    rep.targets["medgrpo_sync_vs_trl"] = ">= 1 (medgrpo at least as fast)"
    rep.targets["medgrpo_async_vs_trl"] = "> 1 (faster in async mode)"
    rep.summary["failures"] = len(failures)
    rep.tables["failures"] = failures
    rep.tables["process_threads"] = [{"system": k, **v} for k, v in extra.items()]
    rep.note("settings: " + json.dumps(asdict(s)))
    rep.note("tiny model (~0.4 M params) on CPU: fixed per-step costs (Ray calls, weight push, logging) weigh far "
             "more than on a 7B model on GPU; the ratio says how the loops compare here, not at scale")
    return rep.finish()


if __name__ == "__main__":
    record = main()
    sys.exit(1 if record.get("summary", {}).get("failures") else 0)
