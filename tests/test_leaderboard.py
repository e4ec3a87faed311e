"""Leaderboard evaluator (rewards/leaderboard.py): the table, per-source breakdown, counts, judge handling."""
from __future__ import annotations

import pytest

from data.schema import Instance
from rewards.leaderboard import COLUMNS, evaluate, format_table

RULE_COLUMNS = ["cvs_acc", "nap_acc", "sa_acc", "stg_miou", "tag_miou@0.3", "tag_miou@0.5", "dvc_f1"]


def ref(rid: str, qa_type: str, source: str, answer=None, struc_info=None, question: str = "q") -> Instance:
    return Instance(id=rid, qa_type=qa_type, data_source=source, question=question, answer=answer,
                    struc_info=struc_info)


@pytest.fixture()
def case():
    refs = [
        ref("t1", "tal", "A", "0-10 seconds."),
        ref("t2", "tal", "B", "0-10 seconds."),
        ref("t3", "tal", "B", "0-10 seconds."),
        ref("c1", "cvs_assessment", "A", "Two structures: 2, Cystic plate: 1, Hepatocystic triangle: 0"),
        ref("c2", "cvs_assessment", "A", "Two structures: 2, Cystic plate: 1, Hepatocystic triangle: 0"),
        ref("s1", "stg", "B", struc_info=[{"bbox_dict": {"1.0": [0, 0, 2, 2]}}]),
        ref("v1", "video_summary_gpt", "A", "reference summary one"),
        ref("v2", "video_summary_gemini", "B", "reference summary two"),
        ref("v3", "video_summary_gpt", "B", "reference summary three"),
        ref("r1", "region_caption_gpt", "A", "reference region caption"),
        ref("bad", "tal", "A", None),
        ref("unk", "not_a_task", "A", "x"),
    ]
    preds = {"t1": "0-4 seconds.", "t2": "The action spans 0 to 6 seconds.", "c1": refs[3].answer,
             "c2": "no idea", "s1": "1.0 seconds: [0, 0, 2, 2]", "v1": "cand one", "v2": "cand two",
             "r1": "<think>hm</think><answer>cand r</answer>", "bad": "1-2 seconds", "zzz": "orphan"}
    return refs, preds


JUDGE = {"cand one": 4.0, "cand two": None, "cand r": 6.0}  # 6 is off the 1-5 scale: counted as missing


def test_table_counts_and_breakdown(case):
    refs, preds = case
    calls = []

    def judge(pairs):
        calls.append(pairs)
        return [JUDGE[c] for _, c in pairs]

    res = evaluate(refs, preds, judge_fn=judge)
    t, c = res["table"], res["counts"]
    assert calls == [[("reference summary one", "cand one"), ("reference summary two", "cand two"),
                      ("reference region caption", "cand r")]]
    # TAG IoUs 0.4, 0.6 and a missing prediction (0)
    assert t["tag_miou@0.3"] == pytest.approx((0.4 + 0.6 + 0) / 3)
    assert t["tag_miou@0.5"] == pytest.approx((0 + 0.6 + 0) / 3)
    assert t["cvs_acc"] == 0.5 and t["stg_miou"] == 1.0
    assert t["vs_llm"] == pytest.approx((4.0 + 0.0) / 2)  # v2's judgement missing; v3's prediction missing
    assert t["rc_llm"] is None and t["nap_acc"] is None and t["dvc_f1"] is None
    assert res["by_source"]["A"]["tag_miou@0.3"] == pytest.approx(0.4)
    assert res["by_source"]["A"]["tag_miou@0.5"] == 0.0
    assert res["by_source"]["B"]["tag_miou@0.5"] == pytest.approx(0.3)
    assert res["by_source"]["B"]["vs_llm"] == 0.0 and res["by_source"]["A"]["vs_llm"] == 4.0
    assert c["n"]["tag_miou@0.3"] == 3 and c["n"]["vs_llm"] == 2 and c["n"]["rc_llm"] == 0
    assert c["missing_predictions"] == 2
    assert c["missing_by_column"] == {"tag_miou@0.3": 1, "tag_miou@0.5": 1, "vs_llm": 1}
    assert c["parse_failures"] == {"missing_criterion": 1}
    assert c["parse_failures_by_task"] == {"cvs": {"missing_criterion": 1}}
    assert c["reference_errors"] == {"gt_missing": 1}
    assert c["unknown_qa_type"] == 1 and c["unmatched_predictions"] == 1
    assert c["judge_missing"] == {"vs_llm": 1, "rc_llm": 1}
    assert res["skipped"] == [] and res["columns"] == list(COLUMNS)


def test_without_judge_the_llm_columns_are_skipped(case):
    refs, preds = case
    res = evaluate(refs, preds)
    assert res["skipped"] == ["dvc_llm", "vs_llm", "rc_llm"]
    assert all(res["table"][c] is None for c in res["skipped"])
    text = format_table(res)
    assert "skipped" in text and "tag_miou@0.3" in text and "0.333" in text and "missing predictions 2" in text
    assert "parse failures: missing_criterion 1" in text


def test_similarity_columns_and_bad_judge(case):
    refs, preds = case
    res = evaluate(refs, preds, judge_fn=lambda pairs: [3.0] * len(pairs),
                   similarity_fn=lambda pairs: [0.5 if c == "cand one" else float("nan") for _, c in pairs])
    assert res["table"]["vs_sim"] == pytest.approx((0.5 + 0.0) / 2)  # v2 similarity NaN -> missing, v3 -> 0
    assert res["counts"]["similarity_missing"] == {"vs_sim": 1, "rc_sim": 1}
    assert res["table"]["rc_llm"] == 3.0
    with pytest.raises(ValueError, match="judge_fn returned 1 scores for 3 pairs"):
        evaluate(refs, preds, judge_fn=lambda pairs: [3.0])


def test_perfect_and_empty_predictions(examples):
    refs = [ref(f"{qt}", qt, "S", ex["answer"], question=ex["question"]) for qt, ex in examples.items()]
    perfect = evaluate(refs, {r.id: r.answer for r in refs}, judge_fn=lambda pairs: [5.0] * len(pairs))
    assert all(perfect["table"][c] == 1.0 for c in RULE_COLUMNS)
    assert all(perfect["table"][c] == 5.0 for c in ("dvc_llm", "vs_llm", "rc_llm"))
    empty = evaluate(refs, {r.id: "" for r in refs}, judge_fn=lambda pairs: [5.0] * len(pairs))
    assert all(empty["table"][c] == 0.0 for c in COLUMNS)
    assert empty["counts"]["missing_predictions"] == 0 and empty["counts"]["parse_failures"]["empty"] == len(refs)
    none = evaluate(refs, {})
    assert all(none["table"][c] == 0.0 for c in RULE_COLUMNS)
    assert none["counts"]["missing_predictions"] == len(refs)


def test_image_columns_appear_with_image_references():
    refs = [ref("q1", "vqa_mc", "PMC", struc_info={"choices": ["A. x", "B. y"], "answer": "A"}),
            ref("b1", "box_grounding", "Kvasir", struc_info={"bbox": [0, 0, 2, 2]})]
    res = evaluate(refs, {"q1": "(A)", "b1": "[1, 1, 3, 3]"})
    assert res["table"]["vqa_acc"] == 1.0 and res["table"]["box_miou"] == pytest.approx(1 / 7)
    assert "cls_acc" not in res["table"] and res["table"]["cvs_acc"] is None
    assert "vqa_acc" in format_table(res)


# ---------------------------------------------------------------- one clip, several tasks (unique keys end to end)


def _clip_row(qa_type: str, answer: str, **over) -> dict:
    row = {"conversations": [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": answer}],
           "video": ["f0.jpg", "f1.jpg"], "qa_type": qa_type, "data_source": "AVOS",
           "metadata": {"fps": "1.0", "video_id": "clip", "input_video_start_frame": "0",
                        "input_video_end_frame": "30"}}
    row.update(over)
    return row


def test_one_clip_under_several_tasks_scores_each_prediction(tmp_path):
    import json

    from data.predictions import read_predictions
    from data.reader import read_instances

    rows = [_clip_row("tal", "0-10 seconds."),
            _clip_row("stg", "1.0 seconds: [0, 0, 2, 2]"),
            _clip_row("region_caption_gpt", "first region caption"),
            _clip_row("tal", "20-30 seconds."),  # a second TAG query on the same clip
            _clip_row("region_caption_gpt", "second region caption"),
            _clip_row("cvs_assessment", "Two structures: 2, Cystic plate: 2, Hepatocystic triangle: 2")]
    (tmp_path / "refs.json").write_text(json.dumps(rows))
    refs = read_instances(tmp_path / "refs.json").instances
    cid = "clip&&0&&30&&1.0"
    assert len(refs) == 6 and {r.id for r in refs} == {cid} and len({r.uid for r in refs}) == 6
    # the public leaderboard's submission form, in another order than the references
    sub = [{"id": cid, "qa_type": "cvs_assessment", "prediction": "Two structures: 2, Cystic plate: 2, "
                                                                   "Hepatocystic triangle: 2"},
           {"id": cid, "qa_type": "region_caption_gpt", "prediction": "cand one"},
           {"id": cid, "qa_type": "tal", "prediction": "0-4 seconds."},
           {"id": cid, "qa_type": "stg", "prediction": "1.0 seconds: [0, 0, 2, 2]"},
           {"id": cid, "qa_type": "tal", "prediction": "20-30 seconds."},
           {"id": cid, "qa_type": "region_caption_gpt", "prediction": "cand two"}]
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    preds = read_predictions(tmp_path / "sub.json", refs)
    assert preds.skipped == [] and len(preds.predictions) == 6
    right = {("first region caption", "cand one"): 5.0, ("second region caption", "cand two"): 3.0}
    res = evaluate(refs, preds.predictions, judge_fn=lambda pairs: [right.get(p, 1.0) for p in pairs])
    t, c = res["table"], res["counts"]
    # TAG: 0-4 vs 0-10 -> 0.4 and 20-30 vs 20-30 -> 1.0 (crossed over, both would be 0)
    assert t["tag_miou@0.3"] == pytest.approx((0.4 + 1.0) / 2) and t["tag_miou@0.5"] == pytest.approx(0.5)
    assert t["stg_miou"] == 1.0 and t["cvs_acc"] == 1.0 and t["rc_llm"] == pytest.approx(4.0)
    assert c["missing_predictions"] == 0 and c["unmatched_predictions"] == 0 and c["parse_failures"] == {}
    assert c["duplicate_reference_ids"] == 5 and c["duplicate_reference_uids"] == 0
    # keyed by id alone, the same predictions cannot be told apart: every reference counts as missing
    by_id = evaluate(refs, {cid: "0-10 seconds."})
    assert by_id["counts"]["ambiguous_id"] == 6 and by_id["counts"]["missing_predictions"] == 6
    assert by_id["table"]["tag_miou@0.3"] == 0.0 and by_id["counts"]["unmatched_predictions"] == 1
    assert "ambiguous" in format_table(by_id)


def test_id_keyed_predictions_still_work_for_unique_ids():
    refs = [ref("a", "tal", "S", "0-10 seconds."), ref("b", "tal", "S", "0-10 seconds.")]
    res = evaluate(refs, {"a": "0-10 seconds.", "b#tal": "0-5 seconds.", "b": "ignored: the uid wins"})
    assert res["table"]["tag_miou@0.3"] == pytest.approx((1.0 + 0.5) / 2)
    assert res["counts"]["unmatched_predictions"] == 1 and res["counts"]["ambiguous_id"] == 0


def test_a_judge_that_takes_hints_is_told_each_pairs_task(case):
    refs, preds = case
    seen = []

    def judge(pairs, hints):
        seen.extend(zip(pairs, hints))
        return [3.0] * len(pairs)

    res = evaluate(refs, preds, judge_fn=judge)
    assert sorted((c, h) for (_, c), h in seen) == [("cand one", "vs"), ("cand r", "rc"), ("cand two", "vs")]
    assert res["table"]["vs_llm"] == pytest.approx(2.0)  # v3 has no prediction: 0
