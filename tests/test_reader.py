"""data/reader.py and data/parquet.py: every MedVidBench row shape, counted skips, path confinement, Parquet."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from data import reader as R
from data.parquet import read_parquet, write_parquet
from data.reader import DataFileError, read_instances
from data.schema import Instance, TASK_FAMILY

VIDEO_QA = [q for q in TASK_FAMILY if q not in ("vqa_mc", "box_grounding", "image_cls")]


def _row(qa_type: str, question: str = "What happens?", answer: str | None = "an answer", **over):
    """A MedVidBench row as the authors' files hold it (metadata values as strings, a frame list)."""
    conv = [{"from": "human", "value": "<video>\n" + question}]
    if answer is not None:
        conv.append({"from": "gpt", "value": answer})
    row = {
        "conversations": conv,
        "video": ["frames/f0.jpg", "frames/f1.jpg", "frames/f2.jpg"],
        "metadata": {"fps": "1.0", "video_id": "vid7", "input_video_start_frame": "0",
                     "input_video_end_frame": "100"},
        "qa_type": qa_type,
        "data_source": "AVOS",
        "struc_info": {},
        "is_RC": False,
        "RC_info": {},
    }
    row.update(over)
    return row


def _write(tmp: Path, rows, name="data.json") -> Path:
    (tmp / "frames").mkdir(exist_ok=True)
    p = tmp / name
    if name.endswith(".jsonl"):
        p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    else:
        p.write_text(json.dumps(rows))
    return p


def test_examples_fixture_every_qa_type(tmp_path, examples):
    rows = [_row(qa, ex["question"], ex["answer"]) for qa, ex in sorted(examples.items())]
    res = read_instances(_write(tmp_path, rows))
    assert res.skipped == [] and res.rows_seen == len(examples) == 11
    for inst, (qa, ex) in zip(res.instances, sorted(examples.items())):
        assert inst.qa_type == qa
        assert inst.question == ex["question"]  # "<video>\n" stripped, nothing else
        assert inst.answer == ex["answer"]
        assert inst.id == "vid7&&0&&100&&1.0"
        assert (inst.fps, inst.start_frame, inst.end_frame, inst.video_id) == (1.0, 0, 100, "vid7")
        assert inst.video == [str((tmp_path / "frames" / f"f{i}.jpg").resolve()) for i in range(3)]
        assert inst.data_source == "AVOS" and inst.struc_info == {}


def test_row_shapes(tmp_path):
    tag_struc = [{"action": "cut", "spans": [{"start": 1.0, "end": 3.0}]}]
    stg_struc = [{"bbox_dict": {"1.0": [1, 2, 3, 4]}}]
    rows = [
        _row("tal", struc_info=tag_struc),
        _row("stg", struc_info=stg_struc),
        _row("next_action", struc_info=[]),
        {k: v for k, v in _row("video_summary_gpt", answer=None).items() if k != "struc_info"},
        _row("cvs_assessment", gnd="Two structures: 2", video="clips/a.mp4",
             metadata={"fps": 0.5, "video_id": 12, "start_frame": 4, "end_frame": 9, "width": "640"}),
        _row("region_caption_gpt", is_RC=True, RC_info={"start_frame": "frames/f1.jpg",
                                                        "start_frame_bbox": ["1", 2, 30.5, 40]}),
        _row("region_caption_gemini", is_RC="true", RC_info={"start_frame": 2, "start_frame_bbox": [0, 0, 5, 5]}),
        _row("skill_assessment", id="custom-id", struc_info={"gnd": "Respect for tissue: 2/5", "x": 1}),
        _row("tal", metadata={"fps": "2", "video_id": "v", "input_video_start_time": "3.0",
                              "input_video_end_time": "10.5"}, video=["clip.mp4"]),
    ]
    res = read_instances(_write(tmp_path, rows))
    assert res.skipped == [], res.details
    tal, stg, nap, vs, cvs, rc1, rc2, sa, tal2 = res.instances
    assert tal.struc_info == tag_struc and stg.struc_info == stg_struc and nap.struc_info == []
    assert vs.struc_info is None and vs.answer is None
    assert cvs.video == str((tmp_path / "clips" / "a.mp4").resolve())
    assert (cvs.fps, cvs.start_frame, cvs.end_frame, cvs.video_id) == (0.5, 4, 9, "12")
    assert cvs.id == "12&&4&&9&&0.5" and cvs.extra == {"gnd": "Two structures: 2", "metadata": {"width": "640"}}
    assert rc1.rc_box == (1, [1.0, 2.0, 30.5, 40.0])  # the path of the list's second frame -> frame 0 + 1
    assert rc2.rc_box == (2, [0.0, 0.0, 5.0, 5.0])
    assert sa.id == "custom-id" and sa.extra["gnd"] == "Respect for tissue: 2/5"
    assert sa.struc_info == {"gnd": "Respect for tissue: 2/5", "x": 1}
    # times in seconds -> frames at the sampling fps; a one-element list of a video file is that file
    assert (tal2.start_frame, tal2.end_frame, tal2.id) == (6, 21, "v&&6&&21&&2")
    assert tal2.video == str((tmp_path / "clip.mp4").resolve())


def test_image_instances(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "<image>\nWhich organ? A. liver B. lung"},
                           {"from": "gpt", "value": "<answer>A</answer>"}],
         "image": "img/a.png", "qa_type": "vqa_mc", "data_source": "PMC-VQA",
         "struc_info": {"choices": ["liver", "lung"], "answer": "A"}},
        {"conversations": [{"role": "user", "content": "Locate the polyp.<image>"}],
         "image": ["img/b.png"], "qa_type": "box_grounding", "data_source": "Kvasir", "id": 5,
         "struc_info": {"bbox": [1, 2, 3, 4], "label": "polyp"}},
        {"conversations": [{"from": "human", "value": "<image>\nGrade?"}], "image": "img/c.png",
         "qa_type": "image_cls", "data_source": "APTOS", "struc_info": {"label": "2", "classes": ["0", "1", "2"]}},
    ]
    res = read_instances(_write(tmp_path, rows))
    assert res.skipped == []
    vqa, box, cls = res.instances
    assert vqa.question == "Which organ? A. liver B. lung" and vqa.answer == "<answer>A</answer>"
    assert vqa.image == str((tmp_path / "img" / "a.png").resolve()) and vqa.video is None
    assert vqa.id == "data#0" and box.id == "5" and box.question == "Locate the polyp." and box.answer is None
    assert cls.family == "cls" and cls.fps == 1.0


def test_malformed_rows_are_counted(tmp_path):
    good = json.dumps(_row("tal"))
    lines = [
        good,
        "{not json",
        json.dumps([1, 2]),
        json.dumps({k: v for k, v in _row("tal").items() if k != "qa_type"}),
        json.dumps(_row("surgery_poem")),
        json.dumps(_row("tal", metadata={"fps": "fast", "video_id": "v"})),
        json.dumps(_row("tal", metadata={"fps": "0", "video_id": "v"})),
        json.dumps(_row("tal", metadata={"fps": 120, "video_id": "v"})),
        json.dumps(_row("tal", metadata={"fps": 1, "video_id": "v", "input_video_start_frame": "-3"})),
        json.dumps(_row("tal", metadata={"fps": 1, "video_id": "v", "input_video_start_frame": 9,
                                         "input_video_end_frame": 2})),
        json.dumps(_row("tal", metadata={"fps": 1, "video_id": "v", "input_video_start_frame": "1.5"})),
        json.dumps(_row("tal", conversations="hi")),
        json.dumps(_row("tal", conversations=[{"from": "gpt", "value": "only an answer"}])),
        json.dumps(_row("tal", video=[1, 2])),
        json.dumps(_row("tal", video=[])),
        json.dumps({k: v for k, v in _row("tal").items() if k != "video"}),
        json.dumps({k: v for k, v in _row("tal").items() if k != "data_source"}),
        json.dumps(_row("tal", metadata=["fps", 1])),
        json.dumps(_row("tal", metadata={"video_id": "v"})),
        json.dumps(_row("region_caption_gpt", is_RC=True, RC_info={"start_frame": 0, "start_frame_bbox": [1, 2]})),
        json.dumps(_row("region_caption_gpt", is_RC=True, RC_info={"start_frame": 7, "start_frame_bbox": [1, 2, 3, 4]})),
        json.dumps(_row("region_caption_gpt", is_RC=True, RC_info={})),
        "",  # blank lines are not rows
        good,
    ]
    res = read_instances(_write(tmp_path, lines, "rows.jsonl"))
    assert res.rows_seen == 23 and len(res.instances) == 2
    assert len(res.instances) + len(res.skipped) == res.rows_seen
    assert res.where_kind == "line"
    assert res.skipped[:2] == [(2, "bad_json"), (3, "not_an_object")]
    assert res.counts_by_reason == {
        "bad_frame_range": 3, "fps_out_of_range": 2, "bad_field_type": 2, "bad_media": 2, "bad_rc_info": 3,
        "bad_json": 1, "not_an_object": 1, "missing_qa_type": 1, "unknown_qa_type": 1, "bad_fps": 1,
        "missing_question": 1, "missing_media": 1, "missing_data_source": 1, "missing_fps": 1,
    }
    assert len(res.details) == len(res.skipped) and "surgery_poem" in res.details[3]
    assert "21 skipped" in res.summary()


def test_path_confinement(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "frames").mkdir(parents=True)
    outside.mkdir()
    (outside / "evil.mp4").write_bytes(b"x")
    os.symlink(outside, root / "link")
    os.symlink(outside / "evil.mp4", root / "frames" / "f9.jpg")
    rows = [
        _row("tal", video="link/evil.mp4"),  # symlinked folder leading out
        _row("tal", video=["frames/f0.jpg", "frames/f9.jpg"]),  # a symlinked frame leading out
        _row("tal", video="../outside/evil.mp4"),
        _row("tal", video="/etc/passwd"),
        _row("tal", video="link/../secret.mp4"),  # realpath: outside/../secret.mp4; lexically root/secret.mp4
        _row("tal", video="frames/../frames/ok.mp4"),
        _row("vqa_mc", image="../outside/x.png"),
        _row("region_caption_gpt", is_RC=True, RC_info={"start_frame": "../outside/f0.jpg",
                                                        "start_frame_bbox": [0, 0, 1, 1]}),
    ]
    p = root / "d.json"
    p.write_text(json.dumps(rows))
    res = read_instances(p)
    assert [w for w, _ in res.skipped] == [0, 1, 2, 3, 4, 6, 7]
    assert {r for _, r in res.skipped} == {"path_outside_roots"}
    assert [i.video for i in res.instances] == [str((root / "frames" / "ok.mp4").resolve())]
    # explicit roots: allowing `outside` too accepts the rows that lead there, not the others
    res2 = read_instances(p, data_roots=[root, outside])
    assert [w for w, _ in res2.skipped] == [3, 4]
    assert res2.instances[0].video == str((outside / "evil.mp4").resolve())
    assert res2.instances[1].video[1] == str((outside / "evil.mp4").resolve())


def test_file_level_errors(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        read_instances(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"a": 1},')
    with pytest.raises(DataFileError, match="invalid JSON at line 1"):
        read_instances(bad)
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    with pytest.raises(DataFileError, match="top-level JSON"):
        read_instances(scalar)
    with pytest.raises(DataFileError, match="directory"):
        read_instances(tmp_path)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"definitely not parquet")
    with pytest.raises(DataFileError, match="Parquet"):
        read_instances(junk)


def test_keyed_json_and_misnamed_jsonl(tmp_path):
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({"0": _row("tal"), "1": _row("nonsense")}))
    res = read_instances(keyed)
    assert res.where_kind == "key" and res.skipped == [("1", "unknown_qa_type")] and len(res.instances) == 1
    misnamed = tmp_path / "lines.json"
    misnamed.write_text(json.dumps(_row("tal")) + "\n" + json.dumps(_row("stg")) + "\n")
    res = read_instances(misnamed)
    assert [i.qa_type for i in res.instances] == ["tal", "stg"] and res.where_kind == "line"


def _instances() -> list[Instance]:
    return [
        Instance(id="a&&0&&9&&1.0", qa_type="tal", data_source="AVOS", question="When?", answer="1.0-2.0 seconds.",
                 video=["/d/f0.jpg", "/d/f1.jpg"], fps=1.0, start_frame=0, end_frame=9, video_id="a",
                 struc_info=[{"spans": [{"start": 1.0, "end": 2.0}]}], extra={"gnd": "x", "n": [1, 2]}),
        Instance(id="b", qa_type="region_caption_gpt", data_source="EgoSurgery", question="What?", answer=None,
                 video="/d/clip.mp4", fps=0.5, start_frame=3, end_frame=None, video_id="b", struc_info={},
                 rc_box=(4, [1.0, 2.0, 3.5, 4.0])),
        Instance(id="c", qa_type="vqa_mc", data_source="PMC-VQA", question="Which?", answer="A",
                 image="/d/img.png", struc_info={"choices": ["x", "y"], "answer": "A"}),
        Instance(id="d", qa_type="stg", data_source="CoPESD", question="Where?", video=["/d/f0.jpg"],
                 struc_info="raw text ground truth", extra={}),
    ]


def test_parquet_round_trip(tmp_path):
    insts = _instances()
    path = write_parquet(insts, tmp_path / "sub" / "x.parquet")
    back = read_parquet(path)
    assert back == insts
    assert isinstance(back[1].video, str) and isinstance(back[3].video, list) and back[1].rc_box[0] == 4
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.parquet"]  # no temporary left behind
    # through the reader: same instances once the media root is allowed
    res = read_instances(path, data_roots=["/d"])
    assert res.skipped == [] and res.instances == insts
    res = read_instances(path)  # default root is the Parquet file's folder: every row's media is outside
    assert res.counts_by_reason == {"path_outside_roots": 4}


def test_parquet_from_reader_and_foreign_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    res = read_instances(_write(tmp_path, [_row("tal"), _row("vqa_mc", image="i.png")]))
    out = write_parquet(res.instances, tmp_path / "t.parquet")
    assert read_instances(out).instances == res.instances
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1]}), foreign)
    with pytest.raises(DataFileError, match="missing columns"):
        read_parquet(foreign)
    with pytest.raises(TypeError, match="bad"):
        write_parquet([Instance(id="bad", qa_type="tal", data_source="s", question="q", extra={"o": object()})],
                      tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


def test_strip_placeholders():
    assert R.strip_placeholders("<video>\nQ?") == "Q?"
    assert R.strip_placeholders("Look <image> here\n") == "Look  here"


def test_uids_are_unique_and_numbered_in_file_order(tmp_path):
    rows = [
        _row("tal"),
        _row("stg"),
        _row("region_caption_gpt", video="../elsewhere.mp4"),  # skipped (outside the roots) but takes slot 1
        _row("tal", answer="another TAG query on the same clip"),
        _row("region_caption_gpt"),
        _row("region_caption_gpt"),
        _row("tal", id="explicit", metadata={"fps": "fast"}),  # skipped before media: its explicit id keys it
        _row("tal", id="explicit"),
    ]
    res = read_instances(_write(tmp_path, rows))
    cid = "vid7&&0&&100&&1.0"
    assert res.counts_by_reason == {"path_outside_roots": 1, "bad_fps": 1}
    assert [i.uid for i in res.instances] == [
        f"{cid}#tal", f"{cid}#stg", f"{cid}#tal#2", f"{cid}#region_caption_gpt#2", f"{cid}#region_caption_gpt#3",
        "explicit#tal#2"]
    assert {i.id for i in res.instances[:5]} == {cid}
    # the uid is stored: Parquet keeps it, and so does the reader reading that Parquet (row 0 of rc is gone there)
    out = write_parquet(res.instances, tmp_path / "u.parquet")
    assert [i.uid for i in read_parquet(out)] == [i.uid for i in res.instances]
    again = read_instances(out, data_roots=[tmp_path])
    assert again.skipped == [] and again.instances == res.instances
    # a stored uid that does not fit its row, or is taken, is replaced by the rule
    forged = [dict(i.to_dict(), uid=u) for i, u in zip(res.instances[:3], ["other#tal", f"{cid}#stg", f"{cid}#stg"])]
    p = tmp_path / "forged.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in forged))
    assert [i.uid for i in read_instances(p, data_roots=[tmp_path]).instances] == [f"{cid}#tal", f"{cid}#stg",
                                                                                     f"{cid}#tal#2"]


def test_uid_allocator_rule():
    a = R.UidAllocator()
    assert [a.next("x", "tal"), a.next("x", "stg"), a.next("x", "tal")] == ["x#tal", "x#stg", "x#tal#2"]
    assert a.assign("x", "tal", "x#tal#4") == "x#tal#4" and a.next("x", "tal") == "x#tal#3"
    assert a.next("x", "tal") == "x#tal#5"  # #4 was claimed
    assert a.assign("x", "tal", "x#tal#02") == "x#tal#6" and a.assign("y", "tal", "x#tal") == "y#tal"
    assert Instance(id="v", qa_type="stg", data_source="s", question="q").uid == "v#stg"
