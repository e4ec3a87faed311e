"""The driver: owns the training loop of DESIGN.md and every stateful actor's checkpoint.

sample prompts → rollouts (G per prompt) → rewards → normalizer → advantages (dynamic sampling refills groups
with no signal) → learner step → weight push; synchronous, or asynchronous with bounded staleness (with
``rollout.max_staleness`` = N, the rollouts of steps t+1 … t+N are in flight while the learner trains step t, so a
sample's policy lags the learner by at most N updates). Stages (SFT, GRPO) run in order in one job; the rollout
actors get the learner's weights before anything generates after SFT steps (GRPO, eval). Colocated
(``cluster.colocate``), the rollout engines sleep while the learner trains and wake (weights, load, KV cache)
before they generate.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cluster.checkpoints import CheckpointManager
from cluster.config import TrainConfig, load_config, to_flat_dict, to_yaml
from cluster.run_dir import claim
from cluster.tracking import Progress, Tracker, progress_fields, resolve_tracking_uri, write_jsonl
from common.files import read_json, write_json
from common.timing import PhaseTimer
from data.schema import Instance
from learner.deepspeed_learner import LearnerError
from learner.experience import PromptGroup
from learner.losses import compute_advantages, filter_zero_variance
from rewards.assembly import SampleReward, combine, normalization_requests, raw_reward
from rewards.tasks import spec_of

log = logging.getLogger("medgrpo")
# the phases of a step the driver waits on (time/decode_s is the actors' share of generate, not one of them)
WAITED_PHASES = ("generate", "reward", "normalize", "train", "sync")


@dataclass
class StepAccounting:
    """prompts_in = prompts_trained + Σ prompts_dropped[reason], checked every step."""

    prompts_in: int = 0
    prompts_trained: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def check(self) -> None:
        total = self.prompts_trained + sum(self.dropped.values())
        if total != self.prompts_in:
            raise AssertionError(f"accounting: {self.prompts_in} prompts in != {self.prompts_trained} trained + "
                                 f"{dict(self.dropped)} dropped")

    def metrics(self) -> dict[str, float]:
        m = {"accounting/prompts_in": self.prompts_in, "accounting/prompts_trained": self.prompts_trained,
             "accounting/prompts_dropped": sum(self.dropped.values())}
        m.update({f"accounting/dropped/{k}": v for k, v in self.dropped.items()})
        return m


@dataclass
class _GrpoStep:
    """What one GRPO step gathers across its phases (and dynamic-sampling rounds)."""

    acct: StepAccounting
    tau: Optional[float]
    kept: list[PromptGroup] = field(default_factory=list)
    kept_rewards: list[list[float]] = field(default_factory=list)
    samples_log: list[dict] = field(default_factory=list)
    all_samples: list[SampleReward] = field(default_factory=list)
    group_iou: list[tuple[float, float]] = field(default_factory=list)  # grounding groups: (mean reward, mean IoU)
    metrics: dict[str, float] = field(default_factory=dict)


def connect_ray(cfg: TrainConfig) -> Any:
    """Join the cluster named by cluster.address or RAY_ADDRESS, else start a local Ray (dashboard on 127.0.0.1)."""
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace="medgrpo", log_to_driver=True)
    else:
        from cluster import console

        console.quiet_driver()
        repo = str(Path(__file__).resolve().parent.parent)
        env = {k: os.environ[k] for k in ("DS_ACCELERATOR", "MLFLOW_ALLOW_FILE_STORE", "HF_HUB_OFFLINE")
               if k in os.environ}
        env.update({k: os.environ.get(k, v) for k, v in console.RAY_ENV.items()})
        env["PYTHONPATH"] = repo + os.pathsep + os.environ.get("PYTHONPATH", "")
        ray.init(namespace="medgrpo", num_cpus=cfg.cluster.num_cpus, dashboard_host=cfg.cluster.dashboard_host,
                 include_dashboard=os.environ.get("MEDGRPO_DASHBOARD", "1") == "1",
                 runtime_env={"env_vars": env, "worker_process_setup_hook": console.SETUP_HOOK}, log_to_driver=True)
        for line in console.start_notes():
            print(line, flush=True)
    return ray


def stop_local_ray() -> None:
    """Stop the local Ray this process started, at once rather than at interpreter exit: Ray's exit hook first
    sleeps 0.5 s, then gives each of its processes up to 1 s to stop, and the autoscaler monitor (which a
    one-machine Ray never uses) always takes that whole second, so it is killed outright first."""
    import ray
    from ray._private import ray_constants
    from ray._private import worker as ray_worker

    node = ray_worker._global_node  # noqa: SLF001 - the only handle on the processes ray.init started
    for info in node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node is not None else []:
        info.process.kill()
        info.process.wait(timeout=10)
    ray.shutdown()


class Trainer:
    """One job: its actors, its loop, its checkpoints. ``run()`` executes every configured stage."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        # before Ray starts: a folder holding another run's state, or a foreign checkpoint, is refused at no cost
        self.run_id = claim(self.run_dir, cfg.resume, cfg.overwrite)
        import ray

        # a local Ray this job starts is stopped by close(); a cluster (or a Ray the caller started) is left alone
        self._own_ray = not ray.is_initialized() and not (cfg.cluster.address or os.environ.get("RAY_ADDRESS"))
        self.ray = connect_ray(cfg)
        self.timeout = cfg.cluster.get_timeout_s
        self.global_step = 0
        self.stage_index = 0
        self.stage_step = 0
        self.weight_version = 0  # the learner's policy version (through SFT too)
        self._pushed: list[int] = [0]  # the last distinct versions pushed to the rollout actors (policy lag)
        self._inflight: deque = deque()  # PendingRollouts of the next steps of the stage, oldest first
        self._asleep = False  # colocated rollout engines released their memory for the learner
        self._resume_pending: list[list[Instance]] = []
        self._judge_wait_seen = 0.0  # cumulative reward_worker/judge_wait_s at the last step
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.keep_checkpoints, run_id=self.run_id)
        self._load_data()
        resume_from = self._resume_point()
        # the MLflow run opens while the actors start (their processes import and load; the driver only waits)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medgrpo-tracker") as pool:
            opening = pool.submit(self._open_tracker, resume_from)
            try:
                self._start_actors()
            except BaseException:
                with contextlib.suppress(Exception):
                    opening.result().finish("FAILED")
                raise
            try:
                self.tracker = opening.result()
            except BaseException:
                self.actors.shutdown()
                raise
        if resume_from is not None:
            self._restore(resume_from)
        skipped = {f"data/skipped/{k}": v for k, v in self.data_skipped.items()}
        skipped.update({f"data/eval_skipped/{k}": v for k, v in self.eval_skipped.items()})
        skipped["data/train_instances"] = len(self.train_instances)
        skipped.update(self._answers_over_budget())
        self.tracker.log_metrics(skipped, step=self.global_step)
        self._baseline: Optional[dict[str, Any]] = None
        if self.eval_instances:  # what the eval table is read against, beside eval/*
            from rewards.leaderboard import flat_metrics

            self.tracker.log_metrics(flat_metrics(self.baseline(), "baseline/"), step=self.global_step)

    # -- setup ---------------------------------------------------------------------------------------------
    def _open_tracker(self, resume_from: Optional[Path]) -> Tracker:
        """This job's MLflow run (a resumed job's own run again), with the config and tags of a fresh one."""
        cfg = self.cfg
        run_id = read_json(resume_from / "driver_state.json").get("mlflow_run_id") if resume_from else None
        tracker = Tracker(resolve_tracking_uri(cfg.tracking.mlflow_uri, cfg.run_dir), cfg.tracking.experiment,
                          run_name=cfg.tracking.run_name or self.run_dir.name, run_id=run_id)
        if resume_from is None:
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
            tracker.log_params(to_flat_dict(cfg))
            tracker.log_artifact(self.run_dir / "config.yaml")
        tracker.set_tag("run_dir", str(self.run_dir.resolve()))
        tracker.set_tag("medgrpo_run_id", self.run_id)
        return tracker

    def _load_data(self) -> None:
        from data.reader import read_instances
        from data.sampler import TaskBalancedSampler

        cfg = self.cfg.data
        self.train_instances: list[Instance] = []
        self.data_skipped: Counter = Counter()
        seen: set[str] = set()
        for k, f in enumerate(cfg.train_files):
            res = read_instances(f, data_roots=cfg.data_roots or None)
            for inst in res.instances:  # a uid is unique within its file; keep it unique across files
                if inst.uid in seen:
                    inst.uid = f"{inst.uid}@{k}"
                seen.add(inst.uid)
            self.train_instances += res.instances
            self.data_skipped.update(res.counts_by_reason)
        if self.data_skipped:
            log.warning("data: skipped rows by reason: %s", dict(self.data_skipped))
        if not self.train_instances:
            raise RuntimeError(f"no usable training instances in {cfg.train_files} (skipped: {dict(self.data_skipped)})")
        self.eval_instances: list[Instance] = []
        self.eval_skipped: Counter = Counter()
        for f in cfg.eval_files:
            if not Path(f).exists():
                raise FileNotFoundError(f"data.eval_files: {f} does not exist")
            res = read_instances(f, data_roots=cfg.data_roots or None)
            self.eval_instances += res.instances
            self.eval_skipped.update(res.counts_by_reason)
        if self.eval_skipped:
            log.warning("eval data: skipped rows by reason: %s", dict(self.eval_skipped))
        if cfg.tasks:
            self.eval_instances = [i for i in self.eval_instances if i.qa_type in cfg.tasks]
        self.eval_instances = self.eval_instances[: cfg.eval_max_samples]
        self.by_id = {i.uid: i for i in self.train_instances}
        self.sampler = TaskBalancedSampler(self.train_instances, task_weights=cfg.task_weights,
                                           source_weights=cfg.source_weights, seed=self.cfg.seed,
                                           tasks=cfg.tasks or None)
        self.knowledge = None
        if cfg.knowledge_file:
            from data.knowledge import load_knowledge

            self.knowledge = load_knowledge(cfg.knowledge_file)

    def _answers_over_budget(self) -> dict[str, float]:
        """Warn about tasks whose reference answers are longer than ``rollout.max_new_tokens``: the policy can never
        write them whole. Returns the share of such answers per qa_type (``data/answers_over_budget/*``). The
        tokens are counted by a rollout actor, under the tokenizer it loaded with the model."""
        from data.answer_budget import answers_over_budget

        budget = self.cfg.rollout.max_new_tokens
        over = answers_over_budget(self.train_instances + self.eval_instances, self.actors.count_tokens, budget)
        for qa_type, s in over.items():
            log.warning("rollout.max_new_tokens=%d is shorter than %d of %d %s reference answers (longest %d tokens): "
                        "those answers can never be generated whole", budget, s["over"], s["n"], qa_type, s["longest"])
        return {f"data/answers_over_budget/{k}": s["over"] / s["n"] for k, s in over.items()}

    def _start_actors(self) -> None:
        from cluster.actor_set import ActorSet

        self.actors = ActorSet(self.cfg, knowledge=self.knowledge)

    # -- checkpoint / resume -------------------------------------------------------------------------------
    def _resume_point(self) -> Optional[Path]:
        if self.cfg.resume == "never":
            return None
        if self.cfg.resume == "auto":
            return self.ckpt.latest_valid()
        return Path(self.cfg.resume)

    def save_checkpoint(self) -> Path:
        """The driver's state and every stateful actor's. The prompts of every rollout batch in flight are saved
        (``pending_prompts``: one list per batch, oldest first) so a resumed run generates them again (the sampler
        has already moved past them) — with the restored weights, so those steps are on-policy."""
        tmp = self.ckpt.begin(self.global_step)
        self.actors.save_state(tmp)
        write_json(tmp / "driver_state.json", {
            "global_step": self.global_step, "stage_index": self.stage_index, "stage_step": self.stage_step,
            "weight_version": self.weight_version, "sampler": self.sampler.state_dict(),
            "run_id": self.run_id, "mlflow_run_id": self.tracker.run_id,
            "pending_prompts": [[p.uid for p in pending.prompts] for pending in self._inflight],
            "rng": {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
                    "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2]),
                    "torch": torch.get_rng_state().tolist()},
        })
        return self.ckpt.commit(tmp, self.global_step, before_prune=self._log_checkpoint)

    def _log_checkpoint(self, path: Path) -> None:
        """A just-committed checkpoint's artifacts, logged before pruning may remove anything."""
        self.tracker.set_tag("last_checkpoint", str(path.resolve()))
        self.tracker.log_artifact(path / "normalizer_table.json", "normalizer")
        rollouts = self.run_dir / "rollouts.jsonl"
        if rollouts.exists():
            self.tracker.log_artifact(rollouts, "rollouts")
        if self.cfg.tracking.log_checkpoints:
            self.tracker.log_artifact(path, f"checkpoints/{path.name}")

    def _restore(self, path: Path) -> None:
        state = read_json(path / "driver_state.json")
        self.global_step = state["global_step"]
        self.stage_index = state["stage_index"]
        self.stage_step = state["stage_step"]
        self.weight_version = state["weight_version"]
        batches = state.get("pending_prompts", [])
        if batches and isinstance(batches[0], str):  # a checkpoint of the one-batch look-ahead: one batch
            batches = [batches]
        self._resume_pending = [[self.by_id[u] for u in uids] for uids in batches]
        self.sampler.load_state_dict(state["sampler"])
        rng = state["rng"]
        random.setstate((3, tuple(rng["python"]), rng["python_pos"]))
        np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
        torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
        self.actors.load_state(path, self.weight_version)  # pushes the restored weights to the rollout actors
        self._pushed = [self.weight_version]
        log.info("resumed from %s at step %d", path, self.global_step)

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        total = sum(s.steps for s in self.cfg.stages)
        progress = Progress(total, initial=self.global_step, enabled=self.cfg.tracking.progress_bar)
        last: dict[str, Any] = {}
        try:
            while self.stage_index < len(self.cfg.stages):
                stage = self.cfg.stages[self.stage_index]
                self.sampler.set_tasks(stage.tasks or self.cfg.data.tasks or None)
                lr = stage.lr if stage.lr is not None else self.cfg.learner.lr
                self.actors.set_lr(lr)
                for prompts in self._resume_pending:  # the rollout batches in flight a checkpoint recorded
                    self._submit_ahead(prompts)
                self._resume_pending = []
                while self.stage_step < stage.steps:
                    timer = PhaseTimer()
                    batch = stage.prompts_per_step or self.cfg.data.prompts_per_step
                    with timer.phase("step"):
                        if stage.kind == "sft":
                            metrics = self.sft_step(batch)
                        else:  # never look ahead past the stage's end
                            ahead = min(self.cfg.rollout.max_staleness, stage.steps - self.stage_step - 1)
                            metrics = self.grpo_step(batch, ahead, timer)
                    self.global_step += 1
                    self.stage_step += 1
                    metrics["time/step_s"] = timer.seconds["step"]
                    # the driver's own cost: the step's wall time not spent waiting on a phase's actors
                    metrics["time/overhead_s"] = metrics["time/step_s"] - timer.total(WAITED_PHASES)
                    # ... and what it did itself inside those phases (batch building, Ray (de)serialization): its
                    # thread's CPU time there; overhead + this bounds the driver's share of the step from above
                    metrics["time/cpu/step_s"] = timer.cpu_seconds["step"]
                    metrics["time/driver_in_phases_s"] = timer.cpu_total(WAITED_PHASES)
                    metrics["stage/index"] = self.stage_index
                    self.tracker.log_metrics(metrics, step=self.global_step)
                    progress.update(stage.name, **progress_fields(stage.kind, metrics))
                    last = metrics
                    if self.cfg.eval_every and self.global_step % self.cfg.eval_every == 0:
                        self.tracker.log_metrics(self.evaluate(prefix="eval/"), step=self.global_step)
                    if self.cfg.checkpoint_every and self.global_step % self.cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                if self._inflight:
                    raise RuntimeError(f"stage {stage.name}: {len(self._inflight)} rollout batches in flight past "
                                       "its end")
                if stage.kind == "sft":  # the rollout actors (GRPO, eval) start from the SFT weights
                    self._ready_to_generate()
                self.stage_index += 1
                self.stage_step = 0
            self.tracker.finish()
        except BaseException as e:
            if isinstance(e, LearnerError):
                last_ckpt = self.ckpt.latest_valid()
                log.error("%s. Run stopped at step %d; last valid checkpoint: %s. Resubmit the job with resume=auto "
                          "(a RayJob retry does) or run `medgrpo resume %s` to continue from it.", e,
                          self.global_step, last_ckpt or "none (restart from scratch)", self.run_dir)
                self.tracker.set_tag("failure", str(e)[:500])
            self.tracker.finish("FAILED")
            raise
        finally:
            progress.close()
        return last

    # -- SFT -----------------------------------------------------------------------------------------------
    def sft_step(self, batch: int) -> dict[str, float]:
        prompts = self.sampler.next_batch(batch)
        with_answer = [p for p in prompts if p.answer]
        examples, failures = self.actors.encode_sft(with_answer, timeout=self.timeout)
        acct = StepAccounting(prompts_in=len(prompts))
        acct.drop("no_answer", len(prompts) - len(with_answer))
        for f in failures:
            acct.drop(f.reason)
        metrics: dict[str, float] = {}
        if examples:
            self._sleep_rollouts()
            metrics = self.actors.learner.sft_step(examples)
            self.weight_version = int(metrics.get("version", self.weight_version))
            metrics = {"loss/sft" if k == "loss" else f"sft/{k}": v for k, v in metrics.items()}
            if metrics.get("sft/skipped_nonfinite"):
                acct.drop("nonfinite_loss", len(examples))
            else:
                acct.prompts_trained = len(examples)
        acct.check()
        metrics.update(acct.metrics())
        metrics.update(self.actors.fault_metrics())
        return metrics

    # -- GRPO ----------------------------------------------------------------------------------------------
    def _sample_prompts(self, n: int) -> list[Instance]:
        return self.sampler.next_batch(n)

    def _rollout_seed(self, step: int) -> int:
        """Sampling seed of the rollouts consumed at ``step`` (the same whether generated ahead or not)."""
        return self.cfg.seed * 1_000_003 + step * 1009

    def _submit_ahead(self, prompts: list[Instance]) -> None:
        """Queue a rollout batch for the step after the last one in flight (seeded for the step that consumes it)."""
        step = self.global_step + len(self._inflight)
        self._inflight.append(self.actors.submit_rollouts(prompts, seed=self._rollout_seed(step)))

    def grpo_step(self, target: int, ahead: int, timer: PhaseTimer) -> dict[str, float]:
        """One GRPO step in named phases: generate → (look ahead) → score-and-normalize → select groups (dynamic
        sampling refills) → train → push → metrics. ``ahead``: how many later steps of this stage may have their
        rollouts in flight while this one trains (``rollout.max_staleness``, cut at the stage's end)."""
        st = _GrpoStep(acct=StepAccounting(), tau=self.actors.tau())
        groups = self._generate(st, target, timer)
        while len(self._inflight) < ahead:  # async: later steps' rollouts generate while this step trains
            self._submit_ahead(self._sample_prompts(target))
        rounds = 0
        while True:
            groups, scored, rewards = self._score_and_normalize(st, groups, rounds, timer)
            self._select_groups(st, groups, scored, rewards)
            missing = target - len(st.kept)
            if missing <= 0 or not self.cfg.rollout.dynamic_sampling or rounds >= self.cfg.rollout.max_refill_rounds:
                break
            rounds += 1  # dynamic sampling: refill the batch with fresh prompts
            groups = self._refill(st, missing, rounds, timer)
        st.metrics.update(self._reward_metrics(st.all_samples))
        st.metrics.update(self.actors.reward_metrics())
        # MedLoc-R1: the curriculum sees this step's grounding groups (mean reward, mean IoU)
        if st.group_iou:
            st.metrics.update(self.actors.observe_curriculum([a for a, _ in st.group_iou],
                                                             [b for _, b in st.group_iou],
                                                             call_id=str(self.global_step)))
        lags = [self._lag(g.policy_version) for g in st.kept]  # measured against the policy about to train
        if st.kept:
            self._train(st, timer)
            with timer.phase("sync"):
                self._push()
        st.acct.check()
        return self._grpo_metrics(st, lags, timer)

    def _generate(self, st: "_GrpoStep", target: int, timer: PhaseTimer) -> list[PromptGroup]:
        """This step's rollouts: the oldest batch in flight, or a fresh one generated now."""
        with timer.phase("generate"):
            if not self._inflight:
                self._ready_to_generate()
                self._submit_ahead(self._sample_prompts(target))
            return self._collect(st, self._inflight.popleft())

    def _refill(self, st: "_GrpoStep", missing: int, rounds: int, timer: PhaseTimer) -> list[PromptGroup]:
        """Dynamic sampling: rollouts of ``missing`` fresh prompts, generated now."""
        with timer.phase("generate"):
            pending = self.actors.submit_rollouts(self._sample_prompts(missing),
                                                  seed=self._rollout_seed(self.global_step) + 7919 * rounds)
            return self._collect(st, pending)

    def _collect(self, st: "_GrpoStep", pending: Any) -> list[PromptGroup]:
        """A rollout batch's groups; its prompts counted in, the ones its actors lost counted as drops."""
        prompts, groups, failures = self.actors.collect_rollouts(pending, timeout=self.timeout)
        st.acct.prompts_in += len(prompts)
        for f in failures:
            st.acct.drop(f.reason)
        return groups

    def _score_and_normalize(self, st: "_GrpoStep", groups: list[PromptGroup], rounds: int, timer: PhaseTimer
                             ) -> tuple[list[PromptGroup], list[list[SampleReward]], list[list[float]]]:
        """Reward workers score every sample; the normalizer maps each (source, task) to its scale; the combined
        reward per sample, per group. Groups lost to reward-worker faults are dropped (counted)."""
        cfg = self.cfg
        with timer.phase("reward"):
            scored_or_lost = self.actors.score(groups, self.by_id, st.tau, timeout=self.timeout)
        for sc in scored_or_lost:
            if sc is None:  # its samples were lost to reward-worker faults (counted by the pool)
                st.acct.drop("reward_worker_lost")
        groups = [g for g, sc in zip(groups, scored_or_lost) if sc is not None]
        scored = [sc for sc in scored_or_lost if sc is not None]
        timer.add("decode", sum(g.extra.get("decode_s", 0.0) for g in groups))
        flat = [s for g in scored for s in g]
        keys, values, where = normalization_requests(flat)
        with timer.phase("normalize"):
            normalized, norm_metrics = self.actors.normalize(keys, values, timeout=self.timeout,
                                                             call_id=f"{self.global_step}:{rounds}")
        comb = combine(flat, list(normalized), where, judge_weight=cfg.reward.caption_judge_weight,
                       fallback=cfg.reward.caption_fallback, task_weights=cfg.reward.task_weights,
                       dvc_caption_weight=cfg.reward.dvc_caption_weight)
        st.metrics.update({f"normalizer/{k}": v for k, v in norm_metrics.items()})
        for k, v in comb.counters.items():
            st.metrics[f"reward/count/{k}"] = st.metrics.get(f"reward/count/{k}", 0) + v
        st.all_samples += flat
        pos = 0
        rewards: list[list[float]] = []
        for g, sc in zip(groups, scored):
            rewards.append(comb.rewards[pos: pos + len(sc)])
            pos += len(sc)
            ious = [s.iou for s in sc if s.iou is not None]
            if (spec := spec_of(g.qa_type)) is not None and spec.grounding and ious:
                st.group_iou.append((float(np.mean([s.components.get("task") or 0.0 for s in sc])),
                                     float(np.mean(ious))))
        return groups, scored, rewards

    def _select_groups(self, st: "_GrpoStep", groups: list[PromptGroup], scored: list[list[SampleReward]],
                       rewards: list[list[float]]) -> None:
        """Keep the groups that can teach: finite rewards, and (dynamic sampling) not all equal."""
        cfg = self.cfg
        for g, r in zip(groups, rewards):
            if any(not np.isfinite(x) for x in r):
                st.acct.drop("nan_reward")
                continue
            if cfg.rollout.dynamic_sampling and not filter_zero_variance(torch.tensor([r]))[0]:
                st.acct.drop("zero_variance")
                continue
            st.kept.append(g)
            st.kept_rewards.append(r)
            if len(st.samples_log) < cfg.tracking.rollout_samples_per_step:
                inst = self.by_id.get(g.instance_id)
                st.samples_log.append({"step": self.global_step + 1, "id": g.instance_id, "qa_type": g.qa_type,
                                       "question": inst.question if inst else "", "answer": g.completions[0].text,
                                       "reference": inst.answer if inst else None, "reward": r[0]})

    def _train(self, st: "_GrpoStep", timer: PhaseTimer) -> None:
        """Group advantages, then one learner update (PPO-clip against each sample's behaviour log-probs)."""
        cfg = self.cfg
        rewards = torch.tensor(st.kept_rewards, dtype=torch.float32)
        adv = compute_advantages(rewards, cfg.learner.advantage)
        st.metrics.update({"advantage/mean": float(adv.mean()), "advantage/std": float(adv.std()),
                           "advantage/abs_max": float(adv.abs().max()), "reward/norm_mean": float(rewards.mean())})
        self._sleep_rollouts()
        with timer.phase("train"):
            train_metrics = self.actors.learner.train_step(st.kept, adv.tolist())
        st.metrics.update({f"loss/{k}" if k == "loss" else f"train/{k}": v for k, v in train_metrics.items()})
        if "loss" in train_metrics:
            st.metrics["loss/policy"] = train_metrics["loss"]
        if cfg.learner.kl_coef > 0:  # mean k3 KL(π_θ || π_ref) over the response tokens; β × it is in the loss
            st.metrics["loss/kl"] = train_metrics.get("kl_ref", float("nan"))
        if not train_metrics.get("skipped_nonfinite", 0):
            st.acct.prompts_trained = len(st.kept)
        else:
            st.acct.drop("nonfinite_loss", len(st.kept))

    def _grpo_metrics(self, st: "_GrpoStep", lags: list[int], timer: PhaseTimer) -> dict[str, float]:
        """The step's accounting, throughput, timings, faults and staleness; the sample log written."""
        metrics = st.metrics
        metrics.update(st.acct.metrics())
        metrics["policy/version"] = self.weight_version
        metrics["curriculum/tau"] = st.tau if st.tau is not None else 0.0
        tokens = sum(len(c.response_ids) for g in st.kept for c in g.completions)
        # the actors' own generation time: in async mode the driver's wait on generate is not the time it took
        gen_s = sum(g.extra.get("generate_s", 0.0) for g in st.kept)
        metrics["throughput/tokens_per_s"] = tokens / max(gen_s, 1e-9)
        judge_wait = metrics.get("reward_worker/judge_wait_s", 0.0)
        # summed over reward workers; a restarted worker's counter starts again from 0
        metrics["time/judge_wait_s"] = judge_wait - (self._judge_wait_seen if judge_wait >= self._judge_wait_seen
                                                     else 0.0)
        self._judge_wait_seen = judge_wait
        metrics["throughput/samples_per_s"] = (sum(g.group_size for g in st.kept)
                                               / max(timer.total(WAITED_PHASES), 1e-9))
        metrics.update(timer.metrics())  # decode: the actors' share of generate
        metrics.update(self.actors.fault_metrics())
        # policy lag of the trained samples, in learner updates (≤ rollout.max_staleness)
        sizes = [g.group_size for g in st.kept]
        metrics["staleness/max"] = float(max(lags, default=0))
        metrics["staleness/mean"] = float(np.average(lags, weights=sizes)) if lags else 0.0
        if st.samples_log:
            write_jsonl(self.run_dir / "rollouts.jsonl", st.samples_log)
        return metrics

    # -- weights on the rollout actors ---------------------------------------------------------------------
    def _lag(self, version: int) -> int:
        """Learner updates between the policy that generated a sample (``version``) and the current one."""
        return sum(1 for v in self._pushed if v > version)

    def _push(self) -> None:
        """The learner's weights to every rollout actor (colocated: wake the weights, load, wake the KV cache)."""
        if self.cfg.cluster.colocate:
            self.actors.wake_rollouts(["weights"])
        self.weight_version = self.actors.push_weights(timeout=self.timeout)
        if not self._pushed or self._pushed[-1] != self.weight_version:
            self._pushed = (self._pushed + [self.weight_version])[-(self.cfg.rollout.max_staleness + 1):]
        if self.cfg.cluster.colocate:
            self.actors.wake_rollouts(["kv_cache"])
            self._asleep = False

    def _ready_to_generate(self) -> None:
        """Before rollouts or eval: the rollout actors hold the learner's weights (after SFT steps) and are awake."""
        if self.actors.version != self.weight_version or self._asleep:
            self._push()

    def _sleep_rollouts(self) -> None:
        """Colocated: the rollout engines release their GPU memory while the learner trains."""
        if self.cfg.cluster.colocate and not self._asleep:
            self.actors.sleep_rollouts()
            self._asleep = True

    def _reward_metrics(self, samples: list[SampleReward]) -> dict[str, float]:
        m: dict[str, float] = {}
        by_key: dict[str, list[float]] = {}
        reasons: Counter = Counter()
        for s in samples:
            r = raw_reward(s, self.cfg.reward.caption_judge_weight, self.cfg.reward.dvc_caption_weight)
            if np.isfinite(r):
                by_key.setdefault(f"{s.data_source}/{s.qa_type}", []).append(r)
            if s.reason:
                reasons[s.reason] += 1
            if "judge" in s.components and s.components["judge"] is None:  # a judged caption task
                reasons["judge_missing"] += 1
        allv = [v for vs in by_key.values() for v in vs]
        m["reward/raw_mean"] = float(np.mean(allv)) if allv else float("nan")
        for k, vs in by_key.items():
            m[f"reward/raw/{k}"] = float(np.mean(vs))
        for k, v in reasons.items():
            m[f"parse_fail/{k}"] = v
        return m

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluate_result(self) -> dict[str, Any]:
        """The leaderboard result (``rewards.leaderboard.evaluate``) of greedy answers on the eval split; the run's
        judge fills the LLM columns when one is configured, the reward workers' similarity model the *_sim ones."""
        from rewards.leaderboard import evaluate

        self._ready_to_generate()  # eval scores the learner's current weights (during SFT too)
        preds = self.actors.predict(self.eval_instances, max_new_tokens=self.cfg.rollout.max_new_tokens,
                                    timeout=self.timeout)
        return evaluate(self.eval_instances, preds, **self.actors.eval_scorers())

    def evaluate(self, prefix: str = "eval/") -> dict[str, float]:
        """Eval metrics: ``<prefix><column>`` pooled, ``<prefix>source_mean/<column>``, ``<prefix><source>/..``."""
        from rewards.leaderboard import flat_metrics

        return flat_metrics(self.evaluate_result(), prefix) if self.eval_instances else {}

    def baseline(self) -> dict[str, Any]:
        """Constant-prediction baselines fitted on the training split, scored on the eval split
        (``rewards.baselines``); computed once."""
        from rewards.baselines import baseline_table

        if self._baseline is None:
            self._baseline = baseline_table(self.train_instances, self.eval_instances)
        return self._baseline

    def close(self) -> None:
        """Stop this job's actors, and the local Ray it started (see ``stop_local_ray``)."""
        self.actors.shutdown()
        if self._own_ray:
            stop_local_ray()


def train(cfg: TrainConfig) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.close()


def main() -> None:  # `ray job submit -- python -m cluster.driver PRESET [overrides]`
    import sys

    train(load_config(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
