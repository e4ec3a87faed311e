"""Reward workers: Ray actor shells over ``rewards.scoring.RewardScorer``, and the pool that spreads a batch over them.

``RewardWorker`` holds one scorer whose judge client is a ``JudgeActor`` handle (``RayJudgeClient``: judge calls as
ObjectRefs, gathered with a timeout); ``RewardWorkerPool`` deals a batch out by prompt and reassembles it in order.
Every sample comes back (a ``ScoredSample``), or None when its shard was lost to worker faults (counted).
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any, Mapping, Optional, Sequence, Union

import ray

from actors.actor_pool import ActorPool, FaultNames, Lost, RetryPolicy
from actors.judge import create_judge_actor
from data.schema import Instance
from rewards.config import RewardConfig
from rewards.judge import JudgeOutcome, as_judge_config
from rewards.scoring import RewardItem, RewardScorer, ScoredSample, as_item


class RayJudgeClient:
    """Judge calls as ObjectRefs on a ``JudgeActor`` handle."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def submit_score(self, pairs: list[tuple[str, str]], hints: list[Optional[str]]) -> Any:
        return self.actor.score.remote(pairs, hints)

    def submit_align(self, items: list[tuple[str, str, Optional[str]]]) -> Any:
        return self.actor.align.remote(items)

    def gather(self, handle: Any, timeout_s: float) -> list[JudgeOutcome]:
        try:
            return ray.get(handle, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            try:
                ray.cancel(handle)
            except Exception:  # noqa: BLE001 - best effort; the result is ignored anyway
                pass
            raise TimeoutError(f"judge gave no answer within {timeout_s:.0f}s") from None


@ray.remote(num_cpus=0)
class RewardWorker:
    """Ray actor shell over ``RewardScorer``; ``judge`` is a ``JudgeActor`` handle (or None: no judge)."""

    def __init__(self, cfg: RewardConfig, judge: Any = None, knowledge: Optional[Mapping[str, str]] = None,
                 judge_wait_s: Optional[float] = None, similarity: Any = None) -> None:
        client = RayJudgeClient(judge) if judge is not None else None
        self._scorer = RewardScorer(cfg, client, knowledge=knowledge, judge_wait_s=judge_wait_s,
                                    similarity=similarity)

    def score_batch(self, items: Sequence[Union[RewardItem, tuple]],
                    iou_threshold: Optional[float] = None) -> list[ScoredSample]:
        return self._scorer.score_batch(items, iou_threshold)

    def metrics(self) -> dict[str, float]:
        return self._scorer.metrics()

    def cosine(self, refs: Sequence[str], cands: Sequence[str]) -> list[float]:
        """Raw cosine similarity of each (ref, cand) pair with this worker's similarity model (eval's *_sim
        columns); NaN where a text is empty."""
        return [float(v) for v in self._scorer.similarity_model.cosine(list(refs), list(cands))]

    def ping(self) -> bool:
        return True


def deal_by_prompt(items: Sequence[RewardItem], n_workers: int) -> list[list[int]]:
    """Item indices per worker: each run of consecutive items of one instance (a prompt's G samples) goes whole to
    one worker, runs round-robin over the workers. Only non-empty shards are returned, each in input order."""
    shards: list[list[int]] = [[] for _ in range(max(1, n_workers))]
    run = -1
    for i, it in enumerate(items):
        if i == 0 or it.instance is not items[i - 1].instance and it.instance.id != items[i - 1].instance.id:
            run += 1
        shards[run % len(shards)].append(i)
    return [s for s in shards if s]


class RewardWorkerPool:
    """``num_workers`` ``RewardWorker`` actors; ``score`` deals a batch out by prompt (``deal_by_prompt``: a
    prompt's G samples stay on one worker, so its reference is embedded once and its judge pairs deduplicated
    there; prompts go round-robin) and returns the results in the input order. A worker that dies is
    restarted by Ray and its shard retried there; past that (or on a hang) the shard goes to the next worker once,
    and if that fails too its samples come back as None (counted in ``faults``, never a crash of the step).

    ``judge``: a ``JudgeActor`` handle to share; when None and ``cfg.judge.backend`` is not ``none`` the pool
    starts one (``self.judge``). ``actor_options`` go to every worker's ``.options`` (defaults: ``num_cpus=0``,
    two restarts, one task retry: scoring is idempotent). ``similarity``: a picklable object with
    ``similarity(refs, cands)`` given to every worker (default: each worker loads ``cfg.similarity_model``).
    """

    def __init__(self, cfg: RewardConfig, *, num_workers: Optional[int] = None, judge: Any = None,
                 knowledge: Optional[Mapping[str, str]] = None, get_timeout_s: float = 600.0,
                 judge_wait_s: Optional[float] = None, actor_options: Optional[dict[str, Any]] = None,
                 similarity: Any = None) -> None:
        self.cfg = cfg
        self.get_timeout_s = get_timeout_s
        self.judge = judge
        self._own_judge = False
        if self.judge is None and cfg.judge.backend != "none":
            self.judge = create_judge_actor(as_judge_config(cfg.judge))
            self._own_judge = True
        opts = {"num_cpus": 0, "max_restarts": 2, "max_task_retries": 1}
        opts.update(actor_options or {})
        n = num_workers if num_workers is not None else cfg.num_workers
        if n < 1:
            raise ValueError(f"num_workers must be >= 1, got {n}")
        self.faults: Counter = Counter()  # shard_worker_died, shard_timeout, shard_redispatched, samples_lost
        # a shard lost past Ray's own restart + task retry goes to the next worker once (scoring is idempotent)
        self.pool = ActorPool(
            [RewardWorker.options(**opts).remote(cfg, self.judge, knowledge, judge_wait_s, similarity)
             for _ in range(n)], "reward-worker", RetryPolicy(max_retries=1, next_actor=True),
            names=FaultNames(timeout="shard_timeout", died="shard_worker_died", retried="shard_redispatched",
                             lost="samples_lost", retried_per_call=True), faults=self.faults)

    @property
    def workers(self) -> list[Any]:
        """The ``RewardWorker`` handles."""
        return self.pool.actors

    def score(self, items: Sequence[Union[RewardItem, tuple]], iou_threshold: Optional[float] = None, *,
              timeout: Optional[float] = None) -> list[Optional[ScoredSample]]:
        """Score ``items`` (``RewardItem`` or ``(instance, text[, n_tokens])``) across the workers, in order.
        ``iou_threshold``: the curriculum's τ; ``timeout``: seconds for the whole batch (default get_timeout_s).
        An item is None only when its shard was lost to worker faults twice (see the class docstring)."""
        items = [as_item(x, i) for i, x in enumerate(items)]  # fail here, not in a worker, on a caller bug
        if not items:
            return []
        timeout = self.get_timeout_s if timeout is None else timeout
        shards = deal_by_prompt(items, len(self.workers))
        out: list[Optional[ScoredSample]] = [None] * len(items)
        calls = [self.pool.submit(w, "score_batch", [items[i] for i in shard], iou_threshold, size=len(shard))
                 for w, shard in enumerate(shards)]
        for shard, res in zip(shards, self.pool.gather(calls, timeout, deadline=time.monotonic() + timeout)):
            if isinstance(res, Lost):
                continue  # lost: those items stay None (counted in self.faults)
            if len(res) != len(shard):
                raise RuntimeError(f"reward worker returned {len(res)} results for {len(shard)} items")
            for i, s in zip(shard, res):
                out[i] = s
        return out

    def cosine(self, pairs: Sequence[tuple[str, str]], timeout: Optional[float] = None) -> list[float]:
        """Raw cosine similarity per (reference, candidate) pair, on the first worker's similarity model."""
        if not pairs:
            return []
        ref = self.workers[0].cosine.remote([r for r, _ in pairs], [c for _, c in pairs])
        return ray.get(ref, timeout=self.get_timeout_s if timeout is None else timeout)

    def score_groups(self, groups: Sequence[Any], instances: Union[Mapping[str, Instance], Sequence[Instance]],
                     iou_threshold: Optional[float] = None, *,
                     timeout: Optional[float] = None) -> list[Optional[list[ScoredSample]]]:
        """Score ``PromptGroup``s (learner/experience.py): one list per group, one sample per completion.
        ``instances``: the step's prompts, as a list or by id; a group whose id is not there raises ``KeyError``."""
        by_id = instances if isinstance(instances, Mapping) else {inst.id: inst for inst in instances}
        items, sizes = [], []
        for g in groups:
            if g.instance_id not in by_id:
                raise KeyError(f"no instance with id {g.instance_id!r} for a rollout group")
            inst = by_id[g.instance_id]
            items += [RewardItem(inst, c.text, len(c.response_ids)) for c in g.completions]
            sizes.append(len(g.completions))
        flat = self.score(items, iou_threshold, timeout=timeout)
        out, pos = [], 0
        for n in sizes:
            part = flat[pos:pos + n]
            out.append(None if any(x is None for x in part) else part)
            pos += n
        return out

    def metrics(self) -> dict[str, float]:
        """Summed worker counters, plus the judge's when there is one."""
        total: Counter = Counter()
        refs = [w.metrics.remote() for w in self.workers]
        judge_ref = self.judge.metrics.remote() if self.judge is not None else None
        for ref in refs:  # a worker restarting after a crash reports nothing this time (its counters restart)
            try:
                total.update(ray.get(ref, timeout=self.get_timeout_s))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                total["metrics_unavailable"] += 1
        out = {k: float(v) for k, v in total.items()}
        out.update({f"fault_{k}": float(v) for k, v in self.faults.items()})
        if judge_ref is not None:
            try:
                out.update(ray.get(judge_ref, timeout=self.get_timeout_s))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                out["judge/metrics_unavailable"] = 1.0
        return out

    def shutdown(self) -> None:
        self.pool.kill()
        if self._own_judge and self.judge is not None:
            ray.kill(self.judge)
            self.judge = None
