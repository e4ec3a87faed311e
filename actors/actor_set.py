"""Every actor of a run, created from the config with names the Ray dashboard shows (``rollout-0``,
``learner-rank-0``, ``reward-0``, ``judge``, ``normalizer``, ``curriculum``), and the calls the driver makes on
them. Each ``ray.get`` carries a timeout."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Optional

import ray

from cluster.config import TrainConfig
from data.schema import Instance
from learner.experience import PromptGroup, RolloutFailure
from rewards.assembly import SampleReward
from rewards.normalizer import flatten_metrics


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
        from cluster.placement import Reservation

        self.reservation = Reservation(cfg)
        n = cfg.normalizer
        self.normalizer = NormalizerActor.options(name=self.prefix + "normalizer").remote(
            mode=n.mode, k=n.k, eps=n.eps, min_samples=n.min_samples, table_file=n.table_file,
            sketch_size=n.sketch_size, warm_samples=n.warm_samples, update_first=n.update_first, seed=cfg.seed)
        self.curriculum = None
        if cfg.curriculum.enabled:
            from actors.curriculum_actor import CurriculumActor

            c = cfg.curriculum
            self.curriculum = CurriculumActor.options(name=self.prefix + "curriculum").remote(
                tau0=c.tau0, tau_max=c.tau_max, window=c.window, margin=c.margin, schedule=c.schedule,
                delta_max=c.delta_max, delta_min=c.delta_min)
        self.judge = None
        if cfg.reward.judge.backend != "none":
            from actors.judge import create_judge_actor

            self.judge = create_judge_actor(cfg.reward.judge, name=self.prefix + "judge",
                                            **self.reservation.options("judge", 0))
        from actors.reward_worker import RewardWorkerPool

        self.rewards = RewardWorkerPool(cfg.reward, judge=self.judge, num_workers=cfg.reward.num_workers,
                                        knowledge=knowledge, get_timeout_s=self.timeout,
                                        actor_options={"num_cpus": cfg.reward.num_cpus,
                                                       **self.reservation.options("reward", 0)})
        r, d, m = cfg.rollout, cfg.data, cfg.model
        device = "cuda" if r.num_gpus > 0 else "cpu"
        self.rollouts = [
            RolloutActor.options(name=f"{self.prefix}rollout-{i}", **{"num_cpus": r.num_cpus, "num_gpus": r.num_gpus,
                                                                         **self.reservation.options("rollout", i)}
                                 ).remote(
                m.path, backend=r.backend, dtype=m.dtype, device=device, attn_implementation=m.attn_implementation,
                max_frames=d.max_frames, max_pixels=d.max_pixels, min_pixels=d.min_pixels,
                video_backend=d.video_backend, knowledge=knowledge,
                vllm_kwargs={"gpu_memory_utilization": r.gpu_memory_utilization,
                             "tensor_parallel_size": r.tensor_parallel_size,
                             "enable_sleep_mode": r.enable_sleep_mode, "seed": cfg.seed})
            for i in range(r.num_actors)]
        learner_plan = self.reservation.plans.get("learner")
        self.learner = LearnerGroup(cfg, placement_group=self.reservation.placement_group("learner"),
                                    bundle_indices=[b for _, b in learner_plan.slots] if learner_plan else None)
        ray.get([a.ping.remote() for a in self.rollouts], timeout=self.timeout)
        self.version = 0

    # -- rollouts ------------------------------------------------------------------------------------------
    def submit_rollouts(self, prompts: list[Instance], seed: int) -> tuple[list[Instance], list]:
        """Split the step's prompts across rollout actors (contiguous shares); returns a handle to collect."""
        r = self.cfg.rollout
        shares = _split(prompts, len(self.rollouts))
        refs = []
        offset = 0
        for actor, share in zip(self.rollouts, shares):
            if share:
                refs.append(actor.generate.remote(share, r.group_size, max_new_tokens=r.max_new_tokens,
                                                  temperature=r.temperature, top_p=r.top_p, seed=seed + offset))
            offset += len(share)
        return prompts, refs

    def collect_rollouts(self, pending: tuple[list[Instance], list], timeout: float
                         ) -> tuple[list[Instance], list[PromptGroup], list[RolloutFailure]]:
        prompts, refs = pending
        results = list(itertools.chain.from_iterable(ray.get(refs, timeout=timeout)))
        groups = [x for x in results if isinstance(x, PromptGroup)]
        failures = [x for x in results if isinstance(x, RolloutFailure)]
        return prompts, groups, failures

    def predict(self, instances: list[Instance], max_new_tokens: int, timeout: float) -> dict[str, str]:
        """Greedy answers for evaluation."""
        shares = _split(instances, len(self.rollouts))
        refs = [a.generate.remote(s, 1, max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
                for a, s in zip(self.rollouts, shares) if s]
        out: dict[str, str] = {}
        for res in ray.get(refs, timeout=timeout):
            for x in res:
                if isinstance(x, PromptGroup):
                    out[x.instance_id] = x.completions[0].text
        return out

    def encode_sft(self, instances: list[Instance], timeout: float) -> tuple[list[dict], list[RolloutFailure]]:
        shares = _split(instances, len(self.rollouts))
        refs = [a.encode_sft.remote(s) for a, s in zip(self.rollouts, shares) if s]
        examples: list[dict] = []
        failures: list[RolloutFailure] = []
        for res in ray.get(refs, timeout=timeout):
            for x in res:
                (failures if isinstance(x, RolloutFailure) else examples).append(x)
        return examples, failures

    # -- rewards -------------------------------------------------------------------------------------------
    def tau(self) -> Optional[float]:
        if self.curriculum is None:
            return None
        return ray.get(self.curriculum.threshold.remote(), timeout=self.timeout)

    def observe_curriculum(self, group_rewards: list[float], group_ious: list[float]) -> dict[str, float]:
        if self.curriculum is None:
            return {}
        # one wait: an actor runs its calls in order, so metrics() sees this observation
        refs = [self.curriculum.observe.remote(group_rewards, group_ious), self.curriculum.metrics.remote()]
        return ray.get(refs, timeout=self.timeout)[1]

    def score(self, groups: list[PromptGroup], prompts: list[Instance], tau: Optional[float],
              timeout: float) -> list[list[SampleReward]]:
        return self.rewards.score_groups(groups, prompts, iou_threshold=tau, timeout=timeout)

    def reward_metrics(self) -> dict[str, float]:
        """Cumulative reward-worker counters and the judge's calls, failures, fallbacks and latency."""
        return {k if k.startswith("judge/") else f"reward_worker/{k}": v for k, v in self.rewards.metrics().items()}

    def normalize(self, keys: list, values: list[float], timeout: float) -> tuple[list[float], dict[str, float]]:
        normalized, per_key = ray.get(self.normalizer.process.remote(keys, values), timeout=timeout)
        return list(normalized), flatten_metrics(per_key, prefix="")

    # -- learner / weights ---------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        self.learner.set_lr(lr)

    def push_weights(self, timeout: float) -> int:
        handle = self.learner.get_weights()
        versions = ray.get([a.apply_weights.remote(handle.ref) for a in self.rollouts], timeout=timeout)
        if any(v != handle.version for v in versions):
            raise RuntimeError(f"weight sync: rollout actors report versions {versions}, sent {handle.version}")
        self.version = handle.version
        return handle.version

    # -- state ---------------------------------------------------------------------------------------------
    def save_state(self, path: Path) -> None:
        from cluster.checkpoints import write_json

        write_json(path / "normalizer.json", ray.get(self.normalizer.state_dict.remote(), timeout=self.timeout))
        # the quantile table a later `normalizer.mode=static` run can load (run_dir is on storage all nodes share)
        ray.get(self.normalizer.save_table.remote(str(path / "normalizer_table.json")), timeout=self.timeout)
        if self.curriculum is not None:
            write_json(path / "curriculum.json", ray.get(self.curriculum.state_dict.remote(), timeout=self.timeout))
        self.learner.save_checkpoint(str(path / "learner"))

    def load_state(self, path: Path, version: int) -> None:
        from cluster.checkpoints import read_json

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


def _split(items: list, n: int) -> list[list]:
    """Contiguous, near-equal shares (order preserved, so results reassemble in prompt order)."""
    k, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + k + (1 if i < r else 0)
        out.append(items[start:end])
        start = end
    return out
