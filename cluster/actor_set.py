"""Every actor of a run, created from the config with names the Ray dashboard shows (``rollout-0``,
``learner-rank-0``, ``reward-0``, ``judge``, ``normalizer``, ``curriculum``), and the calls the driver makes on
them. Each ``ray.get`` carries a timeout.

Faults: every light actor is created with ``cluster.max_actor_restarts``. Rollout actors, reward workers and learner
ranks are ``actors.actor_pool.ActorPool``s: one way to wait, count faults and retry. A rollout share whose actor
died (or hung past the timeout) is regenerated on the restarted actor after the current weights are pushed to it,
up to ``cluster.rollout_retries`` times, then its prompts are reported as failures with a reason; reward shards are
retried by the reward pool; the normalizer and curriculum come back from per-call snapshots (``actors.snapshot``) and
their retried calls are idempotent; a dead judge makes the caption reward fall back (counted) until it is back.
Cumulative counts are in ``faults`` (logged as ``faults/*``)."""
from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import ray

from actors.actor_pool import ActorPool, Call, FaultNames, Lost, RetryPolicy
from cluster.config import TrainConfig
from cluster.placement import Reservation
from common.files import read_json, write_json
from data.schema import Instance
from learner.experience import PromptGroup, RolloutFailure
from rewards.assembly import SampleReward
from rewards.normalizer import flatten_metrics

log = logging.getLogger("medgrpo")


@dataclass
class PendingRollouts:
    """Calls in flight on the rollout actors; ``collect`` turns them into results (one per instance)."""

    prompts: list[Instance]
    calls: list[Call]  # one per share; its args[0] are the share's instances
    version: int  # the policy version pushed when the shares were submitted


class ActorSet:
    def __init__(self, cfg: TrainConfig, knowledge: Optional[dict] = None) -> None:
        import secrets

        from actors.learner_actor import LearnerGroup
        from actors.normalizer_actor import NormalizerActor
        from actors.rollout import RolloutActor

        self.cfg = cfg
        self.timeout = cfg.cluster.get_timeout_s
        # Names the dashboard shows: "<run>-<token>/rollout-0"; the token keeps two jobs on one cluster apart.
        self.prefix = f"{Path(cfg.run_dir).name}-{secrets.token_hex(2)}/"
        self.reservation = Reservation(cfg)
        self.faults: Counter = Counter()
        restarts = cfg.cluster.max_actor_restarts
        # snapshots of this job's stateful actors; the token keeps them apart from any earlier job's
        self.snapshot_dir = Path(cfg.run_dir) / "actor_state" / self.prefix.rstrip("/")
        n = cfg.normalizer
        self.normalizer = NormalizerActor.options(
            name=self.prefix + "normalizer", max_restarts=restarts, max_task_retries=restarts).remote(
            mode=n.mode, k=n.k, eps=n.eps, min_samples=n.min_samples, table_file=n.table_file,
            sketch_size=n.sketch_size, warm_samples=n.warm_samples, update_first=n.update_first, seed=cfg.seed,
            snapshot_path=str(self.snapshot_dir / "normalizer.json"))
        self.curriculum = None
        if cfg.curriculum.enabled:
            from actors.curriculum_actor import CurriculumActor

            c = cfg.curriculum
            self.curriculum = CurriculumActor.options(
                name=self.prefix + "curriculum", max_restarts=restarts, max_task_retries=restarts).remote(
                snapshot_path=str(self.snapshot_dir / "curriculum.json"), tau0=c.tau0, tau_max=c.tau_max,
                window=c.window, margin=c.margin, schedule=c.schedule,
                delta_max=c.delta_max, delta_min=c.delta_min)
        self.judge = None
        if cfg.reward.judge.backend != "none":
            from actors.judge import create_judge_actor

            # no task retries: a call that dies with the judge falls back to similarity (counted) instead of waiting
            self.judge = create_judge_actor(cfg.reward.judge, name=self.prefix + "judge", max_restarts=restarts,
                                            **self.reservation.options("judge", 0))
        from actors.reward_worker import RewardWorkerPool

        self.rewards = RewardWorkerPool(cfg.reward, judge=self.judge, num_workers=cfg.reward.num_workers,
                                        knowledge=knowledge, get_timeout_s=self.timeout,
                                        actor_options={"num_cpus": cfg.reward.num_cpus, "max_restarts": restarts,
                                                       "max_task_retries": min(restarts, 1) if restarts else 0,
                                                       **self.reservation.options("reward", 0)})
        r, d, m = cfg.rollout, cfg.data, cfg.model
        device = "cuda" if r.num_gpus > 0 else "cpu"
        rollouts = [
            RolloutActor.options(name=f"{self.prefix}rollout-{i}", max_restarts=restarts, max_task_retries=0,
                                 **{"num_cpus": r.num_cpus, "num_gpus": r.num_gpus,
                                    **self.reservation.options("rollout", i)}
                                 ).remote(
                m.path, backend=r.backend, dtype=m.dtype, device=device, attn_implementation=m.attn_implementation,
                max_frames=d.max_frames, max_pixels=d.max_pixels, min_pixels=d.min_pixels,
                video_backend=d.video_backend, knowledge=knowledge, batch_prompts=r.batch_prompts,
                max_batch_prompts=r.max_batch_prompts,
                vllm_kwargs={"gpu_memory_utilization": r.gpu_memory_utilization,
                             "tensor_parallel_size": r.tensor_parallel_size,
                             "enable_sleep_mode": r.enable_sleep_mode, "seed": cfg.seed})
            for i in range(r.num_actors)]
        # a lost share is regenerated on the actor Ray restarted (after ``_revive`` gives it the current weights)
        self.rollout_pool = ActorPool(
            rollouts, "rollout", RetryPolicy(max_retries=cfg.cluster.rollout_retries),
            names=FaultNames(timeout="rollout_timeout", died="rollout_actor_lost", retried="rollout_retried_prompts",
                             lost="rollout_dropped_prompts"), faults=self.faults)
        if cfg.cluster.colocate:  # vLLM sizes its memory from what is free: start it before the learner takes any
            ray.get([a.ping.remote() for a in self.rollouts], timeout=self.timeout)
        learner_plan = self.reservation.plans.get("learner")
        self.learner = LearnerGroup(cfg, placement_group=self.reservation.placement_group("learner"),
                                    bundle_indices=[b for _, b in learner_plan.slots] if learner_plan else None)
        ray.get([a.ping.remote() for a in self.rollouts], timeout=self.timeout)
        self.dead: set[int] = set()  # rollout actors whose restarts are used up
        self.version = 0
        self._sync_group = False  # rollout.weight_path=nccl: the learner and the engines have joined the group

    @property
    def rollouts(self) -> list[Any]:
        """The rollout actors' handles (``rollout-<i>``)."""
        return self.rollout_pool.actors

    # -- rollouts ------------------------------------------------------------------------------------------
    def _submit(self, method: str, instances: list[Instance], **kwargs: Any) -> PendingRollouts:
        """Split ``instances`` across the live rollout actors (contiguous shares, so results keep their order).
        ``generate`` gets a distinct ``seed`` per share: ``seed`` + the share's offset x ``n`` (the vllm backend seeds
        prompt i of a share ``seed + i * n``, so every sample of the step has its own stream)."""
        live = [i for i in range(len(self.rollouts)) if i not in self.dead]
        if not live:
            raise RuntimeError("every rollout actor is dead (cluster.max_actor_restarts used up); the run stops")
        calls, offset = [], 0
        for i, part in zip(live, _split(instances, len(live))):
            if part:
                kw = dict(kwargs)
                if "seed" in kw:
                    kw["seed"] += offset * int(kw.get("n", 1))
                calls.append(self.rollout_pool.submit(i, method, part, size=len(part), **kw))
            offset += len(part)
        return PendingRollouts(list(instances), calls, self.version)

    def _collect(self, pending: PendingRollouts, timeout: float) -> list[Any]:
        """Every share's results in order; a share lost to a dead or hung actor is regenerated on the restarted
        actor (``cluster.rollout_retries`` times) or comes back as one ``RolloutFailure`` per instance."""

        def stale(res: list[Any]) -> Optional[str]:  # the actor died between calls and Ray restarted it silently
            old = [x.policy_version for x in res if isinstance(x, PromptGroup) and x.policy_version < pending.version]
            return f"restarted actor served policy version {old[0]} < {pending.version}" if old else None

        out: list[Any] = []
        for call, res in zip(pending.calls, self.rollout_pool.gather(pending.calls, timeout, check=stale,
                                                                     revive=self._revive)):
            if isinstance(res, Lost):  # one failure per instance of the share, with the fault's reason
                res = [RolloutFailure(inst.uid, res.reason, res.detail) for inst in call.args[0]]
            out += res
        return out

    def _revive(self, i: int) -> bool:
        """Wait for Ray to restart rollout actor ``i`` and give it the current weights; False if it is gone."""
        try:
            self.rollout_pool.wait_restarted(i, self.timeout)
            if self.version > 0:
                handle = self.learner.get_weights()
                ray.get(self.rollouts[i].apply_weights.remote(handle.ref), timeout=self.timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
            log.error("rollout-%d cannot be restarted (%s); continuing with the other rollout actors", i,
                      type(e).__name__)
            self.dead.add(i)
            self.faults["rollout_actors_dead"] = len(self.dead)
            return False
        self.faults["rollout_restarts"] += 1
        return True

    def submit_rollouts(self, prompts: list[Instance], seed: int) -> PendingRollouts:
        """Start generating G samples for each prompt; ``collect_rollouts`` waits for them."""
        r = self.cfg.rollout
        return self._submit("generate", prompts, n=r.group_size, max_new_tokens=r.max_new_tokens,
                            temperature=r.temperature, top_p=r.top_p, seed=seed)

    def collect_rollouts(self, pending: PendingRollouts, timeout: float
                         ) -> tuple[list[Instance], list[PromptGroup], list[RolloutFailure]]:
        results = self._collect(pending, timeout)
        groups = [x for x in results if isinstance(x, PromptGroup)]
        failures = [x for x in results if isinstance(x, RolloutFailure)]
        return pending.prompts, groups, failures

    def predict(self, instances: list[Instance], max_new_tokens: int, timeout: float) -> dict[str, str]:
        """Greedy answers for evaluation (an instance whose rollout failed has none: scored as empty)."""
        results = self._collect(self._submit("generate", instances, n=1, max_new_tokens=max_new_tokens,
                                             temperature=0.0, seed=0), timeout)
        return {x.instance_id: x.completions[0].text for x in results if isinstance(x, PromptGroup)}

    def encode_sft(self, instances: list[Instance], timeout: float) -> tuple[list[dict], list[RolloutFailure]]:
        results = self._collect(self._submit("encode_sft", instances), timeout)
        examples = [x for x in results if not isinstance(x, RolloutFailure)]
        return examples, [x for x in results if isinstance(x, RolloutFailure)]

    # -- rewards -------------------------------------------------------------------------------------------
    def tau(self) -> Optional[float]:
        if self.curriculum is None:
            return None
        tau, restores = ray.get([self.curriculum.threshold.remote(), self.curriculum.restores.remote()],
                                timeout=self.timeout)
        self.faults["curriculum_restores"] = restores
        return tau

    def observe_curriculum(self, group_rewards: list[float], group_ious: list[float],
                           call_id: Optional[str] = None) -> dict[str, float]:
        if self.curriculum is None:
            return {}
        # one wait: an actor runs its calls in order, so metrics() sees this observation
        refs = [self.curriculum.observe.remote(group_rewards, group_ious, call_id), self.curriculum.metrics.remote()]
        return ray.get(refs, timeout=self.timeout)[1]

    def score(self, groups: list[PromptGroup], prompts: dict[str, Instance], tau: Optional[float],
              timeout: float) -> list[Optional[list[SampleReward]]]:
        """One list of rewards per group; None for a group whose samples were lost to reward-worker faults."""
        return self.rewards.score_groups(groups, prompts, iou_threshold=tau, timeout=timeout)

    def eval_scorers(self) -> dict[str, Any]:
        """``judge_fn`` (the run's judge actor, told each pair's task; None without a judge) and ``similarity_fn``
        (a reward worker's similarity model) for ``rewards.leaderboard.evaluate``. A call that fails leaves its
        pairs out of the columns, counted there as missing (logged), never a crash of the run."""

        def judge_fn(pairs: list[tuple[str, str]], hints: list[str]) -> list[Optional[float]]:
            try:
                outcomes = ray.get(self.judge.score.remote(pairs, hints), timeout=self.timeout)
            except (ray.exceptions.RayError, TimeoutError) as e:
                log.warning("eval: judge failed on %d pairs: %s", len(pairs), type(e).__name__)
                return [None] * len(pairs)
            return [o.score if o.ok else None for o in outcomes]

        def similarity_fn(pairs: list[tuple[str, str]]) -> list[Optional[float]]:
            try:
                return list(self.rewards.cosine(pairs, timeout=self.timeout))
            except (ray.exceptions.RayError, TimeoutError) as e:
                log.warning("eval: similarity failed on %d pairs: %s", len(pairs), type(e).__name__)
                return [None] * len(pairs)

        return {"judge_fn": judge_fn if self.judge is not None else None, "similarity_fn": similarity_fn}

    def reward_metrics(self) -> dict[str, float]:
        """Cumulative reward-worker counters and the judge's calls, failures, fallbacks and latency."""
        return {k if k.startswith("judge/") else f"reward_worker/{k}": v for k, v in self.rewards.metrics().items()}

    def normalize(self, keys: list, values: list[float], timeout: float,
                  call_id: Optional[str] = None) -> tuple[list[float], dict[str, float]]:
        """Normalized values and per-key metrics. ``call_id`` makes Ray's retry after a normalizer restart
        idempotent; a normalizer that cannot come back stops the run (a clear error; the checkpoint resumes)."""
        try:
            (normalized, per_key), restores = ray.get(
                [self.normalizer.process.remote(keys, values, call_id), self.normalizer.restores.remote()],
                timeout=timeout)
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"the normalizer actor is lost for good (cluster.max_actor_restarts="
                               f"{self.cfg.cluster.max_actor_restarts} used up): {e}") from None
        self.faults["normalizer_restores"] = restores
        return list(normalized), flatten_metrics(per_key, prefix="")

    def fault_metrics(self) -> dict[str, float]:
        return {f"faults/{k}": float(v) for k, v in self.faults.items()}

    # -- learner / weights ---------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        self.learner.set_lr(lr)

    def push_weights(self, timeout: float) -> int:
        if self.cfg.rollout.weight_path == "nccl":
            return self._broadcast_weights(timeout)
        handle = self.learner.get_weights()
        versions = ray.get([a.apply_weights.remote(handle.ref) for a in self.rollouts], timeout=timeout)
        if any(v != handle.version for v in versions):
            raise RuntimeError(f"weight sync: rollout actors report versions {versions}, sent {handle.version}")
        self.version = handle.version
        return handle.version

    def sleep_rollouts(self) -> None:
        """Colocated: every rollout engine releases its memory (vLLM ``sleep(level=1)``: weights to host memory,
        KV cache dropped) so the learner can train on the same device."""
        ray.get([a.sleep.remote(level=1) for a in self.rollouts], timeout=self.timeout)

    def wake_rollouts(self, tags: list[str]) -> None:
        """Colocated: restore the engines' ``tags`` (``weights`` before a weight load, ``kv_cache`` after it)."""
        ray.get([a.wake_up.remote(tags) for a in self.rollouts], timeout=self.timeout)

    def _broadcast_weights(self, timeout: float) -> int:
        """``rollout.weight_path=nccl``: learner rank 0 broadcasts to every engine's worker extension (the group is
        joined on the first push). A rollout actor restarted by Ray is outside the group (``_revive`` gives it the
        object-store payload), so the next broadcast times out: use object_store where restarts must be survived."""
        world = 1 + len(self.rollouts)
        if not self._sync_group:
            addr, port = self.learner.weight_sync_address()
            backend = "nccl" if self.cfg.rollout.num_gpus > 0 else "gloo"
            joins = self.learner.init_weight_sync(addr, port, world, backend)
            joins += [a.init_weight_sync.remote(addr, port, 1 + i, world, backend, self.timeout)
                      for i, a in enumerate(self.rollouts)]
            ray.get(joins, timeout=timeout)
            self._sync_group = True
        sent = self.learner.broadcast_weights()
        got = ray.get([a.receive_weights.remote() for a in self.rollouts], timeout=timeout)
        version = int(self.learner.wait(sent, "weight broadcast")[0])
        if any(v != version for v in got):
            raise RuntimeError(f"weight broadcast: rollout actors report versions {got}, sent {version}")
        self.version = version
        return version

    # -- state ---------------------------------------------------------------------------------------------
    def save_state(self, path: Path) -> None:
        write_json(path / "normalizer.json", ray.get(self.normalizer.state_dict.remote(), timeout=self.timeout))
        # the quantile table a later `normalizer.mode=static` run can load (run_dir is on storage all nodes share)
        ray.get(self.normalizer.save_table.remote(str(path / "normalizer_table.json")), timeout=self.timeout)
        if self.curriculum is not None:
            write_json(path / "curriculum.json", ray.get(self.curriculum.state_dict.remote(), timeout=self.timeout))
        self.learner.save_checkpoint(str(path / "learner"))

    def load_state(self, path: Path, version: int) -> None:
        ray.get(self.normalizer.load_state_dict.remote(read_json(path / "normalizer.json")), timeout=self.timeout)
        if self.curriculum is not None and (path / "curriculum.json").exists():
            ray.get(self.curriculum.load_state_dict.remote(read_json(path / "curriculum.json")),
                    timeout=self.timeout)
        restored = self.learner.load_checkpoint(str(path / "learner"))
        if restored != version:
            raise RuntimeError(f"checkpoint {path}: learner state is at version {restored}, driver state at {version}")
        self.push_weights(timeout=self.timeout)

    def shutdown(self) -> None:
        for a in [*self.rollouts, self.normalizer, self.curriculum, self.judge]:
            if a is not None:
                ray.kill(a)
        self.rewards.shutdown()
        self.learner.shutdown()
        self.reservation.release()
        shutil.rmtree(self.snapshot_dir, ignore_errors=True)  # checkpoints hold what a later job resumes from


def _split(items: list, n: int) -> list[list]:
    """Contiguous, near-equal shares (order preserved, so results reassemble in prompt order)."""
    k, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + k + (1 if i < r else 0)
        out.append(items[start:end])
        start = end
    return out
