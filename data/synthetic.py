"""Synthetic MedVidBench: seeded surgical-looking clips, frame folders and image sets with exact ground truth.

Role: the offline stand-in for MedVidBench (SPEC §2) that the tests, the CPU demo and the tiny model's tokenizer
corpus use. ``generate(out_dir, ...)`` writes

* ``videos/<video_id>.mp4``: real H.264 (or MPEG-4 part 2) clips, ``NATIVE_FPS`` frames per second, 112x84 by
  default, 6-20 s long: a tissue-coloured scene with gallbladder anatomy, and instruments drawn as coloured
  shapes (grasper = blue rectangle, hook = cyan triangle, clipper = green circle, scissors = white diamond,
  irrigator = purple bar) that perform one procedure step each (grasping, dissecting, clipping, cutting,
  irrigating), with persistent clip marks, incision lines and bleeding;
* ``frames/<video_id>/<k>.jpg``: the same clip sampled at the instance's sampling fps (the frame-list variant);
* ``images/<id>.png``: still scenes for the image tasks (``vqa_mc``, ``box_grounding``, ``image_cls``);
* ``train.jsonl``, ``eval.jsonl`` (MedVidBench rows of all eleven video qa_types), ``eval.json`` (the same rows
  as one JSON list), ``test.json`` (eval rows without the gpt turn and without ground truth, as in the public
  test files), ``images_train.jsonl``, ``images_eval.jsonl``, ``knowledge.json`` (VRFT-Aug prior knowledge per
  class / image task) and ``manifest.json`` (profiles, conventions and the generator's exact ground truth: per
  video the timeline and every instrument box on every native frame; per image its boxes and bleeding).

Rows use the real file shapes, tidy and messy alike (``"fps": "1.0"`` strings, ``struc_info`` as a list of dicts,
a dict, empty with a ``gnd`` field, or absent), so readers and ground-truth extractors are exercised. Answers
follow the formats of ``shared/data/medvidbench_examples.json`` exactly.

Conventions (also written to ``manifest.json``):

* boxes are ``[x1, y1, x2, y2]`` in pixels of the written frames, x2/y2 exclusive (the tight extent of the
  shape's pixels: a shape covering columns 15..24 has x1 = 15, x2 = 25);
* times are seconds from the start of the clip; native frame ``i`` of the MP4 shows time ``i / NATIVE_FPS``;
* ``metadata.fps`` is the sampling fps; ``input_video_start_frame``/``input_video_end_frame`` count frames at that
  fps (0 and the last one, inclusive), matching ``data.reader``/``data.video``; sampled frame ``k`` is at
  ``k / fps`` s, which is always a native frame (the sampling fps divides ``NATIVE_FPS``);
* every action boundary lies on a 0.5 s grid; ``RC_info.start_frame`` is the frame's path for frame-list rows
  and its index at the sampling fps for MP4 rows.

Same seed and arguments give byte-identical JSON/JSONL files; paths inside them are relative to ``out_dir``.
Three difficulty profiles ("SynthEasy", "SynthMedium", "SynthHard") differ in instrument size, speed, contrast,
sensor noise, clutter and idle instruments left in view.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from common.files import atomic_write, write_text
from data.schema import IMAGE_QA_TYPES, VIDEO_QA_TYPES, sample_id

GENERATOR = "medgrpo.data.synthetic"
GENERATOR_VERSION = 3
NATIVE_FPS = 4.0
DEFAULT_SIZE = (112, 84)  # width, height
TIME_GRID = 0.5
MIN_DURATION, MAX_DURATION = 6.0, 20.0

RGB = tuple[int, int, int]
Point = tuple[float, float]

TISSUE: RGB = (196, 104, 94)
TISSUE_DARK: RGB = (150, 70, 64)
HIGHLIGHT: RGB = (236, 196, 188)
FAT: RGB = (226, 196, 98)
GALLBLADDER: RGB = (96, 122, 52)
PLATE: RGB = (70, 22, 26)
STRUCTURE: RGB = (240, 204, 192)
BLOOD: RGB = (128, 6, 14)
CLIP: RGB = (176, 176, 182)
INCISION: RGB = (62, 12, 16)
# Widths of the persistent cues, in pixels of the 112x84 default frame: wide enough to move the mean colour of the
# 14-pixel patches the model sees (at 2 px the CVS structures and at 4x6 px the clip marks hardly did)
STRUCTURE_PX = 4.0  # the CVS structures (two_structures)
PLATE_PX = 6.0  # the exposed cystic plate band (cystic_plate)
CLIP_MARK_PX = (6, 8)  # a clip left on the duct (the next action after clipping is cutting)
INCISION_PX = 3.0  # the incision left by cutting (the next action after cutting is irrigating)
BLEEDS = {"expert": 0, "intermediate": 1, "novice": 3}  # bleeding spots per skill level, what the level shows
BLEED_RADIUS = (4.5, 6.0)


@dataclass(frozen=True)
class InstrumentStyle:
    name: str
    shape: str  # rectangle | triangle | circle | diamond | bar
    colour: RGB
    colour_name: str
    size: tuple[int, int]  # (width, height) in pixels at scale 1.0
    action: str
    shape_word: str  # "rectangular", used in reasoning texts
    plural: bool = False  # "the scissors cut", not "cuts"


INSTRUMENTS: dict[str, InstrumentStyle] = {s.name: s for s in (
    InstrumentStyle("grasper", "rectangle", (40, 80, 235), "blue", (24, 12), "grasping", "rectangular"),
    InstrumentStyle("hook", "triangle", (30, 210, 225), "cyan", (20, 18), "dissecting", "triangular"),
    InstrumentStyle("clipper", "circle", (40, 215, 80), "green", (16, 16), "clipping", "round"),
    InstrumentStyle("scissors", "diamond", (245, 245, 245), "white", (22, 14), "cutting", "diamond-shaped", True),
    InstrumentStyle("irrigator", "bar", (165, 70, 225), "purple", (6, 24), "irrigating", "bar-shaped"),
)}
ACTION_INSTRUMENT: dict[str, str] = {s.action: s.name for s in INSTRUMENTS.values()}
ACTIONS: tuple[str, ...] = tuple(ACTION_INSTRUMENT)

# (singular, plural) verb phrases: long (gpt-style captions) and short (gemini-style captions)
_VERB_LONG: dict[str, tuple[str, str]] = {
    "grasping": ("grasps the tissue and retracts it", "grasp the tissue and retract it"),
    "dissecting": ("dissects the tissue with short back-and-forth strokes",
                   "dissect the tissue with short back-and-forth strokes"),
    "clipping": ("advances to the duct, applies a clip and holds still",
                 "advance to the duct, apply a clip and hold still"),
    "cutting": ("cuts steadily along a straight line, leaving a dark incision",
                "cut steadily along a straight line, leaving a dark incision"),
    "irrigating": ("irrigates the field with small circular sweeps", "irrigate the field with small circular sweeps"),
}
_VERB_SHORT: dict[str, tuple[str, str]] = {
    "grasping": ("grasps and retracts tissue", "grasp and retract tissue"),
    "dissecting": ("dissects tissue in short strokes", "dissect tissue in short strokes"),
    "clipping": ("clips the duct", "clip the duct"),
    "cutting": ("cuts a straight incision", "cut a straight incision"),
    "irrigating": ("irrigates the field", "irrigate the field"),
}

SKILL_ASPECTS: tuple[str, ...] = ("Respect for tissue", "Suture/needle handling", "Time and motion",
                                  "Flow of operation", "Overall performance", "Quality of final product")
SKILL_CODES = {"novice": "N", "intermediate": "I", "expert": "E"}
CVS_CRITERIA: tuple[str, ...] = ("two_structures", "cystic_plate", "hepatocystic_triangle")
SEVERITY_CLASSES: tuple[str, ...] = ("none", "mild", "moderate", "severe")
_SEVERITY_FRACTION = {"none": (0.0, 0.0), "mild": (0.02, 0.05), "moderate": (0.09, 0.14), "severe": (0.22, 0.32)}
QUADRANTS: tuple[str, ...] = ("upper left", "upper right", "lower left", "lower right")


@dataclass(frozen=True)
class SourceProfile:
    """A synthetic ``data_source``: how hard its scenes are to read."""

    name: str
    difficulty: str
    description: str
    scale: float  # instrument size multiplier
    speed: float  # px/s of the approach motion
    noise_std: float  # Gaussian sensor noise (0-255 scale)
    clutter: int  # moving tissue-coloured distractor blobs
    contrast: float  # 1.0: pure instrument colours; lower blends them toward the tissue colour
    sampling_fps: float  # metadata.fps of its rows; must divide NATIVE_FPS
    segment_seconds: tuple[float, float]
    gap_seconds: tuple[float, float]
    linger_seconds: tuple[float, float]  # an instrument stays idle in view this long after its last action
    procedure: tuple[str, ...]  # the step list; a clip shows consecutive steps of it


SOURCE_PROFILES: dict[str, SourceProfile] = {p.name: p for p in (
    SourceProfile("SynthEasy", "easy", "large, slow, high-contrast instruments on clean tissue",
                  1.0, 8.0, 0.0, 0, 1.0, 2.0, (2.0, 4.0), (0.5, 1.5), (0.0, 0.0),
                  ("grasping", "dissecting", "clipping", "cutting", "irrigating")),
    SourceProfile("SynthMedium", "medium", "mid-sized instruments with light sensor noise and tissue clutter",
                  0.75, 14.0, 6.0, 2, 0.85, 1.0, (2.0, 4.0), (0.5, 1.5), (0.0, 0.0),
                  ("grasping", "dissecting", "clipping", "cutting", "irrigating")),
    SourceProfile("SynthHard", "hard", "small, fast, low-contrast instruments with heavy noise, clutter and "
                  "idle instruments left in view", 0.55, 22.0, 14.0, 5, 0.6, 1.0, (1.5, 3.5), (0.0, 1.0),
                  (0.5, 2.0), ("dissecting", "grasping", "clipping", "cutting", "irrigating")),
)}
DEFAULT_SOURCES: tuple[str, ...] = tuple(SOURCE_PROFILES)


# ---------------------------------------------------------------------------------------------------------------
# small helpers


def _rng(seed: int, *keys: Any) -> np.random.Generator:
    """An independent generator per (seed, keys): adding a video never changes another one's content."""
    entropy = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(k).encode("utf-8")) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _grid(x: float, step: float = TIME_GRID) -> float:
    return max(step, _half_up(x / step) * step)


def _even(x: float) -> int:
    return max(4, 2 * _half_up(x / 2.0))


def _fmt_t(t: float) -> str:
    return f"{t:.1f}"


def _fmt_q(t: float) -> str:
    """A time as a question writes it: ``7`` for whole seconds, else ``7.5``."""
    return str(int(t)) if float(t).is_integer() else f"{t:.1f}"


def _fmt_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(str(float(round(v, 2))) for v in box) + "]"


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else hi if v > hi else v


def _lerp(p: Point, q: Point, u: float) -> Point:
    return (p[0] + (q[0] - p[0]) * u, p[1] + (q[1] - p[1]) * u)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _verb(table: dict[str, tuple[str, str]], action: str) -> str:
    return table[action][1 if INSTRUMENTS[ACTION_INSTRUMENT[action]].plural else 0]


def _be(instrument: str, singular: str, plural: str) -> str:
    return plural if INSTRUMENTS[instrument].plural else singular


def place_name(x: float, y: float, width: int, height: int) -> str:
    """Where a point lies: ``upper left`` ... ``center`` (thirds of the frame)."""
    h = "left" if x < width / 3 else "right" if x >= 2 * width / 3 else "center"
    v = "upper" if y < height / 3 else "lower" if y >= 2 * height / 3 else "middle"
    if v == "middle":
        return "center" if h == "center" else f"{h} side"
    if h == "center":
        return "top center" if v == "upper" else "bottom center"
    return f"{v} {h}"


def motion_phrase(p: Point, q: Point, min_px: float = 4.0) -> str:
    """``moving toward the upper left`` / ``moving to the right`` / ``holding its position``."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    if math.hypot(dx, dy) < min_px:
        return "holding its position"
    horiz = "left" if dx < 0 else "right"
    vert = "upper" if dy < 0 else "lower"
    if abs(dx) >= 2 * abs(dy):
        return f"moving to the {horiz}"
    if abs(dy) >= 2 * abs(dx):
        return "moving upward" if dy < 0 else "moving downward"
    return f"moving toward the {vert} {horiz}"


# ---------------------------------------------------------------------------------------------------------------
# rasterisation: every ground-truth box comes from the same mask that paints the pixels


def shape_mask(shape: str, cx: int, cy: int, w: int, h: int, width: int,
               height: int) -> Optional[tuple[np.ndarray, int, int]]:
    """Boolean mask of ``shape`` (w x h, centred on the pixel corner (cx, cy)) clipped to a width x height frame,
    with the offset (x0, y0) of its window; None when no pixel of it lies in the frame.

    A pixel belongs to the shape when its centre does: rectangle/bar ``|dx| <= w/2, |dy| <= h/2``; circle
    ``dx² + dy² <= (min(w, h)/2)²``; diamond ``|dx|/(w/2) + |dy|/(h/2) <= 1``; triangle apex up, base at
    ``cy + h/2``, half-width growing linearly from 0 at the apex to ``w/2`` at the base.
    """
    x0, x1 = max(0, cx - w // 2 - 1), min(width, cx + (w + 1) // 2 + 1)
    y0, y1 = max(0, cy - h // 2 - 1), min(height, cy + (h + 1) // 2 + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    X = (np.arange(x0, x1, dtype=np.float64) + 0.5 - cx)[None, :]
    Y = (np.arange(y0, y1, dtype=np.float64) + 0.5 - cy)[:, None]
    hw, hh = w / 2.0, h / 2.0
    if shape in ("rectangle", "bar"):
        m = (np.abs(X) <= hw) & (np.abs(Y) <= hh)
    elif shape == "circle":
        r = min(w, h) / 2.0
        m = X * X + Y * Y <= r * r
    elif shape == "diamond":
        m = np.abs(X) / hw + np.abs(Y) / hh <= 1.0
    elif shape == "triangle":
        m = (Y >= -hh) & (Y <= hh) & (np.abs(X) <= hw * (Y + hh) / h)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: rectangle, bar, circle, diamond, triangle")
    if not m.any():
        return None
    return m, x0, y0


def mask_box(mask: np.ndarray, x0: int, y0: int) -> list[int]:
    """Tight ``[x1, y1, x2, y2]`` (x2/y2 exclusive) of a window mask placed at (x0, y0)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(x0 + cols[0]), int(y0 + rows[0]), int(x0 + cols[-1] + 1), int(y0 + rows[-1] + 1)]


def _paint(img: np.ndarray, mask: np.ndarray, x0: int, y0: int, colour: Sequence[float]) -> None:
    h, w = mask.shape
    img[y0:y0 + h, x0:x0 + w][mask] = colour


def _segment_mask(p: Point, q: Point, thickness: float, width: int,
                  height: int) -> Optional[tuple[np.ndarray, int, int]]:
    r = thickness / 2.0
    x0 = max(0, int(math.floor(min(p[0], q[0]) - r)) - 1)
    x1 = min(width, int(math.ceil(max(p[0], q[0]) + r)) + 1)
    y0 = max(0, int(math.floor(min(p[1], q[1]) - r)) - 1)
    y1 = min(height, int(math.ceil(max(p[1], q[1]) + r)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    X = (np.arange(x0, x1) + 0.5)[None, :]
    Y = (np.arange(y0, y1) + 0.5)[:, None]
    dx, dy = q[0] - p[0], q[1] - p[1]
    L2 = dx * dx + dy * dy
    u = np.clip(((X - p[0]) * dx + (Y - p[1]) * dy) / L2, 0.0, 1.0) if L2 > 0 else np.zeros_like(X + Y)
    d2 = (X - p[0] - u * dx) ** 2 + (Y - p[1] - u * dy) ** 2
    m = d2 <= r * r
    return (m, x0, y0) if m.any() else None


def _triangle_fill(a: Point, b: Point, c: Point, width: int, height: int,
                   y_min: float = -math.inf) -> Optional[tuple[np.ndarray, int, int]]:
    """Pixels whose centres lie inside triangle abc (and below ``y_min``)."""
    x0 = max(0, int(math.floor(min(a[0], b[0], c[0]))))
    x1 = min(width, int(math.ceil(max(a[0], b[0], c[0]))) + 1)
    y0 = max(0, int(math.floor(min(a[1], b[1], c[1]))))
    y1 = min(height, int(math.ceil(max(a[1], b[1], c[1]))) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    X = (np.arange(x0, x1) + 0.5)[None, :]
    Y = (np.arange(y0, y1) + 0.5)[:, None]

    def side(p: Point, q: Point) -> np.ndarray:
        return (q[0] - p[0]) * (Y - p[1]) - (q[1] - p[1]) * (X - p[0])

    s1, s2, s3 = side(a, b), side(b, c), side(c, a)
    m = ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))
    m &= np.broadcast_to(Y >= y_min, m.shape)
    return (m, x0, y0) if m.any() else None


def _ellipse_mask(cx: float, cy: float, rx: float, ry: float, width: int,
                  height: int) -> Optional[tuple[np.ndarray, int, int]]:
    x0, x1 = max(0, int(math.floor(cx - rx)) - 1), min(width, int(math.ceil(cx + rx)) + 1)
    y0, y1 = max(0, int(math.floor(cy - ry)) - 1), min(height, int(math.ceil(cy + ry)) + 1)
    if x0 >= x1 or y0 >= y1 or rx <= 0 or ry <= 0:
        return None
    X = (np.arange(x0, x1) + 0.5 - cx)[None, :] / rx
    Y = (np.arange(y0, y1) + 0.5 - cy)[:, None] / ry
    m = X * X + Y * Y <= 1.0
    return (m, x0, y0) if m.any() else None


def _blend(colour: RGB, contrast: float) -> tuple[float, float, float]:
    return tuple(contrast * c + (1.0 - contrast) * t for c, t in zip(colour, TISSUE))  # type: ignore[return-value]


def _background(seed: int, width: int, height: int) -> np.ndarray:
    """Tissue colour with a smooth, seeded texture (float32 [H, W, 3])."""
    rng = _rng(seed, "texture")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tex = np.zeros((height, width), np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(0.03, 0.12, size=2)
        px, py = rng.uniform(0.0, 2 * math.pi, size=2)
        tex += rng.uniform(4.0, 9.0) * np.sin(xx * fx + px) * np.cos(yy * fy + py)
    img = np.empty((height, width, 3), np.float32)
    img[:] = np.asarray(TISSUE, np.float32)
    img += tex[..., None] * np.asarray([1.0, 0.6, 0.5], np.float32)
    return img


@dataclass(frozen=True)
class Anatomy:
    """Gallbladder, its two structures and the hepatocystic triangle between them (the CVS cues)."""

    gb_centre: Point
    gb_radii: Point
    neck: Point
    duct_end: Point
    artery_end: Point

    @staticmethod
    def sample(rng: np.random.Generator, width: int, height: int) -> "Anatomy":
        ox, oy = (float(v) for v in rng.uniform(-3.0, 3.0, size=2))
        return Anatomy((0.74 * width + ox, 0.24 * height + oy), (0.15 * width, 0.13 * height),
                       (0.60 * width + ox, 0.42 * height + oy), (0.30 * width + ox, 0.80 * height + oy),
                       (0.50 * width + ox, 0.86 * height + oy))

    def draw(self, img: np.ndarray, cvs: dict[str, int], contrast: float) -> None:
        H, W = img.shape[:2]
        gb = _ellipse_mask(*self.gb_centre, *self.gb_radii, W, H)
        if gb:
            _paint(img, *gb, _blend(GALLBLADDER, contrast))
        plate = cvs["cystic_plate"]
        if plate:  # the dark plate exposed along the gallbladder's lower edge: half or all of its width
            x_a = self.gb_centre[0] - self.gb_radii[0]
            x_b = x_a + 2 * self.gb_radii[0] * plate / 2.0
            y = self.gb_centre[1] + self.gb_radii[1]
            band = _segment_mask((x_a, y), (x_b, y), PLATE_PX, W, H)
            if band:
                _paint(img, *band, _blend(PLATE, contrast))
        tri = cvs["hepatocystic_triangle"]
        if tri < 2:  # fat over the whole triangle (0) or its lower half (1)
            y_min = -math.inf if tri == 0 else (self.neck[1] + max(self.duct_end[1], self.artery_end[1])) / 2
            fat = _triangle_fill(self.neck, self.duct_end, self.artery_end, W, H, y_min)
            if fat:
                _paint(img, *fat, _blend(FAT, contrast))
        ends = {0: (), 1: (self.duct_end,), 2: (self.duct_end, self.artery_end)}[cvs["two_structures"]]
        for end in ends:
            line = _segment_mask(self.neck, end, STRUCTURE_PX, W, H)
            if line:
                _paint(img, *line, _blend(STRUCTURE, contrast))


# ---------------------------------------------------------------------------------------------------------------
# videos


@dataclass
class Segment:
    """One action: ``instrument`` performs ``action`` over [start, end) s and is in view over
    [visible_start, visible_end) (longer than the action when it lingers idle)."""

    action: str
    instrument: str
    start: float
    end: float
    visible_start: float
    visible_end: float
    size: tuple[int, int]
    p0: Point
    p1: Point
    p2: Point
    amp: float
    freq: float
    phase: float
    jitter: float
    waves: tuple[tuple[float, float, float], ...]  # tremor components: (Hz, phase x, phase y)
    pauses: tuple[tuple[float, float], ...]  # (u_start, u_length): hesitations where the motion stops

    def _progress(self, t: float) -> float:
        u = _clamp((t - self.start) / (self.end - self.start), 0.0, 1.0)
        stopped = sum(_clamp(u - s, 0.0, length) for s, length in self.pauses)
        total = sum(length for _, length in self.pauses)
        return _clamp((u - stopped) / (1.0 - total), 0.0, 1.0)

    def path_point(self, t: float) -> Point:
        """The intended (tremor-free) centre at time t; after the action it stays where the action ended."""
        t = min(t, self.end)
        u = self._progress(t)
        dur = self.end - self.start
        if self.action == "grasping":
            return _lerp(self.p0, self.p1, u / 0.5) if u < 0.5 else _lerp(self.p1, self.p2, (u - 0.5) / 0.5)
        if self.action == "dissecting":
            base = _lerp(self.p0, self.p1, min(1.0, u / 0.4))
            if u <= 0.4:
                return base
            dx, dy = self.p1[0] - self.p0[0], self.p1[1] - self.p0[1]
            n = math.hypot(dx, dy) or 1.0
            osc = self.amp * math.sin(2 * math.pi * self.freq * (u - 0.4) * dur + self.phase) - \
                self.amp * math.sin(self.phase)
            return (base[0] + dx / n * osc, base[1] + dy / n * osc)
        if self.action == "clipping":
            return _lerp(self.p0, self.p1, min(1.0, u / 0.5))
        if self.action == "cutting":
            return _lerp(self.p0, self.p1, u)
        if self.action == "irrigating":
            a = 2 * math.pi * 1.5 * u + self.phase
            return (self.p0[0] + self.amp * (math.cos(a) - math.cos(self.phase)),
                    self.p0[1] + self.amp * (math.sin(a) - math.sin(self.phase)))
        raise ValueError(f"unknown action {self.action!r}")

    def centre(self, t: float, width: int, height: int) -> tuple[int, int]:
        """Integer centre drawn at time t: the path point plus hand tremor, kept inside the frame."""
        tc = min(t, self.end)
        x, y = self.path_point(tc)
        if self.waves:
            k = math.sqrt(len(self.waves))
            x += self.jitter * sum(math.sin(2 * math.pi * f * tc + a) for f, a, _ in self.waves) / k
            y += self.jitter * sum(math.sin(2 * math.pi * f * tc + b) for f, _, b in self.waves) / k
        mx, my = self.size[0] / 2 + 1, self.size[1] / 2 + 1
        return _half_up(_clamp(x, mx, width - mx)), _half_up(_clamp(y, my, height - my))

    def visible(self, t: float) -> bool:
        return self.visible_start - 1e-9 <= t < self.visible_end - 1e-9


@dataclass
class VideoSpec:
    """Everything that determines one clip's pixels and ground truth (rendering is a pure function of it)."""

    video_id: str
    source: str
    split: str
    seed: int
    width: int
    height: int
    sampling_fps: float
    duration: float
    procedure: tuple[str, ...]
    segments: list[Segment]
    next_action: str
    skill_level: str
    jitter: float
    n_pauses: int
    bleeds: list[tuple[float, float, float, float]]  # (t_appear, x, y, final radius)
    cvs: dict[str, int]
    anatomy: Anatomy
    clutter: list[tuple[float, float, float, float, float, float, RGB]]  # (x, y, vx, vy, rx, ry, colour)
    noise_std: float
    contrast: float
    native_fps: float = NATIVE_FPS

    @property
    def n_frames(self) -> int:
        return _half_up(self.duration * self.native_fps)

    @property
    def n_sampled(self) -> int:
        return int(math.ceil(self.duration * self.sampling_fps - 1e-9))

    def sampled_times(self) -> list[float]:
        return [k / self.sampling_fps for k in range(self.n_sampled)]

    def native_index(self, t: float) -> int:
        return int(math.floor(t * self.native_fps + 1e-9))

    def instrument_masks(self, frame: int) -> list[tuple[str, np.ndarray, int, int]]:
        """(instrument, mask, x0, y0) of every instrument in view on native frame ``frame``, in drawing order."""
        t = frame / self.native_fps
        out = []
        for seg in self.segments:
            if seg.visible(t):
                cx, cy = seg.centre(t, self.width, self.height)
                m = shape_mask(INSTRUMENTS[seg.instrument].shape, cx, cy, seg.size[0], seg.size[1],
                               self.width, self.height)
                if m is not None:
                    out.append((seg.instrument, *m))
        return out

    def boxes(self, frame: int) -> dict[str, list[int]]:
        """Ground-truth box of every instrument in view on native frame ``frame`` (at most one per type)."""
        return {name: mask_box(m, x0, y0) for name, m, x0, y0 in self.instrument_masks(frame)}

    def box_at(self, instrument: str, t: float) -> Optional[list[int]]:
        return self.boxes(self.native_index(t)).get(instrument)

    def visible_frames(self, instrument: str) -> list[int]:
        return [i for i in range(self.n_frames) if instrument in self.boxes(i)]

    def skill_scores(self) -> dict[str, int]:
        return skill_scores(self.jitter, self.n_pauses, len(self.bleeds))

    def render(self) -> np.ndarray:
        """All native frames, uint8 [n_frames, height, width, 3]."""
        W, H = self.width, self.height
        base = _background(self.seed, W, H)
        self.anatomy.draw(base, self.cvs, self.contrast)
        frames = np.empty((self.n_frames, H, W, 3), np.uint8)
        for i in range(self.n_frames):
            t = i / self.native_fps
            img = base.copy()
            self._draw_marks(img, t)
            for x, y, vx, vy, rx, ry, colour in self.clutter:
                m = _ellipse_mask(x + vx * t, y + vy * t, rx, ry, W, H)
                if m:
                    _paint(img, *m, colour)
            for name, m, x0, y0 in self.instrument_masks(i):
                _paint(img, m, x0, y0, _blend(INSTRUMENTS[name].colour, self.contrast))
            if self.noise_std > 0:
                img += _rng(self.seed, "noise", i).normal(0.0, self.noise_std, img.shape).astype(np.float32)
            frames[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return frames

    def _draw_marks(self, img: np.ndarray, t: float) -> None:
        W, H = self.width, self.height
        for seg in self.segments:
            if seg.action == "clipping" and t >= seg.start + 0.6 * (seg.end - seg.start):
                cx, cy = _half_up(seg.p1[0]), _half_up(seg.p1[1])
                m = shape_mask("rectangle", cx, cy, *CLIP_MARK_PX, W, H)
                if m:
                    _paint(img, *m, CLIP)
            elif seg.action == "cutting" and t >= seg.start:
                line = _segment_mask(seg.p0, seg.path_point(t), INCISION_PX, W, H)
                if line:
                    _paint(img, *line, INCISION)
        for t0, x, y, r in self.bleeds:
            if t >= t0:
                m = _ellipse_mask(x, y, max(1.0, r * min(1.0, (t - t0) / 1.0 + 0.3)),
                                  max(1.0, r * min(1.0, (t - t0) / 1.0 + 0.3)), W, H)
                if m:
                    _paint(img, *m, BLOOD)

    def manifest_entry(self) -> dict[str, Any]:
        boxes: dict[str, list[list[int]]] = {}
        for i in range(self.n_frames):
            for name, box in self.boxes(i).items():
                boxes.setdefault(name, []).append([i, *box])
        return {
            "source": self.source, "split": self.split, "file": f"videos/{self.video_id}.mp4",
            "frames_dir": f"frames/{self.video_id}", "native_fps": self.native_fps,
            "sampling_fps": self.sampling_fps, "n_frames": self.n_frames, "n_sampled": self.n_sampled,
            "duration": self.duration, "width": self.width, "height": self.height,
            "procedure": list(self.procedure), "next_action": self.next_action,
            "timeline": [{"action": s.action, "instrument": s.instrument, "start": s.start, "end": s.end,
                          "visible_start": s.visible_start, "visible_end": s.visible_end} for s in self.segments],
            "skill": {"level": self.skill_level, "jitter_px": round(self.jitter, 3), "pauses": self.n_pauses,
                      "bleeds": len(self.bleeds), "scores": self.skill_scores()},
            "cvs": dict(self.cvs),
            "boxes": boxes,
        }


def skill_scores(jitter: float, pauses: int, bleeds: int) -> dict[str, int]:
    """The six 1-5 aspect scores from what the clip shows: hand tremor (px), hesitations and bleeding spots."""
    def s(v: float) -> int:
        return int(_clamp(_half_up(v), 1, 5))

    five = {
        "Respect for tissue": s(5.0 - 1.5 * bleeds - 0.4 * jitter),
        "Suture/needle handling": s(5.3 - 1.25 * jitter),
        "Time and motion": s(5.0 - 0.9 * pauses - 0.7 * jitter),
        "Flow of operation": s(5.2 - 1.3 * pauses - 0.4 * jitter),
        "Quality of final product": s(5.0 - 0.9 * jitter - 0.7 * bleeds),
    }
    overall = s(sum(five.values()) / 5.0)
    return {a: (overall if a == "Overall performance" else five[a]) for a in SKILL_ASPECTS}


def skill_level_of(scores: dict[str, int]) -> str:
    """SPEC §2: mean <= 2 novice, <= 3.5 intermediate, else expert."""
    mean = sum(scores.values()) / len(scores)
    return "novice" if mean <= 2.0 else "intermediate" if mean <= 3.5 else "expert"


def _instrument_size(instrument: str, profile: SourceProfile) -> tuple[int, int]:
    w, h = INSTRUMENTS[instrument].size
    return _even(w * profile.scale), _even(h * profile.scale)


def _make_segment(rng: np.random.Generator, action: str, start: float, end: float, profile: SourceProfile,
                  width: int, height: int, jitter: float, pause: bool) -> Segment:
    instrument = ACTION_INSTRUMENT[action]
    size = _instrument_size(instrument, profile)
    mx, my = size[0] / 2 + 2, size[1] / 2 + 2
    p0 = (float(rng.uniform(mx, width - mx)), float(rng.uniform(my, height - my)))
    dur = end - start
    dist = profile.speed * dur * 0.5 * float(rng.uniform(0.8, 1.2))
    best: Optional[Point] = None
    angle = float(rng.uniform(0, 2 * math.pi))
    for k in range(8):  # the direction whose clamped end point moves the furthest
        a = angle + k * math.pi / 4
        q = (_clamp(p0[0] + dist * math.cos(a), mx, width - mx), _clamp(p0[1] + dist * math.sin(a), my, height - my))
        if best is None or math.dist(p0, q) > math.dist(p0, best) + 1e-9:
            best = q
        if math.dist(p0, q) >= 0.9 * dist:
            break
    p1 = best if best is not None else p0
    a2 = float(rng.uniform(0, 2 * math.pi))
    p2 = (_clamp(p1[0] + 0.4 * dist * math.cos(a2), mx, width - mx),
          _clamp(p1[1] + 0.4 * dist * math.sin(a2), my, height - my))
    amp = float(rng.uniform(2.5, 4.5)) if action == "dissecting" else float(rng.uniform(5.0, 9.0)) * profile.scale \
        if action == "irrigating" else 0.0
    waves = tuple((float(rng.uniform(0.7, 2.3)), float(rng.uniform(0, 2 * math.pi)),
                   float(rng.uniform(0, 2 * math.pi))) for _ in range(3))
    pauses = ((float(rng.uniform(0.15, 0.6)), float(rng.uniform(0.15, 0.25))),) if pause else ()
    return Segment(action, instrument, start, end, start, end, size, p0, p1, p2, amp, float(rng.uniform(1.0, 1.5)),
                   float(rng.uniform(0, 2 * math.pi)), jitter, waves, pauses)


def make_video_spec(video_id: str, profile: SourceProfile, split: str, seed: int, skill_level: str,
                    width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1], *, next_index: Optional[int] = None,
                    cvs_class: Optional[int] = None) -> VideoSpec:
    """A random clip of consecutive procedure steps (seeded by ``seed`` and ``video_id``).

    ``next_index``: the procedure step that follows the clip (random when None); the clip then shows the two
    steps before it, so the next action follows from which instruments are drawn and not from the clip's length. ``cvs_class``: the class (0-3, ``rewards.metrics.cvs_class``
    of the summed score) the drawn anatomy shows (random criteria when None)."""
    rng = _rng(seed, "video", video_id)
    proc = profile.procedure
    if next_index is not None and not 2 <= next_index < len(proc):
        raise ValueError(f"next_index={next_index} must lie in [2, {len(proc) - 1}] (a clip shows >= 2 steps)")
    jitter = float({"expert": rng.uniform(0.2, 0.6), "intermediate": rng.uniform(1.6, 2.2),
                    "novice": rng.uniform(2.8, 3.8)}[skill_level])
    for _attempt in range(50):
        if next_index is None:
            n_steps = int(rng.integers(2, min(4, len(proc) - 1) + 1))
            first = int(rng.integers(0, len(proc) - n_steps))  # the step after the clip always exists
        else:  # always two steps: the clip's length (which the video's frame count shows) says nothing of the class
            n_steps = 2
            first = next_index - n_steps
        plan: list[tuple[str, float, float]] = []
        t = _grid(float(rng.uniform(0.0, 1.0))) if rng.random() < 0.5 else 0.0
        for action in proc[first:first + n_steps]:
            parts = 2 if rng.random() < 0.3 else 1
            for part in range(parts):
                dur = _grid(float(rng.uniform(*profile.segment_seconds)))
                plan.append((action, t, t + dur))
                t += dur
                gap = float(rng.uniform(*profile.gap_seconds))
                # the two parts of a split step are always apart, so TAG answers list two distinct segments
                t += _grid(gap) if gap >= TIME_GRID / 2 or part + 1 < parts else 0.0
        duration = max(MIN_DURATION, t + TIME_GRID)
        if duration <= MAX_DURATION:
            break
    else:  # pragma: no cover - the ranges above make this unreachable
        raise RuntimeError(f"could not fit a clip into {MAX_DURATION} s for {video_id}")
    n_pauses = {"expert": 0, "intermediate": int(rng.integers(1, 3)), "novice": int(rng.integers(2, 4))}[skill_level]
    n_pauses = min(n_pauses, len(plan))
    paused = set(int(i) for i in rng.choice(len(plan), size=n_pauses, replace=False)) if n_pauses else set()
    segments = [_make_segment(rng, a, s, e, profile, width, height, jitter, i in paused)
                for i, (a, s, e) in enumerate(plan)]
    if profile.linger_seconds[1] > 0:  # idle instruments stay in view after their last action (hard profile)
        last: dict[str, Segment] = {}
        for seg in segments:
            last[seg.instrument] = seg
        for seg in last.values():
            seg.visible_end = min(duration, seg.end + _grid(float(rng.uniform(*profile.linger_seconds))))
    # the spots appear during the first step near where it works, spread so that three do not merge into one, and
    # stay: most sampled frames show them (the level is what they show)
    bleeds = []
    first_seg = segments[0]
    for _ in range(BLEEDS[skill_level]):
        t0 = float(rng.uniform(first_seg.start, (first_seg.start + first_seg.end) / 2))
        x, y = first_seg.path_point(t0)
        x = _clamp(x + float(rng.uniform(-0.12, 0.12)) * width, 4.0, width - 4.0)
        y = _clamp(y + float(rng.uniform(-0.12, 0.12)) * height, 4.0, height - 4.0)
        bleeds.append((round(t0, 3), round(x, 2), round(y, 2), float(rng.uniform(*BLEED_RADIUS))))
    cvs = _cvs_scores(rng, cvs_class)
    anatomy = Anatomy.sample(rng, width, height)
    clutter = []
    for _ in range(profile.clutter):
        speed = 1.0 if profile.difficulty == "medium" else 5.0
        clutter.append((float(rng.uniform(0, width)), float(rng.uniform(0, height)),
                        float(rng.uniform(-speed, speed)), float(rng.uniform(-speed, speed)),
                        float(rng.uniform(3, 8)), float(rng.uniform(2, 6)),
                        HIGHLIGHT if rng.random() < 0.3 else TISSUE_DARK))
    return VideoSpec(video_id, profile.name, split, int(rng.integers(0, 2**31 - 1)), width, height,
                     profile.sampling_fps, duration, proc, segments, proc[first + n_steps], skill_level, jitter,
                     n_pauses, bleeds, cvs, anatomy, clutter, profile.noise_std, profile.contrast)


_CVS_TOTALS = {0: (0, 1), 1: (2, 3), 2: (4, 5), 3: (6,)}  # class -> summed scores (rewards.metrics.cvs_class)


def _cvs_scores(rng: np.random.Generator, cvs_class: Optional[int]) -> dict[str, int]:
    """Three 0-2 criteria; with ``cvs_class``, uniform among the combinations whose sum lies in that class."""
    if cvs_class is None:
        return {k: int(rng.integers(0, 3)) for k in CVS_CRITERIA}
    if cvs_class not in _CVS_TOTALS:
        raise ValueError(f"cvs_class={cvs_class!r}; allowed: 0, 1, 2, 3")
    combos = [(a, b, c) for a in range(3) for b in range(3) for c in range(3) if a + b + c in _CVS_TOTALS[cvs_class]]
    pick = combos[int(rng.integers(len(combos)))]
    return dict(zip(CVS_CRITERIA, pick))


def _balanced(n: int, values: Sequence[int], rng: np.random.Generator) -> list[int]:
    """``n`` items cycling through ``values`` (counts differ by at most one), in a seeded random order."""
    out = [values[i % len(values)] for i in range(n)]
    return [out[i] for i in rng.permutation(n)]


# ---------------------------------------------------------------------------------------------------------------
# images


@dataclass
class ImageSpec:
    image_id: str
    source: str
    split: str
    seed: int
    width: int
    height: int
    instruments: list[tuple[str, int, int, tuple[int, int]]]  # (name, cx, cy, size)
    severity: str
    blood: list[tuple[float, float, float]]  # (x, y, r)
    cvs: dict[str, int]
    anatomy: Anatomy
    clutter: list[tuple[float, float, float, float, RGB]]
    noise_std: float
    contrast: float

    def masks(self) -> list[tuple[str, np.ndarray, int, int]]:
        out = []
        for name, cx, cy, size in self.instruments:
            m = shape_mask(INSTRUMENTS[name].shape, cx, cy, size[0], size[1], self.width, self.height)
            if m is not None:
                out.append((name, *m))
        return out

    def boxes(self) -> dict[str, list[int]]:
        return {name: mask_box(m, x0, y0) for name, m, x0, y0 in self.masks()}

    def blood_mask(self) -> np.ndarray:
        full = np.zeros((self.height, self.width), bool)
        for x, y, r in self.blood:
            m = _ellipse_mask(x, y, r, r, self.width, self.height)
            if m:
                mask, x0, y0 = m
                full[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] |= mask
        return full

    def render(self) -> np.ndarray:
        img = _background(self.seed, self.width, self.height)
        self.anatomy.draw(img, self.cvs, self.contrast)
        img[self.blood_mask()] = BLOOD
        for x, y, rx, ry, colour in self.clutter:
            m = _ellipse_mask(x, y, rx, ry, self.width, self.height)
            if m:
                _paint(img, *m, colour)
        for name, m, x0, y0 in self.masks():
            _paint(img, m, x0, y0, _blend(INSTRUMENTS[name].colour, self.contrast))
        if self.noise_std > 0:
            img += _rng(self.seed, "noise").normal(0.0, self.noise_std, img.shape).astype(np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _quadrant_of(x: float, y: float, width: int, height: int) -> str:
    return f"{'upper' if y < height / 2 else 'lower'} {'left' if x < width / 2 else 'right'}"


def make_image_spec(image_id: str, profile: SourceProfile, split: str, seed: int, n_instruments: int,
                    severity: str, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1],
                    required: Optional[str] = None, in_quadrant: bool = False) -> ImageSpec:
    """A still scene with ``n_instruments`` distinct, non-overlapping instruments and ``severity`` bleeding.

    ``in_quadrant``: every instrument lies wholly inside one quadrant (for the "where is it" question)."""
    rng = _rng(seed, "image", image_id)
    names = list(INSTRUMENTS)
    chosen: list[str] = [required] if required else []
    others = [n for n in names if n not in chosen]
    rng.shuffle(others)
    chosen += others[: n_instruments - len(chosen)]
    placed: list[tuple[str, int, int, tuple[int, int]]] = []
    boxes: list[list[int]] = []
    for name in chosen:
        size = _instrument_size(name, profile)
        for _ in range(200):
            mx, my = size[0] // 2 + 2, size[1] // 2 + 2
            cx, cy = int(rng.integers(mx, width - mx)), int(rng.integers(my, height - my))
            box = [cx - size[0] // 2 - 1, cy - size[1] // 2 - 1, cx + size[0] // 2 + 1, cy + size[1] // 2 + 1]
            if in_quadrant:  # wholly inside one quadrant, 2 px clear of the midlines
                side = box[2] <= width // 2 - 2 or box[0] >= width // 2 + 2
                level = box[3] <= height // 2 - 2 or box[1] >= height // 2 + 2
                if not (side and level):
                    continue
            if all(box[2] + 3 <= b[0] or b[2] + 3 <= box[0] or box[3] + 3 <= b[1] or b[3] + 3 <= box[1]
                   for b in boxes):
                placed.append((name, cx, cy, size))
                boxes.append(box)
                break
        else:
            raise RuntimeError(f"could not place {name} in image {image_id}")
    lo, hi = _SEVERITY_FRACTION[severity]
    target = float(rng.uniform(lo, hi)) if hi > 0 else 0.0
    blood: list[tuple[float, float, float]] = []
    spec = ImageSpec(image_id, profile.name, split, int(rng.integers(0, 2**31 - 1)), width, height, placed, severity,
                     blood, {k: int(rng.integers(0, 3)) for k in CVS_CRITERIA}, Anatomy.sample(rng, width, height),
                     [], profile.noise_std, profile.contrast)
    area = width * height
    while target > 0 and spec.blood_mask().sum() / area < target:
        blood.append((float(rng.uniform(0, width)), float(rng.uniform(0, height)), float(rng.uniform(3.0, 9.0))))
    for _ in range(profile.clutter):
        spec.clutter.append((float(rng.uniform(0, width)), float(rng.uniform(0, height)), float(rng.uniform(3, 8)),
                             float(rng.uniform(2, 6)), HIGHLIGHT if rng.random() < 0.3 else TISSUE_DARK))
    return spec


# ---------------------------------------------------------------------------------------------------------------
# prompts and answers (wording and formats of shared/data/medvidbench_examples.json)

_ROLE = {
    "tal": ("You are an expert in surgical video analysis.", "You are an expert in procedural video interpretation.",
            "You are an expert in laparoscopic workflow understanding."),
    "stg": ("You are an expert in surgical video interpretation.", "You are an expert in surgical instrument tracking.",
            "You are a specialist in analyzing endoscopic surgery videos."),
    "next_action": ("You are an expert in surgical analysis.", "You are an expert in surgical workflow understanding."),
    "dvc": ("You are an expert in understanding procedural surgical videos.",
            "You are an expert in surgical workflow understanding."),
    "vs": ("You are a specialist in analyzing endoscopic surgery videos.",
           "You are an expert in laparoscopic video summarization."),
    "rc": ("You are an expert in surgical video interpretation.",
           "You are an expert in analyzing surgical procedures."),
    "sa": ("You are an expert in surgical video analysis.", "You are an expert in surgical skill evaluation."),
}


def _context(profile: SourceProfile, rng: np.random.Generator) -> str:
    options = (
        f"This clip comes from the {profile.name} collection of synthetic laparoscopic scenes, where instruments "
        f"are drawn as coloured shapes on tissue.",
        f"The video is a synthetic laparoscopic recording from {profile.name} with {profile.description}.",
        f"This {profile.name} clip shows a rendered cholecystectomy-like scene with coloured instruments acting on "
        f"tissue.",
    )
    return options[int(rng.integers(len(options)))]


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _action_list(profile: SourceProfile) -> str:
    return ", ".join(_cap(a) for a in sorted(profile.procedure))


def _segment_caption(spec: VideoSpec, seg: Segment, style: str) -> str:
    ins = INSTRUMENTS[seg.instrument]
    start_pt = seg.path_point(seg.start)
    end_pt = seg.path_point(seg.end)
    p0 = place_name(*start_pt, spec.width, spec.height)
    p1 = place_name(*end_pt, spec.width, spec.height)
    if style == "gpt":
        finish = f"staying at the {p1}" if p1 == p0 else f"to finish at the {p1}"
        return (f"The {ins.colour_name} {ins.name} {_be(ins.name, 'enters', 'enter')} at the {p0} and "
                f"{_verb(_VERB_LONG, seg.action)}, {motion_phrase(start_pt, end_pt)} {finish}.")
    return f"The {ins.name} {_verb(_VERB_SHORT, seg.action)} near the {p1}."


def _smoothness(level: str) -> str:
    return {"expert": "smooth and economical", "intermediate": "mostly steady with occasional pauses",
            "novice": "shaky, with hesitations and bleeding"}[level]


def _summary(spec: VideoSpec, style: str) -> str:
    steps: list[Segment] = []
    for seg in spec.segments:
        if not steps or steps[-1].action != seg.action:
            steps.append(seg)
    if style == "gpt":
        parts = [f"The video shows {len(steps)} steps of a synthetic laparoscopic procedure: "
                 f"{_join([s.action for s in steps])}."]
        for s in steps:
            ins = INSTRUMENTS[s.instrument]
            where = place_name(*s.path_point(s.end), spec.width, spec.height)
            parts.append(f"The {ins.colour_name} {ins.name} {_verb(_VERB_LONG, s.action)} near the {where}.")
        parts.append(f"Overall the instrument handling is {_smoothness(spec.skill_level)}.")
        return " ".join(parts)
    clauses = [f"the {s.instrument} {_verb(_VERB_SHORT, s.action)}" for s in steps]
    return _cap(f"{', then '.join(clauses)}, in a synthetic procedure whose handling is "
                f"{_smoothness(spec.skill_level)}.")


def _region_caption(spec: VideoSpec, seg: Segment, t0: float, style: str) -> str:
    ins = INSTRUMENTS[seg.instrument]
    a = seg.path_point(t0)
    b = seg.path_point(seg.end)
    where = place_name(*a, spec.width, spec.height)
    if style == "gpt":
        end = place_name(*b, spec.width, spec.height)
        route = f"within the {where}" if end == where else f"from the {where} to the {end}"
        return (f"The {ins.colour_name} {ins.name} inside the box {_verb(_VERB_LONG, seg.action)}, "
                f"{motion_phrase(a, b)} {route}.")
    return f"Starting at the {where}, the {ins.name} {_verb(_VERB_SHORT, seg.action)} while {motion_phrase(a, b)}."


@dataclass
class _Task:
    """A row's text and ground truth before it is shaped into a tidy or messy record."""

    question: str
    answer: str
    tidy: Any  # struc_info of the tidy shape
    messy: list[tuple[str, Any]]  # ("struc", value) | ("gnd", value) | ("absent", None)
    rc: Optional[tuple[float, list[int]]] = None  # (time, box) of a region caption


def _task_tal(spec: VideoSpec, profile: SourceProfile, rng: np.random.Generator) -> _Task:
    actions = sorted({s.action for s in spec.segments})
    action = actions[int(rng.integers(len(actions)))]
    spans = [(s.start, s.end) for s in spec.segments if s.action == action]
    q = (f"{_pick(_ROLE['tal'], rng)} {_context(profile, rng)} In this synthetic procedure video, possible actions "
         f"are: {_action_list(profile)}. "
         + _pick((f"Find the segment(s) where {_cap(action)} happens.",
                  f"Localize every time segment in which {_cap(action)} is performed."), rng))
    answer = ", ".join(f"{_fmt_t(s)}-{_fmt_t(e)}" for s, e in spans) + " seconds."
    span_dicts = [{"start": s, "end": e} for s, e in spans]
    return _Task(q, answer, [{"action": action, "spans": span_dicts}],
                 [("struc", {"spans": span_dicts}), ("gnd", []), ("absent", None)])


def _task_stg(spec: VideoSpec, profile: SourceProfile, rng: np.random.Generator) -> _Task:
    grid = spec.sampled_times()
    candidates = []
    for name in sorted({s.instrument for s in spec.segments}):
        times = [t for t in grid if spec.box_at(name, t) is not None]
        if times:
            candidates.append((name, times))
    name, times = candidates[int(rng.integers(len(candidates)))]
    # one contiguous visible run, then a start and a step on the sampling grid
    runs: list[list[float]] = [[times[0]]]
    for t in times[1:]:
        if abs(t - runs[-1][-1] - 1.0 / spec.sampling_fps) < 1e-6:
            runs[-1].append(t)
        else:
            runs.append([t])
    run = max(runs, key=len)
    steps = [k for k in (1.0, 2.0, 3.0, 4.0) if (k * spec.sampling_fps).is_integer() and k <= run[-1] - run[0]]
    step = steps[int(rng.integers(len(steps)))] if steps else 1.0
    a, b = run[0], run[-1]
    ts = [t for t in run if abs(((t - a) / step) - round((t - a) / step)) < 1e-6]
    boxes = {_fmt_t(t): [float(v) for v in spec.box_at(name, t)] for t in ts}  # type: ignore[union-attr]
    every = "1 second" if step == 1.0 else f"{_fmt_q(step)} seconds"
    q = (f"{_pick(_ROLE['stg'], rng)} {_context(profile, rng)} "
         + _pick((f"What are the bounding boxes of the {name} sampled every {every} from {_fmt_q(a)} to "
                  f"{_fmt_q(b)} seconds?",
                  f"Between {_fmt_t(a)} seconds and {_fmt_t(b)} seconds, where is the {name} every {every}? Give "
                  f"its bounding boxes."), rng))
    answer = " ".join(f"{k} seconds: {_fmt_box(v)}" for k, v in boxes.items())
    tidy = [{"instrument": name, "start": a, "end": b, "interval": step, "bbox_dict": boxes}]
    return _Task(q, answer, tidy, [("struc", {"bbox_dict": boxes}), ("struc", dict(boxes)), ("gnd", [])])


def _task_next_action(spec: VideoSpec, profile: SourceProfile, rng: np.random.Generator) -> _Task:
    steps = list(profile.procedure)
    q = (f"{_pick(_ROLE['next_action'], rng)} The video comes from the {profile.name} dataset of synthetic "
         f"laparoscopic scenes. The procedure includes the following step list: {steps!r}. "
         + _pick(("What comes next after the current video?", "Which step follows the end of this clip?"), rng))
    return _Task(q, spec.next_action, [{"step_list": steps, "next_action": spec.next_action}],
                 [("struc", {}), ("absent", None)])


def _task_dvc(spec: VideoSpec, profile: SourceProfile, rng: np.random.Generator, style: str) -> _Task:
    events = [{"start": s.start, "end": s.end, "caption": f"{s.action}: {_segment_caption(spec, s, style)}"}
              for s in spec.segments]
    actions = _action_list(profile)
    if style == "gpt":
        task = (f"Filter the video for events matching {actions}. Return a list of non-overlapping segments with "
                f"[start_time, end_time] and a factual caption.")
    else:
        task = (f"In this synthetic procedure video, create an event list restricted to actions in {actions}. For "
                f"each event: (1) start_time, (2) end_time, (3) description of this event.")
    q = f"{_pick(_ROLE['dvc'], rng)} {_context(profile, rng)} {task}"
    answer = "\n".join(f"{_fmt_t(e['start'])}-{_fmt_t(e['end'])} seconds: {e['caption']}" for e in events)
    return _Task(q, answer, events, [("struc", [events]), ("struc", [{"dc_segments": events}]), ("absent", None)])


def _task_vs(spec: VideoSpec, profile: SourceProfile, rng: np.random.Generator, style: str) -> _Task:
    task = ("Give a concise overview of what the video is about, without going into detailed steps." if style == "gpt"
            else "Summarize the video content in a short paragraph, focusing on the main idea or purpose.")
    q = f"{_pick(_ROLE['vs'], rng)} {_context(profile, rng)} {task}"
    return _Task(q, _summary(spec, style), {}, [("struc", []), ("absent", None)])


def _task_rc(spec: VideoSpec, profile: SourceProfile, rng: np.random.Generator, style: str) -> _Task:
    grid = spec.sampled_times()
    options = []
    for seg in spec.segments:
        ts = [t for t in grid if seg.start - 1e-9 <= t < seg.end - 1e-9 and spec.box_at(seg.instrument, t)]
        if ts:
            options.append((seg, ts[0]))
    seg, t0 = options[int(rng.integers(len(options)))]
    box = spec.box_at(seg.instrument, t0)
    if box is None:  # pragma: no cover - options only hold times with a box
        raise RuntimeError(f"{spec.video_id}: {seg.instrument} not in view at {t0} s")
    if style == "gpt":
        task = (f"Describe the activity or state of the object inside the bounding box at {_fmt_t(t0)} seconds, over "
                f"the interval from {_fmt_t(t0)} to {_fmt_t(seg.end)} seconds.")
    else:
        task = (f"From {_fmt_t(t0)} seconds to {_fmt_t(seg.end)} seconds, what is the object doing in the region "
                f"given by the bounding box at {_fmt_t(t0)} seconds?")
    q = f"{_pick(_ROLE['rc'], rng)} {_context(profile, rng)} {task}"
    return _Task(q, _region_caption(spec, seg, t0, style), {}, [("absent", None), ("struc", [])], rc=(t0, box))


def _task_sa(spec: VideoSpec, profile: SourceProfile, rng: np.random.Generator) -> _Task:
    scores = spec.skill_scores()
    q = (f"{_pick(_ROLE['sa'], rng)} This clip features synthetic bench-top instrument tasks rendered as coloured "
         f"shapes, from the {profile.name} collection. Review the surgical procedure and score the following aspects "
         f"(1,2,3,4,5 scale): {', '.join(SKILL_ASPECTS)}.")
    answer = ", ".join(f"{a}: {scores[a]}/5" for a in SKILL_ASPECTS)
    level = skill_level_of(scores)
    return _Task(q, answer, [{"skill_level": SKILL_CODES[level], "skill_scores": scores}],
                 [("gnd", []), ("absent", None)])


def _task_cvs(spec: VideoSpec, profile: SourceProfile, rng: np.random.Generator) -> _Task:
    q = (f"You are an expert in intraoperative safety assessment. This {profile.name} clip is used to score the "
         f"Critical View of Safety. Using Strasberg\u2019s guidelines for the Critical View of Safety, assign a score "
         f"(0,1,2) to each of the following: (1) confirmation that exactly two structures enter the gallbladder, (2) "
         f"proper dissection of the gallbladder off the cystic plate, and (3) full clearance of the hepatocystic "
         f"triangle.")
    c = spec.cvs
    answer = (f"Two structures: {c['two_structures']}, Cystic plate: {c['cystic_plate']}, "
              f"Hepatocystic triangle: {c['hepatocystic_triangle']}")
    return _Task(q, answer, [{"cvs_scores": dict(c)}], [("absent", None), ("gnd", [])])


TaskFn = Callable[[VideoSpec, SourceProfile, np.random.Generator], _Task]
VIDEO_TASKS: dict[str, TaskFn] = {
    "tal": _task_tal,
    "stg": _task_stg,
    "next_action": _task_next_action,
    "dense_captioning_gpt": lambda s, p, r: _task_dvc(s, p, r, "gpt"),
    "dense_captioning_gemini": lambda s, p, r: _task_dvc(s, p, r, "gemini"),
    "video_summary_gpt": lambda s, p, r: _task_vs(s, p, r, "gpt"),
    "video_summary_gemini": lambda s, p, r: _task_vs(s, p, r, "gemini"),
    "region_caption_gpt": lambda s, p, r: _task_rc(s, p, r, "gpt"),
    "region_caption_gemini": lambda s, p, r: _task_rc(s, p, r, "gemini"),
    "skill_assessment": _task_sa,
    "cvs_assessment": _task_cvs,
}
assert tuple(VIDEO_TASKS) == tuple(VIDEO_QA_TYPES), "VIDEO_TASKS must cover data.schema.VIDEO_QA_TYPES in order"

_THINK_TAIL = "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."


def _image_task(spec: ImageSpec, qa_type: str, kind: int, rng: np.random.Generator) -> tuple[str, str, dict[str, Any]]:
    """(question, reference answer, struc_info) of an image row."""
    W, H = spec.width, spec.height
    boxes = spec.boxes()
    if qa_type == "box_grounding":
        name = spec.instruments[0][0]
        ins = INSTRUMENTS[name]
        box = [float(v) for v in boxes[name]]
        q = (f"Locate the {name} in this synthetic laparoscopic image and give its bounding box as [x1, y1, x2, y2] "
             f"in pixel coordinates. {_THINK_TAIL}")
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        answer = (f"<think>The {name} is the {ins.colour_name} {ins.shape_word} instrument at the "
                  f"{place_name(cx, cy, W, H)}.</think><answer>{_fmt_box(box)}</answer>")
        return q, answer, {"bbox": box, "label": name, "image_size": [W, H]}
    if qa_type == "image_cls":
        frac = float(spec.blood_mask().mean())
        q = (f"Grade the bleeding in this synthetic laparoscopic image as one of: {', '.join(SEVERITY_CLASSES)} "
             f"(an ordinal scale from 0 = none to 3 = severe). {_THINK_TAIL}")
        answer = (f"<think>Dark red blood covers about {_half_up(100 * frac)}% of the view.</think>"
                  f"<answer>{spec.severity}</answer>")
        return q, answer, {"label": spec.severity, "classes": list(SEVERITY_CLASSES), "ordinal": True}
    if qa_type != "vqa_mc":
        raise ValueError(f"unknown image qa_type {qa_type!r}")
    name = spec.instruments[0][0]
    ins = INSTRUMENTS[name]
    if kind == 0:
        question = "Which instrument is visible in this image?"
        correct = name
        pool = [n for n in INSTRUMENTS if n != name]
        why = f"The only instrument is {ins.colour_name} and {ins.shape_word}, which is the {name}."
    elif kind == 1:
        question = f"What colour is the {name} in this image?"
        correct = ins.colour_name
        pool = [c for c in ("blue", "cyan", "green", "white", "purple", "red", "yellow", "black") if c != correct]
        why = f"The {name} is the {ins.shape_word} instrument, and it is {ins.colour_name}."
    elif kind == 2:
        question = "How many instruments are visible in this image?"
        correct = str(len(spec.instruments))
        pool = [str(k) for k in range(1, 6) if str(k) != correct]
        why = f"I can see {_join(sorted(n for n, *_ in spec.instruments))}: {correct} in total."
    else:
        question = f"Where is the {name} located in this image?"
        _, cx, cy, _ = spec.instruments[0]
        correct = _quadrant_of(cx, cy, W, H)
        pool = [qd for qd in QUADRANTS if qd != correct]
        why = f"The {ins.colour_name} {ins.shape_word} {name} lies in the {correct} part of the image."
    distractors = [pool[i] for i in rng.permutation(len(pool))[:3]]
    choices = distractors[:]
    pos = int(rng.integers(4))
    choices.insert(pos, correct)
    letter = "ABCD"[pos]
    lines = "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(choices))
    q = f"Question: {question}\nChoices:\n{lines}\n{_THINK_TAIL}"
    return q, f"<think>{why}</think><answer>{letter}</answer>", {"choices": choices, "answer": letter}


# ---------------------------------------------------------------------------------------------------------------
# the generator


def _resolve_sources(sources: Sequence[Union[str, SourceProfile]]) -> list[SourceProfile]:
    if isinstance(sources, (str, SourceProfile)):
        sources = [sources]
    out: list[SourceProfile] = []
    for s in sources:
        if isinstance(s, SourceProfile):
            prof = s
        elif isinstance(s, str) and s in SOURCE_PROFILES:
            prof = SOURCE_PROFILES[s]
        else:
            raise ValueError(f"unknown source {s!r}; known: {', '.join(SOURCE_PROFILES)} (or pass a SourceProfile)")
        ratio = NATIVE_FPS / prof.sampling_fps
        if prof.sampling_fps <= 0 or abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(f"source {prof.name}: sampling_fps={prof.sampling_fps} must divide {NATIVE_FPS}")
        if set(prof.procedure) - set(ACTIONS) or len(prof.procedure) < 3:
            raise ValueError(f"source {prof.name}: procedure must list >= 3 of {', '.join(ACTIONS)}")
        out.append(prof)
    if not out:
        raise ValueError("sources must name at least one source")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"sources must be distinct, got {names}")
    return out


def _short(profile: SourceProfile) -> str:
    return profile.name.replace("Synth", "syn").lower()


@dataclass
class _Plan:
    """All specs and rows of a generation, before anything is written."""

    videos: dict[str, VideoSpec] = field(default_factory=dict)
    images: dict[str, ImageSpec] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    frames_needed: set[str] = field(default_factory=set)


def _metadata(spec: VideoSpec, messy: bool) -> dict[str, Any]:
    end = spec.n_sampled - 1
    if messy:
        return {"fps": str(spec.sampling_fps), "video_id": spec.video_id, "input_video_start_frame": "0",
                "input_video_end_frame": str(end)}
    return {"fps": spec.sampling_fps, "video_id": spec.video_id, "input_video_start_frame": 0,
            "input_video_end_frame": end}


def _frame_path(video_id: str, k: int) -> str:
    return f"frames/{video_id}/{k:06d}.jpg"


def _video_row(spec: VideoSpec, qa_type: str, task: _Task, index: int, frames_variant: bool,
               messy_offset: int = 0) -> dict[str, Any]:
    """Row ``index`` of its qa_type: odd rows are messy (cycling through the task's messy shapes from
    ``messy_offset``), rows 2-3 of every 4 name the frame list when ``frames_variant``."""
    messy = index % 2 == 1
    use_frames = frames_variant and (index // 2) % 2 == 1
    video: Any = ([_frame_path(spec.video_id, k) for k in range(spec.n_sampled)] if use_frames
                  else f"videos/{spec.video_id}.mp4")
    row: dict[str, Any] = {
        "id": sample_id(spec.video_id, 0, spec.n_sampled - 1, spec.sampling_fps),
        "video": video,
        "conversations": [{"from": "human", "value": "<video>\n" + task.question},
                          {"from": "gpt", "value": task.answer}],
        "qa_type": qa_type,
        "data_source": spec.source,
        "metadata": _metadata(spec, messy),
    }
    kind, value = ("struc", task.tidy) if not messy else task.messy[(index // 2 + messy_offset) % len(task.messy)]
    if kind != "absent":
        row["struc_info"] = value
    if kind == "gnd":
        row["gnd"] = task.answer
    if task.rc is not None:
        t0, box = task.rc
        k = _half_up(t0 * spec.sampling_fps)
        row["is_RC"] = True
        row["RC_info"] = {"start_frame": _frame_path(spec.video_id, k) if use_frames else k,
                          "start_frame_bbox": [float(v) for v in box]}
    elif not messy:
        row["is_RC"] = False
        row["RC_info"] = None
    return row


def _plan(n_per_task: int, n_eval_per_task: int, n_images_per_task: int, n_eval_images_per_task: int, seed: int,
          profiles: list[SourceProfile], frames_variant: bool, size: tuple[int, int],
          videos_per_source: Optional[int]) -> _Plan:
    plan = _Plan()
    W, H = size
    S = len(profiles)
    levels = ("expert", "intermediate", "novice")
    for split, n in (("train", n_per_task), ("eval", n_eval_per_task)):
        per_source = math.ceil(n / S) if n else 0
        pool_size = max(per_source, videos_per_source or 0, 2 if n else 0)
        pools: dict[str, list[VideoSpec]] = {}
        for p_i, prof in enumerate(profiles):
            pools[prof.name] = []
            # balanced classes per source: the step after the clip, and the CVS class its anatomy shows
            brng = _rng(seed, "balance", split, prof.name)
            nexts = _balanced(pool_size, list(range(2, len(prof.procedure))), brng)
            cvs_classes = _balanced(pool_size, list(_CVS_TOTALS), brng)
            for v in range(pool_size):
                vid = f"{_short(prof)}_{split}_{v:03d}"
                spec = make_video_spec(vid, prof, split, seed, levels[(v + p_i) % 3], W, H, next_index=nexts[v],
                                       cvs_class=cvs_classes[v])
                pools[prof.name].append(spec)
                plan.videos[vid] = spec
        rows: list[dict[str, Any]] = []
        for j in range(n):
            for q_i, qa_type in enumerate(VIDEO_QA_TYPES):
                prof = profiles[j % S]
                pool = pools[prof.name]
                spec = pool[(j // S + q_i) % len(pool)]  # a (video, qa_type) pair is used at most once
                task = VIDEO_TASKS[qa_type](spec, prof, _rng(seed, "task", split, qa_type, j))
                # eval rows start the messy cycle elsewhere, so small runs still show every messy shape
                row = _video_row(spec, qa_type, task, j, frames_variant, 0 if split == "train" else 2)
                if isinstance(row["video"], list):
                    plan.frames_needed.add(spec.video_id)
                rows.append(row)
        plan.rows[split] = rows

    severities = SEVERITY_CLASSES
    for split, n in (("train", n_images_per_task), ("eval", n_eval_images_per_task)):
        rows = []
        for j in range(n):
            for qa_type in IMAGE_QA_TYPES:
                prof = profiles[j % S]
                iid = f"{_short(prof)}_{split}_{qa_type}_{j:04d}"
                rng = _rng(seed, "image-task", split, qa_type, j)
                kind = j % 4
                if qa_type == "vqa_mc":
                    n_ins = 1 if kind in (0, 3) else int(rng.integers(1, 4)) if kind == 2 else int(rng.integers(1, 3))
                    ispec = make_image_spec(iid, prof, split, seed, n_ins, severities[int(rng.integers(2))], W, H,
                                            in_quadrant=kind == 3)
                elif qa_type == "box_grounding":
                    ispec = make_image_spec(iid, prof, split, seed, int(rng.integers(1, 4)),
                                            severities[int(rng.integers(2))], W, H)
                else:
                    ispec = make_image_spec(iid, prof, split, seed, int(rng.integers(0, 3)), severities[j % 4], W, H)
                question, answer, struc = _image_task(ispec, qa_type, kind, rng)
                plan.images[iid] = ispec
                rows.append({
                    "id": iid, "image": f"images/{iid}.png",
                    "conversations": [{"from": "human", "value": "<image>\n" + question},
                                      {"from": "gpt", "value": answer}],
                    "qa_type": qa_type, "data_source": prof.name,
                    "metadata": {"width": W, "height": H}, "struc_info": struc,
                })
        plan.rows["images_" + split] = rows
    return plan


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(_dumps(r) + "\n" for r in rows))


def write_mp4(path: Union[str, Path], frames: np.ndarray, fps: float) -> str:
    """Encode uint8 [T, H, W, 3] frames (H, W even) as an MP4; libx264 when available, else MPEG-4 part 2.

    Returns the codec used. Written to a temporary name, then renamed (no half-written file on failure).
    """
    import av  # PyAV: FFmpeg bindings, shipped as a wheel

    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} must be even for yuv420p")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"

    def encode(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            options = {"crf": "16", "preset": "veryfast", "threads": "1"} if codec == "libx264" else {"qscale": "2"}
            stream = container.add_stream(codec, rate=int(round(fps)), options=options)
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv420p"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    atomic_write(path, encode)
    return codec


def _flat(n: int, height: int, width: int) -> np.ndarray:
    """``n`` frames of plain tissue colour (the blind control)."""
    return np.broadcast_to(np.asarray(TISSUE, np.uint8), (n, height, width, 3)).copy()


def _check_args(n_per_task: int, n_eval_per_task: Optional[int], size: Sequence[int]) -> tuple[int, int]:
    if not isinstance(n_per_task, int) or isinstance(n_per_task, bool) or n_per_task < 1:
        raise ValueError(f"n_per_task must be an integer >= 1, got {n_per_task!r}")
    n_eval = max(2, n_per_task // 4) if n_eval_per_task is None else n_eval_per_task
    if not isinstance(n_eval, int) or isinstance(n_eval, bool) or n_eval < 0:
        raise ValueError(f"n_eval_per_task must be an integer >= 0, got {n_eval_per_task!r}")
    if len(size) != 2 or any(not isinstance(v, int) or v < 56 or v % 2 for v in size):
        raise ValueError(f"size must be (width, height), even integers >= 56, got {size!r}")
    return n_per_task, n_eval


def generate(out_dir: Union[str, os.PathLike], n_per_task: int = 16, seed: int = 0,
             sources: Sequence[Union[str, SourceProfile]] = DEFAULT_SOURCES, frames_variant: bool = True, *,
             n_eval_per_task: Optional[int] = None, n_images_per_task: Optional[int] = None,
             n_eval_images_per_task: Optional[int] = None, videos_per_source: Optional[int] = None,
             size: tuple[int, int] = DEFAULT_SIZE, blind: bool = False) -> dict[str, Path]:
    """Write a synthetic MedVidBench under ``out_dir`` (see the module docstring) and return the written files.

    ``n_per_task`` training rows per video qa_type (eleven of them), ``n_eval_per_task`` eval rows per qa_type
    (default ``max(2, n_per_task // 4)``), image rows per image qa_type likewise (defaults: the same numbers).
    Rows cycle through ``sources``; train and eval clips are disjoint; within a split a clip serves several
    qa_types but each (clip, qa_type) pair at most once, so ``(id, qa_type)`` is unique. ``frames_variant``: every
    other pair of rows names a frame list instead of the MP4. ``blind``: the blind control, every frame and image
    one flat tissue colour, rows and answers unchanged (a model trained on it can only learn from the text).
    Keys of the result: ``train``, ``eval``, ``eval_json``, ``test``, ``images_train``, ``images_eval``,
    ``knowledge``, ``manifest``.
    """
    n_per_task, n_eval = _check_args(n_per_task, n_eval_per_task, size)
    n_img = n_per_task if n_images_per_task is None else n_images_per_task
    n_img_eval = n_eval if n_eval_images_per_task is None else n_eval_images_per_task
    for name, v in (("n_images_per_task", n_img), ("n_eval_images_per_task", n_img_eval),
                    ("videos_per_source", videos_per_source)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    profiles = _resolve_sources(sources)
    size = (int(size[0]), int(size[1]))
    plan = _plan(n_per_task, n_eval, n_img, n_img_eval, seed, profiles, frames_variant, size, videos_per_source)

    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    old_manifest = out / "manifest.json"
    if old_manifest.exists():  # regenerate cleanly: drop media of a previous run of this generator only
        try:
            previous = json.loads(old_manifest.read_text(encoding="utf-8")).get("generator")
        except (OSError, ValueError):
            previous = None
        if previous == GENERATOR:
            for sub in ("videos", "frames", "images"):
                shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("videos", "images") + (("frames",) if plan.frames_needed else ()):
        (out / sub).mkdir(exist_ok=True)

    from PIL import Image

    codec = "none"
    for vid, spec in plan.videos.items():
        frames = _flat(spec.n_frames, spec.height, spec.width) if blind else spec.render()
        codec = write_mp4(out / "videos" / f"{vid}.mp4", frames, spec.native_fps)
        if vid in plan.frames_needed:
            (out / "frames" / vid).mkdir(parents=True, exist_ok=True)
            for k, t in enumerate(spec.sampled_times()):
                Image.fromarray(frames[spec.native_index(t)]).save(out / _frame_path(vid, k), quality=95)
    for iid, ispec in plan.images.items():
        img = _flat(1, ispec.height, ispec.width)[0] if blind else ispec.render()
        Image.fromarray(img).save(out / "images" / f"{iid}.png")

    files: dict[str, Path] = {}
    for split in ("train", "eval"):
        files[split] = out / f"{split}.jsonl"
        _write_jsonl(files[split], plan.rows[split])
        files["images_" + split] = out / f"images_{split}.jsonl"
        _write_jsonl(files["images_" + split], plan.rows["images_" + split])
    files["eval_json"] = out / "eval.json"
    write_text(files["eval_json"], json.dumps(plan.rows["eval"], ensure_ascii=False, indent=1) + "\n")
    test_rows = []
    for row in plan.rows["eval"]:
        r = {k: v for k, v in row.items() if k not in ("struc_info", "gnd")}
        r["conversations"] = [row["conversations"][0]]
        test_rows.append(r)
    files["test"] = out / "test.json"
    write_text(files["test"], json.dumps(test_rows, ensure_ascii=False, indent=1) + "\n")
    files["knowledge"] = out / "knowledge.json"
    write_text(files["knowledge"], json.dumps(knowledge_entries(), ensure_ascii=False, indent=1) + "\n")
    files["manifest"] = out / "manifest.json"
    manifest = _manifest(plan, seed, n_per_task, n_eval, n_img, n_img_eval, profiles, frames_variant, size, codec,
                         {k: v.name for k, v in files.items()})
    manifest["blind"] = bool(blind)
    write_text(files["manifest"], json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    return files


def knowledge_entries() -> dict[str, str]:
    """VRFT-Aug prior knowledge (``data.knowledge_file``): per image task and per bleeding grade."""
    return {
        "image_cls": "Bleeding is graded by how much of the view is covered by dark red blood: none (no blood), "
                     "mild (small scattered spots, under 5% of the view), moderate (about a tenth of the view), "
                     "severe (large pools, a fifth or more of the view).",
        "box_grounding": "Instruments: grasper = blue rectangle, hook = cyan triangle, clipper = green circle, "
                         "scissors = white diamond, irrigator = purple bar. Boxes are [x1, y1, x2, y2] in pixels.",
        "vqa_mc": "Instruments: grasper = blue rectangle, hook = cyan triangle, clipper = green circle, "
                  "scissors = white diamond, irrigator = purple bar.",
        "none": "no dark red blood anywhere in the view.",
        "mild": "a few small dark red spots covering under 5% of the view.",
        "moderate": "several dark red pools covering roughly 9-14% of the view.",
        "severe": "large dark red pools covering more than a fifth of the view.",
    }


def _manifest(plan: _Plan, seed: int, n_per_task: int, n_eval: int, n_img: int, n_img_eval: int,
              profiles: list[SourceProfile], frames_variant: bool, size: tuple[int, int], codec: str,
              files: dict[str, str]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for split, rows in plan.rows.items():
        c: dict[str, int] = {}
        for r in rows:
            c[r["qa_type"]] = c.get(r["qa_type"], 0) + 1
        counts[split] = c
    return {
        "generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed,
        "args": {"n_per_task": n_per_task, "n_eval_per_task": n_eval, "n_images_per_task": n_img,
                 "n_eval_images_per_task": n_img_eval, "frames_variant": frames_variant, "size": list(size)},
        "files": files, "codec": codec, "counts": counts,
        "conventions": {
            "box": "[x1, y1, x2, y2] in pixels of the written frames; x2/y2 exclusive (tight extent of the shape)",
            "time": "seconds from the clip start; native frame i of the MP4 is at i / native_fps",
            "frames": "metadata.fps is the sampling fps; start/end frames count frames at that fps, end inclusive; "
                      "frames/<video_id>/<k>.jpg is native frame round(k / fps * native_fps)",
            "boxes_in_manifest": "videos[*].boxes[instrument] = [[native_frame, x1, y1, x2, y2], ...]",
            "rc_start_frame": "the frame's path for frame-list rows, its index at the sampling fps for MP4 rows",
            "paths": "relative to this folder",
        },
        "sources": {p.name: asdict(p) for p in profiles},
        "instruments": {k: asdict(v) for k, v in INSTRUMENTS.items()},
        "videos": {vid: spec.manifest_entry() for vid, spec in plan.videos.items()},
        "images": {iid: {"source": s.source, "split": s.split, "file": f"images/{iid}.png",
                         "boxes": s.boxes(), "severity": s.severity,
                         "bleeding_fraction": round(float(s.blood_mask().mean()), 4)}
                   for iid, s in plan.images.items()},
    }


def load_manifest(out_dir: Union[str, os.PathLike]) -> dict[str, Any]:
    """The ``manifest.json`` that ``generate`` wrote under ``out_dir``."""
    path = Path(os.fspath(out_dir)) / "manifest.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("generator") != GENERATOR:
        raise ValueError(f"{path} was not written by {GENERATOR}")
    return doc


def corpus_texts(seed: int = 0, n_per_task: int = 6,
                 sources: Sequence[Union[str, SourceProfile]] = DEFAULT_SOURCES) -> list[str]:
    """Questions and answers the generator writes (without rendering anything), for training a tokenizer.

    Deterministic; covers every qa_type, source and answer format, plus digits and punctuation.
    """
    profiles = _resolve_sources(sources)
    plan = _plan(n_per_task, max(1, n_per_task // 3), n_per_task, 0, seed, profiles, True, DEFAULT_SIZE, None)
    seen: dict[str, None] = {}
    for rows in plan.rows.values():
        for r in rows:
            for turn in r["conversations"]:
                seen.setdefault(turn["value"].replace("<video>\n", "").replace("<image>\n", ""), None)
    seen.setdefault("0123456789 .,:;!?'\"()[]{}<>-+*/=%&#@_|~`^$\\", None)
    return list(seen)
