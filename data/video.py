"""Decode an instance's media into model-ready frames: one call per prompt, arrays reused for all G samples.

``load_frames(instance, max_frames, max_pixels, min_pixels, backend)`` returns ``VideoFrames`` (uint8
``[T, H, W, 3]`` + per-frame timestamps + the sampling fps) for a video file (decord, PyAV fallback), a frame-image
list (PIL) or an image instance (T = 1).

Time base (our reading of SPEC §2, the same as ``data.reader``): MedVidBench's ``fps`` is the *sampling* fps and
``input_video_start_frame``/``input_video_end_frame`` count frames at that fps, so sampled frame ``k`` lies at
``k / fps`` seconds of the source video and the clip is ``k = start .. end`` (end inclusive).

* video file: frames are taken at ``k / fps`` for ``k = start .. end`` (``end`` absent: to the end of the video);
  the native frame shown at time t, ``floor(t * native_fps)``, is decoded. A start at or past the end of the video,
  or an end more than one sampling period past it, is ``frames_out_of_range``; a smaller overshoot (rounding in
  the metadata) just ends the clip at the video's last sampled time.
* frame list: the list *is* the clip, already sampled at ``fps``; entry i is frame ``start + i``.
* a stream that decodes to fewer frames than its header promises (a truncated or damaged file) keeps the clip's
  frames that did decode when the clip has no end frame; a clip that needs the missing part is ``truncated_file``.
* timestamps are ``k / fps`` in source-video seconds; ``relative_timestamps`` subtracts the clip start.

Then at most ``max_frames`` frames are kept, uniformly spaced over the clip (first and last kept; for a region
caption the RC frame is always kept), the RC box is drawn on its frame at the original resolution, and every frame
is resized to ``transformers``' Qwen2-VL ``smart_resize`` size (both sides multiples of 28, pixels within
``[min_pixels, max_pixels]``). ``fps`` of the result is the spacing of the kept frames (lower than the instance's
fps when the cap thinned them), which is what the Qwen2.5-VL processor needs for its time encoding.

Failures raise ``VideoError`` with a ``reason`` code from ``REASONS`` for the caller to count.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from data.reader import MAX_FPS, MIN_FPS
from data.schema import Instance

MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"  # zero bytes
CORRUPT_FILE = "corrupt_file"  # no backend can open / decode it
TRUNCATED_FILE = "truncated_file"  # decodes to fewer frames than its header says, and the clip needs the rest
NO_FRAMES = "no_frames"  # opens, but holds no decodable video frame
FRAMES_OUT_OF_RANGE = "frames_out_of_range"  # the clip (or the RC frame) lies outside the video
BAD_DIMENSIONS = "bad_dimensions"  # aspect ratio beyond smart_resize's limit (200)
IMAGE_TOO_LARGE = "image_too_large"  # PIL's decompression-bomb guard
RC_BOX_OUTSIDE_FRAME = "rc_box_outside_frame"
NO_MEDIA = "no_media"  # the instance names no video or image
BACKEND_UNAVAILABLE = "backend_unavailable"
REASONS: tuple[str, ...] = (MISSING_FILE, EMPTY_FILE, CORRUPT_FILE, TRUNCATED_FILE, NO_FRAMES, FRAMES_OUT_OF_RANGE,
                            BAD_DIMENSIONS, IMAGE_TOO_LARGE, RC_BOX_OUTSIDE_FRAME, NO_MEDIA, BACKEND_UNAVAILABLE)
BACKENDS = ("auto", "decord", "pyav")
PATCH_FACTOR = 28  # Qwen2.5-VL: 14-pixel patches merged 2x2
_EPS = 1e-6


class VideoError(Exception):
    """Media that cannot be turned into frames; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, eq=False)
class VideoFrames:
    """Decoded frames of one prompt. Shared by the G samples of the prompt: treat ``frames`` as read-only."""

    frames: np.ndarray  # uint8 [T, H, W, 3], H and W multiples of 28
    timestamps: np.ndarray  # float64 [T], seconds in the source video (k / fps)
    fps: float  # sampling rate of the returned frames (frames per second of video time)
    frame_indices: np.ndarray  # int64 [T], k: indices at the instance's sampling fps
    clip_start_s: float  # start_frame / fps
    original_size: tuple[int, int]  # (height, width) before resizing: scale boxes by frames.shape[1:3] / this
    backend: str  # decord | pyav | frames | image
    rc_drawn: bool = False

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def relative_timestamps(self) -> np.ndarray:
        """Seconds from the clip start (the time base of the questions/answers when the clip starts at 0)."""
        return self.timestamps - self.clip_start_s


# -- sampling plan ---------------------------------------------------------------------------------------------
def sample_positions(n: int, max_frames: int, keep: Optional[int] = None) -> np.ndarray:
    """Positions ``0..n-1`` thinned to at most ``max_frames``, uniformly spaced with both ends kept.

    ``keep``: a position that must survive (the RC frame); it replaces the nearest chosen position.
    """
    if n <= max_frames:
        return np.arange(n, dtype=np.int64)
    pos = np.floor(np.linspace(0, n - 1, max_frames) + 0.5).astype(np.int64)  # distinct: spacing > 1
    if keep is not None and 0 <= keep < n and keep not in pos:
        pos[int(np.argmin(np.abs(pos - keep)))] = keep
        pos.sort()
    return pos


def clip_frame_range(instance: Instance, n_native: int, native_fps: float) -> np.ndarray:
    """Sampled-frame indices ``k`` of the clip inside a video of ``n_native`` frames at ``native_fps``."""
    if n_native <= 0:
        raise VideoError(NO_FRAMES, "the video holds no frames")
    fps = float(instance.fps)
    duration = n_native / native_fps
    start = int(instance.start_frame)
    last_k = math.ceil(duration * fps - _EPS) - 1  # the last k with k / fps < duration
    if start / fps >= duration - _EPS:
        raise VideoError(FRAMES_OUT_OF_RANGE, f"clip starts at {start / fps:.3f} s (frame {start} at {fps:g} fps) "
                                              f"but the video lasts {duration:.3f} s")
    end = last_k
    if instance.end_frame is not None:
        if instance.end_frame / fps >= duration + 1.0 / fps - _EPS:
            raise VideoError(FRAMES_OUT_OF_RANGE, f"clip ends at {instance.end_frame / fps:.3f} s (frame "
                                                  f"{instance.end_frame}) but the video lasts {duration:.3f} s")
        if instance.end_frame < start:
            raise VideoError(FRAMES_OUT_OF_RANGE, f"end frame {instance.end_frame} is before start frame {start}")
        end = min(int(instance.end_frame), last_k)
    return np.arange(start, end + 1, dtype=np.int64)


def _native_indices(ks: np.ndarray, fps: float, native_fps: float, n_native: int) -> np.ndarray:
    return np.minimum(np.floor(ks / fps * native_fps + _EPS).astype(np.int64), n_native - 1)


# -- backends --------------------------------------------------------------------------------------------------
def _decode_decord(path: str, instance: Instance, select: Any) -> tuple[np.ndarray, np.ndarray]:
    import decord  # noqa: PLC0415 - optional dependency, imported on use

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0))
        n_native, native_fps = len(vr), float(vr.get_avg_fps())
    except (RuntimeError, decord.DECORDError) as e:
        raise _BackendFailure(str(e)) from None
    if not native_fps > 0:
        raise _BackendFailure(f"video reports fps {native_fps}")
    ks = select(clip_frame_range(instance, n_native, native_fps))
    idx = _native_indices(ks, instance.fps, native_fps, n_native)
    try:
        frames = vr.get_batch(idx.tolist()).asnumpy()
    except (RuntimeError, decord.DECORDError) as e:
        raise _BackendFailure(f"decoding frames {idx.tolist()[:8]}...: {e}") from None
    return frames, ks


def _decode_pyav(path: str, instance: Instance, select: Any) -> tuple[np.ndarray, np.ndarray]:
    import av  # noqa: PLC0415

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:  # type: ignore[attr-defined]
        raise _BackendFailure(str(e)) from None
    with container:
        if not container.streams.video:
            raise VideoError(NO_FRAMES, f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        native_fps = float(rate) if rate else 0.0
        if not native_fps > 0:
            raise _BackendFailure("the video stream reports no frame rate")
        n_native = int(stream.frames or 0)
        if n_native <= 0 and stream.duration and stream.time_base:
            n_native = int(round(float(stream.duration * stream.time_base) * native_fps))
        if n_native <= 0 and container.duration:
            n_native = int(round(container.duration / 1e6 * native_fps))
        try:
            decoded = _pyav_collect(container, stream, native_fps, n_native, instance, select)
        except av.error.FFmpegError as e:  # type: ignore[attr-defined]
            raise _BackendFailure(f"decoding: {e}") from None
    return decoded


def _pyav_collect(container: Any, stream: Any, native_fps: float, n_native: int, instance: Instance,
                  select: Any) -> tuple[np.ndarray, np.ndarray]:
    """Seek to the keyframe before the clip, decode forward, and take for each wanted native index the first frame
    at or after it (frame index = presentation time x native fps; decode order when a frame has no pts)."""
    if n_native <= 0:  # length unknown: decode everything once to learn it
        n_native = sum(1 for _ in container.decode(stream))
        container.seek(0)
    ks = select(clip_frame_range(instance, n_native, native_fps))
    idx = _native_indices(ks, instance.fps, native_fps, n_native)
    order = np.argsort(idx, kind="stable")
    out: list[Optional[np.ndarray]] = [None] * len(idx)
    t_first = float(idx[order[0]]) / native_fps
    origin = stream.start_time or 0
    seeked = t_first > 1.0 and stream.time_base is not None
    if seeked:
        container.seek(origin + int((t_first - 0.5) / stream.time_base), stream=stream, backward=True)
    ptr, last_index = 0, -1
    for count, frame in enumerate(container.decode(stream)):
        if frame.pts is not None and stream.time_base is not None:
            i = int(math.floor(float((frame.pts - origin) * stream.time_base) * native_fps + 0.5))
        elif not seeked:
            i = count
        else:
            raise _BackendFailure("frames without timestamps after a seek")
        last_index = max(last_index, i)
        arr = None
        while ptr < len(order) and idx[order[ptr]] <= i:
            arr = frame.to_ndarray(format="rgb24") if arr is None else arr
            out[order[ptr]] = arr
            ptr += 1
        if ptr == len(order):
            break
    if ptr < len(order):  # the stream is shorter than its header said: re-plan on the true length
        n_true = last_index + 1
        if n_true <= 0:
            raise VideoError(TRUNCATED_FILE, f"the header says {n_native} frames but none decodes")
        try:
            true_ks = clip_frame_range(instance, n_true, native_fps)
        except VideoError as e:
            raise VideoError(TRUNCATED_FILE, f"the header says {n_native} frames but only {n_true} decode, so "
                                             f"the clip is cut ({e.detail})") from None
        keep = np.array([a is not None for a in out]) & np.isin(ks, true_ks)
        ks = ks[keep]
        out = [a for a, k in zip(out, keep) if k]
        if not out:
            raise VideoError(TRUNCATED_FILE, f"the header says {n_native} frames but only {n_true} decode, "
                                             "none in the clip")
    return np.stack(out), ks  # type: ignore[arg-type]


class _BackendFailure(Exception):
    """A backend could not open or decode the file (auto mode then tries the next backend)."""


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoError(MISSING_FILE, f"{path} does not exist")
    if not os.path.isfile(path):
        raise VideoError(MISSING_FILE, f"{path} is not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoError(EMPTY_FILE, f"{path} is empty (0 bytes)")


def _decode_video_file(path: str, instance: Instance, backend: str, select: Any) -> tuple[np.ndarray, np.ndarray, str]:
    _check_file(path)
    order = {"auto": ("decord", "pyav"), "decord": ("decord",), "pyav": ("pyav",)}[backend]
    errors: list[str] = []
    for name in order:
        fn = _decode_decord if name == "decord" else _decode_pyav
        try:
            frames, ks = fn(path, instance, select)
        except ImportError as e:
            errors.append(f"{name}: not installed ({e})")
            continue
        except _BackendFailure as e:
            errors.append(f"{name}: {e}")
            continue
        if frames.ndim != 4 or frames.shape[0] == 0:
            errors.append(f"{name}: decoded an empty batch")
            continue
        return frames, ks, name
    reason = BACKEND_UNAVAILABLE if all("not installed" in e for e in errors) else CORRUPT_FILE
    raise VideoError(reason, f"{path}: " + "; ".join(errors))


# -- images ----------------------------------------------------------------------------------------------------
def open_image(path: str) -> Image.Image:
    """An image file as RGB; raises ``VideoError`` (missing_file, empty_file, corrupt_file, image_too_large)."""
    _check_file(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise VideoError(IMAGE_TOO_LARGE, f"{path}: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports undecodable data as any of these
        raise VideoError(CORRUPT_FILE, f"{path}: {e}") from None


# -- resizing and drawing --------------------------------------------------------------------------------------
def target_size(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) after Qwen2-VL's ``smart_resize`` (multiples of 28, pixels in [min_pixels, max_pixels])."""
    try:  # the PIL processor's copy works without torchvision; both are transformers' own smart_resize
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # noqa: PLC0415
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize  # noqa: PLC0415

    try:
        h, w = smart_resize(height, width, factor=PATCH_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as e:
        raise VideoError(BAD_DIMENSIONS, f"{height}x{width}: {e}") from None
    return int(h), int(w)


def draw_box(image: Image.Image, box: Sequence[float], color: tuple[int, int, int] = (255, 0, 0),
             width: Optional[int] = None) -> Image.Image:
    """Draw the RC rectangle (pixel coordinates of ``image``) in place; clipped to the image."""
    w_img, h_img = image.size
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < 0 or y2 < 0 or x1 > w_img - 1 or y1 > h_img - 1:
        raise VideoError(RC_BOX_OUTSIDE_FRAME, f"box {list(box)} lies outside the {w_img}x{h_img} frame")
    x1, y1 = max(0.0, x1), max(0.0, y1)
    x2, y2 = min(float(w_img - 1), x2), min(float(h_img - 1), y2)
    line = width if width is not None else max(2, round(min(w_img, h_img) / 100))
    ImageDraw.Draw(image).rectangle([x1, y1, x2, y2], outline=color, width=line)
    return image


def _finish(images: list[Image.Image], min_pixels: int, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize every frame to the first frame's smart_resize size and stack into uint8 [T, H, W, 3]."""
    w0, h0 = images[0].size
    h, w = target_size(h0, w0, min_pixels, max_pixels)
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BICUBIC)
        out[i] = np.asarray(im, dtype=np.uint8)
    return out, (h0, w0)


# -- the interface ---------------------------------------------------------------------------------------------
def load_frames(instance: Instance, max_frames: int, max_pixels: int, min_pixels: int, backend: str = "auto", *,
                rc_color: tuple[int, int, int] = (255, 0, 0), rc_width: Optional[int] = None) -> VideoFrames:
    """Decode the instance's video (file or frame list) or image; see the module docstring for the rules.

    ``backend``: ``auto`` (decord, PyAV when decord is missing or fails on the file), ``decord`` or ``pyav``;
    frame lists and images always use PIL. Raises ``VideoError`` (reason in ``REASONS``) for bad media and
    ``ValueError`` for bad arguments.
    """
    if backend not in BACKENDS:
        raise ValueError(f"video backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if max_frames < 1:
        raise ValueError(f"max_frames={max_frames} must be >= 1")
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    fps = float(instance.fps)
    if not MIN_FPS <= fps <= MAX_FPS:  # NaN fails too; data.reader enforces the same range on every row
        raise ValueError(f"instance {instance.id!r} has fps={fps}, outside [{MIN_FPS:g}, {MAX_FPS:g}]")
    rc_frame = None if instance.rc_box is None else int(round(float(instance.rc_box[0])))

    video = instance.video
    if video is None:
        if instance.image is None:
            raise VideoError(NO_MEDIA, f"instance {instance.id!r} names no video or image")
        frames, size = _finish([open_image(instance.image)], min_pixels, max_pixels)
        return VideoFrames(frames, np.zeros(1), fps, np.zeros(1, dtype=np.int64), 0.0, size, "image")

    def select(ks: np.ndarray) -> np.ndarray:
        keep = None
        if rc_frame is not None:
            hits = np.flatnonzero(ks == rc_frame)
            if hits.size == 0:
                raise VideoError(FRAMES_OUT_OF_RANGE, f"RC frame {rc_frame} is outside the clip frames "
                                                      f"{int(ks[0])}..{int(ks[-1])}")
            keep = int(hits[0])
        return ks[sample_positions(len(ks), max_frames, keep)]

    if isinstance(video, str):
        arr, ks, used = _decode_video_file(video, instance, backend, select)
        images = [Image.fromarray(np.ascontiguousarray(a)) for a in arr]
    else:
        if not video:
            raise VideoError(NO_MEDIA, f"instance {instance.id!r} has an empty frame list")
        ks = select(instance.start_frame + np.arange(len(video), dtype=np.int64))
        images = [open_image(video[int(k) - instance.start_frame]) for k in ks]
        used = "frames"

    rc_drawn = False
    if rc_frame is not None and instance.rc_box is not None:
        hits = np.flatnonzero(ks == rc_frame)
        if hits.size == 0:  # only when a stream turned out shorter than its header and lost the RC frame
            raise VideoError(FRAMES_OUT_OF_RANGE, f"RC frame {rc_frame} is past the decodable end of the video")
        j = int(hits[0])
        draw_box(images[j], instance.rc_box[1], rc_color, rc_width)
        rc_drawn = True
    frames, size = _finish(images, min_pixels, max_pixels)
    out_fps = fps
    if len(ks) > 1:
        out_fps = fps * (len(ks) - 1) / float(ks[-1] - ks[0])
    return VideoFrames(frames=frames, timestamps=ks.astype(np.float64) / fps, fps=out_fps,
                       frame_indices=ks.astype(np.int64), clip_start_s=instance.start_frame / fps,
                       original_size=size, backend=used, rc_drawn=rc_drawn)
