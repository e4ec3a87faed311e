"""Score a batch of rollouts into raw reward components (Ray-free; normalization happens after, once per step).

Per sample: the rule-based task score (``rewards.task_scores.score``); for the caption tasks whose reward uses
them (``judged_in_reward`` in rewards/tasks.py: VS, RC, and DVC unless ``reward.dvc_caption_weight`` is 0:
``rewards.assembly.caption_judged``) also the semantic similarity to the reference and the LLM judge's rubric reward
part, on the caption pairs of ``rewards.task_scores.caption_pairs`` (DVC: one pair per temporally matched segment,
averaged over the reference events); for VQA (``reasoning``), optionally the judge's semantic-alignment verdict;
and the configured shaping terms (length, recitation, alignment). Judge calls are
submitted first (any ``JudgeClient``: a Ray actor's ObjectRefs in actors/reward_worker.py, or a ``JudgeCore`` on a
thread here) so the judge works while the scorer does the rule-based scoring and the embeddings; it gathers them
last, with a timeout.

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

from data.knowledge import knowledge_text
from data.schema import Instance
from rewards.assembly import JUDGE, SIMILARITY, TASK, SampleReward, caption_judged
from rewards.config import RewardConfig
from rewards.judge import JudgeCore, JudgeOutcome
from rewards.shaping import length_reward, reasoning_text, recitation_reward
from rewards.task_scores import caption_pairs, score as task_score
from rewards.tasks import family_of, spec_of

log = logging.getLogger(__name__)

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
    for judged caption tasks (DVC: summed over the matched segments / number of reference events), ``alignment``
    (1/0 or None) for VQA when enabled. ``reasons``: every reason code of the sample (``task_<code>``,
    ``judge_<code>``, ``alignment_<code>``, ...). ``judge_missing``: the judge part was wanted and is absent. ``details``: the task scorer's own components (IoU, F1, ...).
    """

    format_ok: bool = False
    judge_missing: bool = False
    judge_score: Optional[float] = None  # mean rubric score, 1-5 (the VS/RC metric; DVC: over matched segments)
    reasons: list[str] = field(default_factory=list)
    details: dict[str, float] = field(default_factory=dict)


class JudgeClient(Protocol):
    """Asynchronous access to a judge: submit now, gather later."""

    def submit_score(self, pairs: list[tuple[str, str]], hints: list[Optional[str]]) -> Any: ...

    def submit_align(self, items: list[tuple[str, str, Optional[str]]]) -> Any: ...

    def gather(self, handle: Any, timeout_s: float) -> list[JudgeOutcome]: ...


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


def _float_or_none(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def as_item(x: Any, i: int) -> RewardItem:
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
    ``knowledge``: VRFT-Aug prior-knowledge entries as in the knowledge file (``data.knowledge``: keyed by data
    source, task or class name); the recitation term compares the reasoning with the text the prompt was given
    (an instance's ``extra["knowledge"]``, else ``knowledge_text`` of these entries). ``judge_wait_s``: how long
    to wait for the judge's answers (default: derived from the judge's timeout, retries and batch size).
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
        return self._score_fn or task_score

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
        batch = [as_item(x, i) for i, x in enumerate(items)]
        families = [family_of(it.instance) for it in batch]
        t0 = time.monotonic()

        # 1. judge requests go out first, for the caption pairs of every judged caption task (VS, RC, and DVC's
        # matched segments unless reward.dvc_caption_weight is 0). The judge and the similarity model compare the
        # answer part with the reference, as the leaderboard does; the reasoning is for the alignment check.
        judge_idx = [i for i, f in enumerate(families) if f is not None and caption_judged(f, self.cfg)]
        cps = {i: caption_pairs(batch[i].instance, batch[i].text) for i in judge_idx}
        owner = [i for i in judge_idx for _ in cps[i].pairs]
        pairs = [p for i in judge_idx for p in cps[i].pairs]
        judge_handle, judge_err = None, None
        if self.judge is not None and pairs:
            try:
                judge_handle = self.judge.submit_score(pairs, [families[i] for i in owner])
            except Exception as e:  # noqa: BLE001 - a dead judge must not take the worker down
                judge_err = f"judge_unavailable: {type(e).__name__}: {e}"
        align_idx = [i for i, it in enumerate(batch) if (sp := spec_of(it.instance)) is not None and sp.reasoning] \
            if self.cfg.semantic_alignment_weight > 0 else []
        align_handle, align_err = None, None
        if self.judge is not None and align_idx:
            try:
                align_handle = self.judge.submit_align(
                    [(batch[i].instance.question, batch[i].text, batch[i].instance.answer) for i in align_idx])
            except Exception as e:  # noqa: BLE001
                align_err = f"judge_unavailable: {type(e).__name__}: {e}"

        # 2. rule-based scores and similarity while the judge works; a caption part is the sum over the sample's
        # pairs divided by its number of reference captions (DVC: an unmatched reference event adds 0)
        thr = iou_threshold if self.cfg.iou_threshold_reward else None
        out = [self._task_part(it, fam, thr) for it, fam in zip(batch, families)]
        sims = self.similarity_model.similarity([r for r, _ in pairs], [c for _, c in pairs]) if pairs else []
        sim_sum: Counter = Counter()
        for i, v in zip(owner, sims):
            sim_sum[i] += float(v)
        for i in judge_idx:
            if cps[i].n == 0:
                out[i].components[SIMILARITY] = None
                out[i].reasons.append("similarity_no_reference")
            else:
                out[i].components[SIMILARITY] = sim_sum[i] / cps[i].n

        # 3. gather the judge
        t_judge = time.monotonic()
        outcomes = self._gather(judge_handle, judge_err, len(pairs))
        self.counts["judge_wait_s"] += time.monotonic() - t_judge  # what the judge added to scoring's wall time
        by_owner: dict[int, list[JudgeOutcome]] = {i: [] for i in judge_idx}
        for i, oc in zip(owner, outcomes):
            by_owner[i].append(oc)
        for i in judge_idx:
            s = out[i]
            ocs = by_owner[i]
            failed = next((oc for oc in ocs if not oc.ok), None)
            if self.judge is None:
                failed = JudgeOutcome(reason="disabled")
            elif cps[i].n == 0:
                failed = JudgeOutcome(reason="no_reference")
            s.judge_missing = failed is not None
            if failed is not None:
                s.components[JUDGE] = None
                s.judge_score = None
                s.reasons.append(f"judge_{failed.reason}")
            else:
                s.components[JUDGE] = sum(float(oc.reward) for oc in ocs) / cps[i].n
                s.judge_score = sum(float(oc.score) for oc in ocs) / len(ocs) if ocs else None
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
        # graded_ordinal only when on, so a score_fn written without that option keeps working
        graded = {"graded_ordinal": True} if self.cfg.graded_ordinal else {}
        try:
            res = self.score_fn(inst, it.text, iou_threshold=thr, format_gate=self.cfg.format_gate,
                                require_think=self.cfg.require_think, **graded)
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
        spec = spec_of(inst)
        if correct is None and spec is not None and spec.accuracy and s.components[TASK] is not None:
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
            # the text the rollout injected: extra["knowledge"], else the file's entries as the prompt looks them up
            # (data source, task, then each candidate class; data.knowledge.knowledge_text)
            knowledge = it.instance.extra.get("knowledge") or knowledge_text(it.instance, self.knowledge)
            if knowledge:
                s.shaping["recitation"] = recitation_reward(reasoning_text(it.text), knowledge, cfg.recitation_coef)

    def metrics(self) -> dict[str, float]:
        return {f"reward_worker/{k}": float(v) for k, v in sorted(self.counts.items())}
