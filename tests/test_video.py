"""data/video.py on a real MP4 (PyAV-encoded in the test) whose frame i shows a colour encoding i.

Frame i of the 10 s / 10 fps / 112x84 clip is the flat colour R = 25 * (i % 10), G = 25 * (i // 10), B = 128,
so a decoded frame tells which source frame it is, and each returned timestamp can be checked against it.
"""
from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest
from PIL import Image

from data import video as V
from data.schema import Instance
from data.video import VideoError, load_frames

W, H, NATIVE_FPS, N = 112, 84, 10, 100
BIG = 48 * 28 * 28  # the authors' per-frame budget: 112x84 (9408 px) fits unchanged
MIN = 4 * 28 * 28


def _colour(i: int) -> tuple[int, int, int]:
    return 25 * (i % 10), 25 * (i // 10), 128


def _index(frame: np.ndarray) -> int:
    """The source frame index a decoded frame shows (read from a patch away from any RC box)."""
    r, g, _ = frame[-8:, -8:].reshape(-1, 3).mean(axis=0)
    return int(round(r / 25)) + 10 * int(round(g / 25))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    path = d / "clip.mp4"
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=NATIVE_FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "0", "preset": "ultrafast"} if codec == "libx264" else {"qscale": "1"}
        for i in range(N):
            a = np.empty((H, W, 3), np.uint8)
            a[...] = _colour(i)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    frames = []
    for i in range(20):  # a frame list: 20 PNGs, entry i showing colour i
        f = d / f"frame_{i:04d}.png"
        Image.new("RGB", (W, H), _colour(i)).save(f)
        frames.append(str(f))
    (d / "empty.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 6000, dtype=np.uint8).tobytes())
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return {"dir": d, "mp4": str(path), "frames": frames}


def _inst(video, fps=2.0, start=4, end=10, **kw) -> Instance:
    return Instance(id="x", qa_type="tal", data_source="AVOS", question="q", video=video, fps=fps,
                    start_frame=start, end_frame=end, **kw)


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_frames_at_the_sampling_fps(media, backend):
    vf = load_frames(_inst(media["mp4"]), 16, BIG, MIN, backend=backend)
    # frames k = 4..10 at 2 fps -> 2.0 .. 5.0 s -> native frames 20, 25, ..., 50
    assert vf.timestamps.tolist() == [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert [_index(f) for f in vf.frames] == [20, 25, 30, 35, 40, 45, 50]
    assert vf.frame_indices.tolist() == list(range(4, 11))
    assert vf.relative_timestamps.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert vf.frames.dtype == np.uint8 and vf.frames.shape == (7, H, W, 3) and vf.original_size == (H, W)
    assert vf.fps == 2.0 and vf.backend == ("decord" if backend == "auto" else backend)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_non_divisor_fps_open_end_and_cap(media, backend):
    # 3 fps from frame 25 (8.33 s) to the end: k = 25..29; cap 4 keeps positions 0, 1, 3, 4
    vf = load_frames(_inst(media["mp4"], fps=3.0, start=25, end=None), 4, BIG, MIN, backend=backend)
    assert vf.frame_indices.tolist() == [25, 26, 28, 29]
    assert np.allclose(vf.timestamps, [25 / 3, 26 / 3, 28 / 3, 29 / 3])
    assert [_index(f) for f in vf.frames] == [83, 86, 93, 96]  # floor(t * 10): the frame shown at t
    assert vf.fps == pytest.approx(3.0 * 3 / 4)


def test_cap_uniform_subsample(media):
    vf = load_frames(_inst(media["mp4"]), 4, BIG, MIN)
    assert vf.frame_indices.tolist() == [4, 6, 8, 10]
    assert [_index(f) for f in vf.frames] == [20, 30, 40, 50]
    assert vf.fps == 1.0  # kept frames are 1 s apart


def test_pixel_budget(media):
    # 84x112 = 9408 px > 3136: smart_resize -> beta = sqrt(3), h = floor(84/sqrt(3)/28)*28 = 28, w = 56
    vf = load_frames(_inst(media["mp4"]), 2, 4 * 28 * 28, 28 * 28)
    assert vf.frames.shape == (2, 28, 56, 3) and vf.original_size == (H, W)
    assert [_index(f) for f in vf.frames] == [20, 50]  # flat colours survive resizing
    assert V.target_size(84, 112, 28 * 28, 4 * 28 * 28) == (28, 56)
    with pytest.raises(VideoError) as e:
        V.target_size(1, 300, 28 * 28, BIG)
    assert e.value.reason == "bad_dimensions"


def test_frame_image_list(media):
    inst = _inst(media["frames"], fps=1.0, start=30, end=49)
    vf = load_frames(inst, 5, BIG, MIN)
    # positions round(linspace(0, 19, 5)) = 0, 5, 10, 14, 19; entry i is frame 30 + i at 1 fps
    assert [_index(f) for f in vf.frames] == [0, 5, 10, 14, 19]
    assert vf.timestamps.tolist() == [30.0, 35.0, 40.0, 44.0, 49.0] and vf.backend == "frames"
    # an odd-sized frame list is resized to multiples of 28 within the budget
    odd = media["dir"] / "odd.png"
    Image.new("RGB", (333, 101), _colour(7)).save(odd)
    vf = load_frames(_inst([str(odd)], start=0), 4, BIG, MIN)
    assert vf.frames.shape[1] % 28 == 0 and vf.frames.shape[2] % 28 == 0
    assert vf.frames.shape[1] * vf.frames.shape[2] <= BIG and _index(vf.frames[0]) == 7


def test_image_instance(media):
    inst = Instance(id="i", qa_type="vqa_mc", data_source="PMC", question="q", image=media["frames"][3])
    vf = load_frames(inst, 8, BIG, MIN)
    assert vf.frames.shape == (1, H, W, 3) and _index(vf.frames[0]) == 3 and vf.backend == "image"


@pytest.mark.parametrize("source", ["mp4", "frames"])
def test_rc_box_is_drawn_on_its_frame(media, source):
    box = [20, 20, 90, 60]
    inst = _inst(media[source], fps=2.0, start=4, end=10, rc_box=(7, box))
    vf = load_frames(inst, 16, BIG, MIN, rc_width=3)
    j = vf.frame_indices.tolist().index(7)
    f = vf.frames[j]
    red = lambda px: px[0] > 200 and px[1] < 60 and px[2] < 60  # noqa: E731
    assert vf.rc_drawn and red(f[40, 20]) and red(f[20, 55]) and red(f[60, 55]) and red(f[40, 90])
    assert not red(f[40, 55]) and not red(f[40, 10])  # inside and outside the outline: the frame's colour
    assert not any(red(g[40, 20]) for i, g in enumerate(vf.frames) if i != j)  # only on its frame
    # the cap keeps the RC frame: of positions [0, last], the one nearest to k = 7 (the first) is replaced
    vf = load_frames(inst, 2, BIG, MIN)
    last = 10 if source == "mp4" else 4 + 19  # a frame list is the whole clip: k = 4..23
    assert vf.frame_indices.tolist() == [7, last] and red(vf.frames[0][40, 20])


def test_auto_falls_back_to_pyav(media, monkeypatch):
    def broken(*a, **k):
        raise V._BackendFailure("decord cannot read this file")

    monkeypatch.setattr(V, "_decode_decord", broken)
    vf = load_frames(_inst(media["mp4"]), 16, BIG, MIN, backend="auto")
    assert vf.backend == "pyav" and [_index(f) for f in vf.frames][:2] == [20, 25]

    def missing(*a, **k):
        raise ImportError("No module named 'decord'")

    monkeypatch.setattr(V, "_decode_decord", missing)
    assert load_frames(_inst(media["mp4"]), 16, BIG, MIN).backend == "pyav"
    with pytest.raises(VideoError) as e:
        load_frames(_inst(media["mp4"]), 16, BIG, MIN, backend="decord")
    assert e.value.reason == "backend_unavailable"


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_error_reasons(media, backend):
    d = media["dir"]
    cases = [
        (_inst(str(d / "nope.mp4")), "missing_file"),
        (_inst(str(d / "empty.mp4")), "empty_file"),
        (_inst(str(d / "corrupt.mp4")), "corrupt_file"),
        (_inst(media["mp4"], fps=2.0, start=30, end=40), "frames_out_of_range"),  # 15 s into a 10 s video
        (_inst(media["mp4"], fps=2.0, start=4, end=24), "frames_out_of_range"),  # ends at 12 s
        (_inst(media["mp4"], rc_box=(2, [0, 0, 5, 5])), "frames_out_of_range"),  # RC frame before the clip
        (_inst(media["mp4"], rc_box=(5, [500, 500, 600, 600])), "rc_box_outside_frame"),
    ]
    for inst, reason in cases:
        with pytest.raises(VideoError) as e:
            load_frames(inst, 16, BIG, MIN, backend=backend)
        assert e.value.reason == reason, (inst.video, e.value)


def test_end_within_one_sampling_period_is_clamped(media):
    # end frame 20 at 2 fps is 10.0 s, exactly the video's length: the clip just stops at k = 19 (9.5 s)
    vf = load_frames(_inst(media["mp4"], start=16, end=20), 16, BIG, MIN)
    assert vf.frame_indices.tolist() == [16, 17, 18, 19] and _index(vf.frames[-1]) == 95


def test_frame_list_errors_and_bad_arguments(media):
    d = media["dir"]
    for frames, reason in [([media["frames"][0], str(d / "gone.png")], "missing_file"),
                           ([str(d / "corrupt.png")], "corrupt_file"), ([], "no_media")]:
        with pytest.raises(VideoError) as e:
            load_frames(_inst(frames, start=0), 16, BIG, MIN)
        assert e.value.reason == reason
    with pytest.raises(VideoError) as e:
        load_frames(dataclasses.replace(_inst(None), video=None), 16, BIG, MIN)
    assert e.value.reason == "no_media"
    with pytest.raises(ValueError, match="backend"):
        load_frames(_inst(media["mp4"]), 16, BIG, MIN, backend="opencv")
    with pytest.raises(ValueError, match="min_pixels"):
        load_frames(_inst(media["mp4"]), 16, MIN, BIG)


def test_sample_positions():
    assert V.sample_positions(5, 8).tolist() == [0, 1, 2, 3, 4]
    assert V.sample_positions(10, 4).tolist() == [0, 3, 6, 9]
    assert V.sample_positions(10, 1).tolist() == [0]
    assert V.sample_positions(10, 4, keep=5).tolist() == [0, 3, 5, 9]  # 6 was the nearest to 5
    for n in range(2, 60):
        for m in range(1, n):
            p = V.sample_positions(n, m)
            assert len(set(p.tolist())) == m and p[0] == 0 and (m == 1 or p[-1] == n - 1)
