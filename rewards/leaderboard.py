"""MedVidBench leaderboard evaluator: score predictions against references into the published table.

Role: the scoring core of ``medgrpo eval`` (pure code; the CLI reads files and prints ``format_table``).
Columns: ``cvs_acc, nap_acc, sa_acc, stg_miou, tag_miou@0.3, tag_miou@0.5, dvc_f1, dvc_llm, vs_llm, rc_llm``,
plus ``vqa_acc, box_miou, cls_acc`` when image references are present and ``dvc_sim, vs_sim, rc_sim`` when a
``similarity_fn`` is given. Rule columns use the lenient parsers without the format gate (``task_scores.score``
with ``format_gate=False``); ``*_llm`` columns are mean judge scores on the 1–5 scale.

Matching: each reference takes ``predictions[ref.uid]`` (``data.reader`` and ``data.predictions`` key by the
same uid rule, so one clip's several tasks, and repeats within one task, each find their own prediction), else
``predictions[ref.id]`` when no other reference shares that id (callers with id-keyed predictions and unique
ids). An id-keyed prediction whose id several references share is used by none of them: they count as missing
and under ``ambiguous_id``.

Counting rules: a reference with no prediction (or a non-text one) scores 0 in each of its columns, LLM ones
included, and is counted in ``missing_predictions``; a prediction that does not parse scores 0 and is counted
under ``parse_failures`` by reason; a reference whose own ground truth is unusable (``gt_*``) or whose
qa_type is unknown is left out of every column and counted (``reference_errors``/``unknown_qa_type``); a judge
reply of None, or one outside [1, 5], is left out of its column and counted in ``judge_missing`` (never a
silent 0). Without ``judge_fn`` the LLM columns are None and listed in ``skipped``.

Task hints: a ``judge_fn`` that takes a ``hints`` keyword gets one task hint per pair (``dvc``, ``vs``, ``rc``), so
the judge is told which captioning task it grades, as in training (rewards/judge_rubric.py).
"""
from __future__ import annotations

import inspect
import math
from collections import Counter, defaultdict
from typing import Any, Callable, Collection, Mapping, Optional, Sequence

from data.schema import Instance
from rewards import metrics as M
from rewards import parsing as P
from rewards import tasks as T
from rewards.task_scores import score

JudgeFn = Callable[..., Sequence[Optional[float]]]  # (pairs) or (pairs, hints=...) -> 1-5 score or None per pair
SimilarityFn = Callable[[list[tuple[str, str]]], Sequence[Optional[float]]]



def columns_for(families_present: Collection[Optional[str]], with_similarity: bool = False) -> list[str]:
    """The table's columns, from the task registry in its order: each family's rule columns and, for a caption
    family, its ``<family>_llm`` column; an image family's only when it is in ``families_present``; then the
    ``<family>_sim`` columns when ``with_similarity``."""
    cols: list[str] = []
    for spec in T.specs():
        if not spec.image or spec.name in families_present:
            cols += [c.name for c in spec.columns] + ([spec.llm_column()] if spec.caption else [])  # type: ignore[list-item]
    if with_similarity:
        cols += [spec.sim_column() for spec in T.specs() if spec.caption]  # type: ignore[misc]
    return cols


COLUMNS: tuple[str, ...] = tuple(columns_for(()))  # the video table (no image references, no similarity)
ALL_SOURCES = "all"
SOURCE_MEAN = "src-mean"


def _valid(v: Any, lo: float, hi: float) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) and lo <= v <= hi else None


def takes_hints(fn: Callable[..., Any]) -> bool:
    """``fn`` accepts a ``hints`` keyword (one task hint per pair)."""
    try:
        return "hints" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _call(fn: Callable[..., Sequence[Optional[float]]], name: str, pairs: list[tuple[str, str]],
          hints: list[str]) -> list[Any]:
    out = list(fn(pairs, hints=hints) if takes_hints(fn) else fn(pairs))
    if len(out) != len(pairs):
        raise ValueError(f"{name} returned {len(out)} scores for {len(pairs)} pairs; it must return one per pair")
    return out


def evaluate(references: Sequence[Instance], predictions: Mapping[str, str], *,
             judge_fn: Optional[JudgeFn] = None, similarity_fn: Optional[SimilarityFn] = None) -> dict[str, Any]:
    """Score ``predictions`` (reference uid, or id, -> text) against ``references`` (module docstring for the
    matching and counting rules).

    ``judge_fn(pairs)`` gets ``[(reference, candidate), ...]`` (and ``hints=[family, ...]`` when it takes that
    keyword) and returns one 1–5 score or None per pair;
    ``similarity_fn`` the same with cosine similarities in [-1, 1]. Returns ``{"table", "by_source", "counts",
    "skipped", "columns", "source_mean"}``: ``table`` (pooled over every reference), ``by_source[source]`` and
    ``source_mean`` (the mean of the per-source means) map column -> value (None: no data or skipped).
    """
    columns = columns_for({T.family_of(r) for r in references}, with_similarity=similarity_fn is not None)
    values: dict[str, list[tuple[str, float]]] = defaultdict(list)
    missing_by_col: Counter[str] = Counter()
    parse_failures: Counter[str] = Counter()
    failures_by_task: dict[str, Counter[str]] = defaultdict(Counter)
    ref_errors: Counter[str] = Counter()
    judge_missing: Counter[str] = Counter()
    sim_missing: Counter[str] = Counter()
    unknown_qa_type = missing = ambiguous_id = 0
    ids = Counter(ref.id for ref in references)
    uids = Counter(ref.uid for ref in references)
    used: set[str] = set()
    queue: list[tuple[T.TaskSpec, str, str, str]] = []  # (caption spec, source, reference, candidate)

    for ref in references:
        pred: Any = None
        if ref.uid in predictions:
            pred = predictions[ref.uid]
            used.add(ref.uid)
        elif ref.id in predictions:
            if ids[ref.id] == 1:
                pred = predictions[ref.id]
                used.add(ref.id)
            else:
                ambiguous_id += 1
        spec = T.spec_of(ref)
        if spec is None or not (spec.columns or spec.caption):
            unknown_qa_type += 1
            continue
        fam = spec.name
        has_pred = isinstance(pred, str)
        ts = score(ref, pred if has_pred else "", format_gate=False)
        if ts.reason is not None and ts.reason.startswith("gt_"):
            ref_errors[ts.reason] += 1
            continue
        src = ref.data_source or "unknown"
        if not has_pred:
            missing += 1
        elif ts.reason is not None:
            parse_failures[ts.reason] += 1
            failures_by_task[fam][ts.reason] += 1
        for c in spec.columns:
            v = ts.components.get(c.component, 0.0) if has_pred else 0.0
            values[c.name].append((src, M.thresholded_iou(v, c.iou_threshold) if c.iou_threshold is not None else v))
            missing_by_col[c.name] += 0 if has_pred else 1
        if spec.caption:
            cand = P.answer_text(pred) if has_pred else ""
            if cand:
                queue.append((spec, src, P.gt_caption(ref).value or "", cand))
                continue
            for col in (spec.llm_column(), spec.sim_column()):
                values[col].append((src, 0.0))  # type: ignore[index]
                missing_by_col[col] += 0 if has_pred else 1  # type: ignore[index]

    pairs = [(r, c) for _, _, r, c in queue]
    hints = [spec.name for spec, _, _, _ in queue]
    for fn, name, column_of, lo, hi, missing_counter in (
            (judge_fn, "judge_fn", T.TaskSpec.llm_column, 1.0, 5.0, judge_missing),
            (similarity_fn, "similarity_fn", T.TaskSpec.sim_column, -1.0, 1.0, sim_missing)):
        if fn is None or not pairs:
            continue
        for (spec, src, _, _), raw in zip(queue, _call(fn, name, pairs, hints)):
            v = _valid(raw, lo, hi)
            col = column_of(spec)
            if v is None:
                missing_counter[col] += 1
            else:
                values[col].append((src, v))

    skipped = [spec.llm_column() for spec in T.specs() if spec.caption and judge_fn is None]
    sources = sorted({src for vals in values.values() for src, _ in vals})

    def mean(col: str, source: Optional[str]) -> tuple[Optional[float], int]:
        if col in skipped:
            return None, 0
        vals = [v for s, v in values.get(col, []) if source is None or s == source]
        return (sum(vals) / len(vals) if vals else None), len(vals)

    table = {c: mean(c, None)[0] for c in columns}
    by_source = {s: {c: mean(c, s)[0] for c in columns} for s in sources}
    source_mean = {c: _mean_of([by_source[s][c] for s in sources]) for c in columns}
    counts = {
        "references": len(references),
        "predictions": len(predictions),
        "n": {c: mean(c, None)[1] for c in columns},
        "n_by_source": {s: {c: mean(c, s)[1] for c in columns} for s in sources},
        "missing_predictions": missing,
        "missing_by_column": {c: missing_by_col[c] for c in columns if missing_by_col[c]},
        "unmatched_predictions": sum(1 for key in predictions if key not in used),
        "ambiguous_id": ambiguous_id,
        "duplicate_reference_ids": sum(n - 1 for n in ids.values() if n > 1),  # normal: one clip, several tasks
        "duplicate_reference_uids": sum(n - 1 for n in uids.values() if n > 1),  # 0 unless built by hand
        "unknown_qa_type": unknown_qa_type,
        "parse_failures": dict(parse_failures),
        "parse_failures_by_task": {f: dict(c) for f, c in failures_by_task.items()},
        "reference_errors": dict(ref_errors),
        "judge_missing": dict(judge_missing),
        "similarity_missing": dict(sim_missing),
    }
    return {"table": table, "by_source": by_source, "source_mean": source_mean, "counts": counts,
            "skipped": skipped, "columns": columns}


def _mean_of(vals: Sequence[Optional[float]]) -> Optional[float]:
    got = [v for v in vals if v is not None]
    return sum(got) / len(got) if got else None


def rule_columns(family: str) -> list[str]:
    """The rule-based columns a task family scores into (empty for caption-only families)."""
    spec = T.spec_of_family(family)
    return [c.name for c in spec.columns] if spec else []


def flat_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``evaluate``'s result as flat metrics: ``<prefix><col>`` (pooled), ``<prefix>source_mean/<col>`` and
    ``<prefix><source>/<col>``; columns without a value are left out."""
    out: dict[str, float] = {}
    parts = [("", result["table"]), ("source_mean/", result.get("source_mean", {}))]
    parts += [(f"{s}/", row) for s, row in result.get("by_source", {}).items()]
    for label, row in parts:
        for col, v in row.items():
            if isinstance(v, (int, float)):
                out[f"{prefix}{label}{col}"] = float(v)
    return out


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows as text columns (first left-aligned, the rest right-aligned), a rule under the first row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _fmt(v: Optional[float], col: str, skipped: Sequence[str]) -> str:
    if col in skipped:
        return "skipped"
    if v is None:
        return "-"
    return f"{v:.2f}" if col.endswith("_llm") else f"{v:.3f}"


def format_table(result: Mapping[str, Any], baseline: Optional[Mapping[str, Any]] = None) -> str:
    """A plain-text table of ``evaluate``'s result: one row per column, ``all`` (pooled: every reference counts
    once) then each data source; below it one row per summary, column by column: ``src-mean`` (the mean of the
    per-source means) and, with ``baseline`` (a ``rewards.baselines.baseline_table`` result), the baseline's
    pooled and source-mean values; then a summary of the counts."""
    columns = list(result.get("columns") or result["table"].keys())
    skipped = list(result.get("skipped", []))
    sources = list(result.get("by_source", {}))
    counts = result.get("counts", {})
    header = ["metric", "n", ALL_SOURCES, *sources]
    rows = [header]
    for col in columns:
        rows.append([col, str(counts.get("n", {}).get(col, 0)), _fmt(result["table"].get(col), col, skipped),
                     *(_fmt(result["by_source"][s].get(col), col, skipped) for s in sources)])
    lines = _aligned(rows)
    summary = [["summary", *columns],
               [SOURCE_MEAN, *(_fmt((result.get("source_mean") or {}).get(c), c, skipped) for c in columns)]]
    if baseline is not None:
        for label, part in (("baseline(all)", "table"), ("baseline(src-mean)", "source_mean")):
            summary.append([label, *(_fmt(baseline[part].get(c), c, []) for c in columns)])
    lines += [""] + _aligned(summary)
    lines.append("")
    lines.append(f"references {counts.get('references', 0)}, predictions {counts.get('predictions', 0)}, "
                 f"missing predictions {counts.get('missing_predictions', 0)}, "
                 f"unmatched predictions {counts.get('unmatched_predictions', 0)}, "
                 f"unknown qa_type {counts.get('unknown_qa_type', 0)}")
    if counts.get("ambiguous_id"):
        lines.append(f"references whose id-keyed prediction is ambiguous (id shared by several references): "
                     f"{counts['ambiguous_id']}")
    for key, label in (("parse_failures", "parse failures"), ("reference_errors", "reference errors"),
                       ("judge_missing", "judge missing"), ("similarity_missing", "similarity missing")):
        d = counts.get(key) or {}
        if d:
            lines.append(f"{label}: " + ", ".join(f"{k} {v}" for k, v in sorted(d.items())))
    if skipped:
        lines.append(f"skipped (no judge): {', '.join(skipped)}")
    lines.append(f"{ALL_SOURCES}: pooled over every reference; {SOURCE_MEAN}: mean of the per-source means")
    if baseline is not None:
        lines.append("baseline: " + (baseline.get("note") or "constant predictions (rewards.baselines)"))
    return "\n".join(lines)
