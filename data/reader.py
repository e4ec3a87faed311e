"""Read MedVidBench-format data files (JSON list, JSONL, Parquet) into validated ``Instance`` objects.

Two row forms are accepted in every file format:

* **MedVidBench form** (the authors' SFT/test files): ``conversations`` [{from: human, value: "<video>\\n..."},
  {from: gpt, value: answer}], ``video`` / ``image``, ``metadata`` {fps, video_id, input_video_start_frame,
  input_video_end_frame}, ``qa_type``, ``data_source``, ``struc_info``, ``is_RC`` + ``RC_info``, optional ``id``.
  Everything SPEC §2 lists as "real files differ" is taken: metadata values as strings (``"fps": "1.0"``),
  the aliases ``start_frame``/``end_frame`` and ``input_video_start_time``/``input_video_end_time`` (seconds,
  converted to frames at the sampling fps), ``struc_info`` of any shape (kept as-is; a ``gnd`` field, at row
  level or inside a dict ``struc_info``, is copied to ``extra["gnd"]``), no gpt turn (``answer=None``), ``video``
  as a frame list or one file, ``RC_info.start_frame`` as a frame index or as the path of one of the frames.
* **Instance form**: the fields of ``data.schema.Instance`` (what ``data.parquet`` writes; JSON rows with a
  ``question`` key and no ``conversations`` are read this way too).

Frame-index convention (see also ``data.video``): ``start_frame``/``end_frame`` and ``rc_box[0]`` are indices of
frames sampled at the instance's ``fps`` from the source video, so frame ``k`` is at ``k / fps`` seconds of the
source; ``end_frame`` is inclusive. A frame list holds the frames ``start_frame, start_frame + 1, ...``.

Security: every media path (video, frames, image, RC frame) is resolved (``..`` and symlinks included) and must
lie inside one of ``data_roots`` (default: the data file's folder); otherwise the row is skipped with reason
``path_outside_roots``. Relative paths resolve against the data file's folder. Paths are stored resolved.
``require_media=False`` (for callers that never open media, such as evaluation) lifts both media rules: paths
are still resolved but not confined, and a row without ``video``/``image`` is accepted.

Bad rows never crash the read and are never dropped silently: each becomes an entry of ``ReadResult.skipped``
with a reason code from ``REASONS`` (``len(instances) + len(skipped) == rows_seen``). A file that cannot be read
at all raises ``DataFileError`` (missing, not UTF-8, not JSON, JSON nested beyond the parser's limit, an integer
of more than Python's 4300 digits in a .json file; in JSONL the line is a ``bad_json`` row instead).
Limits on values: fps in ``[MIN_FPS, MAX_FPS]``, frame indices (and times converted to frames) at most
``MAX_FRAME_INDEX``, containers nested at most ``MAX_NESTING`` deep anywhere in a row (deeper rows cannot be
pickled to the actors), and every string valid Unicode text (a JSON ``\\ud800`` escape decodes to a lone
surrogate that no tokenizer, file path or UTF-8 writer takes: ``bad_text``).

Unique keys: one clip serves several tasks (and may serve one task twice), so ``Instance.id`` repeats. Every
instance gets ``Instance.uid`` = ``f"{id}#{qa_type}"``, with ``#2``, ``#3``, ... for further repeats of the same
(id, qa_type) in file order (``UidAllocator``). A skipped row whose id and qa_type were already known (say, a
media path outside the roots) still takes its slot, so the numbering matches a predictions file that lists every
row of the file (``data.predictions`` numbers its entries the same way). An Instance-form row's stored ``uid``
(Parquet written by ``data.parquet``) is kept when it has the rule's shape for the row and is not taken yet.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from data.errors import BadRow, DataFileError
from data.schema import IMAGE_QA_TYPES, Instance, sample_id, task_family

PathLike = Union[str, "os.PathLike[str]"]
Where = Union[int, str]

# -- reason codes of skipped rows ------------------------------------------------------------------------------
BAD_JSON = "bad_json"  # a JSONL line that is not valid JSON (or not UTF-8)
NOT_AN_OBJECT = "not_an_object"  # a row that is not a JSON object / mapping
MISSING_QA_TYPE = "missing_qa_type"
UNKNOWN_QA_TYPE = "unknown_qa_type"
MISSING_DATA_SOURCE = "missing_data_source"
MISSING_QUESTION = "missing_question"  # no human turn / empty question
BAD_FIELD_TYPE = "bad_field_type"  # a field of the wrong type (conversations not a list, metadata not a dict, ...)
MISSING_FPS = "missing_fps"  # a video row without metadata.fps
BAD_FPS = "bad_fps"  # fps not a finite number
FPS_OUT_OF_RANGE = "fps_out_of_range"  # fps outside (0, MAX_FPS]
BAD_FRAME_RANGE = "bad_frame_range"  # non-integer, negative or inverted start/end frames
MISSING_MEDIA = "missing_media"  # a video task without `video`, an image task without `image`
BAD_MEDIA = "bad_media"  # media field of the wrong shape (empty list, non-string paths, several videos)
PATH_OUTSIDE_ROOTS = "path_outside_roots"
BAD_RC_INFO = "bad_rc_info"  # is_RC set but RC_info unusable (box not 4 numbers, frame outside the clip, ...)
BAD_TEXT = "bad_text"  # a string that is not valid Unicode text (a lone surrogate from a JSON \uD800 escape)
NESTED_TOO_DEEP = "nested_too_deep"  # lists/objects nested deeper than MAX_NESTING
REASONS: tuple[str, ...] = (
    BAD_JSON, NOT_AN_OBJECT, MISSING_QA_TYPE, UNKNOWN_QA_TYPE, MISSING_DATA_SOURCE, MISSING_QUESTION,
    BAD_FIELD_TYPE, MISSING_FPS, BAD_FPS, FPS_OUT_OF_RANGE, BAD_FRAME_RANGE, MISSING_MEDIA, BAD_MEDIA,
    PATH_OUTSIDE_ROOTS, BAD_RC_INFO, BAD_TEXT, NESTED_TOO_DEEP,
)

MIN_FPS = 1e-3  # one sampled frame per 1000 s; below it k / fps leaves any video (5e-324 even overflows to inf)
MAX_FPS = 60.0
MAX_FRAME_INDEX = 2**31 - 1  # > 1 year at MAX_FPS; keeps frame indices inside int64/Parquet arithmetic
MAX_NESTING = 32  # MedVidBench rows nest 5 deep; pickle (Ray) fails near 500
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
PARQUET_EXTENSIONS = (".parquet", ".pq")
JSONL_EXTENSIONS = (".jsonl", ".ndjson")
_HUMAN_ROLES = ("human", "user")
_ANSWER_ROLES = ("gpt", "assistant")
_PLACEHOLDERS = ("<video>", "<image>")
_RAW_KNOWN_KEYS = frozenset(
    {"id", "conversations", "video", "image", "metadata", "qa_type", "data_source", "struc_info", "is_RC",
     "RC_info", "gnd"})
_META_START = ("input_video_start_frame", "start_frame")
_META_END = ("input_video_end_frame", "end_frame")
_META_START_TIME = ("input_video_start_time", "start_time")
_META_END_TIME = ("input_video_end_time", "end_time")
_INSTANCE_FIELDS = tuple(f.name for f in fields(Instance))


@dataclass
class ReadResult:
    """Outcome of reading one file. ``skipped[i] = (where, reason)``; ``details[i]`` says what was wrong.

    ``where`` is the 0-based row index for JSON lists and Parquet, the 1-based line number for JSONL, and the key
    for a JSON object keyed by row (``where_kind`` says which).
    """

    path: str
    instances: list[Instance] = field(default_factory=list)
    skipped: list[tuple[Where, str]] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    rows_seen: int = 0
    where_kind: str = "index"

    @property
    def counts_by_reason(self) -> dict[str, int]:
        """Number of skipped rows per reason code, most frequent first."""
        return dict(Counter(reason for _, reason in self.skipped).most_common())

    def summary(self) -> str:
        """One line for logs: ``path: N instances, M skipped (reason: count, ...)``."""
        reasons = ", ".join(f"{r}: {n}" for r, n in self.counts_by_reason.items())
        return (f"{self.path}: {len(self.instances)} instances from {self.rows_seen} rows, "
                f"{len(self.skipped)} skipped" + (f" ({reasons})" if reasons else ""))


class RowError(ValueError):
    """An unusable row: ``reason`` is one of ``REASONS``, ``detail`` says what was wrong; ``key`` is the row's
    (id, qa_type) when it was known before the row failed (the row then still takes its uid slot)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.key: Optional[tuple[str, str]] = None


@contextmanager
def _keyed(iid: str, qa_type: str) -> Iterator[None]:
    """Tag a ``RowError`` raised inside with the row's (id, qa_type)."""
    try:
        yield
    except RowError as e:
        e.key = (iid, qa_type)
        raise


# -- unique instance keys --------------------------------------------------------------------------------------
def instance_uid(iid: str, qa_type: str, n: int = 1) -> str:
    """The uid of the ``n``-th (1-based) occurrence of (id, qa_type) in a file: ``id#qa_type``, then ``…#n``."""
    base = f"{iid}#{qa_type}"
    return base if n <= 1 else f"{base}#{n}"


def _rule_index(uid: str, iid: str, qa_type: str) -> Optional[int]:
    """``n`` when ``uid == instance_uid(iid, qa_type, n)``, else None."""
    base = f"{iid}#{qa_type}"
    if uid == base:
        return 1
    rest = uid[len(base) + 1:] if uid.startswith(base + "#") else ""
    if rest.isascii() and rest.isdigit() and not rest.startswith("0") and int(rest) >= 2:
        return int(rest)
    return None


class UidAllocator:
    """Hands out ``Instance.uid`` values by the rule, in call (file) order, each unique among its results.

    ``next(id, qa_type)`` gives ``id#qa_type`` for the first occurrence, then ``id#qa_type#2``, ``#3``, ...; a
    value already handed out (a claimed stored uid, or a clash made by a ``#`` inside an id) is passed over.
    ``assign(id, qa_type, stored)`` keeps ``stored`` when it has the rule's shape for (id, qa_type) and is free.
    ``data.predictions`` numbers prediction entries with the same class, so both sides agree.
    """

    def __init__(self) -> None:
        self._count: dict[tuple[str, str], int] = {}
        self._used: set[str] = set()

    def next(self, iid: str, qa_type: str) -> str:
        n = self._count.get((iid, qa_type), 0) + 1
        uid = instance_uid(iid, qa_type, n)
        while uid in self._used:
            n += 1
            uid = instance_uid(iid, qa_type, n)
        self._count[(iid, qa_type)] = n
        self._used.add(uid)
        return uid

    def assign(self, iid: str, qa_type: str, stored: Any = None) -> str:
        if isinstance(stored, str) and stored not in self._used and _rule_index(stored, iid, qa_type) is not None:
            self._used.add(stored)
            return stored
        return self.next(iid, qa_type)


# -- path confinement ------------------------------------------------------------------------------------------
class PathGuard:
    """Resolves media paths against a base folder and confines them to a set of roots (after ``..``/symlinks).

    ``resolve`` caches the real path of each parent folder, so a frame list costs one ``lstat`` per frame.
    """

    def __init__(self, base_dir: PathLike, roots: Optional[Sequence[PathLike]] = None, *,
                 require_media: bool = True) -> None:
        self.base_dir = os.path.abspath(os.fspath(base_dir))
        self.require_media = require_media  # False: no confinement and media may be absent (see module docstring)
        chosen = [os.fspath(r) for r in roots] if roots else [self.base_dir]
        self.roots = tuple(os.path.realpath(os.path.abspath(r)) for r in chosen)
        self._parents: dict[str, str] = {}

    def _realpath(self, full: str) -> str:
        parent, name = os.path.split(full)
        if name in ("", ".", "..") or os.path.islink(full):
            return os.path.realpath(full)
        real_parent = self._parents.get(parent)
        if real_parent is None:
            real_parent = os.path.realpath(parent)
            if len(self._parents) < 100_000:
                self._parents[parent] = real_parent
        return os.path.join(real_parent, name)

    def inside(self, real: str) -> bool:
        for root in self.roots:
            prefix = root if root.endswith(os.sep) else root + os.sep
            if real == root or real.startswith(prefix):
                return True
        return False

    def resolve(self, path: Any, what: str = "media path") -> str:
        """The resolved absolute path; raises ``RowError`` (bad_media / path_outside_roots) otherwise."""
        if not isinstance(path, str) or not path.strip():
            raise RowError(BAD_MEDIA, f"{what} must be a non-empty string, got {_short(path)}")
        if "\x00" in path:
            raise RowError(BAD_MEDIA, f"{what} contains a NUL byte")
        full = path if os.path.isabs(path) else os.path.join(self.base_dir, path)
        real = self._realpath(full)  # not abspath(): a lexical ".." would bypass a symlinked folder
        if self.require_media and not self.inside(real):
            raise RowError(PATH_OUTSIDE_ROOTS,
                        f"{what} {path!r} resolves to {real}, outside the data roots {list(self.roots)}")
        return real


# -- value parsing ---------------------------------------------------------------------------------------------
def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _number(value: Any) -> float:
    """A finite float from a JSON number or numeric string; ValueError otherwise (bools are refused)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a number: {_short(value)}")
    try:
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            out = float(value.strip())
        else:
            raise ValueError(f"not a number: {_short(value)}")
    except OverflowError:  # an int beyond float range (JSON allows 4300 digits)
        raise ValueError(f"not a finite number: {_short(value)}") from None
    if not math.isfinite(out):
        raise ValueError(f"not a finite number: {_short(value)}")
    return out


def _frame(value: Any, name: str) -> Optional[int]:
    """A non-negative integral frame index (``"12"``, ``12``, ``12.0``); None for absent/empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        x = _number(value)
    except ValueError:
        raise RowError(BAD_FRAME_RANGE, f"{name}={_short(value)} is not a frame index") from None
    if x != int(x):
        raise RowError(BAD_FRAME_RANGE, f"{name}={_short(value)} is not an integer")
    if x < 0:
        raise RowError(BAD_FRAME_RANGE, f"{name}={_short(value)} is negative")
    if x > MAX_FRAME_INDEX:
        raise RowError(BAD_FRAME_RANGE, f"{name}={_short(value)} is beyond {MAX_FRAME_INDEX}")
    return int(x)


def _fps(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(MISSING_FPS, "video row without metadata.fps")
    try:
        fps = _number(value)
    except ValueError:
        raise RowError(BAD_FPS, f"fps={_short(value)} is not a finite number") from None
    if not MIN_FPS <= fps <= MAX_FPS:
        raise RowError(FPS_OUT_OF_RANGE, f"fps={_short(value)} is outside [{MIN_FPS:g}, {MAX_FPS:g}]")
    return fps


def _check_values(row: dict[str, Any]) -> None:
    """Every string of the row (keys too) is valid Unicode text and no container nests deeper than MAX_NESTING
    (see the module docstring); raises ``RowError`` otherwise."""
    stack: list[tuple[Any, int]] = [(row, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise RowError(NESTED_TOO_DEEP, f"lists/objects nest deeper than {MAX_NESTING} levels")
        if isinstance(value, dict):
            for k in value:
                if isinstance(k, str) and not k.isascii():
                    _check_text(k)
            value = value.values()
        for v in value:
            if isinstance(v, str):
                if not v.isascii():
                    _check_text(v)
            elif isinstance(v, (dict, list, tuple)):
                stack.append((v, depth + 1))


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RowError(BAD_TEXT, f"string {_short(text)} holds a lone surrogate at position {e.start} "
                                 "(not Unicode text)") from None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _first(mapping: dict[str, Any], keys: Sequence[str]) -> tuple[Optional[str], Any]:
    for k in keys:
        v = mapping.get(k)
        if v is not None and not (isinstance(v, str) and not v.strip()):
            return k, v
    return None, None


def strip_placeholders(text: str) -> str:
    """The human turn without the ``<video>``/``<image>`` placeholders (and the newline after each)."""
    for tok in _PLACEHOLDERS:
        text = text.replace(tok + "\n", "").replace(tok, "")
    return text.strip()


def _qa_type(row: dict[str, Any]) -> str:
    qa_type = row.get("qa_type")
    if qa_type is None or (isinstance(qa_type, str) and not qa_type.strip()):
        raise RowError(MISSING_QA_TYPE, "row without qa_type")
    if not isinstance(qa_type, str):
        raise RowError(BAD_FIELD_TYPE, f"qa_type must be a string, got {_short(qa_type)}")
    qa_type = qa_type.strip()
    try:
        task_family(qa_type)
    except KeyError:
        raise RowError(UNKNOWN_QA_TYPE, f"unknown qa_type {qa_type!r}") from None
    return qa_type


def _data_source(row: dict[str, Any]) -> str:
    src = row.get("data_source")
    if src is None or (isinstance(src, str) and not src.strip()):
        raise RowError(MISSING_DATA_SOURCE, "row without data_source")
    if not isinstance(src, str):
        raise RowError(BAD_FIELD_TYPE, f"data_source must be a string, got {_short(src)}")
    return src.strip()


def _conversation(row: dict[str, Any]) -> tuple[str, Optional[str]]:
    conv = row.get("conversations")
    if not isinstance(conv, list):
        raise RowError(BAD_FIELD_TYPE, f"conversations must be a list of turns, got {_short(conv)}")
    question: Optional[str] = None
    answer: Optional[str] = None
    for turn in conv:
        if not isinstance(turn, dict):
            raise RowError(BAD_FIELD_TYPE, f"conversation turn must be an object, got {_short(turn)}")
        role = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        if value is not None and not isinstance(value, str):
            raise RowError(BAD_FIELD_TYPE, f"conversation value must be a string, got {_short(value)}")
        if role in _HUMAN_ROLES and question is None:
            question = value
        elif role in _ANSWER_ROLES and question is not None and answer is None:
            answer = value
    if question is None or not strip_placeholders(question):
        raise RowError(MISSING_QUESTION, "no human turn with a question")
    return strip_placeholders(question), answer


def _is_video_file(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def _video(value: Any, guard: PathGuard) -> Union[str, list[str]]:
    """One video file (str) or a frame list (list[str]), every path resolved and confined."""
    if isinstance(value, str):
        return guard.resolve(value, "video")
    if isinstance(value, (list, tuple)):
        if not value:
            raise RowError(BAD_MEDIA, "video is an empty list")
        if not all(isinstance(p, str) for p in value):
            raise RowError(BAD_MEDIA, "video list holds non-string entries")
        if len(value) == 1 and _is_video_file(value[0]):
            return guard.resolve(value[0], "video")
        if any(_is_video_file(p) for p in value):
            raise RowError(BAD_MEDIA, f"video lists {len(value)} entries with video files; one video per row")
        return [guard.resolve(p, "video frame") for p in value]
    raise RowError(BAD_MEDIA, f"video must be a path or a list of frame paths, got {_short(value)}")


def _image(value: Any, guard: PathGuard) -> str:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise RowError(BAD_MEDIA, f"image lists {len(value)} paths; one image per row")
        value = value[0]
    if not isinstance(value, str):
        raise RowError(BAD_MEDIA, f"image must be a path, got {_short(value)}")
    return guard.resolve(value, "image")


def _box(value: Any, what: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise RowError(BAD_RC_INFO, f"{what} must be [x1, y1, x2, y2], got {_short(value)}")
    try:
        box = [_number(v) for v in value]
    except ValueError:
        raise RowError(BAD_RC_INFO, f"{what} holds a non-number: {_short(value)}") from None
    if box[2] < box[0] or box[3] < box[1]:
        raise RowError(BAD_RC_INFO, f"{what} {box} is inverted (need x1 <= x2 and y1 <= y2)")
    return box


def _check_rc_frame(frame: int, video: Any, start: int, end: Optional[int]) -> None:
    if isinstance(video, list):
        last = start + len(video) - 1
        if not start <= frame <= last:
            raise RowError(BAD_RC_INFO, f"RC frame {frame} is outside the clip's frames {start}..{last}")
    elif frame < start or (end is not None and frame > end):
        raise RowError(BAD_RC_INFO, f"RC frame {frame} is outside the clip {start}..{end if end is not None else ''}")


def _rc_frame(value: Any, video: Any, start: int, guard: PathGuard) -> int:
    """RC_info.start_frame as a frame index (see the module docstring); a path is looked up in the frame list."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return start  # no frame given: the box belongs to the clip's first frame
    if isinstance(value, str):
        try:
            _number(value)
        except ValueError:
            return _rc_frame_from_path(value, video, start, guard)
    try:
        out = _frame(value, "RC_info.start_frame")
    except RowError as e:
        raise RowError(BAD_RC_INFO, e.detail) from None
    return start if out is None else out


def _rc_frame_from_path(value: str, video: Any, start: int, guard: PathGuard) -> int:
    if not isinstance(video, list):
        raise RowError(BAD_RC_INFO, f"RC_info.start_frame {value!r} is a path but video is not a frame list")
    real = guard.resolve(value, "RC frame")
    if real in video:
        return start + video.index(real)
    base = os.path.basename(real)
    matches = [i for i, p in enumerate(video) if os.path.basename(p) == base]
    if len(matches) != 1:
        raise RowError(BAD_RC_INFO, f"RC_info.start_frame {value!r} matches {len(matches)} frames of the list")
    return start + matches[0]


# -- row -> Instance -------------------------------------------------------------------------------------------
def _from_medvidbench(row: dict[str, Any], guard: PathGuard, fallback_id: str) -> Instance:
    qa_type = _qa_type(row)
    data_source = _data_source(row)
    question, answer = _conversation(row)
    metadata = row.get("metadata")
    if isinstance(metadata, str):  # some dumps store the metadata object as a JSON string
        try:
            metadata = json.loads(metadata)
        except (ValueError, RecursionError):  # JSONDecodeError, a 4300-digit int, nesting past the parser
            raise RowError(BAD_FIELD_TYPE, "metadata is a string that is not a JSON object") from None
        _check_values({"metadata": metadata})  # the decoded object follows the row's rules too
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise RowError(BAD_FIELD_TYPE, f"metadata must be an object, got {_short(metadata)}")
    meta_left = dict(metadata)
    extra: dict[str, Any] = {}
    is_image = qa_type in IMAGE_QA_TYPES

    fps, start, end = 1.0, 0, None
    fps_raw: Any = 1.0
    start_raw: Any = 0
    end_raw: Any = None
    if not is_image:
        fps_raw = metadata.get("fps")
        fps = _fps(fps_raw)
        meta_left.pop("fps", None)
        key, start_raw = _first(metadata, _META_START)
        if key is not None:
            start = _frame(start_raw, key) or 0
            meta_left.pop(key)
        else:
            key, t = _first(metadata, _META_START_TIME)
            if key is not None:
                start = _time_to_frame(t, key, fps)
            start_raw = start
        key, end_raw = _first(metadata, _META_END)
        if key is not None:
            end = _frame(end_raw, key)
            meta_left.pop(key)
        else:
            key, t = _first(metadata, _META_END_TIME)
            end = _time_to_frame(t, key, fps) if key is not None else None
            end_raw = end
        if end is not None and end < start:
            raise RowError(BAD_FRAME_RANGE, f"end frame {end} is before start frame {start}")

    video_id_raw = metadata.get("video_id")
    meta_left.pop("video_id", None)
    if video_id_raw is not None and not isinstance(video_id_raw, (str, int)):
        raise RowError(BAD_FIELD_TYPE, f"metadata.video_id must be a string, got {_short(video_id_raw)}")
    video_id = "" if video_id_raw is None else str(video_id_raw)

    rid = row.get("id")
    if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip():
        iid = str(rid)
    elif video_id and not is_image:
        # The raw metadata text is kept so ids match the authors' (and the leaderboard's) exactly ("1.0" vs 1.0).
        iid = sample_id(video_id, _id_part(start_raw, start), _id_part(end_raw, end),  # type: ignore[arg-type]
                        _id_part(fps_raw, fps))
    else:
        iid = fallback_id

    with _keyed(iid, qa_type):  # from here on a skipped row still takes its uid slot (see read_instances)
        video: Any = None
        image: Optional[str] = None
        if row.get("video") is not None:
            video = _video(row["video"], guard)
        if row.get("image") is not None:
            image = _image(row["image"], guard)
        if guard.require_media and is_image and image is None:
            raise RowError(MISSING_MEDIA, f"image task {qa_type} without `image`")
        if guard.require_media and not is_image and video is None:
            raise RowError(MISSING_MEDIA, f"video task {qa_type} without `video`")

        rc_box = None
        rc_info = row.get("RC_info")
        use_rc = _truthy(row["is_RC"]) if "is_RC" in row else bool(rc_info)
        if use_rc:
            if not isinstance(rc_info, dict) or not rc_info:
                raise RowError(BAD_RC_INFO, f"is_RC is set but RC_info is {_short(rc_info)}")
            box = _box(rc_info.get("start_frame_bbox"), "RC_info.start_frame_bbox")
            frame = _rc_frame(rc_info.get("start_frame"), video, start, guard)
            if video is not None:
                _check_rc_frame(frame, video, start, end)
            rc_box = (frame, box)

    struc_info = row.get("struc_info")
    if row.get("gnd") is not None:
        extra["gnd"] = row["gnd"]
    elif isinstance(struc_info, dict) and struc_info.get("gnd") is not None:
        extra["gnd"] = struc_info["gnd"]
    if meta_left:
        extra["metadata"] = meta_left
    for k, v in row.items():
        if k not in _RAW_KNOWN_KEYS:
            extra[k] = v
    return Instance(id=iid, qa_type=qa_type, data_source=data_source, question=question, answer=answer,
                    video=video, image=image, fps=fps, start_frame=start, end_frame=end, video_id=video_id,
                    struc_info=struc_info, rc_box=rc_box, extra=extra)


def _id_part(raw: Any, parsed: Any) -> Any:
    return raw if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else parsed


def _time_to_frame(value: Any, key: str, fps: float) -> int:
    try:
        t = _number(value)
    except ValueError:
        raise RowError(BAD_FRAME_RANGE, f"{key}={_short(value)} is not a time in seconds") from None
    if t < 0:
        raise RowError(BAD_FRAME_RANGE, f"{key}={_short(value)} is negative")
    frame = t * fps
    if frame > MAX_FRAME_INDEX:  # also catches t * fps overflowing to inf
        raise RowError(BAD_FRAME_RANGE, f"{key}={_short(value)} s is beyond frame {MAX_FRAME_INDEX} at {fps:g} fps")
    return int(round(frame))


def _from_instance_form(row: dict[str, Any], guard: PathGuard, fallback_id: str) -> Instance:
    qa_type = _qa_type(row)
    data_source = _data_source(row)
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RowError(MISSING_QUESTION, f"question must be a non-empty string, got {_short(question)}")
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise RowError(BAD_FIELD_TYPE, f"answer must be a string or null, got {_short(answer)}")
    fps = _fps(row.get("fps", 1.0))
    start = _frame(row.get("start_frame", 0), "start_frame") or 0
    end = _frame(row.get("end_frame"), "end_frame")
    if end is not None and end < start:
        raise RowError(BAD_FRAME_RANGE, f"end_frame {end} is before start_frame {start}")
    video_id = row.get("video_id") or ""
    if not isinstance(video_id, str):
        raise RowError(BAD_FIELD_TYPE, f"video_id must be a string, got {_short(video_id)}")
    video = _video(row["video"], guard) if row.get("video") is not None else None
    image = _image(row["image"], guard) if row.get("image") is not None else None
    is_image = qa_type in IMAGE_QA_TYPES
    if guard.require_media and is_image and image is None:
        raise RowError(MISSING_MEDIA, f"image task {qa_type} without `image`")
    if guard.require_media and not is_image and video is None:
        raise RowError(MISSING_MEDIA, f"video task {qa_type} without `video`")
    rc_box = None
    if row.get("rc_box") is not None:
        rc = row["rc_box"]
        if not isinstance(rc, (list, tuple)) or len(rc) != 2:
            raise RowError(BAD_RC_INFO, f"rc_box must be (frame, [x1, y1, x2, y2]), got {_short(rc)}")
        try:
            frame = _number(rc[0])
        except ValueError:
            raise RowError(BAD_RC_INFO, f"rc_box frame {_short(rc[0])} is not a number") from None
        box = _box(rc[1], "rc_box box")
        rc_frame = rc[0] if isinstance(rc[0], int) and not isinstance(rc[0], bool) else frame
        if video is not None:
            _check_rc_frame(int(rc_frame), video, start, end)
        rc_box = (rc_frame, box)
    extra = row.get("extra") or {}
    if not isinstance(extra, dict):
        raise RowError(BAD_FIELD_TYPE, f"extra must be an object, got {_short(extra)}")
    extra = dict(extra)
    for k, v in row.items():
        if k not in _INSTANCE_FIELDS:
            extra[k] = v
    rid = row.get("id")
    iid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip() else fallback_id
    return Instance(id=iid, qa_type=qa_type, data_source=data_source, question=question, answer=answer,
                    video=video, image=image, fps=fps, start_frame=start, end_frame=end, video_id=video_id,
                    struc_info=row.get("struc_info"), rc_box=rc_box, extra=extra)


def parse_row(row: Any, guard: PathGuard, fallback_id: str) -> Instance:
    """One row (either form) to an ``Instance``; raises ``RowError`` with a reason code if it is unusable."""
    if not isinstance(row, dict):
        raise RowError(NOT_AN_OBJECT, f"row is {type(row).__name__}, not an object")
    _check_values(row)
    if "conversations" not in row and "question" in row:
        return _from_instance_form(row, guard, fallback_id)
    return _from_medvidbench(row, guard, fallback_id)


# -- files -----------------------------------------------------------------------------------------------------
def detect_format(path: Path) -> str:
    """``json``, ``jsonl`` or ``parquet`` from the suffix, else from the first bytes."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_EXTENSIONS:
        return "parquet"
    if suffix in JSONL_EXTENSIONS:
        return "jsonl"
    if suffix == ".json":
        return "json"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        return "json"  # one object (keyed rows) or JSONL: _json_rows tells them apart
    raise DataFileError(f"{path}: not a JSON, JSONL or Parquet file (unknown suffix {suffix!r} and content)")


def _json_rows(path: Path) -> tuple[str, Iterator[tuple[Where, Any]]]:
    """(where_kind, rows) of a .json file: a list, an object keyed by row, one row, or JSONL misnamed .json."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not UTF-8 text ({e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: a JSONL file named .json
            return "line", _jsonl_rows(path)
        raise DataFileError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataFileError(f"{path}: JSON nested too deeply for the parser") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise DataFileError(f"{path}: unreadable JSON value ({e})") from None
    if isinstance(doc, list):
        return "index", iter(enumerate(doc))
    if isinstance(doc, dict) and doc and all(isinstance(v, dict) for v in doc.values()):
        return "key", iter(doc.items())  # rows keyed by index, as the authors' inference output
    if isinstance(doc, dict) and ("conversations" in doc or "qa_type" in doc):
        return "index", iter([(0, doc)])  # a file holding a single row
    kinds = sorted({type(v).__name__ for v in doc.values()}) if isinstance(doc, dict) else []
    raise DataFileError(f"{path}: top-level JSON must be a list of rows or an object mapping keys to rows; "
                        f"got {type(doc).__name__}" + (f" of {', '.join(kinds)}" if kinds else ""))


def _jsonl_rows(path: Path) -> Iterator[tuple[Where, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, BadRow(f"line is not UTF-8 ({e.reason})")
                continue
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, BadRow(f"invalid JSON at column {e.colno}: {e.msg}")
            except RecursionError:
                yield lineno, BadRow("JSON nested too deeply for the parser")
            except ValueError as e:  # an integer of more than 4300 digits
                yield lineno, BadRow(f"unreadable JSON value ({e})")


def read_instances(path: PathLike, data_roots: Optional[Sequence[PathLike]] = None, *,
                   require_media: bool = True) -> ReadResult:
    """Read a JSON list, JSONL or Parquet file of MedVidBench rows; see the module docstring.

    ``data_roots``: folders every media path must resolve into (default: the data file's folder).
    ``require_media=False``: media are neither confined to the roots nor required (readers that never open them).
    Every instance's ``uid`` is set (module docstring, "Unique keys").
    Raises ``DataFileError`` when the file cannot be read at all.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise DataFileError(f"{p}: no such file")
    if p.is_dir():
        raise DataFileError(f"{p}: is a directory, expected a JSON, JSONL or Parquet file")
    if not os.access(p, os.R_OK):
        raise DataFileError(f"{p}: permission denied")
    try:
        return _read(p, data_roots, require_media)
    except OSError as e:  # an I/O error mid-file: the file as a whole cannot be read
        raise DataFileError(f"{p}: read failed ({e.strerror or e})") from None


def _read(p: Path, data_roots: Optional[Sequence[PathLike]], require_media: bool = True) -> ReadResult:
    fmt = detect_format(p)
    guard = PathGuard(p.parent, data_roots, require_media=require_media)
    rows: Iterator[tuple[Where, Any]]
    if fmt == "parquet":
        from data.parquet import iter_parquet_rows

        kind, rows = "index", iter_parquet_rows(p)
    elif fmt == "jsonl":
        kind, rows = "line", _jsonl_rows(p)
    else:
        kind, rows = _json_rows(p)
    result = ReadResult(path=str(p), where_kind=kind)
    uids = UidAllocator()
    for where, row in rows:
        result.rows_seen += 1
        if isinstance(row, BadRow):
            result.skipped.append((where, BAD_JSON))
            result.details.append(row.detail)
            continue
        try:
            inst = parse_row(row, guard, fallback_id=f"{p.stem}#{where}")
        except RowError as e:
            result.skipped.append((where, e.reason))
            result.details.append(e.detail)
            key = e.key or _explicit_key(row)
            if key is not None:  # the skipped row keeps its slot: later repeats are numbered as in the file
                uids.assign(*key, _stored_uid(row))
            continue
        inst.uid = uids.assign(inst.id, inst.qa_type, _stored_uid(row))
        result.instances.append(inst)
    return result


def _explicit_key(row: Any) -> Optional[tuple[str, str]]:
    """(id, qa_type) of a row that names both explicitly (a valid qa_type), else None."""
    if not isinstance(row, dict):
        return None
    rid = row.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
        return None
    try:
        return str(rid), _qa_type(row)
    except RowError:
        return None


def _stored_uid(row: Any) -> Optional[str]:
    """The ``uid`` an Instance-form row carries (what ``data.parquet`` writes), else None."""
    if isinstance(row, dict) and "conversations" not in row and "question" in row:
        uid = row.get("uid")
        return uid if isinstance(uid, str) and uid else None
    return None
