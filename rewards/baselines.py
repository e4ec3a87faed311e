"""Baselines an eval table is read against: what a prediction that never looks at the input scores.

Role: pure code beside ``rewards.leaderboard``. ``fit_baselines(train)`` learns one constant prediction per
``(qa_type, data_source)`` (per ``qa_type`` for a source the training data lacks) from the training references:

* accuracy families (``accuracy`` in rewards/tasks.py: nap, cvs, sa, vqa, cls): the best constant answer, i.e. of the most common training
  answers of that key, the one with the highest mean score on the training references. For a label task that is
  the majority class; for CVS and skill (scored by the class of a summed / mean score) a representative of the
  majority class. The key includes the source because the prompt names it, so a model that reads only the text
  can reach this.
* grounding families (``grounding``: tag, stg, box): the constant-prediction baseline, the training mean: mean segment ``start-end`` (tag),
  mean box given at time 0 (stg; the leaderboard's carry-forward rule applies it at every asked time), mean box
  in coordinates relative to the image size when the references give it (box).

Caption families (dvc, vs, rc) get no baseline. ``baseline_table(train, refs)`` scores these constants on
``refs`` with ``rewards.leaderboard.evaluate`` itself, so the baseline row has the eval table's columns, pooled,
per source and as the mean of the per-source means.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from data.schema import Instance
from rewards import parsing as P
from rewards import tasks as T
from rewards.task_scores import score



def _kind(family: Optional[str]) -> Optional[str]:
    """"majority" for accuracy families, "mean" for grounding families (their specs' flags), else None."""
    spec = T.spec_of_family(family)
    if spec is None:
        return None
    return "majority" if spec.accuracy else "mean" if spec.grounding else None
MAX_CANDIDATES = 32  # most common training answers tried as the constant answer, per key
MAX_FIT_REFS = 512  # training references a candidate is scored on, per key (the first ones)
ANY_SOURCE = "*"


@dataclass
class Baselines:
    """Constant predictions per ``(qa_type, source)``: ``answers`` hold text, ``boxes`` a relative mean box used
    for references with an image size (``box`` family)."""

    answers: dict[tuple[str, str], str] = field(default_factory=dict)
    rel_boxes: dict[tuple[str, str], tuple[float, float, float, float]] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)  # qa_type -> "majority" | "mean"

    def prediction(self, ref: Instance) -> Optional[str]:
        """The constant prediction for ``ref`` (None: no baseline for its qa_type)."""
        qa = ref.qa_type
        for key in ((qa, ref.data_source or ""), (qa, ANY_SOURCE)):
            rel = self.rel_boxes.get(key)
            size = P.image_size_of(ref)
            if rel is not None and size is not None:
                w, h = size
                return _box_text((rel[0] * w, rel[1] * h, rel[2] * w, rel[3] * h))
            if key in self.answers:
                return self.answers[key]
        return None


def _box_text(b: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in b) + "]"


def _mean(rows: Sequence[Sequence[float]]) -> tuple[float, ...]:
    return tuple(sum(r[i] for r in rows) / len(rows) for i in range(len(rows[0])))


def _best_constant(refs: Sequence[Instance]) -> Optional[str]:
    counts = Counter(r.answer for r in refs if isinstance(r.answer, str) and r.answer.strip())
    fit = refs[:MAX_FIT_REFS]
    best: Optional[tuple[float, int, str]] = None
    for rank, (text, _) in enumerate(counts.most_common(MAX_CANDIDATES)):
        mean = sum(score(r, text, format_gate=False).score for r in fit) / len(fit)
        if best is None or mean > best[0]:
            best = (mean, rank, text)
    return best[2] if best else None


def _grounding_constant(fam: str, refs: Sequence[Instance]) -> tuple[Optional[str], Optional[tuple]]:
    if fam == "tag":
        parsed = [P.gt_segments(r) for r in refs]
        segs = [s for p in parsed if p.ok for s in p.value]
        if not segs:
            return None, None
        s, e = _mean(segs)
        return f"{s:.1f}-{e:.1f} seconds.", None
    if fam == "stg":
        parsed = [P.gt_stg_boxes(r) for r in refs]
        boxes = [b for p in parsed if p.ok for b in p.value.values()]
        return (f"0.0 seconds: {_box_text(_mean(boxes))}" if boxes else None), None
    raw, rel = [], []
    for r in refs:
        gt = P.gt_box(r)
        if not gt.ok:
            continue
        raw.append(gt.value)
        size = P.image_size_of(r)
        if size is not None and max(gt.value) > 1.0:
            w, h = size
            rel.append((gt.value[0] / w, gt.value[1] / h, gt.value[2] / w, gt.value[3] / h))
    return (_box_text(_mean(raw)) if raw else None), (_mean(rel) if rel else None)


def fit_baselines(train: Sequence[Instance]) -> Baselines:
    """Constant predictions from the training references (module docstring)."""
    groups: dict[tuple[str, str], list[Instance]] = defaultdict(list)
    for r in train:
        if _kind(T.family_of(r)):
            groups[(r.qa_type, r.data_source or "")].append(r)
            groups[(r.qa_type, ANY_SOURCE)].append(r)
    out = Baselines()
    for key, refs in groups.items():
        fam = T.family_of(refs[0])
        if _kind(fam) == "majority":
            text = _best_constant(refs)
            out.kind[key[0]] = "majority"
            rel = None
        else:
            text, rel = _grounding_constant(fam, refs)  # type: ignore[arg-type]
            out.kind[key[0]] = "mean"
        if text is not None:
            out.answers[key] = text
        if rel is not None:
            out.rel_boxes[key] = rel  # type: ignore[assignment]
    return out


def baseline_predictions(baselines: Baselines, references: Sequence[Instance]) -> dict[str, str]:
    """``{reference uid: constant prediction}`` for every reference that has a baseline."""
    out = {}
    for r in references:
        text = baselines.prediction(r)
        if text is not None:
            out[r.uid] = text
    return out


def baseline_table(train: Sequence[Instance], references: Sequence[Instance]) -> dict[str, Any]:
    """``rewards.leaderboard.evaluate`` of the constants fitted on ``train``, scored on ``references``; columns
    without a baseline (captions, DVC) are None. Adds ``kind`` (column family -> majority | mean)."""
    from rewards.leaderboard import evaluate

    b = fit_baselines(train)
    result = evaluate(references, baseline_predictions(b, references))
    fams = {f for f in map(T.family_of, references) if _kind(f)}
    covered = {c for f in fams for c in _columns_of(f)}
    for part in [result["table"], result["source_mean"], *result["by_source"].values()]:
        for col in part:
            if col not in covered:
                part[col] = None
    result["kind"] = {c: _kind(f) for f in fams
                      for c in _columns_of(f)}
    return result


def _columns_of(fam: str) -> list[str]:
    from rewards.leaderboard import rule_columns

    return rule_columns(fam)
