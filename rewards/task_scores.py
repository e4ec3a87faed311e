"""Raw per-task score of one prediction against one reference ``Instance`` (the rule-based part of every reward).

Role: score through the instance's ``TaskSpec`` (``rewards/tasks.py``: parser, ground truth, metric, format check)
and return a ``TaskScore``. MedGRPO: ``score = format gate × task metric``; MedLoc-R1 (``iou_threshold`` given):
grounding families (tag, stg, box) score ``1[IoU ≥ τ]`` while ``components['iou']`` keeps the IoU.
VRFT-Aug (``graded_ordinal``): an ordinal classification (cls with ``struc_info["ordinal"]``) scores
``1 / (1 + d²)`` of its grade distance ``d`` instead of 0/1 accuracy.
Caption families (vs, rc, dvc) set ``needs_judge``: their judge and semantic-similarity parts are added by the
caller on the (reference, candidate) caption pairs of ``caption_pairs`` (DVC: one pair per temporally matched
segment); the rule part is the DVC F1, and 0 for vs/rc.

Components per family (all in [0, 1]): every family has ``format`` (1/0); tag/stg/box ``iou``; dvc ``f1``;
nap/sa/cvs/vqa/cls ``acc``; cls with an ordinal label list also ``grade_dist`` (label steps, not in [0, 1]);
``think_format`` (1/0) whenever ``require_think`` is set or the family is vqa.
Failures never raise: ``reason`` names the first parse failure (``gt_*`` for the reference, else the
prediction's), ``format_reason`` the format-gate failure; a non-finite value is set to 0 with ``non_finite``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from data.schema import Instance
from rewards import metrics as M
from rewards import parsing as P
from rewards import tasks as T
from rewards.shaping import graded_reward


@dataclass
class TaskScore:
    """Raw task score of one prediction (see the module docstring)."""

    score: float
    components: dict[str, float] = field(default_factory=dict)
    format_ok: bool = False
    reason: Optional[str] = None
    needs_judge: bool = False
    family: Optional[str] = None
    format_reason: Optional[str] = None


def _gt_reason(p: P.Parsed[Any]) -> str:
    r = p.reason or "gt_missing"
    return r if r.startswith("gt_") else f"gt_{r}"


def _grade_distance(spec: T.TaskSpec, inst: Instance, pred: P.Parsed[Any], ref: Any, labels: Any) -> Optional[float]:
    """Label steps between prediction and reference, for an ordinal family whose instance says its labels are
    ordered (struc_info ``ordinal``)."""
    s = inst.struc_info
    if not (spec.ordinal and isinstance(s, dict) and s.get("ordinal") and labels and pred.ok):
        return None
    d = M.grade_distance(pred.value, ref, labels)
    return None if d is None else float(d)


def score(instance: Instance, prediction: Any, *, iou_threshold: Optional[float] = None,
          format_gate: bool = True, require_think: bool = False, graded_ordinal: bool = False) -> TaskScore:
    """Raw task score of ``prediction`` for ``instance`` (module docstring).

    ``iou_threshold``: MedLoc-R1 τ in [0, 1] for grounding families. ``format_gate``: multiply by the strict
    format check (MedGRPO; the leaderboard passes False). ``require_think``: the gate also demands the
    ``<think>…</think><answer>…</answer>`` layout. ``graded_ordinal``: ordinal classes score ``1/(1+d²)``.
    """
    if iou_threshold is not None and not (isinstance(iou_threshold, (int, float))
                                          and math.isfinite(iou_threshold) and 0.0 <= iou_threshold <= 1.0):
        raise ValueError(f"iou_threshold={iou_threshold!r} must be a number in [0, 1] or None")
    spec = T.spec_of(instance)
    fam = T.family_of(instance)
    if spec is None:
        return TaskScore(0.0, {"format": 0.0}, False, "unknown_qa_type", False, fam, "unknown_qa_type")
    zero = {spec.score_key: 0.0} if spec.score_key else {}
    offered = spec.offered_of(instance)
    gt = spec.ground_truth(instance)
    if not gt.ok:
        comps, reason = dict(zero), _gt_reason(gt)
    else:
        p = spec.parse(prediction, offered)
        comps, reason = (spec.metric(p.value, gt.value, instance) if p.ok else dict(zero)), p.reason
        grade = _grade_distance(spec, instance, p, gt.value, offered)
        if grade is not None:
            comps["grade_dist"] = grade
    fmt_reason = T.format_problem(fam, prediction, **({spec.offered: offered} if spec.offered else {}))
    if require_think or spec.reasoning:
        think_reason = P.think_answer_problem(prediction)
        comps["think_format"] = 0.0 if think_reason else 1.0
        if require_think and fmt_reason is None and think_reason is not None:
            fmt_reason = f"think_{think_reason}"
    fmt_ok = fmt_reason is None
    comps["format"] = 1.0 if fmt_ok else 0.0
    for k, v in comps.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            comps[k] = 0.0
            reason = reason or "non_finite"
    value = comps.get(spec.score_key, 0.0) if spec.score_key else 0.0
    if iou_threshold is not None and spec.grounding:
        value = 1.0 if comps.get("iou", 0.0) >= iou_threshold else 0.0
    if graded_ordinal and "grade_dist" in comps:
        value = graded_reward(comps["grade_dist"], 0.0)
    if format_gate and not fmt_ok:
        value = 0.0
    value = min(1.0, max(0.0, float(value)))
    return TaskScore(value, comps, fmt_ok, reason, spec.caption, fam, fmt_reason)


@dataclass
class CaptionPairs:
    """The caption texts a judge and the similarity model compare for one prediction.

    ``pairs``: (reference caption, candidate caption). ``n``: how many reference captions the caption part averages
    over: 1 for vs/rc; for DVC the number of reference events with a caption, so a reference event that no
    predicted segment matches counts as a 0 (its caption was not written). ``n == 0``: nothing to compare (no
    reference caption); ``reason`` says why.
    """

    pairs: list[tuple[str, str]]
    n: int
    reason: Optional[str] = None


def caption_pairs(instance: Instance, prediction: Any) -> CaptionPairs:
    """Caption pairs of a prediction for a family whose reward is judged (its spec's ``caption_pairs``:
    vs/rc the whole answer, DVC one pair per temporally matched segment, rewards/tasks.py); none for the others."""
    spec = T.spec_of(instance)
    if spec is None or spec.caption_pairs is None:
        return CaptionPairs([], 0, "not_a_caption_task")
    pairs, n, reason = spec.caption_pairs(instance, prediction)
    return CaptionPairs(pairs, n, reason if reason is not None or n else "no_reference")
