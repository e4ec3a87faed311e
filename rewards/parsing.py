"""Lenient answer parsers, strict format checks, and ground-truth extraction for every task family.

Role: turn a model's output text, and an ``Instance``'s ground truth, into typed values for ``rewards/metrics.py``.

Contract. Every parser returns ``Parsed(value, reason, dropped)``: ``reason`` is None on success, else a short
code (see ``REASONS``); ``dropped`` counts items that were recognised but invalid (a reversed segment, a box
with x2 < x1) and skipped. Parsers never raise on any input: non-text input gives ``not_text``; every pattern is
linear-time (bounded gaps, numbers anchored by look-behinds) and the text is cut to ``MAX_CHARS`` after the
answer is extracted.

Rules shared by all parsers (documented here once):

* Answer extraction (``extract_answer``): the content of the last complete ``<answer>…</answer>``; else what
  follows an unclosed ``<answer>``; else what follows the last ``</think>``; an unclosed ``<think>`` with no
  answer gives the empty string; text without tags is taken whole.
* Unicode dashes/minus become ``-``, curly quotes become straight, NUL and all whitespace runs become one space.
* Times are seconds (``22``, ``22.5``, ``22s``, ``22 seconds``) or clock times (``1:05``, ``01:02:03``).
* Boxes are ``x1, y1, x2, y2`` in pixels (brackets/parentheses optional, either or both may be missing;
  space-separated only inside brackets). A box with x2 < x1 or y2 < y1 is invalid (``bad_box``).
  Normalised coordinates: a predicted box whose four values all lie in [0, 1] while the reference box has a
  value > 1 is read as fractions of the image and scaled by the image size when it is known
  (``scale_box``/``image_size_of``); 0–1000 coordinates are not guessed (indistinguishable from pixels).
* Segments: ``a-b``, ``a - b s``, ``a to b``, ``from a to b``, ``between a and b``, ``[a, b]``, ``(a, b)``;
  a segment with end < start is dropped (``bad_segment`` when nothing valid is left).
* Ground truth from ``struc_info`` takes numbers or numeric strings; a reference time that is negative, NaN,
  infinite or past float range, or a segment with start > end, is skipped like an unreadable item.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Generic, Iterator, Mapping, NamedTuple, Optional, Sequence, TypeVar

from data.schema import Instance

T = TypeVar("T")

MAX_CHARS = 32_768  # answer text beyond this is ignored (a degenerate generation; the answer is in the prefix)

REASONS: dict[str, str] = {
    "not_text": "the prediction is not a string",
    "empty": "nothing left after answer extraction and whitespace stripping",
    "no_segments": "no time segment found",
    "bad_segment": "segments found but none valid (end < start or not finite)",
    "no_boxes": "no box of four numbers found",
    "bad_box": "boxes found but none valid (x2 < x1, y2 < y1 or not finite)",
    "no_timestamps": "boxes found but none preceded by a time",
    "no_events": "no 'start-end: caption' event found",
    "bad_event": "events found but none with a valid segment",
    "missing_criterion": "a CVS criterion has no score",
    "bad_score": "a score outside its allowed range (CVS 0-2, skill 1-5)",
    "missing_aspect": "a skill-assessment aspect has no score",
    "no_label": "none of the allowed labels found",
    "ambiguous_label": "more than one allowed label found",
    "no_choice": "no option letter or option text found",
    "bad_choice": "an option letter outside the offered options",
    "ambiguous_choice": "more than one option found",
    "gt_missing": "the reference has no usable ground truth",
    "gt_ambiguous_action": "struc_info lists several actions and the question names none of them uniquely",
}

# Extra codes of the strict format checks (*_format / think_answer_problem), on top of the parse codes.
FORMAT_REASONS: dict[str, str] = {
    "extra_text": "the answer parses but has text outside the template",
    "empty_caption": "a dense-captioning event without a caption",
    "not_a_label": "the answer is not exactly one of the offered labels",
    "several_boxes": "more than one box where one is expected",
    "too_short": "a caption of fewer than three words",
    "unknown_family": "no format rule for this task family",
    "bad_tags": "not exactly <think>…</think><answer>…</answer> in that order",
    "text_outside_tags": "text before <think>, between the blocks, or after </answer>",
    "empty_answer": "an empty <answer> block",
}

# Canonical names, in the order the answers list them.
CVS_CRITERIA: tuple[str, ...] = ("two_structures", "cystic_plate", "hepatocystic_triangle")
SKILL_ASPECTS: tuple[str, ...] = ("Respect for tissue", "Suture/needle handling", "Time and motion",
                                  "Flow of operation", "Overall performance", "Quality of final product")


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """A parse result: ``value`` when ``reason`` is None, else a failure code; ``dropped`` invalid items skipped."""

    value: Optional[T] = None
    reason: Optional[str] = None
    dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None


Segment = tuple[float, float]
Box = tuple[float, float, float, float]


class Event(NamedTuple):
    """One dense-captioning event."""

    start: float
    end: float
    caption: str


class CvsScores(NamedTuple):
    two_structures: int
    cystic_plate: int
    hepatocystic_triangle: int

    @property
    def total(self) -> int:
        return self.two_structures + self.cystic_plate + self.hepatocystic_triangle


def _ok(value: T, dropped: int = 0) -> Parsed[T]:
    return Parsed(value, None, dropped)


def _fail(reason: str, dropped: int = 0) -> Parsed[Any]:
    return Parsed(None, reason, dropped)


# ----------------------------------------------------------------------------------------------------------
# Text preparation

_TAG_RE = re.compile(r"<\s{0,3}(/?)\s{0,3}(answer|think)\s{0,3}>", re.I)
_WS_RE = re.compile(r"\s+")
_TRANS = str.maketrans({**{c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"},
                        "\x00": " ", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


# Tags are '<' ... '>' with no '<' or '>' inside, so two matches never overlap and the set of matches does not
# depend on the scan direction: the last match of a tag is the first match of the mirrored pattern in the reversed
# text. extract_answer uses that to find the few tags it needs in C-speed searches, whatever the number of tags.
_ANSWER_CLOSE_RE = re.compile(r"<\s{0,3}/\s{0,3}answer\s{0,3}>", re.I)
_THINK_OPEN_RE = re.compile(r"<\s{0,6}think\s{0,3}>", re.I)
_REV_ANSWER_OPEN_RE = re.compile(r">\s{0,3}rewsna\s{0,6}<", re.I)
_REV_ANSWER_CLOSE_RE = re.compile(r">\s{0,3}rewsna\s{0,3}/\s{0,3}<", re.I)
_REV_THINK_CLOSE_RE = re.compile(r">\s{0,3}kniht\s{0,3}/\s{0,3}<", re.I)


def extract_answer(text: str) -> str:
    """The answer part of a generation (see the module docstring for the rule).

    Scanning the tags in order, a ``</answer>`` closes the latest unclosed ``<answer>``; the result is the last
    such pair, i.e. the last ``<answer>`` that has a ``</answer>`` after it, up to the first ``</answer>`` after it.
    Found with a bounded number of searches (see ``_REV_*``), so a generation of 10^5 tags costs milliseconds.
    """
    n = len(text)
    rev = text[::-1]

    def last(rx: re.Pattern[str], end: int = n) -> Optional[tuple[int, int]]:
        """(start, end) in ``text`` of the last match of the mirrored pattern ``rx`` ending at or before ``end``."""
        m = rx.search(rev, n - end)
        return None if m is None else (n - m.end(), n - m.start())

    close = last(_REV_ANSWER_CLOSE_RE)
    if close is not None:
        opening = last(_REV_ANSWER_OPEN_RE, close[0])
        if opening is not None:
            first_close = _ANSWER_CLOSE_RE.search(text, opening[1], close[1])  # finds `close` at the latest
            return text[opening[1]:first_close.start() if first_close else close[0]]
    opening = last(_REV_ANSWER_OPEN_RE)
    if opening is not None:
        return text[opening[1]:]
    think_close = last(_REV_THINK_CLOSE_RE)
    if think_close is not None:
        return text[think_close[1]:]
    if _THINK_OPEN_RE.search(text):
        return ""
    return text


def _as_text(text: Any) -> Optional[str]:
    """A generation as ``str`` (bytes decoded, invalid UTF-8 replaced); None for anything that is not text."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace")
    return text if isinstance(text, str) else None


def answer_text(text: Any) -> str:
    """The answer part of a generation as the caption judge and the similarity model compare it with the reference
    (training reward and leaderboard alike): ``extract_answer``, cut to MAX_CHARS, stripped; "" for non-text."""
    text = _as_text(text)
    return "" if text is None else extract_answer(text)[:MAX_CHARS].strip()


def prepare_answer(text: Any) -> tuple[str, Optional[str]]:
    """(normalised answer text, None) or ("", reason): bytes are decoded (invalid UTF-8 replaced), the answer is
    extracted, cut to MAX_CHARS, dashes/quotes normalised and whitespace collapsed."""
    text = _as_text(text)
    if text is None:
        return "", "not_text"
    text = extract_answer(text)[:MAX_CHARS].translate(_TRANS)
    text = _WS_RE.sub(" ", text).strip()
    return (text, None) if text else ("", "empty")


def _num(s: Optional[str]) -> Optional[float]:
    if s is None:
        return None
    try:
        v = float(s)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _to_float(x: Any) -> Optional[float]:
    """A finite float from a number or numeric string (struc_info values are often strings), else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        try:
            v = float(x)
        except OverflowError:  # an int beyond float range (JSON allows 4300 digits)
            return None
        return v if math.isfinite(v) else None
    if isinstance(x, str):
        return _num(x.strip())
    return None


def _seconds(tok: str) -> Optional[float]:
    if ":" not in tok:
        return _num(tok)
    total = 0.0
    for part in tok.split(":"):
        v = _num(part)
        if v is None:
            return None
        total = total * 60.0 + v
    return total


# ----------------------------------------------------------------------------------------------------------
# Shared patterns (applied to whitespace-collapsed text, so a single optional space ` ?` is enough)

_NUM = r"(?<![0-9.])[0-9]+(?:\.[0-9]+)?"
_SNUM = rf"(?<![0-9.])-?{_NUM}"
_CLOCK = r"(?<![0-9.:])(?:[0-9]{1,2}:)?[0-9]{1,3}:[0-9]{2}(?:\.[0-9]+)?(?![0-9])"
_TIME = rf"(?:{_CLOCK}|{_NUM})"
_UNIT = r"(?:seconds?|secs?|s)\b"
_UOPT = rf"(?: ?{_UNIT})?"

_SEG_RE = re.compile(
    rf"\[ ?({_TIME}){_UOPT} ?[,;-] ?({_TIME}){_UOPT} ?\]"
    rf"|\( ?({_TIME}){_UOPT} ?[,;-] ?({_TIME}){_UOPT} ?\)"
    rf"|\bbetween ({_TIME}){_UOPT} and ({_TIME})"
    rf"|({_TIME}){_UOPT} ?(?:-{{1,2}}|~|\bto\b|\buntil\b|\btill\b|\bthrough\b) ?({_TIME})",
    re.I,
)
_SEP = r" ?[,;] ?"
_BOX_RE = re.compile(
    rf"[\[(]? ?({_SNUM}){_SEP}({_SNUM}){_SEP}({_SNUM}){_SEP}({_SNUM}) ?[\])]?"
    rf"|[\[(] ?({_SNUM}) ({_SNUM}) ({_SNUM}) ({_SNUM}) ?[\])]"
)
_TMARK_RE = re.compile(rf"(\bt ?= ?|\btime ?[:=]? ?|\bat )?({_TIME})( ?{_UNIT})?( ?:)?", re.I)
_HDR_TAIL_RE = re.compile(rf"(?: ?{_UNIT})? ?[:-]", re.I)


def _groups(m: re.Match[str], width: int) -> list[str]:
    """The groups of whichever alternative matched (every alternative has ``width`` groups)."""
    g = m.groups()
    for i in range(0, len(g), width):
        if g[i] is not None:
            return list(g[i:i + width])  # type: ignore[arg-type]
    return []


def _seg_matches(text: str) -> Iterator[tuple[re.Match[str], Optional[Segment]]]:
    """Every segment-looking match with its segment, or None when invalid (end < start / not finite)."""
    for m in _SEG_RE.finditer(text):
        a, b = (_seconds(x) for x in _groups(m, 2))
        yield m, ((a, b) if a is not None and b is not None and b >= a else None)


def _box_from(vals: Sequence[str]) -> Optional[Box]:
    nums = [_num(v) for v in vals]
    if any(v is None for v in nums):
        return None
    x1, y1, x2, y2 = nums  # type: ignore[misc]
    if x2 < x1 or y2 < y1:  # type: ignore[operator]
        return None
    return (x1, y1, x2, y2)  # type: ignore[return-value]


def _box_matches(text: str) -> Iterator[tuple[re.Match[str], Optional[Box]]]:
    for m in _BOX_RE.finditer(text):
        yield m, _box_from(_groups(m, 4))


# ----------------------------------------------------------------------------------------------------------
# Parsers of model output


def parse_segments(text: Any) -> Parsed[list[Segment]]:
    """TAG answer -> time segments in order of appearance (``22.0-78.0, 89.0-94.0 seconds.``)."""
    t, r = prepare_answer(text)
    if r:
        return _fail(r)
    segs: list[Segment] = []
    dropped = 0
    for _, seg in _seg_matches(t):
        if seg is None:
            dropped += 1
        else:
            segs.append(seg)
    if not segs:
        return _fail("bad_segment" if dropped else "no_segments", dropped)
    return _ok(segs, dropped)


def _time_before(gap: str) -> Optional[float]:
    """The time that labels the box following ``gap``: the last number marked as a time (``t=``, ``at``, a
    seconds unit) or else the last number followed by a colon, or else the last number."""
    best: Optional[tuple[int, float]] = None
    for m in _TMARK_RE.finditer(gap):
        v = _seconds(m.group(2))
        if v is None:
            continue
        prio = 2 if (m.group(1) or m.group(3)) else (1 if m.group(4) else 0)
        if best is None or prio >= best[0]:
            best = (prio, v)
    return best[1] if best else None


def parse_stg(text: Any) -> Parsed[dict[float, Box]]:
    """STG answer -> {time in seconds: box}, sorted by time (``1.0 seconds: [x1, y1, x2, y2] 5.0 seconds: ...``).

    Each box takes the time written between the previous box and itself. A box with no time, an invalid box,
    or a repeated time (the first one is kept) is dropped and counted.
    """
    t, r = prepare_answer(text)
    if r:
        return _fail(r)
    out: dict[float, Box] = {}
    dropped = n_boxes = n_valid = 0
    prev_end = 0
    for m, box in _box_matches(t):
        n_boxes += 1
        time = _time_before(t[prev_end:m.start()])
        prev_end = m.end()
        if box is not None:
            n_valid += 1
        if box is None or time is None or time in out:
            dropped += 1
            continue
        out[time] = box
    if not out:
        reason = "no_boxes" if n_boxes == 0 else ("bad_box" if n_valid == 0 else "no_timestamps")
        return _fail(reason, dropped)
    return _ok(dict(sorted(out.items())), dropped)


def parse_box(text: Any) -> Parsed[Box]:
    """Image grounding answer -> the first valid box (``[x1, y1, x2, y2]``, also inside JSON like bbox_2d)."""
    t, r = prepare_answer(text)
    if r:
        return _fail(r)
    dropped = 0
    for _, box in _box_matches(t):
        if box is None:
            dropped += 1
        else:
            return _ok(box, dropped)
    return _fail("bad_box" if dropped else "no_boxes", dropped)


_CAPTION_STRIP = " .,;:-"


def parse_events(text: Any) -> Parsed[list[Event]]:
    """DVC answer -> events ``start-end seconds: caption``, one per header, in order of appearance.

    Headers are segments followed by ``:`` (or ``-``); a caption runs to the next header,
    so time ranges inside a caption without a colon stay in the caption. Without any such header, every
    segment starts an event. Events with an invalid segment are dropped and counted.
    """
    t, r = prepare_answer(text)
    if r:
        return _fail(r)
    return _events(t)[0]


def _event_headers(t: str) -> list[tuple[re.Match[str], Optional[Segment], int]]:
    """(segment match, segment or None, caption start) of every event header, in order."""
    allm = list(_seg_matches(t))
    headers = []
    for m, seg in allm:
        tail = _HDR_TAIL_RE.match(t, m.end())
        if tail is not None:
            headers.append((m, seg, tail.end()))
    return headers or [(m, seg, m.end()) for m, seg in allm]


def _events(t: str) -> tuple[Parsed[list[Event]], str]:
    """The events of prepared text, and the text before the first header (for the strict format check)."""
    headers = _event_headers(t)
    if not headers:
        return _fail("no_events"), t
    events: list[Event] = []
    dropped = 0
    for i, (_, seg, cap_start) in enumerate(headers):
        cap_end = headers[i + 1][0].start() if i + 1 < len(headers) else len(t)
        if seg is None:
            dropped += 1
            continue
        events.append(Event(seg[0], seg[1], t[cap_start:cap_end].strip(_CAPTION_STRIP)))
    preamble = t[:headers[0][0].start()].strip(_CAPTION_STRIP)
    return (_ok(events, dropped) if events else _fail("bad_event", dropped)), preamble


_CVS_KEYS = {
    "two_structures": r"(?:two|2) (?:tubular )?structures?",
    "cystic_plate": r"cystic plate",
    "hepatocystic_triangle": r"hepato-? ?cystic triangle|calot'?s triangle",
}
_CVS_RE = {k: re.compile(rf"(?:{p})[^0-9,;]{{0,40}}?({_NUM})(?: ?(?:/|out of) ?2\b)?", re.I)
           for k, p in _CVS_KEYS.items()}
_CVS_BARE_RE = re.compile(rf"^({_NUM})[ ,;/]+({_NUM})[ ,;/]+({_NUM})\.?$")


def _int_in(v: Optional[float], lo: int, hi: int) -> Optional[int]:
    if v is None or v != int(v) or not lo <= v <= hi:
        return None
    return int(v)


def _cvs_scan(t: str) -> tuple[dict[str, Optional[int]], list[tuple[int, int]]]:
    """criterion -> score (None when out of range), and the matched spans; absent criteria are absent keys."""
    found: dict[str, Optional[int]] = {}
    spans: list[tuple[int, int]] = []
    for key, rx in _CVS_RE.items():
        m = rx.search(t)
        if m is not None:
            found[key] = _int_in(_num(m.group(1)), 0, 2)
            spans.append(m.span())
    return found, spans


def parse_cvs(text: Any) -> Parsed[CvsScores]:
    """CVS answer -> three criterion scores 0-2 (``Two structures: 2, Cystic plate: 1, Hepatocystic triangle: 0``).

    Also accepts a bare ``2, 1, 0`` in that order. A score outside 0-2 is ``bad_score``.
    """
    t, r = prepare_answer(text)
    if r:
        return _fail(r)
    found, _ = _cvs_scan(t)
    if not found:
        m = _CVS_BARE_RE.match(t)
        if m:
            found = {k: _int_in(_num(g), 0, 2) for k, g in zip(CVS_CRITERIA, m.groups())}
    if len(found) < len(CVS_CRITERIA):
        return _fail("missing_criterion")
    if any(v is None for v in found.values()):
        return _fail("bad_score")
    return _ok(CvsScores(*(found[k] for k in CVS_CRITERIA)))  # type: ignore[arg-type]


_SA_KEYS = {
    "Respect for tissue": r"respect (?:for )?(?:the )?tissues?",
    "Suture/needle handling": r"(?:suture ?(?:/|and|&|or|-)? ?needle|suture|needle) handling",
    "Time and motion": r"time (?:and|&) motion",
    "Flow of operation": r"flow(?: of (?:the )?operations?)?",
    "Overall performance": r"overall(?: performance)?",
    "Quality of final product": r"quality(?: of (?:the )?final product)?",
}
_SA_RE = {k: re.compile(rf"\b(?:{p})[^0-9,;]{{0,20}}?({_NUM})(?: ?(?:/|out of) ?5\b)?", re.I)
          for k, p in _SA_KEYS.items()}
_SA_BARE_RE = re.compile(rf"({_NUM}) ?(?:/|out of) ?5\b")


def _sa_scan(t: str) -> tuple[dict[str, Optional[float]], list[tuple[int, int]]]:
    found: dict[str, Optional[float]] = {}
    spans: list[tuple[int, int]] = []
    for key, rx in _SA_RE.items():
        m = rx.search(t)
        if m is not None:
            v = _num(m.group(1))
            found[key] = v if v is not None and 1.0 <= v <= 5.0 else None
            spans.append(m.span())
    return found, spans


def parse_skill(text: Any) -> Parsed[dict[str, float]]:
    """Skill-assessment answer -> {aspect: score 1-5} for the six aspects of ``SKILL_ASPECTS``.

    Also accepts exactly six bare ``n/5`` scores, read in the canonical aspect order.
    """
    t, r = prepare_answer(text)
    if r:
        return _fail(r)
    found, _ = _sa_scan(t)
    if not found:
        bare = [_num(m.group(1)) for m in _SA_BARE_RE.finditer(t)]
        if len(bare) == len(SKILL_ASPECTS):
            found = {k: (v if v is not None and 1.0 <= v <= 5.0 else None) for k, v in zip(SKILL_ASPECTS, bare)}
    if len(found) < len(SKILL_ASPECTS):
        return _fail("missing_aspect")
    if any(v is None for v in found.values()):
        return _fail("bad_score")
    return _ok({k: float(found[k]) for k in SKILL_ASPECTS})  # type: ignore[arg-type]


_NONWORD_RE = re.compile(r"[\W_]+")


def normalize_label(s: Any) -> str:
    """Lower case, every run of non-alphanumerics to one space (``'Suture/Needle_handling.'`` -> ``'suture needle handling'``)."""
    if not isinstance(s, str):
        return ""
    return _NONWORD_RE.sub(" ", s[:MAX_CHARS].lower()).strip()


_LIST_RE = re.compile(r"\[([^\[\]]{0,4000})\]")
_QUOTED_RE = re.compile(r"'([^'\n]{0,200})'|\"([^\"\n]{0,200})\"")


def labels_from_question(question: Any) -> list[str]:
    """The label list a question offers, e.g. ``['cutting', 'tying', 'suturing']`` -> three labels (first list
    of quoted strings in brackets); [] when the question has none."""
    if not isinstance(question, str):
        return []
    q = question[:MAX_CHARS].translate(_TRANS)
    for m in _LIST_RE.finditer(q):
        items = [a or b for a, b in _QUOTED_RE.findall(m.group(1))]
        items = [x.strip() for x in items if x.strip()]
        if items:
            return items
    return []


def _pick_label(norm: str, labels: Sequence[str]) -> Parsed[str]:
    table: dict[str, str] = {}
    for lab in labels:
        n = normalize_label(lab)
        if n and n not in table:
            table[n] = lab
    if norm in table:
        return _ok(table[norm])
    # Longest labels first; each found label is blanked out so a label inside it no longer counts.
    text = f" {norm} "
    found: list[str] = []
    for n in sorted(table, key=len, reverse=True):
        text, k = re.subn(rf"(?<= ){re.escape(n)}(?= )", "|", text)
        if k:
            found.append(table[n])
    if len(found) == 1:
        return _ok(found[0])
    return _fail("ambiguous_label" if found else "no_label")


def parse_label(text: Any, labels: Optional[Sequence[str]] = None) -> Parsed[str]:
    """A label answer (next action, image class) -> one of ``labels`` (returned as given there).

    Exact match after ``normalize_label``; else the one label mentioned in the text as whole words (a label
    inside a longer mentioned label does not count); several -> ``ambiguous_label``. Without ``labels`` the
    normalised text itself is returned.
    """
    t, r = prepare_answer(text)
    if r:
        return _fail(r)
    norm = normalize_label(t)
    if not norm:
        return _fail("empty")
    if not labels:
        return _ok(norm)
    return _pick_label(norm, labels)


_LETTER_PREFIX_RE = re.compile(r"^\(?[A-Za-z][.):]\s*")


def choice_texts(choices: Any) -> list[str]:
    """Option texts without their ``A.``/``(A)`` prefixes, from a list or a ``{letter: text}`` dict."""
    if isinstance(choices, Mapping):
        items = [choices[k] for k in sorted(choices, key=str)]
    elif isinstance(choices, (list, tuple)):
        items = list(choices)
    else:
        return []
    return [_LETTER_PREFIX_RE.sub("", x.strip()) if isinstance(x, str) else str(x) for x in items]


_MC_BARE_RE = re.compile(r"^(?:(?:the )?(?:correct |final )?answer(?: is)? ?:? ?)?[*(\[ ]{0,3}(?:option |choice )?"
                         r"([A-Za-z])[*)\] ]{0,3}[.:)]?[* ]{0,2}$", re.I)
_MC_CUE_RE = re.compile(r"\b(?i:answer|option|choice)(?: (?i:is))?(?: (?i:option))? ?:? ?[*(\[]{0,2}([A-Z])\b")
_MC_LEAD_RE = re.compile(r"^[*]{0,2}\(?([A-Z])(?:[.):]|\)|\*\*)")
_MC_PAREN_RE = re.compile(r"\(([A-Z])\)")
_MC_LAST_RE = re.compile(r"(?<![\w'])([A-Z])[*.!)]{0,3}$")


def _letters(choices: Any) -> str:
    n = len(choice_texts(choices))
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n] if n else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _choice_strict(t: str, allowed: str, texts: list[str]) -> Optional[str]:
    """A letter from the strict forms only: bare letter, ``B.``/``(B) text`` prefix, or exactly an option text."""
    m = _MC_BARE_RE.match(t) or _MC_LEAD_RE.match(t)
    if m:
        return m.group(1).upper()
    norm = normalize_label(t)
    for i, txt in enumerate(texts):
        if norm and norm == normalize_label(txt):
            return allowed[i] if i < len(allowed) else None
    return None


def parse_choice(text: Any, choices: Any = None) -> Parsed[str]:
    """Multiple-choice answer -> option letter. Accepts, in this order: ``B``, ``(B)``, ``B.``, ``B. text``,
    ``Answer: B`` / ``the answer is (B)`` (the last such cue), a ``(B)`` in prose (several different ones:
    ``ambiguous_choice``), a capital letter ending the text (``I think it's B.``), or the option text itself
    (exact, else the one option text mentioned). Letters beyond the offered options are ``bad_choice``."""
    t, r = prepare_answer(text)
    if r:
        return _fail(r)
    texts = choice_texts(choices)
    allowed = _letters(choices)
    if len(set(_MC_PAREN_RE.findall(t))) > 1:
        return _fail("ambiguous_choice")
    letter = _choice_strict(t, allowed, texts)
    if letter is None:
        cues = _MC_CUE_RE.findall(t)
        if cues:
            letter = cues[-1]
    if letter is None:
        parens = _MC_PAREN_RE.findall(t)
        if parens:
            letter = parens[0]
    if letter is None:
        m = _MC_LAST_RE.search(t)
        letter = m.group(1) if m else None
    if letter is None and texts:
        picked = _pick_label(normalize_label(t), texts)
        if picked.ok:
            letter = allowed[texts.index(picked.value)]  # type: ignore[arg-type]
        elif picked.reason == "ambiguous_label":
            return _fail("ambiguous_choice")
    if letter is None:
        return _fail("no_choice")
    if letter not in allowed:
        return _fail("bad_choice")
    return _ok(letter)


# ----------------------------------------------------------------------------------------------------------
# Strict format checks (the MedGRPO format gate) and the <think>/<answer> tag check

_TAG_FILLER_RE = re.compile(rf"\b(?:{_UNIT}|and|from|between|to)(?![\w])|[ ,.;:\[\]()]", re.I)
_STG_FILLER_RE = re.compile(rf"(?:\bt ?= ?|\bat )?{_TIME}(?: ?{_UNIT})?(?: ?:)?|[ ,.;]", re.I)
_PUNCT_FILLER_RE = re.compile(r"[ ,.;:\-]")
_MIN_CAPTION_WORDS = 3
_MAX_FREE_LABEL_WORDS = 8


def _residue(t: str, spans: Sequence[tuple[int, int]], filler: re.Pattern[str]) -> str:
    parts, pos = [], 0
    for s, e in sorted(spans):
        if s >= pos:
            parts.append(t[pos:s])
            pos = e
    parts.append(t[pos:])
    return filler.sub("", " ".join(parts))


# Strict format checks, one per answer layout, on the prepared answer text (``prepare_answer``). Each returns None
# when the text follows the layout strictly, else a reason code. Strict means: the answer parses, nothing is
# dropped, and nothing but the structured items and their filler (units, separators, the template's keys) is left.
# ``rewards.tasks.format_problem`` picks the check of an instance's task family.


def _only_items(t: str, p: Parsed[Any], bad: str, spans: Sequence[tuple[int, int]],
                filler: re.Pattern[str]) -> Optional[str]:
    """The parse failed, dropped an item (``bad``), or left text beside the items and their filler."""
    if not p.ok:
        return p.reason
    if p.dropped:
        return bad
    return "extra_text" if _residue(t, spans, filler) else None


def segments_format(t: str) -> Optional[str]:
    """tag: segments only."""
    return _only_items(t, parse_segments(t), "bad_segment", [m.span() for m, _ in _seg_matches(t)], _TAG_FILLER_RE)


def stg_format(t: str) -> Optional[str]:
    """stg: every box has a time, nothing else."""
    return _only_items(t, parse_stg(t), "bad_box", [m.span() for m, _ in _box_matches(t)], _STG_FILLER_RE)


def events_format(t: str) -> Optional[str]:
    """dvc: no preamble, every event has a caption."""
    p, preamble = _events(t)
    if not p.ok:
        return p.reason
    if p.dropped:
        return "bad_event"
    if preamble:
        return "extra_text"
    return "empty_caption" if any(not e.caption for e in p.value or []) else None


def _template_format(t: str, p: Parsed[Any], scan: Any) -> Optional[str]:
    """The parse failed, or text is left beside the template's keys and scores (``scan``: their spans)."""
    if not p.ok:
        return p.reason
    _, spans = scan(t)
    return "extra_text" if _residue(t, spans, _PUNCT_FILLER_RE) else None


def cvs_format(t: str) -> Optional[str]:
    """cvs: the template's keys with valid scores only."""
    return _template_format(t, parse_cvs(t), _cvs_scan)


def skill_format(t: str) -> Optional[str]:
    """sa: the template's keys with valid scores only."""
    return _template_format(t, parse_skill(t), _sa_scan)


def label_format(t: str, labels: Optional[Sequence[str]] = None) -> Optional[str]:
    """nap/cls: exactly one offered label (without a label list: at most 8 words)."""
    norm = normalize_label(t)
    if not norm:
        return "empty"
    if labels:
        return None if norm in {normalize_label(x) for x in labels} else "not_a_label"
    return None if len(norm.split()) <= _MAX_FREE_LABEL_WORDS else "extra_text"


def choice_format(t: str, choices: Any = None) -> Optional[str]:
    """vqa: a bare letter, ``B. text``, or exactly an option text."""
    p = parse_choice(t, choices)
    if not p.ok:
        return p.reason
    return None if _choice_strict(t, _letters(choices), choice_texts(choices)) is not None else "extra_text"


def box_format(t: str) -> Optional[str]:
    """box: exactly one valid box."""
    boxes = list(_box_matches(t))
    if not boxes:
        return "no_boxes"
    if any(b is None for _, b in boxes):
        return "bad_box"
    return None if len(boxes) == 1 else "several_boxes"


def caption_format(t: str) -> Optional[str]:
    """vs/rc: at least three words."""
    return None if len(t.split()) >= _MIN_CAPTION_WORDS else "too_short"


def parse_caption(text: Any) -> Parsed[str]:
    """A free-text answer: its prepared answer part, or the reason there is none."""
    t, r = prepare_answer(text)
    return _fail(r) if r else _ok(t)


def think_answer_problem(text: Any) -> Optional[str]:
    """None when ``text`` is exactly ``<think>…</think><answer>…</answer>`` (whitespace around allowed, one
    of each tag, a non-empty answer), else a reason code."""
    text = _as_text(text)
    if text is None:
        return "not_text"
    tags = [(m.group(2).casefold(), m.group(1) == "/", m.start(), m.end())
            for m in itertools.islice(_TAG_RE.finditer(text), 5)]  # a fifth tag already fails
    if [(n, c) for n, c, _, _ in tags] != [("think", False), ("think", True), ("answer", False), ("answer", True)]:
        return "bad_tags"
    (_, _, s0, _), (_, _, _, e1), (_, _, s2, e2), (_, _, s3, e3) = tags
    if text[:s0].strip() or text[e1:s2].strip() or text[e3:].strip():
        return "text_outside_tags"
    if not text[e2:s3].strip():
        return "empty_answer"
    return None


# ----------------------------------------------------------------------------------------------------------
# Ground truth from an Instance: struc_info in every real shape, falling back to the answer text, then extra["gnd"]


def _fallback_texts(inst: Instance) -> list[str]:
    out = []
    if isinstance(inst.answer, str) and inst.answer.strip():
        out.append(inst.answer)
    gnd = inst.extra.get("gnd") if isinstance(inst.extra, dict) else None
    if isinstance(gnd, str) and gnd.strip():
        out.append(gnd)
    return out


def _structured(inst: Instance) -> list[Any]:
    """struc_info, then a structured extra['gnd'] (non-empty ones only)."""
    out = []
    if inst.struc_info not in (None, {}, [], ""):
        out.append(inst.struc_info)
    gnd = inst.extra.get("gnd") if isinstance(inst.extra, dict) else None
    if isinstance(gnd, (dict, list)) and gnd:
        out.append(gnd)
    return out


def _from_text(inst: Instance, parser: Any, *args: Any) -> Parsed[Any]:
    last: Parsed[Any] = _fail("gt_missing")
    for txt in _fallback_texts(inst):
        p = parser(txt, *args)
        if p.ok:
            return p
        last = p
    r = last.reason or "gt_missing"
    return _fail(r if r.startswith("gt_") else "gt_missing" if r == "empty" else f"gt_{r}")


def _pair(x: Any) -> Optional[Segment]:
    """A reference segment (seconds): 0 <= start <= end, both finite; else None."""
    if isinstance(x, Mapping):
        a = _to_float(x.get("start", x.get("start_time", x.get("begin"))))
        b = _to_float(x.get("end", x.get("end_time", x.get("stop"))))
    elif isinstance(x, (list, tuple)) and len(x) == 2:
        a, b = _to_float(x[0]), _to_float(x[1])
    else:
        return None
    return (a, b) if a is not None and b is not None and 0.0 <= a <= b else None


_NAME_KEYS = ("action", "label", "name", "phase", "event", "step")
_SPAN_KEYS = ("spans", "segments", "timestamps", "windows")


def _item_spans(item: Any) -> Optional[list[Segment]]:
    if isinstance(item, Mapping):
        for k in _SPAN_KEYS:
            if isinstance(item.get(k), (list, tuple)):
                spans = [p for p in (_pair(x) for x in item[k]) if p is not None]
                return spans
        p = _pair(item)
        return [p] if p is not None else None
    p = _pair(item)
    return [p] if p is not None else None


def _item_name(item: Any) -> Optional[str]:
    if isinstance(item, Mapping):
        for k in _NAME_KEYS:
            if isinstance(item.get(k), str) and item[k].strip():
                return item[k].strip()
    return None


def _last_sentence(q: str) -> str:
    parts = [p for p in re.split(r"(?<=[.?!])\s", q.strip()) if p.strip()]
    return parts[-1] if parts else q


def gt_segments(inst: Instance) -> Parsed[list[Segment]]:
    """TAG ground truth: struc_info (list of per-action dicts with ``spans`` [{start, end}], or a dict with
    ``spans``/``segments``, or a start/end dict) else the answer text, else extra['gnd'].

    Several differently named actions in struc_info: the answer text decides when it parses; otherwise the
    one action named in the question's last sentence; otherwise ``gt_ambiguous_action``.
    """
    for s in _structured(inst):
        items = s if isinstance(s, list) else [s]
        per_item = [(_item_name(it), _item_spans(it)) for it in items]
        per_item = [(n, sp) for n, sp in per_item if sp]
        if not per_item:
            continue
        names = {n.lower() for n, _ in per_item if n}
        if len(names) <= 1:
            return _ok([seg for _, sp in per_item for seg in sp])
        from_text = _from_text(inst, parse_segments)
        if from_text.ok:
            return from_text
        last = _last_sentence(inst.question or "").lower()
        named = [(n, sp) for n, sp in per_item if n and n.lower() in last]
        if len({n.lower() for n, _ in named}) == 1:
            return _ok([seg for _, sp in named for seg in sp])
        return _fail("gt_ambiguous_action")
    return _from_text(inst, parse_segments)


_MAX_DEPTH = 4  # how deep the struc_info wrappers below are followed (lists of lists of dicts, ...)


def _as_box(x: Any, depth: int = 0) -> Optional[Box]:
    if depth > _MAX_DEPTH:
        return None
    if isinstance(x, Mapping):
        for k in ("bbox", "box", "bbox_2d"):
            if k in x:
                return _as_box(x[k], depth + 1)
        return None
    if isinstance(x, (list, tuple)) and len(x) == 1 and isinstance(x[0], (list, tuple, Mapping)):
        return _as_box(x[0], depth + 1)
    if isinstance(x, (list, tuple)) and len(x) == 4:
        v = [_to_float(c) for c in x]
        if any(c is None for c in v):
            return None
        x1, y1, x2, y2 = v  # type: ignore[misc]
        return (x1, y1, x2, y2) if x2 >= x1 and y2 >= y1 else None  # type: ignore[operator,return-value]
    if isinstance(x, str):
        p = parse_box(x)
        return p.value if p.ok else None
    return None


def _bbox_dict(x: Any) -> Optional[dict[float, Box]]:
    if not isinstance(x, Mapping):
        return None
    out: dict[float, Box] = {}
    for k, v in x.items():
        t, b = _to_float(k), _as_box(v)
        if t is not None and t >= 0.0 and b is not None:
            out[t] = b
    return dict(sorted(out.items())) if out else None


def gt_stg_boxes(inst: Instance) -> Parsed[dict[float, Box]]:
    """STG ground truth {time: box}: struc_info's first item's ``bbox_dict`` (keys ``f"{t:.1f}"``), or a dict
    with ``bbox_dict``, else the answer text, else extra['gnd']."""
    for s in _structured(inst):
        first = s[0] if isinstance(s, list) and s else s
        if isinstance(first, Mapping):
            d = _bbox_dict(first.get("bbox_dict")) if "bbox_dict" in first else _bbox_dict(first)
            if d:
                return _ok(d)
    return _from_text(inst, parse_stg)


_CAPTION_KEYS = ("caption", "description", "sentence", "text", "event")
_EVENT_LIST_KEYS = ("events", "dc_segments")


def _event_items(x: Any, depth: int = 0) -> list[Mapping[str, Any]]:
    """The event-like dicts of a struc_info value: a list of events, a list holding such lists (``[[…]]``), dicts
    holding them under ``events``/``dc_segments`` (``[{"dc_segments": […]}]``), or one event dict."""
    if depth > _MAX_DEPTH:
        return []
    if isinstance(x, Mapping):
        for k in _EVENT_LIST_KEYS:
            if isinstance(x.get(k), (list, tuple)):
                return _event_items(x[k], depth + 1)
        return [x]
    if isinstance(x, (list, tuple)):
        return [it for item in x for it in _event_items(item, depth + 1)]
    return []


def gt_events(inst: Instance) -> Parsed[list[Event]]:
    """DVC ground truth: the events {start, end (or segment/timestamp [s, e]), caption} of struc_info — a list of
    them, ``[[events]]``, ``[{"dc_segments": events}]`` or ``{"events": events}`` — else the answer text."""
    for s in _structured(inst):
        events = []
        for it in _event_items(s):
            seg = _pair(it) or next((_pair(it[k]) for k in ("segment", "timestamp", "span", "time")
                                     if k in it and _pair(it[k])), None)
            cap = next((it[k] for k in _CAPTION_KEYS if isinstance(it.get(k), str)), "")
            if seg is not None:
                events.append(Event(seg[0], seg[1], cap.strip()))
        if events:
            return _ok(events)
    return _from_text(inst, parse_events)


_CVS_WRAPPERS = ("cvs_scores", "cvs", "scores")


def _cvs_value(x: Any, depth: int = 0) -> Optional[CvsScores]:
    """CVS scores from a struc_info value: a dict keyed by the criteria (structure/plate/triangle), such a dict
    under ``cvs_scores``/``cvs``/``scores``, three bare scores in answer order, or a list holding one of these."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(x, Mapping):
        vals: dict[str, Optional[int]] = {}
        for k, v in x.items():
            kl = normalize_label(k)
            crit = ("two_structures" if "structure" in kl else "cystic_plate" if "plate" in kl
                    else "hepatocystic_triangle" if "triangle" in kl else None)
            if crit:
                vals[crit] = _int_in(_to_float(v), 0, 2)
        if len(vals) == 3 and all(v is not None for v in vals.values()):
            return CvsScores(*(vals[k] for k in CVS_CRITERIA))  # type: ignore[arg-type]
        for k in _CVS_WRAPPERS:
            if k in x:
                got = _cvs_value(x[k], depth + 1)
                if got is not None:
                    return got
        return None
    if isinstance(x, (list, tuple)):
        if len(x) == 3 and not any(isinstance(v, (Mapping, list, tuple)) for v in x):
            nums = [_int_in(_to_float(v), 0, 2) for v in x]
            return CvsScores(*nums) if all(v is not None for v in nums) else None  # type: ignore[arg-type]
        for item in x:
            got = _cvs_value(item, depth + 1)
            if got is not None:
                return got
    return None


def gt_cvs(inst: Instance) -> Parsed[CvsScores]:
    """CVS ground truth: struc_info (``[{"cvs_scores": {criterion: 0-2}}]``, a dict keyed by the criteria, or the
    other shapes of ``_cvs_value``), else the answer text."""
    for s in _structured(inst):
        got = _cvs_value(s)
        if got is not None:
            return _ok(got)
    return _from_text(inst, parse_cvs)


_SKILL_WRAPPERS = ("skill_scores", "scores", "grs")
_SKILL_LEVEL_KEYS = ("skill_level", "level")
_SKILL_LEVELS = {"n": "novice", "novice": "novice", "i": "intermediate", "intermediate": "intermediate",
                 "e": "expert", "expert": "expert"}
# A score whose level (rewards.metrics.skill_level: mean <= 2 novice, <= 3.5 intermediate, else expert) is the level.
_LEVEL_SCORE = {"novice": 2.0, "intermediate": 3.0, "expert": 4.0}


def _skill_value(x: Any, depth: int = 0) -> Optional[dict[str, float]]:
    """The six aspect scores from a struc_info value: a dict keyed by aspect names, such a dict under
    ``skill_scores``/``scores``/``grs``, or a list holding one of these."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(x, Mapping):
        vals: dict[str, float] = {}
        for k, v in x.items():
            if not isinstance(k, str):
                continue
            fv = _to_float(v)
            name = normalize_label(k).replace("suture needle", "suture/needle")
            for aspect, rx in _SA_KEYS.items():
                if fv is not None and 1.0 <= fv <= 5.0 and re.fullmatch(rx, name, re.I):
                    vals[aspect] = fv
        if len(vals) == len(SKILL_ASPECTS):
            return {k: vals[k] for k in SKILL_ASPECTS}
        for k in _SKILL_WRAPPERS:
            if k in x:
                got = _skill_value(x[k], depth + 1)
                if got is not None:
                    return got
        return None
    if isinstance(x, (list, tuple)):
        for item in x:
            got = _skill_value(item, depth + 1)
            if got is not None:
                return got
    return None


def _skill_level_value(x: Any, depth: int = 0) -> Optional[str]:
    """``novice``/``intermediate``/``expert`` from a struc_info ``skill_level`` (``N``/``I``/``E`` or the word)."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(x, Mapping):
        for k in _SKILL_LEVEL_KEYS:
            v = x.get(k)
            if isinstance(v, str) and v.strip().lower() in _SKILL_LEVELS:
                return _SKILL_LEVELS[v.strip().lower()]
        return None
    if isinstance(x, (list, tuple)):
        for item in x:
            got = _skill_level_value(item, depth + 1)
            if got is not None:
                return got
    return None


def gt_skill(inst: Instance) -> Parsed[dict[str, float]]:
    """Skill ground truth {aspect: 1-5}: struc_info scores (``[{"skill_level", "skill_scores": {aspect: n}}]`` or a
    dict keyed by aspect names), else the answer's six ``Aspect: n/5``, else — only a struc_info ``skill_level``
    known — every aspect at a score of that level (2 novice, 3 intermediate, 4 expert): the metric compares levels
    of mean scores only, so this scores exactly; the per-aspect values are then not real scores."""
    structured = _structured(inst)
    for s in structured:
        got = _skill_value(s)
        if got is not None:
            return _ok(got)
    from_text = _from_text(inst, parse_skill)
    if from_text.ok:
        return from_text
    for s in structured:
        level = _skill_level_value(s)
        if level is not None:
            return _ok({a: _LEVEL_SCORE[level] for a in SKILL_ASPECTS})
    return from_text


def _mappings(x: Any) -> list[Mapping[str, Any]]:
    """A struc_info dict itself, or the dicts of a struc_info list (one level: ``[{…}, …]``)."""
    if isinstance(x, Mapping):
        return [x]
    if isinstance(x, (list, tuple)):
        return [it for it in x if isinstance(it, Mapping)]
    return []


_LABEL_LIST_KEYS = ("classes", "labels", "candidates", "options", "step_list")


def labels_for(inst: Instance) -> list[str]:
    """The label set of a label task: struc_info ``classes``/``labels``/``candidates``/``options``/``step_list``
    (in a dict, or a dict of a struc_info list) when given, else the question's list."""
    for m in _mappings(inst.struc_info):
        for k in _LABEL_LIST_KEYS:
            v = m.get(k)
            if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
                return list(v)
    return labels_from_question(inst.question)


def gt_label(inst: Instance) -> Parsed[str]:
    """NAP / image-class ground truth label: struc_info ``label``/``next_action``/``answer`` (in a dict, or a dict
    of a struc_info list such as ``[{"step_list": […], "next_action": …}]``), else the answer text (mapped onto the
    offered label it names when there is one)."""
    for s in _structured(inst):
        for m in _mappings(s):
            for k in ("label", "next_action", "answer", "gt"):
                if isinstance(m.get(k), str) and m[k].strip():
                    return _ok(m[k].strip())
    labels = labels_for(inst)
    for txt in _fallback_texts(inst):
        if normalize_label(extract_answer(txt)):
            p = parse_label(txt, labels) if labels else _fail("no_label")
            # an answer that is not one of the offered labels is still the reference (scored by exact match)
            return p if p.ok else _ok(extract_answer(txt).strip())
    return _fail("gt_missing")


def choices_for(inst: Instance) -> Any:
    """The options of a multiple-choice instance (struc_info ``choices``/``options``), or None."""
    s = inst.struc_info
    if isinstance(s, Mapping):
        for k in ("choices", "options"):
            if isinstance(s.get(k), (list, tuple, Mapping)) and s[k]:
                return s[k]
    return None


def gt_choice(inst: Instance) -> Parsed[str]:
    """Multiple-choice ground truth letter: struc_info ``answer`` (a letter or an option text), else the answer."""
    choices = choices_for(inst)
    for s in _structured(inst):
        if isinstance(s, Mapping) and isinstance(s.get("answer"), str):
            p = parse_choice(s["answer"], choices)
            if p.ok:
                return p
    return _from_text(inst, parse_choice, choices)


def gt_box(inst: Instance) -> Parsed[Box]:
    """Image grounding ground truth: struc_info ``bbox`` (or ``box``/``bbox_2d``), else the answer's box."""
    for s in _structured(inst):
        b = _as_box(s)
        if b is not None:
            return _ok(b)
    return _from_text(inst, parse_box)


def gt_caption(inst: Instance) -> Parsed[str]:
    """Caption ground truth (VS, RC, DVC judge reference): the answer text, else a text extra['gnd']."""
    for txt in _fallback_texts(inst):
        return _ok(txt.strip())
    return _fail("gt_missing")


def image_size_of(inst: Instance) -> Optional[tuple[float, float]]:
    """(width, height) from struc_info/extra ``image_size`` [w, h] or ``width``/``height``, when present."""
    for src in (inst.struc_info, inst.extra):
        if not isinstance(src, Mapping):
            continue
        size = src.get("image_size")
        if isinstance(size, (list, tuple)) and len(size) == 2:
            w, h = _to_float(size[0]), _to_float(size[1])
        else:
            w, h = _to_float(src.get("width")), _to_float(src.get("height"))
        if w and h and w > 0 and h > 0:
            return (w, h)
    return None


def scale_box(pred: Box, ref: Box, size: Optional[tuple[float, float]]) -> Box:
    """``pred`` in pixels: scaled by ``size`` when all its values are in [0, 1] and ``ref`` has one > 1."""
    if size is None or not all(0.0 <= v <= 1.0 for v in pred) or max(ref) <= 1.0:
        return pred
    w, h = size
    return (pred[0] * w, pred[1] * h, pred[2] * w, pred[3] * h)
