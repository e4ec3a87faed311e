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
    assert out.form == "list" and out.predictions == {REFS[0].id: "1-2 seconds"}
    assert out.qa_types == {REFS[0].id: "tal"}
    assert out.counts_by_reason == {"qa_type_mismatch": 1, "unknown_id": 1, "not_an_object": 1}


def test_authors_index_dict_maps_to_reference_order():
    doc = {"0": {"answer": "1-2 seconds", "gnd": "0-3 seconds"}, "2": {"answer": "tying", "qa_type": "next_action"},
           "5": {"answer": "x"}, "1": {"id": REFS[1].id, "answer": "1.0 seconds: [1, 2, 3, 4]"}}
    out = parse_predictions(json.dumps(doc), REFS)
    assert out.form == "index_dict"
    assert out.predictions == {REFS[0].id: "1-2 seconds", REFS[2].id: "tying", REFS[1].id: "1.0 seconds: [1, 2, 3, 4]"}
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
