"""Raw per-task score of one prediction against one reference ``Instance`` (the rule-based part of every reward).

Role: dispatch by ``instance.family`` to the parsers (``rewards/parsing.py``) and metrics (``rewards/metrics.py``)
and return a ``TaskScore``. MedGRPO: ``score = format gate × task metric``; MedLoc-R1 (``iou_threshold`` given):
grounding families (tag, stg, box) score ``1[IoU ≥ τ]`` while ``components['iou']`` keeps the IoU.
Caption families (vs, rc, dvc) set ``needs_judge``: their judge and semantic-similarity parts are added by the
caller; the rule part is the DVC F1, and 0 for vs/rc.

Components per family (all in [0, 1]): every family has ``format`` (1/0); tag/stg/box ``iou``; dvc ``f1``;
nap/sa/cvs/vqa/cls ``acc``; cls with an ordinal label list also ``grade_dist`` (label steps, not in [0, 1]);
``think_format`` (1/0) whenever ``require_think`` is set or the family is vqa.
Failures never raise: ``reason`` names the first parse failure (``gt_*`` for the reference, else the
prediction's), ``format_reason`` the format-gate failure; a non-finite value is set to 0 with ``non_finite``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from data.schema import GROUNDING_FAMILIES, Instance
from rewards import metrics as M
from rewards import parsing as P

CAPTION_NEEDS_JUDGE = ("vs", "rc", "dvc")


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


_Result = tuple[dict[str, float], Optional[str]]


def _first_failure(*parsed: P.Parsed[Any]) -> Optional[str]:
    for p in parsed:
        if not p.ok:
            return p.reason
    return None


def _gt_reason(p: P.Parsed[Any]) -> str:
    r = p.reason or "gt_missing"
    return r if r.startswith("gt_") else f"gt_{r}"


def _compare(gt_fn: Callable[[Instance], P.Parsed[Any]], parse_fn: Callable[[Any], P.Parsed[Any]],
             metric: str, key: str) -> Callable[[Instance, Any], _Result]:
    """A scorer for tasks whose score is ``rewards.metrics.<metric>(parsed prediction, ground truth)`` (0 when
    either fails); the metric is looked up at call time."""

    def scorer(inst: Instance, pred: Any) -> _Result:
        gt = gt_fn(inst)
        if not gt.ok:
            return {key: 0.0}, _gt_reason(gt)
        p = parse_fn(pred)
        return {key: getattr(M, metric)(p.value, gt.value) if p.ok else 0.0}, p.reason

    return scorer


_tag = _compare(P.gt_segments, P.parse_segments, "temporal_iou", "iou")
_stg = _compare(P.gt_stg_boxes, P.parse_stg, "st_mean_iou", "iou")
_skill = _compare(P.gt_skill, P.parse_skill, "skill_accuracy", "acc")
_cvs = _compare(P.gt_cvs, P.parse_cvs, "cvs_accuracy", "acc")


def _box(inst: Instance, pred: Any) -> _Result:
    gt = P.gt_box(inst)
    if not gt.ok:
        return {"iou": 0.0}, _gt_reason(gt)
    p = P.parse_box(pred)
    if not p.ok:
        return {"iou": 0.0}, p.reason
    box = P.scale_box(p.value, gt.value, P.image_size_of(inst))  # type: ignore[arg-type]
    return {"iou": M.box_iou(box, gt.value)}, None  # type: ignore[arg-type]


def _dvc(inst: Instance, pred: Any) -> _Result:
    gt = P.gt_events(inst)
    if not gt.ok:
        return {"f1": 0.0}, _gt_reason(gt)
    p = P.parse_events(pred)
    if not p.ok:
        return {"f1": 0.0}, p.reason
    segs = [(e.start, e.end) for e in p.value]  # type: ignore[union-attr]
    return {"f1": M.dvc_f1(segs, [(e.start, e.end) for e in gt.value])}, None  # type: ignore[union-attr]


def _caption(inst: Instance, pred: Any) -> _Result:
    gt = P.gt_caption(inst)
    if not gt.ok:
        return {}, _gt_reason(gt)
    _, r = P.prepare_answer(pred)
    return {}, r


def _label(inst: Instance, pred: Any) -> _Result:
    gt = P.gt_label(inst)
    if not gt.ok:
        return {"acc": 0.0}, _gt_reason(gt)
    labels = P.labels_for(inst)
    p = P.parse_label(pred, labels)
    comps = {"acc": M.label_match(p.value, gt.value) if p.ok else 0.0}
    s = inst.struc_info
    if inst.family == "cls" and isinstance(s, dict) and s.get("ordinal") and labels and p.ok:
        d = M.grade_distance(p.value, gt.value, labels)  # type: ignore[arg-type]
        if d is not None:
            comps["grade_dist"] = float(d)
    return comps, p.reason


def _vqa(inst: Instance, pred: Any) -> _Result:
    gt = P.gt_choice(inst)
    if not gt.ok:
        return {"acc": 0.0}, _gt_reason(gt)
    p = P.parse_choice(pred, P.choices_for(inst))
    return {"acc": M.choice_accuracy(p.value, gt.value) if p.ok else 0.0}, p.reason


_SCORERS: dict[str, Callable[[Instance, Any], _Result]] = {
    "tag": _tag, "stg": _stg, "box": _box, "dvc": _dvc, "vs": _caption, "rc": _caption,
    "nap": _label, "cls": _label, "sa": _skill, "cvs": _cvs, "vqa": _vqa,
}
_METRIC = {"tag": "iou", "stg": "iou", "box": "iou", "dvc": "f1", "nap": "acc", "cls": "acc", "sa": "acc",
           "cvs": "acc", "vqa": "acc"}


def score(instance: Instance, prediction: Any, *, iou_threshold: Optional[float] = None,
          format_gate: bool = True, require_think: bool = False) -> TaskScore:
    """Raw task score of ``prediction`` for ``instance`` (module docstring).

    ``iou_threshold``: MedLoc-R1 τ in [0, 1] for grounding families. ``format_gate``: multiply by the strict
    format check (MedGRPO; the leaderboard passes False). ``require_think``: the gate also demands the
    ``<think>…</think><answer>…</answer>`` layout.
    """
    if iou_threshold is not None and not (isinstance(iou_threshold, (int, float))
                                          and math.isfinite(iou_threshold) and 0.0 <= iou_threshold <= 1.0):
        raise ValueError(f"iou_threshold={iou_threshold!r} must be a number in [0, 1] or None")
    fam = P.family_of(instance)
    if fam is None or fam not in _SCORERS:
        return TaskScore(0.0, {"format": 0.0}, False, "unknown_qa_type", False, fam, "unknown_qa_type")
    comps, reason = _SCORERS[fam](instance, prediction)
    labels = P.labels_for(instance) if fam in ("nap", "cls") else None
    choices = P.choices_for(instance) if fam == "vqa" else None
    fmt_reason = P.format_problem(fam, prediction, labels=labels, choices=choices)
    if require_think or fam == "vqa":
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
    metric_key = _METRIC.get(fam)
    value = comps.get(metric_key, 0.0) if metric_key else 0.0
    if iou_threshold is not None and fam in GROUNDING_FAMILIES:
        value = 1.0 if comps.get("iou", 0.0) >= iou_threshold else 0.0
    if format_gate and not fmt_ok:
        value = 0.0
    value = min(1.0, max(0.0, float(value)))
    return TaskScore(value, comps, fmt_ok, reason, fam in CAPTION_NEEDS_JUDGE, fam, fmt_reason)
