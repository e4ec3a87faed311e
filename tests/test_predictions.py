"""Prediction file reader (data/predictions.py): every form, and counted skips for everything malformed."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.predictions import parse_predictions, read_predictions
from data.schema import Instance

REFS = [Instance(id=f"vid{i}&&0&&10&&1.0", qa_type=qt, data_source="S", question="q")
        for i, qt in enumerate(["tal", "stg", "next_action"])]


def test_jsonl_with_bad_lines(tmp_path):
    lines = [json.dumps({"id": "a", "prediction": "1-2 seconds"}), "", "{not json", json.dumps([1, 2]),
             json.dumps({"prediction": "no id"}), json.dumps({"id": "b"}), json.dumps({"id": "c", "prediction": 5}),
             json.dumps({"id": "a", "prediction": "again"}), json.dumps({"id": 7, "answer": "int id"})]
    p = tmp_path / "preds.jsonl"
    p.write_text("\n".join(lines))
    out = read_predictions(p)
    assert out.form == "jsonl" and out.predictions == {"a": "1-2 seconds", "7": "int id"}
    assert out.counts_by_reason == {"bad_json": 1, "not_an_object": 1, "missing_id": 1, "missing_prediction": 1,
                                    "prediction_not_text": 1, "duplicate_id": 1}
    assert [s.where for s in out.skipped][:2] == ["line 3", "line 4"]


def test_non_utf8_lines_are_counted(tmp_path):
    p = tmp_path / "preds.jsonl"
    p.write_bytes(b'{"id": "a", "prediction": "x"}\n{"id": "b", "prediction": "\xff\xfe"}\n')
    out = read_predictions(p)
    assert out.predictions == {"a": "x"} and out.counts_by_reason == {"not_utf8": 1}


def test_leaderboard_list_form_with_references(tmp_path):
    doc = [{"id": REFS[0].id, "qa_type": "tal", "prediction": "1-2 seconds"},
           {"id": REFS[1].id, "qa_type": "tal", "prediction": "wrong type"},
           {"id": "nope", "qa_type": "tal", "prediction": "x"}, "junk"]
    p = tmp_path / "submission.json"
    p.write_text("\ufeff" + json.dumps(doc), encoding="utf-8")
    out = read_predictions(p, REFS)
    assert out.form == "list" and out.predictions == {REFS[0].id + "#tal": "1-2 seconds"}
    assert REFS[0].uid == REFS[0].id + "#tal"
    assert out.qa_types == {REFS[0].id + "#tal": "tal"}
    assert out.counts_by_reason == {"qa_type_mismatch": 1, "unknown_id": 1, "not_an_object": 1}


def test_authors_index_dict_maps_to_reference_order():
    doc = {"0": {"answer": "1-2 seconds", "gnd": "0-3 seconds"}, "2": {"answer": "tying", "qa_type": "next_action"},
           "5": {"answer": "x"}, "1": {"id": REFS[1].id, "answer": "1.0 seconds: [1, 2, 3, 4]"}}
    out = parse_predictions(json.dumps(doc), REFS)
    assert out.form == "index_dict"
    assert out.predictions == {REFS[0].uid: "1-2 seconds", REFS[2].uid: "tying",
                               REFS[1].uid: "1.0 seconds: [1, 2, 3, 4]"}
    assert out.counts_by_reason == {"index_out_of_range": 1}
    no_refs = parse_predictions(json.dumps({"0": {"answer": "x"}}))
    assert no_refs.predictions == {} and no_refs.counts_by_reason == {"index_without_references": 1}


def test_id_keyed_dict_and_single_line_jsonl():
    out = parse_predictions(json.dumps({"a&&0&&1&&1.0": "text", "b": {"prediction": "p"}, "c": None}))
    assert out.form == "id_dict" and out.predictions == {"a&&0&&1&&1.0": "text", "b": "p"}
    assert out.counts_by_reason == {"missing_prediction": 1}
    one = parse_predictions('{"id": "a", "prediction": "p"}')
    assert one.form == "jsonl" and one.predictions == {"a": "p"}
    assert parse_predictions("42").counts_by_reason == {"not_an_object": 1}
    assert parse_predictions("").predictions == {}


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_predictions(tmp_path / "absent.jsonl")


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_garbage_never_raises(data):
    out = parse_predictions(data, REFS)
    assert all(isinstance(v, str) for v in out.predictions.values())


# ---------------------------------------------------------------- unique keys: one clip, several tasks

CLIP = "clip&&0&&30&&1.0"
# one clip under three qa_types, and region_caption_gpt twice (two regions of one clip)
SHARED = [Instance(id=CLIP, qa_type=qt, data_source="S", question="q", uid=uid) for qt, uid in [
    ("tal", f"{CLIP}#tal"), ("stg", f"{CLIP}#stg"), ("region_caption_gpt", f"{CLIP}#region_caption_gpt"),
    ("region_caption_gpt", f"{CLIP}#region_caption_gpt#2"), ("cvs_assessment", f"{CLIP}#cvs_assessment")]]
ONLY = Instance(id="solo", qa_type="next_action", data_source="S", question="q")


def test_same_id_under_several_qa_types_is_not_a_duplicate():
    doc = [{"id": CLIP, "qa_type": "tal", "prediction": "p-tal"},
           {"id": CLIP, "qa_type": "region_caption_gpt", "prediction": "p-rc1"},
           {"id": CLIP, "qa_type": "stg", "prediction": "p-stg"},
           {"id": CLIP, "qa_type": "region_caption_gpt", "prediction": "p-rc2"}]
    out = parse_predictions(json.dumps(doc))  # no references: keys by the uid rule alone
    assert out.skipped == []
    assert out.predictions == {f"{CLIP}#tal": "p-tal", f"{CLIP}#region_caption_gpt": "p-rc1",
                               f"{CLIP}#stg": "p-stg", f"{CLIP}#region_caption_gpt#2": "p-rc2"}
    with_refs = parse_predictions(json.dumps(doc), SHARED)
    assert with_refs.predictions == out.predictions and with_refs.skipped == []
    assert set(with_refs.predictions) <= {r.uid for r in SHARED}


def test_repeats_beyond_the_references_and_slots_of_bad_entries():
    doc = [{"id": CLIP, "qa_type": "region_caption_gpt", "prediction": None},  # bad, but takes slot 1
           {"id": CLIP, "qa_type": "region_caption_gpt", "prediction": "second"},
           {"id": CLIP, "qa_type": "region_caption_gpt", "prediction": "third"},  # only two rc references
           {"id": CLIP, "qa_type": "next_action", "prediction": "x"}]  # the clip has no NAP reference
    out = parse_predictions(json.dumps(doc), SHARED)
    assert out.predictions == {f"{CLIP}#region_caption_gpt#2": "second"}
    assert out.counts_by_reason == {"missing_prediction": 1, "duplicate_id": 1, "qa_type_mismatch": 1}
    assert [s.where for s in out.skipped] == ["item 0", "item 2", "item 3"]


def test_id_only_entries_map_to_the_unique_reference_or_are_ambiguous():
    lines = [json.dumps({"id": "solo", "prediction": "tying"}),
             json.dumps({"id": CLIP, "prediction": "which task?"}),
             json.dumps({"id": "solo", "qa_type": "next_action", "prediction": "again"})]
    out = parse_predictions("\n".join(lines), SHARED + [ONLY], jsonl=True)
    assert out.predictions == {"solo#next_action": "tying"}
    assert out.counts_by_reason == {"ambiguous_id": 1, "duplicate_id": 1}
    # without references an id-only entry stays keyed by its id
    assert parse_predictions(lines[1], jsonl=True).predictions == {CLIP: "which task?"}


def test_index_dict_and_uid_keyed_dict_map_to_reference_uids():
    idx = parse_predictions(json.dumps({"3": {"answer": "rc two"}, "0": {"answer": "tal", "id": CLIP},
                                        "1": {"answer": "x", "qa_type": "tal"}}), SHARED)
    assert idx.predictions == {f"{CLIP}#region_caption_gpt#2": "rc two", f"{CLIP}#tal": "tal"}
    assert idx.counts_by_reason == {"qa_type_mismatch": 1}
    by_uid = parse_predictions(json.dumps({f"{CLIP}#stg": "boxes", "solo": "tying"}), SHARED + [ONLY])
    assert by_uid.form == "id_dict" and by_uid.predictions == {f"{CLIP}#stg": "boxes", "solo#next_action": "tying"}
