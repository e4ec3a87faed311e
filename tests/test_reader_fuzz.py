"""Property-based fuzzing (hypothesis) of the data reader and of the scorers' ground-truth side.

* ``data.reader.read_instances`` on generated files (JSON list or JSONL with garbage lines) of rows that are
  mostly valid with random perturbations: wrong types, missing keys, random strings, lone surrogates, NaN/inf,
  huge numbers, deep nesting. It never raises for row-level problems, every row is either an instance or a counted
  skip with a known reason, and every kept instance is well-formed (and survives pickling, UTF-8 JSON, Parquet and
  scoring).
* ``rewards.task_scores.score`` for every qa_type against fuzzed references (struc_info in real and broken shapes,
  answer, extra["gnd"]) and fuzzed predictions: never raises, score in [0, 1], components finite.
(tests/test_parsing.py and tests/test_task_scores.py fuzz the prediction text against fixed references.)
"""
from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import reader as R
from data.parquet import write_parquet
from data.schema import IMAGE_QA_TYPES, TASK_FAMILY, Instance, task_family
from rewards.task_scores import score

ABSENT = object()  # a field left out of the row
QA_TYPES = sorted(TASK_FAMILY)

# -- leaves and JSON values ----------------------------------------------------------------------------------
weird_text = st.sampled_from(["", " ", "\ud800", "x\udcff", "caf\u00e9", "\x00", "nan", "inf", "-1", "1e400",
                              "<video>", "../x", "1.0", "12"])
numbers = st.one_of(st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([10**400, -(10**400), 2**31, 2**63, 1e300, 5e-324, -0.0]))
leaves = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12), st.text(max_size=12), weird_text)
json_values = st.recursive(leaves, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                          st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                           max_leaves=8)


def deep(n: int) -> Any:
    v: Any = 0
    for _ in range(n):
        v = [v]
    return v


def maybe(valid: st.SearchStrategy, *bad: st.SearchStrategy, absent: bool = True) -> st.SearchStrategy:
    """Mostly (~90%) a valid value; else a bad one, a random JSON value or no field at all, so that a row of ten
    fields is kept about one time in four and every check of the reader gets its turn."""
    return weighted([(36, valid)] + [(1, b) for b in (*bad, json_values)] + ([(1, st.just(ABSENT))] if absent else []))


def weighted(choices: list[tuple[int, st.SearchStrategy]]) -> st.SearchStrategy:
    """A draw from one of the strategies with the given weights (``st.one_of`` is uniform over distinct ones)."""
    index = [i for i, (w, _) in enumerate(choices) for _ in range(w)]
    return st.sampled_from(index).flatmap(lambda i: choices[i][1])


bad_frames = st.sampled_from(["3", "2.5", -1, float("nan"), "inf", 10**400, 1e300, 2**31])
start_like = maybe(st.integers(0, 2), bad_frames, st.just(None))
end_like = maybe(st.integers(2, 40), bad_frames, st.just(None))
fps_like = maybe(st.sampled_from([1.0, 2, "1.0", 0.5, 60]),
                 st.sampled_from([0, -1, float("nan"), float("inf"), 1e9, 5e-324, "fast", True, 10**400]))
a_box = maybe(st.just([0, 0, 5, 5]), st.lists(numbers, max_size=5), st.just([5, 5, 0, 0]), absent=False)


@st.composite
def metadata(draw: Any) -> Any:
    meta = {"fps": draw(fps_like), "video_id": draw(maybe(st.just("vid"), st.integers(0, 9))),
            "input_video_start_frame": draw(start_like), "input_video_end_frame": draw(end_like)}
    if draw(st.booleans()):
        meta["input_video_start_time"] = draw(maybe(st.floats(0, 100), st.sampled_from([-1.0, 1e308, "nan"])))
    meta = {k: v for k, v in meta.items() if v is not ABSENT}
    shape = draw(st.sampled_from(["dict"] * 8 + ["json string", "other"]))
    if shape == "json string":
        return json.dumps(meta)
    return meta if shape == "dict" else draw(json_values)


turn = st.fixed_dictionaries({"from": maybe(st.sampled_from(["human", "gpt", "user", "assistant"])),
                              "value": maybe(st.sampled_from(["<video>\nWhen?", "<image>\nWhich?", "1.0-2.0 seconds.",
                                                              "", "<video>", "q\ud800"]))}
                             ).map(lambda t: {k: v for k, v in t.items() if v is not ABSENT})
conversations = maybe(st.just([{"from": "human", "value": "<video>\nWhen does it happen?"},
                               {"from": "gpt", "value": "1.0-2.0 seconds."}]),
                      st.lists(turn, max_size=3), st.just("hello"))
video_like = maybe(st.sampled_from(["clip.mp4", ["f0.jpg", "f1.jpg", "f2.jpg"], ["clip.mp4"]]),
                   st.sampled_from(["../outside.mp4", "/etc/passwd", [], ["a.mp4", "b.mp4"], "v\x00.mp4", [1, 2],
                                    "clip\udcff.mp4"]))
image_like = maybe(st.sampled_from(["img.png", ["img.png"]]), st.sampled_from(["../x.png", ["a.png", "b.png"], 3]))
rc_info = weighted([(20, st.just(ABSENT)), (1, st.just({})), (1, json_values), (10, st.fixed_dictionaries({
    "start_frame": weighted([(4, st.integers(0, 2)), (1, st.just("f1.jpg")), (1, bad_frames), (1, json_values)]),
    "start_frame_bbox": a_box}))])


@st.composite
def medvidbench_row(draw: Any) -> Any:
    qa_type = draw(maybe(st.sampled_from(QA_TYPES), st.sampled_from(["surgery_poem", " tal "])))
    row = {"conversations": draw(conversations), "qa_type": qa_type,
           "data_source": draw(maybe(st.just("AVOS"), st.just(""))), "metadata": draw(metadata()),
           "struc_info": draw(maybe(json_values, st.just(deep(R.MAX_NESTING)))),
           "id": draw(maybe(st.just(ABSENT), st.integers(0, 5), st.text(max_size=5))),
           "is_RC": draw(maybe(st.just(ABSENT), st.booleans(), st.sampled_from(["true", "no", 1]))),
           "RC_info": draw(rc_info)}
    if qa_type in IMAGE_QA_TYPES and draw(st.booleans()):
        row["image"] = draw(image_like)
    else:
        row["video"] = draw(video_like)
    if draw(st.integers(0, 3)) == 0:
        row[draw(st.text(max_size=6))] = draw(json_values)  # an unknown field: kept in extra
    return {k: v for k, v in row.items() if v is not ABSENT}


@st.composite
def instance_row(draw: Any) -> Any:
    row = {"question": draw(maybe(st.just("When?"), st.just(""))), "qa_type": draw(maybe(st.sampled_from(QA_TYPES))),
           "data_source": draw(maybe(st.just("AVOS"))), "answer": draw(maybe(st.just("1-2 seconds."))),
           "fps": draw(fps_like), "start_frame": draw(start_like), "end_frame": draw(end_like),
           "video": draw(video_like), "image": draw(image_like), "struc_info": draw(json_values),
           "rc_box": draw(weighted([(4, st.just(ABSENT)), (2, st.tuples(st.integers(0, 2), a_box)), (1, json_values)])),
           "extra": draw(maybe(st.dictionaries(st.text(max_size=5), json_values, max_size=2))),
           "uid": draw(maybe(st.just("x#tal")))}
    return {k: v for k, v in row.items() if v is not ABSENT}


rows = st.lists(weighted([(6, medvidbench_row()), (3, instance_row()), (1, json_values)]), min_size=1, max_size=5)
garbage_lines = st.sampled_from([b"{not json", b"\xff\xfe{}", b"[" * 3000, b"9" * 5000, b'{"a": "\\ud800"}', b"null"])


def _dump(value: Any) -> str:
    return json.dumps(value)  # NaN/inf as the NaN/Infinity literals Python's json reads back; surrogates escaped


def _check_instance(inst: Instance, root: str) -> None:
    assert inst.qa_type in TASK_FAMILY and task_family(inst.qa_type)
    assert isinstance(inst.data_source, str) and inst.data_source == inst.data_source.strip() != ""
    assert isinstance(inst.question, str) and inst.question.strip()
    assert inst.answer is None or isinstance(inst.answer, str)
    assert isinstance(inst.fps, float) and R.MIN_FPS <= inst.fps <= R.MAX_FPS
    assert type(inst.start_frame) is int and 0 <= inst.start_frame <= R.MAX_FRAME_INDEX
    assert inst.end_frame is None or (type(inst.end_frame) is int
                                      and inst.start_frame <= inst.end_frame <= R.MAX_FRAME_INDEX)
    paths = [inst.video] if isinstance(inst.video, str) else list(inst.video or [])
    assert inst.video is None or paths, "empty frame list"
    paths += [inst.image] if inst.image is not None else []
    assert all(isinstance(p, str) and os.path.isabs(p) and p.startswith(root + os.sep) for p in paths), paths
    if inst.qa_type in IMAGE_QA_TYPES:
        assert inst.image is not None
    else:
        assert inst.video is not None
    if inst.rc_box is not None:
        frame, box = inst.rc_box
        assert math.isfinite(float(frame)) and len(box) == 4 and all(math.isfinite(v) for v in box)
        assert box[0] <= box[2] and box[1] <= box[3]
    assert inst.uid.startswith(f"{inst.id}#{inst.qa_type}")
    pickle.loads(pickle.dumps(inst))  # Ray ships instances to the actors
    json.dumps(inst.to_dict(), ensure_ascii=False).encode("utf-8")  # logs, predictions files, Parquet
    s = score(inst, "1.0-2.0 seconds.")
    assert 0.0 <= s.score <= 1.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=rows, fmt=st.sampled_from(["json", "jsonl"]), garbage=st.lists(garbage_lines, max_size=2))
def test_reader_never_raises_on_row_problems_and_accounts_for_every_row(rows, fmt, garbage):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.realpath(tmp)
        path = Path(tmp) / f"data.{fmt}"
        if fmt == "json":
            path.write_text(_dump(rows))
            n_rows = len(rows)
        else:
            lines = [_dump(r).encode() for r in rows] + list(garbage)
            path.write_bytes(b"\n".join(lines) + b"\n")
            n_rows = len(lines)
        res = R.read_instances(path)
        assert res.rows_seen == n_rows
        assert len(res.instances) + len(res.skipped) == n_rows
        assert len(res.details) == len(res.skipped)
        assert all(reason in R.REASONS for _, reason in res.skipped), res.skipped
        wheres = [w for w, _ in res.skipped]
        assert len(set(wheres)) == len(wheres)
        assert len({i.uid for i in res.instances}) == len(res.instances)
        for inst in res.instances:
            _check_instance(inst, root)
        if res.instances:  # what the reader keeps, Parquet stores and the reader takes back unchanged in number
            back = R.read_instances(write_parquet(res.instances, Path(tmp) / "x.parquet"))
            assert back.skipped == [] and [i.uid for i in back.instances] == [i.uid for i in res.instances]


# -- scorers against fuzzed references -----------------------------------------------------------------------
num_like = st.one_of(numbers, st.sampled_from(["1.5", " 2 ", "nan", "-3", "1e400", "x", ""]), st.none())
span = st.fixed_dictionaries({"start": num_like, "end": num_like})
struc_shapes = st.one_of(
    json_values,
    st.lists(st.fixed_dictionaries({"action": st.sampled_from(["cut", "grasp"]), "spans": st.lists(span, max_size=3)}),
             max_size=3),
    st.lists(st.fixed_dictionaries({"bbox_dict": st.dictionaries(st.sampled_from(["0.0", "1.0", "-1", "nan", "x"]),
                                                                  st.lists(num_like, max_size=5), max_size=3)}),
             max_size=2),
    st.lists(st.fixed_dictionaries({"start": num_like, "end": num_like, "caption": st.text(max_size=10)}),
             max_size=4),
    st.fixed_dictionaries({"cvs_scores": st.dictionaries(st.sampled_from(["two_structures", "cystic_plate",
                                                                          "hepatocystic_triangle"]), num_like)}),
    st.fixed_dictionaries({"skill_scores": st.dictionaries(st.sampled_from(["Respect for tissue", "Time and motion",
                                                                            "Overall performance"]), num_like),
                           "skill_level": st.sampled_from(["N", "I", "E", "?"])}),
    st.fixed_dictionaries({"label": json_values, "classes": st.lists(st.text(max_size=6), max_size=3),
                           "ordinal": st.booleans()}),
    st.fixed_dictionaries({"choices": json_values, "answer": json_values}),
    st.fixed_dictionaries({"bbox": st.lists(num_like, max_size=5), "image_size": st.lists(num_like, max_size=3)}),
)
answerish = st.text(alphabet=st.sampled_from(list("0123456789.,:-[]() stoand/5\n<>answerthinkABC")), max_size=60)
texts = st.one_of(st.none(), st.text(max_size=40), answerish, weird_text)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qa_type=st.sampled_from(QA_TYPES + ["made_up"]), struc_info=struc_shapes, answer=texts, gnd=json_values,
       prediction=st.one_of(texts, st.binary(max_size=40)), tau=st.one_of(st.none(), st.floats(0, 1)),
       gate=st.booleans(), think=st.booleans())
def test_scores_against_fuzzed_references_stay_in_range(qa_type, struc_info, answer, gnd, prediction, tau, gate,
                                                        think):
    inst = Instance(id="r", qa_type=qa_type, data_source="S", question="Which? ['cut', 'grasp']",
                    answer=answer if isinstance(answer, str) else None, struc_info=struc_info, extra={"gnd": gnd})
    for pred in (prediction, answer):
        s = score(inst, pred, iou_threshold=tau, format_gate=gate, require_think=think)
        assert 0.0 <= s.score <= 1.0
        assert all(isinstance(v, float) and math.isfinite(v) for v in s.components.values()), s
        assert s.reason is None or isinstance(s.reason, str)
