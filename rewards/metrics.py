"""Task metrics on parsed values: temporal/box/spatio-temporal IoU, DVC F1, CVS/skill/label/choice accuracy.

Role: pure numeric functions used by ``rewards/task_scores.py`` (rewards) and ``rewards/leaderboard.py``
(evaluation). Inputs are the typed values of ``rewards/parsing.py``; every function returns a float in [0, 1]
(or a class label) and never NaN. Rules where the published sources leave a choice open:

* Temporal IoU: union of the predicted segments against the union of the reference segments (SPEC default).
  Two zero-length unions score 1 when they are the same points, else 0.
* mIoU@θ: an IoU below θ counts 0 (SPEC default).
* Boxes are continuous ``x1, y1, x2, y2`` (no +1 pixel convention).
* STG: for each reference timestamp t, the latest predicted box at a time ≤ t (within ``STG_TIME_TOL``) is
  used, so an omitted timestamp takes the previous predicted box; none yet -> IoU 0.
* DVC F1: at each tIoU threshold, predicted and reference events are matched one-to-one greedily by
  descending segment IoU (ties: earlier reference, then earlier prediction), pairs below the threshold never
  match; F1 from precision = matches / #pred and recall = matches / #ref; averaged over 0.3/0.5/0.7.
  Only the first ``MAX_DVC_EVENTS`` events of each side take part in the matching (MedVidBench clips hold well
  under 100); events past it still count in #pred and #ref, so a degenerate output costs bounded time and scores
  no higher than the exact value.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from rewards.parsing import Box, CvsScores, Segment, normalize_label

DVC_TIOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
STG_TIME_TOL = 0.05  # reference times are keyed to 0.1 s (f"{t:.1f}")
SKILL_LEVELS: tuple[str, ...] = ("novice", "intermediate", "expert")
MAX_DVC_EVENTS = 1000


def _finite01(x: float) -> float:
    return min(1.0, max(0.0, x)) if math.isfinite(x) else 0.0


def merge_segments(segments: Iterable[Segment]) -> list[Segment]:
    """Sorted, disjoint union of segments (touching segments merge)."""
    segs = sorted((float(a), float(b)) for a, b in segments if math.isfinite(a) and math.isfinite(b) and b >= a)
    out: list[list[float]] = []
    for a, b in segs:
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _length(segs: Sequence[Segment]) -> float:
    return sum(b - a for a, b in segs)


def _intersection(p: Sequence[Segment], g: Sequence[Segment]) -> float:
    """Overlap length of two sorted disjoint segment lists (two-pointer sweep)."""
    i = j = 0
    total = 0.0
    while i < len(p) and j < len(g):
        lo, hi = max(p[i][0], g[j][0]), min(p[i][1], g[j][1])
        if hi > lo:
            total += hi - lo
        if p[i][1] < g[j][1]:
            i += 1
        else:
            j += 1
    return total


def segment_iou(a: Segment, b: Segment) -> float:
    """IoU of two single segments (0 when both have zero length unless identical)."""
    return temporal_iou([a], [b])


def temporal_iou(pred: Iterable[Segment], gt: Iterable[Segment]) -> float:
    """IoU of the union of ``pred`` against the union of ``gt``."""
    p, g = merge_segments(pred), merge_segments(gt)
    if not p or not g:
        return 0.0
    inter = _intersection(p, g)
    union = _length(p) + _length(g) - inter
    if union <= 0.0:
        return 1.0 if p == g else 0.0
    return _finite01(inter / union)


def thresholded_iou(iou: float, theta: float) -> float:
    """``iou`` when it reaches ``theta``, else 0 (one term of mIoU@θ)."""
    return iou if math.isfinite(iou) and iou >= theta else 0.0


def miou_at(ious: Iterable[float], theta: float) -> float:
    """Mean IoU counting IoU < θ as 0; 0 for no values."""
    vals = [thresholded_iou(x, theta) for x in ious]
    return _finite01(sum(vals) / len(vals)) if vals else 0.0


def box_iou(a: Box, b: Box) -> float:
    """IoU of two ``x1, y1, x2, y2`` boxes (0 when the union has no area)."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
    area_b = max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
    union = area_a + area_b - inter
    return _finite01(inter / union) if union > 0 else 0.0


def st_mean_iou(pred: Mapping[float, Box], gt: Mapping[float, Box], *, tol: float = STG_TIME_TOL) -> float:
    """Mean box IoU over the reference timestamps, with the carry-forward rule (module docstring)."""
    if not gt:
        return 0.0
    ptimes = sorted(pred)
    total = 0.0
    j = -1  # index of the latest predicted time <= current reference time
    for t in sorted(gt):
        while j + 1 < len(ptimes) and ptimes[j + 1] <= t + tol:
            j += 1
        if j >= 0:
            total += box_iou(pred[ptimes[j]], gt[t])
    return _finite01(total / len(gt))


def _segment_iou_matrix(pred: Sequence[Segment], gt: Sequence[Segment]) -> np.ndarray:
    """``[len(gt), len(pred)]`` array of ``segment_iou(pred[j], gt[i])`` (same arithmetic, vectorised)."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    g = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    with np.errstate(all="ignore"):  # invalid segments (inf, NaN, end < start) are zeroed below
        lo = np.maximum(g[:, None, 0], p[None, :, 0])
        hi = np.minimum(g[:, None, 1], p[None, :, 1])
        inter = np.where(hi > lo, hi - lo, 0.0)
        union = (p[:, 1] - p[:, 0])[None, :] + (g[:, 1] - g[:, 0])[:, None] - inter
        same = (g[:, None, 0] == p[None, :, 0]) & (g[:, None, 1] == p[None, :, 1])
        iou = np.where(union > 0, inter / union, same.astype(np.float64))
    p_ok = np.isfinite(p).all(axis=1) & (p[:, 1] >= p[:, 0])
    g_ok = np.isfinite(g).all(axis=1) & (g[:, 1] >= g[:, 0])
    iou[~g_ok, :] = 0.0
    iou[:, ~p_ok] = 0.0
    return np.clip(np.nan_to_num(iou, nan=0.0), 0.0, 1.0)


def _greedy_pairs(iou: np.ndarray, theta: float) -> list[tuple[int, int]]:
    """(reference, prediction) index pairs of the greedy one-to-one rule (module docstring) on a ``[gt, pred]``
    IoU array."""
    gi, pi = np.nonzero(iou >= theta)
    order = np.lexsort((pi, gi, -iou[gi, pi]))  # descending IoU, then earlier reference, then earlier prediction
    most = min(iou.shape)
    used_g: set[int] = set()
    used_p: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for g, p in zip(gi[order].tolist(), pi[order].tolist()):
        if g not in used_g and p not in used_p:
            used_g.add(g)
            used_p.add(p)
            pairs.append((g, p))
            if len(pairs) == most:
                break
    return pairs


def _greedy_matches(iou: np.ndarray, theta: float) -> int:
    """Number of one-to-one matches of the greedy rule on a ``[gt, pred]`` IoU array."""
    return len(_greedy_pairs(iou, theta))


def matched_segments(pred: Sequence[Segment], gt: Sequence[Segment], theta: float) -> list[tuple[int, int]]:
    """The (reference index, prediction index) pairs the DVC F1 matches at tIoU ≥ ``theta``, by reference index
    (the first ``MAX_DVC_EVENTS`` of each side, as the F1)."""
    if not pred or not gt:
        return []
    return sorted(_greedy_pairs(_segment_iou_matrix(pred[:MAX_DVC_EVENTS], gt[:MAX_DVC_EVENTS]), theta))


def dvc_f1(pred: Sequence[Segment], gt: Sequence[Segment],
           thresholds: Sequence[float] = DVC_TIOU_THRESHOLDS) -> float:
    """Temporal-matching F1 of dense-captioning events averaged over tIoU thresholds (module docstring).

    No reference events: 1 when there are no predicted events either, else 0.
    """
    if not gt:
        return 1.0 if not pred else 0.0
    if not pred or not thresholds:
        return 0.0
    iou = _segment_iou_matrix(pred[:MAX_DVC_EVENTS], gt[:MAX_DVC_EVENTS])
    f1s = []
    for theta in thresholds:
        m = _greedy_matches(iou, theta)
        prec, rec = m / len(pred), m / len(gt)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)
    return _finite01(sum(f1s) / len(f1s))


def cvs_class(total: int) -> int:
    """Class of the summed CVS score (0-6): ≤1 -> 0, ≤3 -> 1, ≤5 -> 2, 6 -> 3."""
    if total <= 1:
        return 0
    if total <= 3:
        return 1
    if total <= 5:
        return 2
    return 3


def cvs_accuracy(pred: CvsScores, gt: CvsScores) -> float:
    """1 when the summed scores fall in the same class."""
    return 1.0 if cvs_class(pred.total) == cvs_class(gt.total) else 0.0


def skill_level(mean_score: float) -> str:
    """Skill level of a mean aspect score: ≤ 2 novice, ≤ 3.5 intermediate, else expert."""
    if mean_score <= 2.0:
        return "novice"
    if mean_score <= 3.5:
        return "intermediate"
    return "expert"


def skill_mean(scores: Mapping[str, float]) -> float:
    return sum(scores.values()) / len(scores) if scores else 0.0


def skill_accuracy(pred: Mapping[str, float], gt: Mapping[str, float]) -> float:
    """1 when the mean aspect scores give the same skill level."""
    if not pred or not gt:
        return 0.0
    a, b = skill_mean(pred), skill_mean(gt)
    if not (math.isfinite(a) and math.isfinite(b)):  # skill_level(nan) would read as "expert"
        return 0.0
    return 1.0 if skill_level(a) == skill_level(b) else 0.0


def label_match(pred: Optional[str], gt: Optional[str]) -> float:
    """1 when the labels are equal after ``normalize_label`` (and non-empty)."""
    p, g = normalize_label(pred), normalize_label(gt)
    return 1.0 if p and p == g else 0.0


def nearest_label(pred: str, labels: Sequence[str],
                  embed_fn: Callable[[list[str]], Any]) -> Optional[str]:
    """The label whose embedding is nearest (cosine) to ``pred``'s; ``embed_fn(texts)`` returns an (n, d) array.

    None when there are no labels, the prediction is empty, or the embeddings are unusable (wrong shape, zero
    or non-finite vectors).
    """
    if not labels or not isinstance(pred, str) or not pred.strip():
        return None
    try:
        emb = np.asarray(embed_fn([pred, *labels]), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if emb.ndim != 2 or emb.shape[0] != len(labels) + 1 or not np.isfinite(emb).all():
        return None
    norms = np.linalg.norm(emb, axis=1)
    if norms[0] == 0 or (norms[1:] == 0).all():
        return None
    sims = (emb[1:] @ emb[0]) / np.where(norms[1:] == 0, np.inf, norms[1:] * norms[0])
    return labels[int(np.argmax(sims))]


def choice_accuracy(pred: Optional[str], gt: Optional[str]) -> float:
    """1 when the option letters agree (case-insensitive)."""
    return 1.0 if pred and gt and pred.strip().upper() == gt.strip().upper() else 0.0


def grade_distance(pred: str, gt: str, ordered_labels: Sequence[str]) -> Optional[int]:
    """|index(pred) - index(gt)| in an ordinal label list (VRFT-Aug graded reward), None if either is absent."""
    norm = [normalize_label(x) for x in ordered_labels]
    p, g = normalize_label(pred), normalize_label(gt)
    if p not in norm or g not in norm:
        return None
    return abs(norm.index(p) - norm.index(g))
