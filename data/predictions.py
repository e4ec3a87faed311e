"""Read model predictions in every form MedVidBench tooling writes, into ``{reference key: prediction text}``.

Role: the input side of ``medgrpo eval`` (``rewards/leaderboard.py`` scores what this returns; it looks each
reference up by ``Instance.uid``, then by ``Instance.id``). Forms:

* JSONL, one object per line: ``{"id": ..., "prediction": ...}`` (``qa_type`` optional);
* a JSON list of ``{"id", "qa_type", "prediction"}`` (the public leaderboard's submission form);
* a JSON dict keyed by index, each value holding the prediction in ``answer`` (the authors' inference output);
  index ``i`` names ``references[i]`` (a value's own ``id`` wins when it differs from that reference's); a dict
  keyed by reference ids (or by reference uids, the driver's ``{uid: text}``) whose values are texts or such
  objects is read the same way.

Keys. One clip serves several tasks, so an id repeats across qa_types (and may repeat within one). An entry that
declares a ``qa_type`` is keyed exactly as ``data.reader`` keys instances: ``f"{id}#{qa_type}"``, then ``#2``,
``#3``, ... for further entries with the same (id, qa_type), in file order (``data.reader.UidAllocator``; an entry
skipped for its prediction still takes its slot). So the same id under different qa_types is not a duplicate.
An entry without a qa_type is keyed by its id; when ``references`` are given it is keyed by the uid of the one
reference with that id (``ambiguous_id`` when several references share it). An index-keyed entry is keyed by
``references[i].uid``.

The prediction text is taken from the first of ``prediction``, ``answer``, ``response``, ``output`` present.
Nothing malformed raises: every skipped line or entry is counted with a reason (``bad_json``, ``not_utf8``,
``not_an_object``, ``missing_id``, ``missing_prediction``, ``prediction_not_text``, ``duplicate_id`` — a key seen
before, or more entries for an (id, qa_type) than references; the first one is kept —,
``index_without_references``, ``index_out_of_range``, ``qa_type_mismatch``, ``unknown_id``, ``ambiguous_id``).
A missing or unreadable file raises ``FileNotFoundError``/``OSError``; a file that is neither JSON nor JSONL gives
an empty set with every line counted as ``bad_json``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from data.reader import UidAllocator
from data.schema import Instance

PREDICTION_KEYS = ("prediction", "answer", "response", "output")


@dataclass(frozen=True)
class Skip:
    where: str  # "line 7", "item 3", "key '12'"
    reason: str


@dataclass
class PredictionSet:
    """Predictions by key (a reference uid, or an id where no qa_type/reference pins the uid; module docstring),
    the qa_type each entry declared (when it did), and what was skipped."""

    predictions: dict[str, str] = field(default_factory=dict)
    qa_types: dict[str, str] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    form: str = "empty"  # jsonl | list | index_dict | id_dict | empty

    @property
    def counts_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))


def _bad_id(pid: Any) -> bool:
    return pid is None or (isinstance(pid, str) and not pid.strip()) or isinstance(pid, (dict, list, bool))


class _Builder:
    def __init__(self, references: Optional[Sequence[Instance]]) -> None:
        self.out = PredictionSet()
        self.refs = list(references) if references is not None else None
        self.uids = UidAllocator()
        self.by_uid: dict[str, Instance] = {}
        self.uids_by_id: dict[str, list[str]] = {}
        for r in self.refs or []:
            if r.uid not in self.by_uid:
                self.by_uid[r.uid] = r
                self.uids_by_id.setdefault(r.id, []).append(r.uid)

    def skip(self, where: str, reason: str) -> None:
        self.out.skipped.append(Skip(where, reason))

    def add(self, where: str, pid: Any, obj: Any, ref: Optional[Instance] = None) -> None:
        """Add one entry: ``obj`` is the prediction text or an object holding it; ``ref`` the reference an
        index-keyed entry names (its uid is then the key and ``pid`` is not used)."""
        pkey: Optional[str] = None
        if isinstance(obj, dict):
            pkey = next((k for k in PREDICTION_KEYS if k in obj), None)
            text, qa_type = (obj[pkey] if pkey else None), obj.get("qa_type")
        else:
            text, qa_type = obj, None
        qa_type = qa_type.strip() if isinstance(qa_type, str) and qa_type.strip() else None
        key: Optional[str]
        if ref is not None:
            key, pid = ref.uid, ref.id
        else:
            if _bad_id(pid):
                return self.skip(where, "missing_id")
            pid = str(pid)
            key = self.uids.next(pid, qa_type) if qa_type else None  # the slot is taken even if the entry is bad
        if text is None:
            return self.skip(where, "missing_prediction")
        if not isinstance(text, str):
            return self.skip(where, "prediction_not_text")
        if ref is not None:
            if qa_type and qa_type != ref.qa_type:
                return self.skip(where, "qa_type_mismatch")
        elif self.refs is not None:
            reason, key = self._resolve(pid, qa_type, key)
            if reason:
                return self.skip(where, reason)
        elif key is None:
            key = pid
        assert key is not None
        if key in self.out.predictions:
            return self.skip(where, "duplicate_id")
        self.out.predictions[key] = text
        if qa_type:
            self.out.qa_types[key] = qa_type

    def _resolve(self, pid: str, qa_type: Optional[str], key: Optional[str]) -> tuple[Optional[str], Optional[str]]:
        """(skip reason or None, reference uid) of an entry checked against the references."""
        uids = self.uids_by_id.get(pid, [])
        if qa_type:
            if key in self.by_uid:
                return None, key
            if not uids:
                return "unknown_id", None
            same_type = any(self.by_uid[u].qa_type == qa_type for u in uids)
            return ("duplicate_id" if same_type else "qa_type_mismatch"), None
        if not uids:
            return (None, pid) if pid in self.by_uid else ("unknown_id", None)  # an id that is a reference uid
        if len(uids) > 1:
            return "ambiguous_id", None
        return None, uids[0]


def _is_index(key: str) -> bool:
    return key.isascii() and key.isdigit() and len(key) <= 18


def parse_predictions(text: Union[str, bytes], references: Optional[Sequence[Instance]] = None,
                      *, jsonl: Optional[bool] = None) -> PredictionSet:
    """Predictions from file contents, keyed as the module docstring says. ``references`` (in reference order,
    with their ``uid`` set as ``data.reader`` sets it) resolve index-keyed dicts and id-only entries and, when
    given, make unknown ids, ambiguous ids and qa_type mismatches counted skips. ``jsonl``: force JSONL (True) or
    JSON (False); None tries JSON first, then JSONL."""
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
        own_id = value.get("id") if isinstance(value, dict) and value.get("id") not in (None, "") else None
        ref = b.refs[int(key)] if by_index and b.refs is not None and int(key) < len(b.refs) else None
        if own_id is not None and (ref is None or str(own_id) != ref.id):
            b.add(where, own_id, value)
        elif by_index:
            if b.refs is None:
                b.skip(where, "index_without_references")
            elif ref is None:
                b.skip(where, "index_out_of_range")
            else:
                b.add(where, None, value, ref=ref)
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
