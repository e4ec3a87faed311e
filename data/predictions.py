"""Read model predictions in every form MedVidBench tooling writes, into ``{reference id: prediction text}``.

Role: the input side of ``medgrpo eval`` (``rewards/leaderboard.py`` scores what this returns). Forms:

* JSONL, one object per line: ``{"id": ..., "prediction": ...}`` (``qa_type`` optional);
* a JSON list of ``{"id", "qa_type", "prediction"}`` (the public leaderboard's submission form);
* a JSON dict keyed by index, each value holding the prediction in ``answer`` (the authors' inference output);
  index ``i`` names ``references[i]`` (a value's own ``id`` wins when present); a dict keyed by reference ids
  whose values are texts or such objects is read the same way.

The prediction text is taken from the first of ``prediction``, ``answer``, ``response``, ``output`` present.
Nothing malformed raises: every skipped line or entry is counted with a reason (``bad_json``, ``not_utf8``,
``not_an_object``, ``missing_id``, ``missing_prediction``, ``prediction_not_text``, ``duplicate_id`` — the first
one is kept —, ``index_without_references``, ``index_out_of_range``, ``qa_type_mismatch``, ``unknown_id``).
A missing or unreadable file raises ``FileNotFoundError``/``OSError``; a file that is neither JSON nor JSONL gives
an empty set with every line counted as ``bad_json``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from data.schema import Instance

PREDICTION_KEYS = ("prediction", "answer", "response", "output")


@dataclass(frozen=True)
class Skip:
    where: str  # "line 7", "item 3", "key '12'"
    reason: str


@dataclass
class PredictionSet:
    """Predictions by reference id, the qa_type each entry declared (when it did), and what was skipped."""

    predictions: dict[str, str] = field(default_factory=dict)
    qa_types: dict[str, str] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    form: str = "empty"  # jsonl | list | index_dict | id_dict | empty

    @property
    def counts_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))


class _Builder:
    def __init__(self, references: Optional[Sequence[Instance]]) -> None:
        self.out = PredictionSet()
        self.refs = list(references) if references is not None else None
        self.ref_types = {r.id: r.qa_type for r in self.refs} if self.refs is not None else None

    def skip(self, where: str, reason: str) -> None:
        self.out.skipped.append(Skip(where, reason))

    def add(self, where: str, pid: Any, obj: Any) -> None:
        """Add one entry: ``obj`` is the prediction text or an object holding it."""
        if isinstance(obj, dict):
            key = next((k for k in PREDICTION_KEYS if k in obj), None)
            if key is None:
                return self.skip(where, "missing_prediction")
            text, qa_type = obj[key], obj.get("qa_type")
        else:
            text, qa_type = obj, None
        if pid is None or (isinstance(pid, str) and not pid.strip()) or isinstance(pid, (dict, list, bool)):
            return self.skip(where, "missing_id")
        pid = str(pid)
        if text is None:
            return self.skip(where, "missing_prediction")
        if not isinstance(text, str):
            return self.skip(where, "prediction_not_text")
        if pid in self.out.predictions:
            return self.skip(where, "duplicate_id")
        if self.ref_types is not None:
            if pid not in self.ref_types:
                return self.skip(where, "unknown_id")
            if isinstance(qa_type, str) and qa_type and qa_type != self.ref_types[pid]:
                return self.skip(where, "qa_type_mismatch")
        self.out.predictions[pid] = text
        if isinstance(qa_type, str) and qa_type:
            self.out.qa_types[pid] = qa_type


def _is_index(key: str) -> bool:
    return key.isascii() and key.isdigit()


def parse_predictions(text: Union[str, bytes], references: Optional[Sequence[Instance]] = None,
                      *, jsonl: Optional[bool] = None) -> PredictionSet:
    """Predictions from file contents. ``references`` (in reference order) resolve index-keyed dicts and, when
    given, make unknown ids and qa_type mismatches counted skips. ``jsonl``: force JSONL (True) or JSON (False);
    None tries JSON first, then JSONL."""
    b = _Builder(references)
    raw = text if isinstance(text, bytes) else None
    if raw is not None:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            return _parse_jsonl_bytes(raw, b)
    assert isinstance(text, str)
    text = text.lstrip("\ufeff")
    if jsonl is not True:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
            if jsonl is False:
                b.skip("file", "bad_json")
                return b.out
        if isinstance(doc, list):
            return _from_list(doc, b)
        if isinstance(doc, dict):
            if "id" in doc and any(k in doc for k in PREDICTION_KEYS):  # a one-line JSONL file
                b.out.form = "jsonl"
                b.add("line 1", doc.get("id"), doc)
                return b.out
            return _from_dict(doc, b)
        if doc is not None:
            b.skip("file", "not_an_object")
            return b.out
    return _parse_jsonl_lines(text.splitlines(), b)


def _from_list(doc: list[Any], b: _Builder) -> PredictionSet:
    b.out.form = "list"
    for i, item in enumerate(doc):
        where = f"item {i}"
        if not isinstance(item, dict):
            b.skip(where, "not_an_object")
        else:
            b.add(where, item.get("id"), item)
    return b.out


def _from_dict(doc: dict[str, Any], b: _Builder) -> PredictionSet:
    by_index = bool(doc) and all(_is_index(k) for k in doc)
    b.out.form = "index_dict" if by_index else "id_dict"
    for key, value in doc.items():
        where = f"key {key!r}"
        if isinstance(value, dict) and value.get("id") not in (None, ""):
            b.add(where, value["id"], value)
        elif by_index:
            if b.refs is None:
                b.skip(where, "index_without_references")
            elif int(key) >= len(b.refs):
                b.skip(where, "index_out_of_range")
            else:
                b.add(where, b.refs[int(key)].id, value)
        else:
            b.add(where, key, value)
    return b.out


def _parse_jsonl_lines(lines: list[str], b: _Builder) -> PredictionSet:
    b.out.form = "jsonl"
    for n, line in enumerate(lines, 1):
        _jsonl_line(line, n, b)
    return b.out


def _parse_jsonl_bytes(raw: bytes, b: _Builder) -> PredictionSet:
    b.out.form = "jsonl"
    for n, bline in enumerate(raw.splitlines(), 1):
        try:
            line = bline.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            b.skip(f"line {n}", "not_utf8")
            continue
        _jsonl_line(line, n, b)
    return b.out


def _jsonl_line(line: str, n: int, b: _Builder) -> None:
    if not line.strip():
        return
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return b.skip(f"line {n}", "bad_json")
    if not isinstance(obj, dict):
        return b.skip(f"line {n}", "not_an_object")
    b.add(f"line {n}", obj.get("id"), obj)


def read_predictions(path: Union[str, Path], references: Optional[Sequence[Instance]] = None) -> PredictionSet:
    """Predictions from a file (``.jsonl`` is read as JSONL; anything else as JSON, falling back to JSONL)."""
    p = Path(path)
    raw = p.read_bytes()
    return parse_predictions(raw, references, jsonl=True if p.suffix.lower() == ".jsonl" else None)
