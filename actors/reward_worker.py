"""Reward workers: score a batch of rollouts into raw reward components (normalization happens after, once per step).

Per sample: the rule-based task score (``rewards.task_scores.score``); for the caption tasks whose reward uses
them (VS, RC: ``rewards.assembly.is_caption``) also the semantic similarity to the reference
(rewards/similarity.py) and the LLM judge's rubric reward part (actors/judge.py); for VQA, optionally the judge's
semantic-alignment verdict; and the configured shaping terms (length, recitation, alignment). Judge calls are
submitted first (Ray ObjectRefs) so the judge works while this worker does the rule-based scoring and the
embeddings; the worker gathers them last, with a timeout.

``RewardScorer`` is the Ray-free core (any judge client with submit/gather); ``RewardWorker`` is its Ray actor
shell, and ``RewardWorkerPool`` spreads a batch over several workers and reassembles it in order.
Every sample comes back (a ``ScoredSample``); a part that could not be scored is ``None`` with a reason code,
counted, never a silent 0.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

import ray

from actors.judge import JudgeCore, JudgeOutcome, as_judge_config, create_judge_actor
from cluster.config import RewardConfig
from data.schema import Instance, task_family
from rewards.assembly import JUDGE, SIMILARITY, TASK, SampleReward, is_caption
from rewards.parsing import answer_text
from rewards.shaping import length_reward, reasoning_text, recitation_reward

log = logging.getLogger(__name__)

#: Families whose task score is an accuracy (a score of 1 means correct) when task_scores gives no ``correct``.
_ACCURACY_FAMILIES = ("nap", "sa", "cvs", "vqa", "cls")
ALIGNMENT = "alignment"


@dataclass
class RewardItem:
    """One rollout to score: its instance, the generated text, and the number of response tokens (length reward)."""

    instance: Instance
    text: str
    n_tokens: Optional[int] = None


@dataclass
class ScoredSample(SampleReward):
    """``SampleReward`` (what ``rewards.assembly`` combines) plus what the driver logs and counts.

    ``components``: raw parts, ``task`` always, ``judge`` (reward part (score-1)/4, or None) and ``similarity``
    for caption tasks, ``alignment`` (1/0 or None) for VQA when enabled. ``reasons``: every reason code of the
    sample (``task_<code>``, ``judge_<code>``, ``alignment_<code>``, ...). ``judge_missing``: the judge part was
    wanted and is absent. ``details``: the task scorer's own components (IoU, F1, ...).
    """

    format_ok: bool = False
    judge_missing: bool = False
    judge_score: Optional[float] = None  # mean rubric score, 1-5 (the VS/RC metric)
    reasons: list[str] = field(default_factory=list)
    details: dict[str, float] = field(default_factory=dict)


class JudgeClient(Protocol):
    """Asynchronous access to a judge: submit now, gather later."""

    def submit_score(self, pairs: list[tuple[str, str]], hints: list[Optional[str]]) -> Any: ...

    def submit_align(self, items: list[tuple[str, str, Optional[str]]]) -> Any: ...

    def gather(self, handle: Any, timeout_s: float) -> list[JudgeOutcome]: ...


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


class LocalJudgeClient:
    """A ``JudgeCore`` in this process, run on a background thread so submission does not block."""

    def __init__(self, core: JudgeCore) -> None:
        self.core = core
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="judge-local")

    def submit_score(self, pairs: list[tuple[str, str]], hints: list[Optional[str]]) -> Future:
        return self._pool.submit(self.core.score, pairs, hints)

    def submit_align(self, items: list[tuple[str, str, Optional[str]]]) -> Future:
        return self._pool.submit(self.core.align, items)

    def gather(self, handle: Future, timeout_s: float) -> list[JudgeOutcome]:
        return handle.result(timeout=timeout_s)


def _default_score_fn() -> Callable[..., Any]:
    try:
        from rewards.task_scores import score
    except ImportError as e:
        raise ImportError("rewards.task_scores.score is needed for rule-based task scores") from e
    return score


def _float_or_none(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def _as_item(x: Any, i: int) -> RewardItem:
    if isinstance(x, RewardItem):
        item = x
    elif isinstance(x, (tuple, list)) and len(x) in (2, 3):
        item = RewardItem(*x)
    else:
        raise TypeError(f"item {i}: expected RewardItem or (instance, text[, n_tokens]), got {type(x).__name__}")
    if not isinstance(item.instance, Instance):
        raise TypeError(f"item {i}: instance must be data.schema.Instance, got {type(item.instance).__name__}")
    if not isinstance(item.text, str):
        raise TypeError(f"item {i}: text must be str, got {type(item.text).__name__}")
    if item.n_tokens is not None and (isinstance(item.n_tokens, bool) or not isinstance(item.n_tokens, int)
                                      or item.n_tokens < 0):
        raise TypeError(f"item {i}: n_tokens must be an int >= 0 or None, got {item.n_tokens!r}")
    return item


class RewardScorer:
    """Scores batches of rollouts. Ray-free: ``judge`` is any ``JudgeClient`` (None: no judge configured).

    ``score_fn``: the rule-based scorer (default ``rewards.task_scores.score``). ``similarity``: an object with
    ``similarity(refs, cands) -> array`` (default: all-MiniLM-L6-v2, loaded on the first caption).
    ``knowledge``: VRFT-Aug prior knowledge by data_source (for the recitation term; an instance's
    ``extra["knowledge"]`` takes precedence). ``judge_wait_s``: how long to wait for the judge's answers
    (default: derived from the judge's timeout, retries and batch size).
    """

    def __init__(self, cfg: RewardConfig, judge: Optional[JudgeClient] = None, *,
                 score_fn: Optional[Callable[..., Any]] = None, similarity: Any = None,
                 knowledge: Optional[Mapping[str, str]] = None, judge_wait_s: Optional[float] = None) -> None:
        self.cfg = cfg
        self.judge = judge
        self._score_fn = score_fn
        self._similarity = similarity
        self.knowledge = dict(knowledge or {})
        self.judge_wait_s = judge_wait_s
        self.counts: Counter = Counter()

    # -- lazy dependencies ---------------------------------------------------------------------------------
    @property
    def score_fn(self) -> Callable[..., Any]:
        if self._score_fn is None:
            self._score_fn = _default_score_fn()
        return self._score_fn

    @property
    def similarity_model(self) -> Any:
        if self._similarity is None:
            from rewards.similarity import SentenceSimilarity

            self._similarity = SentenceSimilarity(self.cfg.similarity_model, mapping=self.cfg.similarity_mapping)
        return self._similarity

    def _wait_s(self, n_requests: int) -> float:
        if self.judge_wait_s is not None:
            return self.judge_wait_s
        j = self.cfg.judge
        per_call = j.timeout_s * (j.max_retries + 1) + j.backoff_s * (2 ** (j.max_retries + 1))
        return per_call * max(1, math.ceil(n_requests / j.batch_size)) + 30.0

    # -- scoring -------------------------------------------------------------------------------------------
    def score_batch(self, items: Sequence[Union[RewardItem, tuple]],
                    iou_threshold: Optional[float] = None) -> list[ScoredSample]:
        """One ``ScoredSample`` per item, in order. ``iou_threshold``: the curriculum's τ, used when
        ``reward.iou_threshold_reward`` is on. Bad item types raise ``TypeError`` (a caller bug)."""
        batch = [_as_item(x, i) for i, x in enumerate(items)]
        families: list[Optional[str]] = []
        for it in batch:
            try:
                families.append(task_family(it.instance.qa_type))
            except KeyError:
                families.append(None)
        t0 = time.monotonic()

        # 1. judge requests go out first (for the caption families whose reward uses the judge: VS, RC). The judge
        # and the similarity model compare the answer part with the reference, as the leaderboard does; the
        # reasoning is for the alignment check.
        judge_idx = [i for i, f in enumerate(families) if f is not None and is_caption(f)]
        captions = {i: answer_text(batch[i].text) for i in judge_idx}
        judge_handle, judge_err = None, None
        asked = [i for i in judge_idx if (batch[i].instance.answer or "").strip()]
        if self.judge is not None and asked:
            try:
                judge_handle = self.judge.submit_score(
                    [(batch[i].instance.answer, captions[i]) for i in asked], [families[i] for i in asked])
            except Exception as e:  # noqa: BLE001 - a dead judge must not take the worker down
                judge_err = f"judge_unavailable: {type(e).__name__}: {e}"
        align_idx = [i for i, f in enumerate(families) if f == "vqa"] \
            if self.cfg.semantic_alignment_weight > 0 else []
        align_handle, align_err = None, None
        if self.judge is not None and align_idx:
            try:
                align_handle = self.judge.submit_align(
                    [(batch[i].instance.question, batch[i].text, batch[i].instance.answer) for i in align_idx])
            except Exception as e:  # noqa: BLE001
                align_err = f"judge_unavailable: {type(e).__name__}: {e}"

        # 2. rule-based scores and similarity while the judge works
        thr = iou_threshold if self.cfg.iou_threshold_reward else None
        out = [self._task_part(it, fam, thr) for it, fam in zip(batch, families)]
        sim_idx = [i for i in judge_idx if (batch[i].instance.answer or "").strip()]
        for i in judge_idx:
            if i not in sim_idx:
                out[i].components[SIMILARITY] = None
                out[i].reasons.append("similarity_no_reference")
        if sim_idx:
            sims = self.similarity_model.similarity([batch[i].instance.answer for i in sim_idx],
                                                    [captions[i] for i in sim_idx])
            for i, s in zip(sim_idx, sims):
                out[i].components[SIMILARITY] = float(s)

        # 3. gather the judge
        t_judge = time.monotonic()
        judged = dict(zip(asked, self._gather(judge_handle, judge_err, len(asked))))
        self.counts["judge_wait_s"] += time.monotonic() - t_judge  # what the judge added to scoring's wall time
        for i in judge_idx:
            s = out[i]
            if self.judge is None:
                oc = JudgeOutcome(reason="disabled")
            elif not (batch[i].instance.answer or "").strip():
                oc = JudgeOutcome(reason="no_reference")
            else:
                oc = judged[i]
            s.components[JUDGE] = oc.reward if oc.ok else None
            s.judge_score = oc.score if oc.ok else None
            s.judge_missing = not oc.ok
            if not oc.ok:
                s.reasons.append(f"judge_{oc.reason}")
        if align_idx:
            aligned = self._gather(align_handle, align_err, len(align_idx))
            for i, oc in zip(align_idx, aligned):
                s = out[i]
                s.components[ALIGNMENT] = oc.reward if oc.ok else None
                if oc.ok:
                    s.shaping[ALIGNMENT] = self.cfg.semantic_alignment_weight * float(oc.reward)
                else:
                    s.reasons.append(f"alignment_{oc.reason}")

        for it, s in zip(batch, out):
            self._shape(it, s)
            self.counts["samples"] += 1
            self.counts.update(s.reasons)
            self.counts["judge_missing"] += int(s.judge_missing)
        self.counts["batches"] += 1
        self.counts["seconds"] += time.monotonic() - t0
        return out

    def _task_part(self, it: RewardItem, family: Optional[str], thr: Optional[float]) -> ScoredSample:
        inst = it.instance
        s = ScoredSample(data_source=inst.data_source, qa_type=inst.qa_type, family=family or "unknown",
                         components={TASK: None})
        if family is None:
            s.reason = "unknown_qa_type"
            s.reasons.append("task_unknown_qa_type")
            return s
        try:
            res = self.score_fn(inst, it.text, iou_threshold=thr, format_gate=self.cfg.format_gate,
                                require_think=self.cfg.require_think)
        except Exception as e:  # noqa: BLE001 - counted and logged; one bad sample must not kill the step
            log.warning("task scoring failed for %s (%s): %s: %s", inst.id, inst.qa_type, type(e).__name__, e,
                        exc_info=True)
            s.reason = "task_score_error"
            s.reasons.append("task_score_error")
            return s
        s.components[TASK] = _float_or_none(getattr(res, "score", None))
        s.format_ok = bool(getattr(res, "format_ok", False))
        reason = getattr(res, "reason", None)
        if reason:
            s.reason = str(reason)
            s.reasons.append(f"task_{reason}")
        fmt_reason = getattr(res, "format_reason", None)
        if fmt_reason:
            s.reasons.append(f"format_{fmt_reason}")
        comps = getattr(res, "components", None) or {}
        s.details = {str(k): f for k, v in comps.items() if (f := _float_or_none(v)) is not None}
        iou = getattr(res, "iou", None)
        if iou is None:
            iou = next((comps[k] for k in ("iou", "miou", "mean_iou") if k in comps), None)
        s.iou = _float_or_none(iou)
        correct = getattr(res, "correct", None)
        if correct is None and family in _ACCURACY_FAMILIES and s.components[TASK] is not None:
            correct = s.components[TASK] >= 1.0 - 1e-9
        s.correct = None if correct is None else bool(correct)
        if s.components[TASK] is None and not reason:
            s.reasons.append("task_no_score")
        return s

    def _gather(self, handle: Any, err: Optional[str], n: int) -> list[JudgeOutcome]:
        if n == 0:
            return []
        if handle is None:
            return [JudgeOutcome(reason="unavailable", detail=err or "")] * n
        try:
            res = self.judge.gather(handle, self._wait_s(n))  # type: ignore[union-attr]
        except TimeoutError as e:
            log.warning("reward worker: %s", e)
            return [JudgeOutcome(reason="timeout", detail=str(e))] * n
        except Exception as e:  # noqa: BLE001 - actor died, network: the judge part is missing, counted
            log.warning("reward worker: judge failed: %s: %s", type(e).__name__, e)
            return [JudgeOutcome(reason="unavailable", detail=f"{type(e).__name__}: {e}"[:200])] * n
        if not isinstance(res, list) or len(res) != n:
            return [JudgeOutcome(reason="unavailable", detail="judge returned a wrong number of outcomes")] * n
        return res

    def _shape(self, it: RewardItem, s: ScoredSample) -> None:
        cfg = self.cfg
        if cfg.length_mode != "none" and cfg.length_weight > 0:
            if it.n_tokens is None:
                s.reasons.append("length_no_token_count")
            else:
                s.shaping["length"] = cfg.length_weight * length_reward(
                    it.n_tokens, cfg.length_target, correct=bool(s.correct), mode=cfg.length_mode)
        if cfg.recitation_coef != 0:
            knowledge = it.instance.extra.get("knowledge") or self.knowledge.get(it.instance.data_source)
            if knowledge:
                s.shaping["recitation"] = recitation_reward(reasoning_text(it.text), knowledge, cfg.recitation_coef)

    def metrics(self) -> dict[str, float]:
        return {f"reward_worker/{k}": float(v) for k, v in sorted(self.counts.items())}


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
        self.workers = [RewardWorker.options(**opts).remote(cfg, self.judge, knowledge, judge_wait_s, similarity)
                        for _ in range(n)]

    def score(self, items: Sequence[Union[RewardItem, tuple]], iou_threshold: Optional[float] = None, *,
              timeout: Optional[float] = None) -> list[Optional[ScoredSample]]:
        """Score ``items`` (``RewardItem`` or ``(instance, text[, n_tokens])``) across the workers, in order.
        ``iou_threshold``: the curriculum's τ; ``timeout``: seconds for the whole batch (default get_timeout_s).
        An item is None only when its shard was lost to worker faults twice (see the class docstring)."""
        items = [_as_item(x, i) for i, x in enumerate(items)]  # fail here, not in a worker, on a caller bug
        if not items:
            return []
        timeout = self.get_timeout_s if timeout is None else timeout
        shards = deal_by_prompt(items, len(self.workers))
        out: list[Optional[ScoredSample]] = [None] * len(items)
        deadline = time.monotonic() + timeout
        pending = {w: self.workers[w].score_batch.remote([items[i] for i in shard], iou_threshold)
                   for w, shard in enumerate(shards)}
        for w, shard in enumerate(shards):
            res = self._shard_result(w, pending[w], [items[i] for i in shard], iou_threshold, deadline)
            if res is None:
                continue  # lost: those items stay None (counted in self.faults)
            if len(res) != len(shard):
                raise RuntimeError(f"reward worker returned {len(res)} results for {len(shard)} items")
            for i, s in zip(shard, res):
                out[i] = s
        return out

    def _shard_result(self, w: int, ref: Any, shard_items: list[RewardItem], iou_threshold: Optional[float],
                      deadline: float) -> Optional[list[ScoredSample]]:
        """The shard's scores; a worker that died (past Ray's own restart + task retry) or hung past the deadline
        is restarted and its shard scored once more by the next worker (scoring is idempotent). None: lost."""
        for attempt in range(2):
            try:
                return ray.get(ref, timeout=max(deadline - time.monotonic(), 1.0))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                what = "timeout" if isinstance(e, ray.exceptions.GetTimeoutError) else "worker_died"
                log.warning("reward worker %d: %s on a shard of %d samples (%s)", w, what, len(shard_items),
                            type(e).__name__)
                self.faults[f"shard_{what}"] += 1
                if what == "timeout":
                    try:
                        ray.cancel(ref)
                        ray.kill(self.workers[w], no_restart=False)  # a hung worker: Ray restarts it
                    except Exception:  # noqa: BLE001 - best effort
                        pass
                if attempt == 1:
                    break
                w = (w + 1) % len(self.workers)
                self.faults["shard_redispatched"] += 1
                ref = self.workers[w].score_batch.remote(shard_items, iou_threshold)
        self.faults["samples_lost"] += len(shard_items)
        return None

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
        for w in self.workers:
            ray.kill(w)
        self.workers = []
        if self._own_judge and self.judge is not None:
            ray.kill(self.judge)
            self.judge = None
