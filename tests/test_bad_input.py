"""Bad input end to end (issue 5): every kind of broken data file, row, media file and model output is a clear error
at load time or a counted skip with a reason at run time, never a crash, a hang or a silent drop.

Covers data/reader.py, data/parquet.py, data/video.py, data/prompting.py, rewards/parsing.py,
rewards/task_scores.py, rewards/metrics.py, rewards/shaping.py and rewards/assembly.py. The property-based
versions (random rows, random struc_info) live in tests/test_reader_fuzz.py.
"""
from __future__ import annotations

import json
import math
import pickle
import random
import re
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from data import reader as R
from data import video as V
from data.parquet import write_parquet
from data.prompting import load_media
from data.reader import DataFileError, read_instances
from data.schema import Instance, TASK_FAMILY
from data.video import VideoError, load_frames
from rewards import metrics as M
from rewards import parsing as P
from rewards import shaping as S
from rewards.assembly import SampleReward, combine, normalization_requests
from rewards.task_scores import score

BIG, MIN = 48 * 28 * 28, 4 * 28 * 28


def _row(qa_type: str = "tal", **over) -> dict:
    row = {"conversations": [{"from": "human", "value": "<video>\nWhen does the grasper cut?"},
                             {"from": "gpt", "value": "1.0-3.0 seconds."}],
           "video": "clip.mp4", "qa_type": qa_type, "data_source": "AVOS",
           "metadata": {"fps": 1.0, "video_id": "v", "input_video_start_frame": 0, "input_video_end_frame": 9}}
    row.update(over)
    return row


def _meta(**over) -> dict:
    return _row(metadata={"fps": 1.0, "video_id": "v", **over})


def _read(tmp_path: Path, rows: list, name: str = "rows.json") -> R.ReadResult:
    p = tmp_path / name
    p.write_text(json.dumps(rows))
    res = read_instances(p)
    assert len(res.instances) + len(res.skipped) == res.rows_seen == len(rows)
    return res


# ------------------------------------------------------------------------------------------ data files (load time)

@pytest.mark.parametrize("name, content, match", [
    ("notjson.json", b"this is not json", "invalid JSON at line 1 column 1"),
    ("truncated.json", json.dumps([_row(), _row()]).encode()[:150], "invalid JSON"),
    ("empty.json", b"", "invalid JSON at line 1 column 1"),
    ("scalar.json", b"3.5", "top-level JSON must be a list .* got float"),
    ("null.json", b"null", "got NoneType"),
    ("string.json", b'"rows"', "got str"),
    ("mixed.json", json.dumps({"a": _row(), "b": 7}).encode(), "got dict of dict, int"),
    ("deep.json", b"[" * 100_000, "nested too deeply"),
    ("deep_closed.json", b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ("bigint.json", b"[" + b"7" * 5000 + b"]", "4300 digits"),
    ("utf16.json", json.dumps([_row()]).encode("utf-16"), "not UTF-8 text"),
    ("latin1.json", json.dumps([_row(data_source="cafX")]).encode().replace(b"cafX", b"caf\xe9"), "not UTF-8"),
    ("noise.bin", bytes(range(256)) * 4, "not a JSON, JSONL or Parquet file"),
])
def test_unreadable_files_are_a_clear_error_at_load_time(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataFileError, match=match):
        read_instances(p)


def test_bad_jsonl_lines_are_counted_skips(tmp_path):
    good = json.dumps(_row()).encode()
    lines = [good, b'{"qa_type": "tal", "data_source": "caf\xe9"}', b"[" * 100_000, b"9" * 5000, b"{truncated",
             b"null", b"[1, 2]", b'"a row?"', b"42", b"", good]
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    res = read_instances(p)
    assert res.rows_seen == 10 and len(res.instances) == 2  # the blank line is not a row
    assert res.skipped == [(2, "bad_json"), (3, "bad_json"), (4, "bad_json"), (5, "bad_json"),
                           (6, "not_an_object"), (7, "not_an_object"), (8, "not_an_object"), (9, "not_an_object")]
    assert "not UTF-8" in res.details[0] and "nested too deeply" in res.details[1]
    assert "4300 digits" in res.details[2] and "row is NoneType" in res.details[4]


def test_rows_that_are_not_objects_are_counted(tmp_path):
    res = _read(tmp_path, [None, [1, 2], "text", 5, True, 2.5, _row()])
    assert res.skipped == [(i, "not_an_object") for i in range(6)] and len(res.instances) == 1


def test_empty_jsonl_is_zero_rows_not_an_error(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    res = read_instances(p)
    assert res.rows_seen == 0 and res.instances == [] and res.skipped == []


def test_non_unicode_strings_in_rows_are_bad_text(tmp_path):
    # json.dumps writes a lone surrogate as the escape "\ud800": valid JSON, but not text any tokenizer, path
    # or UTF-8 writer takes. A proper surrogate pair (an escaped emoji) is fine.
    rows = [
        _row(conversations=[{"from": "human", "value": "<video>\nwhen?\ud800"}]),
        _row(conversations=[{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": "a\udcff"}]),
        _row(video="clip\udc80.mp4"),
        _row(struc_info=[{"caption": "cut \udfff"}]),
        _row(struc_info={"k\ud800": 1}),  # a key
        _row(id="x\ud83d"),
        _row(metadata=json.dumps({"fps": 1, "video_id": "v\ud800"})),  # metadata as a JSON string, decoded
        _row(conversations=[{"from": "human", "value": "<video>\nwhich tool? \ud83d\ude00 caf\u00e9"}]),
    ]
    res = _read(tmp_path, rows)
    assert res.skipped == [(i, "bad_text") for i in range(7)]
    assert res.instances[0].question == "which tool? \U0001F600 caf\u00e9"
    assert "lone surrogate at position 13" in res.details[0]  # "<video>\nwhen?" is 13 characters


def test_nesting_limit(tmp_path):
    def nest(depth: int):
        v: object = 1
        for _ in range(depth):
            v = [v]
        return v
    # the row is level 1 and struc_info's list level 2, so R.MAX_NESTING - 1 lists is the deepest accepted
    ok, deep = nest(R.MAX_NESTING - 1), nest(R.MAX_NESTING)
    res = _read(tmp_path, [_row(struc_info=ok), _row(struc_info=deep), _row(extra_field={"a": {"b": deep}}),
                           _row(metadata='{"fps": 1, "x": ' + "[" * 5000 + "]" * 5000 + "}")])
    assert res.skipped == [(1, "nested_too_deep"), (2, "nested_too_deep"), (3, "bad_field_type")]
    pickle.dumps(res.instances[0])  # what Ray does to every instance it ships


@pytest.mark.parametrize("fps, reason", [
    (0, "fps_out_of_range"), (-1, "fps_out_of_range"), ("-0.5", "fps_out_of_range"), (1e9, "fps_out_of_range"),
    (5e-324, "fps_out_of_range"), (R.MIN_FPS / 2, "fps_out_of_range"), (60.5, "fps_out_of_range"),
    (float("nan"), "bad_fps"), ("nan", "bad_fps"), (float("inf"), "bad_fps"), ("inf", "bad_fps"),
    ("1e400", "bad_fps"), (10**400, "bad_fps"), (True, "bad_fps"), ("fast", "bad_fps"), ([1], "bad_fps"),
    (None, "missing_fps"), ("  ", "missing_fps"),
])
def test_absurd_fps_is_a_counted_skip(tmp_path, fps, reason):
    res = _read(tmp_path, [_meta(fps=fps), _meta()])
    assert res.skipped == [(0, reason)] and len(res.instances) == 1


def test_fps_range_edges_are_accepted(tmp_path):
    res = _read(tmp_path, [_meta(fps=R.MIN_FPS), _meta(fps=R.MAX_FPS), _meta(fps="0.5")])
    assert [i.fps for i in res.instances] == [R.MIN_FPS, R.MAX_FPS, 0.5]


@pytest.mark.parametrize("meta", [
    {"input_video_start_frame": 1e300}, {"input_video_start_frame": 10**400},
    {"input_video_end_frame": R.MAX_FRAME_INDEX + 1}, {"input_video_start_frame": float("nan")},
    {"input_video_start_frame": "inf"}, {"input_video_start_frame": -1}, {"input_video_start_frame": 2.5},
    {"input_video_start_frame": 9, "input_video_end_frame": 3},
    {"input_video_start_time": 1e308}, {"input_video_start_time": -0.5}, {"input_video_end_time": "nan"},
    {"input_video_start_time": 10.0, "input_video_end_time": 4.0},
])
def test_bad_frame_ranges_are_counted_skips(tmp_path, meta):
    row = _row(metadata={"fps": 60, "video_id": "v", **meta})
    res = _read(tmp_path, [row])
    assert res.skipped == [(0, "bad_frame_range")]


def test_frame_index_limit_is_inclusive(tmp_path):
    res = _read(tmp_path, [_meta(input_video_start_frame=R.MAX_FRAME_INDEX)])
    assert res.instances[0].start_frame == R.MAX_FRAME_INDEX and res.instances[0].end_frame is None


def test_struc_info_of_any_type_is_kept_for_the_scorer(tmp_path):
    shapes = ["abc", 5, [float("nan"), {"start": "x", "end": None}], {"spans": "1-2"}, [], None, True]
    res = _read(tmp_path, [_row(struc_info=s) for s in shapes])
    assert len(res.instances) == len(shapes)
    for inst in res.instances:  # the reference answer text is the fallback ground truth
        s = score(inst, "1.0-3.0 seconds.")
        assert s.score == 1.0, (inst.struc_info, s)


def _parquet_with(tmp_path: Path, column: str, value: str) -> Path:
    p = tmp_path / "x.parquet"
    insts = [Instance(id=str(i), qa_type="tal", data_source="AVOS", question="q", video=str(tmp_path / "c.mp4"))
             for i in range(3)]
    write_parquet(insts, p)
    table = pq.read_table(p)
    col = table.column(column).to_pylist()
    col[1] = value
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, [col]), p)
    return p


@pytest.mark.parametrize("value, detail", [("[" * 5000 + "]" * 5000, "nested too deeply"),
                                           ("[" + "1" * 5000 + "]", "4300 digits"),
                                           ('{"a": ', "does not decode")])
def test_bad_parquet_json_columns_are_counted(tmp_path, value, detail):
    res = read_instances(_parquet_with(tmp_path, "struc_info", value))
    assert res.skipped == [(1, "bad_json")] and len(res.instances) == 2 and detail in res.details[0]


# ------------------------------------------------------------------------------------------ media (run time)

def _mp4(path: Path, n: int = 100, fps: int = 10, faststart: bool = False) -> bytes:
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = 112, 84, "yuv420p"
        for i in range(n):
            a = np.full((84, 112, 3), (25 * (i % 10), 25 * (i // 10), 128), np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path.read_bytes()


@pytest.fixture(scope="module")
def broken_media(tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    plain = _mp4(d / "plain.mp4")  # moov atom at the end
    fast = _mp4(d / "fast.mp4", faststart=True)  # moov first: a cut file still opens
    (d / "cut_plain.mp4").write_bytes(plain[: len(plain) // 2])
    (d / "cut_fast.mp4").write_bytes(fast[: len(fast) // 2])
    (d / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    (d / "zero.mp4").write_bytes(b"")
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_text("not a png")
    return d


def _clip(video: str, start: int = 0, end=19, fps: float = 2.0) -> Instance:
    return Instance(id="x", qa_type="tal", data_source="AVOS", question="q", video=video, fps=fps,
                    start_frame=start, end_frame=end)


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_broken_video_files_raise_a_reason(broken_media, backend):
    d = broken_media
    cases = [("missing.mp4", {"missing_file"}), ("zero.mp4", {"empty_file"}), ("text.mp4", {"corrupt_file"}),
             ("cut_plain.mp4", {"corrupt_file"}),
             # decord refuses the cut file outright; PyAV decodes the first second and sees the clip is cut
             ("cut_fast.mp4", {"corrupt_file"} if backend == "decord" else {"truncated_file"})]
    for name, reasons in cases:
        with pytest.raises(VideoError) as e:
            load_frames(_clip(str(d / name)), 16, BIG, MIN, backend=backend)
        assert e.value.reason in reasons and e.value.reason in V.REASONS, (name, e.value)


def test_truncated_video_with_an_open_end_keeps_the_decodable_frames(broken_media, monkeypatch):
    monkeypatch.setattr(V, "target_size", lambda h, w, lo, hi: (h, w))  # 84x112 is 3x4 patches; skips transformers
    # 10 of the 100 native frames (1 s at 10 fps) decode: sampled frames 0 and 1 at 2 fps
    vf = load_frames(_clip(str(broken_media / "cut_fast.mp4"), end=None), 16, BIG, MIN, backend="pyav")
    assert vf.frame_indices.tolist() == [0, 1] and vf.num_frames == 2


def test_frames_beyond_the_video_are_a_reason(broken_media):
    mp4 = str(broken_media / "plain.mp4")  # 10 s
    for start, end in [(25, 30), (0, 30), (10**6, None)]:
        with pytest.raises(VideoError) as e:
            load_frames(_clip(mp4, start, end), 16, BIG, MIN, backend="pyav")
        assert e.value.reason == "frames_out_of_range"


@pytest.mark.parametrize("fps", [0.0, -2.0, float("nan"), float("inf"), 1e9, 1e-9])
def test_load_frames_refuses_absurd_fps(broken_media, fps):
    with pytest.raises(ValueError, match="fps"):
        load_frames(_clip(str(broken_media / "plain.mp4"), fps=fps), 16, BIG, MIN)


@pytest.mark.parametrize("name, reason", [("zero.png", "empty_file"), ("text.png", "corrupt_file"),
                                          ("gone.png", "missing_file")])
def test_broken_images_raise_a_known_reason(broken_media, name, reason):
    inst = Instance(id="i", qa_type="vqa_mc", data_source="PMC", question="q", image=str(broken_media / name))
    with pytest.raises(VideoError) as e:
        load_media(inst, max_frames=4, max_pixels=BIG, min_pixels=MIN)
    assert e.value.reason == reason and reason in V.REASONS


# ------------------------------------------------------------------------------------------ model outputs

CHOICES = ["A. Edema", "B. Pneumonia", "C. Effusion"]


def _references(examples) -> list[Instance]:
    refs = [Instance(id="r", qa_type=qt, data_source="S", question=ex["question"], answer=ex["answer"])
            for qt, ex in sorted(examples.items())]
    refs += [Instance(id="r", qa_type="vqa_mc", data_source="S", question="q", answer="B",
                      struc_info={"choices": CHOICES, "answer": "B"}),
             Instance(id="r", qa_type="box_grounding", data_source="S", question="q",
                      struc_info={"bbox": [10, 20, 60, 80], "image_size": [100, 100]}),
             Instance(id="r", qa_type="image_cls", data_source="S", question="q",
                      struc_info={"label": "mild", "classes": ["none", "mild", "severe"], "ordinal": True})]
    assert {r.qa_type for r in refs} == set(TASK_FAMILY)
    return refs


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    """Model outputs no parser should choke on (the reference answer repeated to 1 MB is added per task)."""
    rng = random.Random(0)
    return {
        "empty": "",
        "whitespace": " \n\t " * 1000,
        "1MB random bytes": rng.randbytes(1_000_000).decode("utf-8", errors="replace"),
        "1MB unclosed think": "<think>" * 150_000,
        # past parsing.MAX_CHARS (32k) the size no longer changes what is parsed: 200 kB is enough for these
        "200kB tags": "<answer>1-2</answer>" * 10_000,
        "200kB events": "".join(f"{i}-{i + 1}: a " for i in range(20_000)),
        "200kB boxes": "0.5 seconds: [1, 2, 3, 4] " * 8_000,
        "200kB digits": "9" * 200_000,
        "NUL and surrogates": "\x00\udcff" * 10_000,
    }


def test_every_task_scores_any_output_in_range(examples, outputs):
    for ref in _references(examples):
        answer = ref.answer or "B"
        cases = {**outputs, "1MB answer": (answer + " ") * (1_000_000 // (len(answer) + 1))}
        for i, (name, text) in enumerate(cases.items()):
            s = score(ref, text, require_think=i % 2 == 1)
            assert 0.0 <= s.score <= 1.0, (ref.qa_type, name, s)
            assert all(math.isfinite(v) for v in s.components.values()), (ref.qa_type, name, s)
            assert s.reason is None or s.reason in P.REASONS or s.reason == "non_finite", (ref.qa_type, name, s)
            if name in ("empty", "whitespace", "1MB unclosed think"):
                assert s.score == 0.0 and not s.format_ok and s.reason == "empty"


_TAG = re.compile(r"<\s{0,3}(/?)\s{0,3}(answer|think)\s{0,3}>", re.I)


def _plain_extract_answer(text: str) -> str:
    """The answer-extraction rule of rewards.parsing written out as one pass over every tag."""
    open_end = best = think_close_end = None
    think_open = False
    for m in _TAG.finditer(text):
        closing, name = m.group(1) == "/", m.group(2).casefold()
        if name == "answer":
            if not closing:
                open_end = m.end()
            elif open_end is not None:
                best, open_end = (open_end, m.start()), None
        elif closing:
            think_close_end = m.end()
        else:
            think_open = True
    if best is not None:
        return text[best[0]:best[1]]
    if open_end is not None:
        return text[open_end:]
    if think_close_end is not None:
        return text[think_close_end:]
    return "" if think_open else text


def test_answer_extraction_by_search_matches_the_one_pass_rule():
    rng = random.Random(5)
    pieces = ["<answer>", "</answer>", "<think>", "</think>", "< / answer >", "<  ANSWER>", "<   /   think   >",
              "<    think>", "<       answer>", "</ answer    >", "<\u00a0answer>", "<an\u017fwer>", "<thin\u212a>",
              "x", " ", "\n", "<", ">", "/", "answer", "think"]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert P.extract_answer(text) == _plain_extract_answer(text), repr(text)


def test_think_check_stops_after_the_fifth_tag():
    assert P.think_answer_problem("<think>a</think><answer>b</answer>") is None
    assert P.think_answer_problem("<think>a</think><answer>b</answer>" * 200_000) == "bad_tags"


@pytest.mark.parametrize("text", ["no tags", "<think>a</think>b", "x<THINK>a\nb</think>c</think>", "<think>open",
                                  "</think><think>x</think>", "<think><think>y</Think>", "<think>" * 50 + "z"])
def test_reasoning_text_matches_the_lazy_regex(text):
    m = re.search(r"<think>(.*?)</think>", text, re.S | re.I)
    assert S.reasoning_text(text) == (m.group(1) if m else text)


def test_reasoning_text_is_linear_on_unclosed_tags():
    text = "<think>" * 150_000  # the lazy regex needs ~10^11 steps here
    assert S.reasoning_text(text) is text


def test_recitation_reads_a_bounded_prefix():
    knowledge = "The cystic duct is clipped and divided before the gallbladder is removed."
    reasoning = "the cystic duct is clipped. " * 2000  # 56k characters
    assert S.recitation_score(reasoning + "noise " * 200_000, knowledge) == \
        S.recitation_score(reasoning[:S.MAX_REASONING_CHARS], knowledge)
    assert 0.0 < S.recitation_score(reasoning, knowledge) <= 1.0


# ------------------------------------------------------------------------------------------ bad struc_info values

def _tag(struc_info, answer=None) -> Instance:
    return Instance(id="r", qa_type="tal", data_source="S", question="q", answer=answer, struc_info=struc_info)


@pytest.mark.parametrize("spans, expected", [
    ([{"start": "1.0", "end": "3"}], [(1.0, 3.0)]),  # numeric strings are numbers
    ([{"start": -2, "end": 3}, {"start": 5, "end": 6}], [(5.0, 6.0)]),  # a negative time is skipped
    ([{"start": float("nan"), "end": 3}, {"start": 4, "end": "inf"}, {"start": 5, "end": 6}], [(5.0, 6.0)]),
    ([{"start": 10**400, "end": 10**401}, {"start": "x", "end": 2}, {"start": 5, "end": 6}], [(5.0, 6.0)]),
    ([{"start": 9, "end": 3}, [5, 6]], [(5.0, 6.0)]),  # start > end is skipped
])
def test_reference_segments_skip_bad_values(spans, expected):
    assert P.gt_segments(_tag([{"action": "cut", "spans": spans}])).value == expected


@pytest.mark.parametrize("spans", [[{"start": -2, "end": 3}], [{"start": 9, "end": 3}], [{"start": "nan", "end": 1}],
                                   [{"start": True, "end": 2}], "1-2", [[[[[[[[1, 2]]]]]]]]])
def test_unusable_reference_is_a_reason_not_a_score(spans):
    s = score(_tag([{"spans": spans}]), "1-2 seconds.")
    assert s.score == 0.0 and s.reason == "gt_missing"


def test_other_references_skip_bad_values():
    stg = Instance(id="r", qa_type="stg", data_source="S", question="q", struc_info=[{"bbox_dict": {
        "-1.0": [0, 0, 5, 5], "nan": [0, 0, 5, 5], "inf": [0, 0, 5, 5], "2.0": ["1", "2", "30", "40"],
        "3.0": [5, 5, 1, 1], "4.0": [0, 0, float("nan"), 4]}}])
    assert P.gt_stg_boxes(stg).value == {2.0: (1.0, 2.0, 30.0, 40.0)}
    dvc = Instance(id="r", qa_type="dense_captioning_gpt", data_source="S", question="q", struc_info=[
        {"start": -1, "end": 2, "caption": "a"}, {"start": 3, "end": 1, "caption": "b"},
        {"segment": ["4", "6"], "caption": "c"}, {"start": float("inf"), "end": 9, "caption": "d"}])
    assert P.gt_events(dvc).value == [P.Event(4.0, 6.0, "c")]
    cvs = Instance(id="r", qa_type="cvs_assessment", data_source="S", question="q",
                   struc_info={"two_structures": 10**400, "cystic_plate": 1, "hepatocystic_triangle": 1})
    assert score(cvs, "Two structures: 2, Cystic plate: 1, Hepatocystic triangle: 1").reason == "gt_missing"
    deep: object = [0, 0, 5, 5]
    for _ in range(5000):  # built in Python (the reader refuses such rows): only the depth limit stops this
        deep = [deep]
    box = Instance(id="r", qa_type="box_grounding", data_source="S", question="q", struc_info={"bbox": deep})
    assert score(box, "[0, 0, 5, 5]").reason == "gt_missing"


def test_skill_accuracy_of_non_finite_scores_is_zero():
    nan = {a: float("nan") for a in P.SKILL_ASPECTS}
    assert M.skill_accuracy(nan, nan) == 0.0  # skill_level(nan) alone would read "expert" on both sides
    assert M.skill_accuracy({"x": 5.0}, {"y": 4.0}) == 1.0


# ------------------------------------------------------------------------------------------ bounded DVC matching

def _brute_dvc_f1(pred, gt, thresholds=M.DVC_TIOU_THRESHOLDS):
    """The module docstring's rule written out plainly (pairwise IoU, sort, greedy)."""
    if not gt:
        return 1.0 if not pred else 0.0
    if not pred:
        return 0.0
    f1s = []
    for theta in thresholds:
        pairs = sorted((-M.segment_iou(p, g), gi, pi) for gi, g in enumerate(gt) for pi, p in enumerate(pred)
                       if M.segment_iou(p, g) >= theta)
        ug, up = set(), set()
        for _, gi, pi in pairs:
            if gi not in ug and pi not in up:
                ug.add(gi)
                up.add(pi)
        prec, rec = len(ug) / len(pred), len(ug) / len(gt)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(f1s) / len(f1s)


def test_vectorised_dvc_matches_the_plain_rule():
    rng = random.Random(3)
    vals = [0.0, 1.0, 2.5, 3.0, 4.0, 7.5, float("nan"), float("inf"), -1.0]
    for _ in range(400):
        pred = [(rng.choice(vals), rng.choice(vals)) for _ in range(rng.randint(0, 6))]
        gt = [(rng.choice(vals), rng.choice(vals)) for _ in range(rng.randint(0, 6))]
        assert M.dvc_f1(pred, gt) == _brute_dvc_f1(pred, gt), (pred, gt)


def test_dvc_matching_is_capped():
    n = M.MAX_DVC_EVENTS
    segs = [(float(i), i + 1.0) for i in range(5 * n)]
    # only the first n of each side can match: precision = recall = n / 5n
    assert M.dvc_f1(segs, segs) == pytest.approx(0.2)
    assert M.dvc_f1(segs[:n], segs[:n]) == 1.0
    # a degenerate prediction of 5000 copies of one event against 3 references: one match
    assert M.dvc_f1([(0.0, 1.0)] * 5000, segs[:3]) == pytest.approx(2 * (1 / 5000) * (1 / 3) / (1 / 5000 + 1 / 3))


# ------------------------------------------------------------------------------------------ NaN / inf rewards

def test_non_finite_reward_components_are_never_normalized_and_come_out_nan():
    nan, inf = float("nan"), float("inf")
    samples = [
        SampleReward("S", "tal", "tag", {"task": 0.5}),
        SampleReward("S", "tal", "tag", {"task": nan}),
        SampleReward("S", "tal", "tag", {"task": inf}),
        SampleReward("S", "tal", "tag", {"task": None}),
        SampleReward("S", "video_summary_gpt", "vs", {"judge": nan, "similarity": 0.4}),
        SampleReward("S", "video_summary_gpt", "vs", {"judge": -inf, "similarity": nan}),
        SampleReward("S", "tal", "tag", {"task": 0.5}, shaping={"length": inf}),
    ]
    keys, values, where = normalization_requests(samples)
    assert values == [0.5, 0.4, 0.5] and where == [(0, "task"), (4, "similarity"), (6, "task")]
    assert keys == [("S", "tal"), ("S", "video_summary_gpt", "similarity"), ("S", "tal")]
    res = combine(samples, values, where)  # identity normalization
    assert res.rewards[0] == 0.5 and res.rewards[4] == 0.4
    assert all(math.isnan(res.rewards[i]) for i in (1, 2, 3, 5, 6))
    assert res.counters == {"reward_nonfinite": 5, "caption_judge_fallback": 1, "caption_reward_missing": 1}


def test_shaping_terms_refuse_or_zero_non_finite_inputs():
    assert S.graded_reward(float("inf"), 2) == 0.0 and S.graded_reward(float("nan"), 2) == 0.0
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            S.graded_reward(1, bad)
        with pytest.raises(ValueError):
            S.recitation_reward("a b c", "a b c", bad)
        with pytest.raises(ValueError):
            S.length_reward(bad, 10, mode="ecr")  # type: ignore[arg-type]
