"""Benchmark of video decoding for rollouts (``data.video.load_frames``), side by side in one run.

Per clip, four candidates are timed interleaved (``bench.common.compare``):

* ``once``      one ``load_frames`` call per prompt, its frames shared by the G = 8 samples (what the rollout does);
* ``per_sample`` G = 8 ``load_frames`` calls per prompt (decoding again for every sample);
* ``decord`` / ``pyav``: ``load_frames`` forced to one backend (the two rows above use ``auto`` = decord first);
* ``raw_decord``: a bare decord loop over the *same* native frames (open, ``get_batch``, ``asnumpy``), no
  resizing: the floor a decord-based loader can reach. ``load_frames / raw`` is the cost of what load_frames adds
  (frame selection, PIL conversion, smart_resize to multiples of 28, RC box drawing when present).

Clips: one synthetic MedVidBench clip (``data.synthetic.generate``: 112x84, 4 fps, a few seconds) and larger
clips written with ``data.synthetic.write_mp4`` (moving gradients, H.264 when available), so container and
resolution effects show. Frame budget: ``max_frames`` frames at ``48*28*28`` pixels (the authors' budget).

Run: ``python -m bench.video [--quick] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from bench.common import Report, compare, fmt_num, parser, ratio
from data.schema import Instance
from data.video import load_frames

G = 8
MAX_PIXELS = 48 * 28 * 28
MIN_PIXELS = 4 * 28 * 28


def write_clip(path: Path, width: int, height: int, fps: int, seconds: float, seed: int) -> str:
    """An MP4 of smoothly moving colour gradients and a few drifting blocks (compresses like real video, unlike noise).
    Returns the codec used."""
    from data.synthetic import write_mp4

    n = int(round(fps * seconds))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    phase = rng.random(3) * 2 * math.pi
    blocks = rng.integers(0, [width - width // 8, height - height // 8], size=(4, 2))
    for t in range(n):
        u = t / fps
        for c in range(3):
            frames[t, :, :, c] = (127 + 100 * np.sin(xx / (37 + 11 * c) + yy / 53 + u * (0.7 + c * 0.3)
                                                     + phase[c])).astype(np.uint8)
        for j, (bx, by) in enumerate(blocks):
            x0 = int(bx + 20 * math.sin(u + j)) % (width - width // 8)
            y0 = int(by + 15 * math.cos(u * 1.3 + j)) % (height - height // 8)
            frames[t, y0:y0 + height // 8, x0:x0 + width // 8] = (40 * j, 200 - 40 * j, 90)
    return write_mp4(path, frames, fps)


def raw_decord(path: str, native_idx: list[int]) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    return vr.get_batch(native_idx).asnumpy()


def native_indices(path: str, inst: Instance, frame_indices: np.ndarray) -> list[int]:
    """The native frames ``load_frames`` decodes for sampled indices ``k`` (data.video: floor(k / fps * native))."""
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    n, native_fps = len(vr), float(vr.get_avg_fps())
    idx = np.minimum(np.floor(frame_indices / float(inst.fps) * native_fps + 1e-6).astype(np.int64), n - 1)
    return idx.tolist()


def bench_clip(name: str, inst: Instance, max_frames: int, rounds: int, min_time: float) -> dict[str, Any]:
    path = str(inst.video)
    ref = load_frames(inst, max_frames, MAX_PIXELS, MIN_PIXELS, "auto")
    ref_pyav = load_frames(inst, max_frames, MAX_PIXELS, MIN_PIXELS, "pyav")
    idx = native_indices(path, inst, ref.frame_indices)
    raw = raw_decord(path, idx)
    if raw.shape[0] != ref.num_frames:
        raise RuntimeError(f"{name}: raw decord gave {raw.shape[0]} frames, load_frames {ref.num_frames}")
    same_frames = bool(np.array_equal(ref.frame_indices, ref_pyav.frame_indices))
    # mean absolute pixel difference between the backends' outputs (same frames, different decoders/colour paths)
    backend_diff = float(np.abs(ref.frames.astype(np.int16) - ref_pyav.frames.astype(np.int16)).mean()) \
        if ref.frames.shape == ref_pyav.frames.shape else math.nan

    def once() -> None:
        load_frames(inst, max_frames, MAX_PIXELS, MIN_PIXELS, "auto")

    def per_sample() -> None:
        for _ in range(G):
            load_frames(inst, max_frames, MAX_PIXELS, MIN_PIXELS, "auto")

    t = compare({
        "once": once, "per_sample": per_sample,
        "decord": lambda: load_frames(inst, max_frames, MAX_PIXELS, MIN_PIXELS, "decord"),
        "pyav": lambda: load_frames(inst, max_frames, MAX_PIXELS, MIN_PIXELS, "pyav"),
        "raw_decord": lambda: raw_decord(path, idx),
    }, rounds=rounds, min_time=min_time)
    nf = ref.num_frames
    return {
        "clip": name, "frames": nf, "out_hw": f"{ref.frames.shape[1]}x{ref.frames.shape[2]}",
        "once_ms": 1e3 * t["once"].median, "per_sample_ms": 1e3 * t["per_sample"].median,
        "per_sample_vs_once": ratio(t["per_sample"], t["once"]),
        "decord_fps": nf / t["decord"].median, "pyav_fps": nf / t["pyav"].median,
        "pyav_vs_decord": ratio(t["pyav"], t["decord"]),
        "raw_decord_fps": nf / t["raw_decord"].median,
        "load_vs_raw": ratio(t["decord"], t["raw_decord"]),
        "backends_same_frames": same_frames, "backend_pixel_diff": backend_diff,
        "noise": max(x.spread for x in t.values()),
    }


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("video", __doc__.split("\n")[0])
    args: argparse.Namespace = ap.parse_args(argv)
    rep = Report("video", args)
    rounds, min_time = (3, 0.15) if args.quick else (5, 0.5)
    max_frames = 16
    clips = [(640, 360, 25, 8.0)] if args.quick else [(640, 360, 25, 30.0), (1280, 720, 25, 10.0)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        from data.reader import read_instances
        from data.synthetic import generate

        files = generate(Path(tmp) / "synth", n_per_task=1, seed=args.seed)
        synth = next(i for i in read_instances(files["train"]).instances if isinstance(i.video, str))
        rows.append(bench_clip(f"synthetic {Path(str(synth.video)).name}", synth, max_frames, rounds, min_time))
        for j, (w, h, fps, secs) in enumerate(clips):
            path = Path(tmp) / f"clip{j}_{w}x{h}.mp4"
            codec = write_clip(path, w, h, fps, secs, args.seed + j)
            inst = Instance(id=f"bench{j}", qa_type="tal", data_source="bench", question="", video=str(path),
                            fps=2.0, start_frame=0, end_frame=None, video_id=f"bench{j}")
            rows.append(bench_clip(f"{w}x{h} {fps}fps {secs:g}s {codec}", inst, max_frames, rounds, min_time))
    rep.table("decode", f"load_frames per prompt (G = {G}, max_frames = {max_frames}, max_pixels = 48*28*28); "
              "ratios are time / time, medians of interleaved rounds", rows, [
                  ("clip", "clip", str), ("frames", "frames", fmt_num), ("out_hw", "out HxW", str),
                  ("once_ms", "once ms", fmt_num), ("per_sample_ms", "8x ms", fmt_num),
                  ("per_sample_vs_once", "8x / once", fmt_num), ("decord_fps", "decord frames/s", fmt_num),
                  ("pyav_fps", "pyav frames/s", fmt_num), ("pyav_vs_decord", "pyav / decord", fmt_num),
                  ("raw_decord_fps", "raw decord frames/s", fmt_num), ("load_vs_raw", "load / raw", fmt_num),
                  ("backends_same_frames", "same frames", fmt_num), ("backend_pixel_diff", "pixel diff", fmt_num),
                  ("noise", "noise", lambda x: fmt_num(x, 2))])
    rep.summary["decode_once_saving_min"] = min(r["per_sample_vs_once"] for r in rows)
    rep.summary["pyav_vs_decord_median"] = float(np.median([r["pyav_vs_decord"] for r in rows]))
    rep.summary["load_frames_vs_raw_decord_max"] = max(r["load_vs_raw"] for r in rows)
    rep.targets["decode_once_saving_min"] = f"~{G} (decoding once per prompt instead of once per sample)"
    rep.note("'pixel diff' = mean |decord - pyav| over the returned uint8 frames (decoder colour conversion)")
    return rep.finish()


if __name__ == "__main__":
    main()
