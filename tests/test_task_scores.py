"""Per-task raw scores (rewards/task_scores.py): dispatch, format gate, MedLoc-R1 threshold, failures."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.schema import Instance
from rewards import task_scores as TS
from rewards.task_scores import score

RULE_QA_TYPES = ["tal", "stg", "next_action", "dense_captioning_gpt", "dense_captioning_gemini",
                 "skill_assessment", "cvs_assessment"]
CAPTION_QA_TYPES = ["video_summary_gpt", "video_summary_gemini", "region_caption_gpt", "region_caption_gemini"]
CHOICES = ["A. Edema", "B. Pneumonia", "C. Effusion"]


def ref(qa_type: str, answer=None, struc_info=None, question: str = "q", **extra) -> Instance:
    return Instance(id="r", qa_type=qa_type, data_source="S", question=question, answer=answer,
                    struc_info=struc_info, extra=extra)


def example_refs(examples):
    return {qt: ref(qt, ex["answer"], question=ex["question"]) for qt, ex in examples.items()}


@pytest.mark.parametrize("qa_type", RULE_QA_TYPES)
def test_reference_answer_scores_one(examples, qa_type):
    r = example_refs(examples)[qa_type]
    s = score(r, r.answer)
    assert s.score == 1.0 and s.format_ok and s.reason is None
    assert all(v == 1.0 for k, v in s.components.items())


@pytest.mark.parametrize("qa_type", CAPTION_QA_TYPES)
def test_captions_rule_part_is_zero_and_needs_judge(examples, qa_type):
    r = example_refs(examples)[qa_type]
    s = score(r, r.answer)
    assert s.score == 0.0 and s.needs_judge and s.format_ok and s.components == {"format": 1.0}
    assert score(r, "").reason == "empty" and not score(r, "").format_ok


@pytest.mark.parametrize("qa_type", RULE_QA_TYPES + CAPTION_QA_TYPES)
@pytest.mark.parametrize("pred", ["", " \n\t ", None, b"", "<think>only thinking", 3.0])
def test_empty_predictions_score_zero(examples, qa_type, pred):
    s = score(example_refs(examples)[qa_type], pred)
    assert s.score == 0.0 and not s.format_ok and s.reason in ("empty", "not_text", "no_segments", "no_boxes",
                                                              "no_events", "missing_criterion",
                                                              "missing_aspect", "no_label")


@pytest.mark.parametrize("qa_type", RULE_QA_TYPES)
def test_undecodable_bytes_score_zero_with_a_reason(examples, qa_type):
    s = score(example_refs(examples)[qa_type], b"\xff\xfe\x00garbage")
    assert s.score == 0.0 and s.reason is not None and not s.format_ok


def test_dvc_needs_judge_and_scores_f1():
    r = ref("dense_captioning_gpt", "0-10 seconds: a b c\n20-30 seconds: d e f")
    s = score(r, "0-10 seconds: x y z")  # P = 1, R = 1/2
    assert s.needs_judge and s.score == pytest.approx(2 / 3) and s.components["f1"] == pytest.approx(2 / 3)


def test_format_gate_multiplies_the_metric():
    r = ref("tal", "10.0-20.0 seconds.")
    s = score(r, "The action is at 10-20 seconds.")
    assert s.components["iou"] == 1.0 and not s.format_ok and s.format_reason == "extra_text"
    assert s.score == 0.0 and s.reason is None
    assert score(r, "The action is at 10-20 seconds.", format_gate=False).score == 1.0


def test_medloc_threshold_for_grounding():
    r = ref("tal", "0-10 seconds.")
    pred = "5-15 seconds."  # IoU 5/15
    assert score(r, pred).score == pytest.approx(1 / 3)
    hit = score(r, pred, iou_threshold=0.3)
    assert hit.score == 1.0 and hit.components["iou"] == pytest.approx(1 / 3)
    assert score(r, pred, iou_threshold=0.5).score == 0.0
    box = ref("box_grounding", struc_info={"bbox": [0, 0, 2, 2]})
    assert score(box, "[1, 1, 3, 3]", iou_threshold=0.1).score == 1.0  # IoU 1/7
    assert score(box, "[1, 1, 3, 3]", iou_threshold=0.2).score == 0.0
    # not a grounding family: the threshold does not apply
    cvs = ref("cvs_assessment", "Two structures: 2, Cystic plate: 1, Hepatocystic triangle: 0")
    assert score(cvs, cvs.answer, iou_threshold=0.9).score == 1.0
    for bad in (float("nan"), 1.5, -0.1, "0.5"):
        with pytest.raises(ValueError, match="iou_threshold"):
            score(r, pred, iou_threshold=bad)


def test_stg_with_struc_info_and_carry_forward():
    r = ref("stg", struc_info=[{"bbox_dict": {"1.0": [0, 0, 2, 2], "2.0": [0, 0, 2, 2]}}])
    assert score(r, "1.0 seconds: [0, 0, 2, 2]").score == 1.0  # 2.0 carries the 1.0 box
    assert score(r, "2.0 seconds: [1, 1, 3, 3]").score == pytest.approx((0 + 1 / 7) / 2)


def test_image_tasks():
    box = ref("box_grounding", struc_info={"bbox": [20, 20, 100, 100], "image_size": [200, 100]})
    assert score(box, '{"bbox_2d": [20, 20, 100, 100], "label": "polyp"}', format_gate=False).score == 1.0
    assert score(box, "[0.1, 0.2, 0.5, 1.0]").score == 1.0  # fractions scaled by the known image size
    vqa = ref("vqa_mc", struc_info={"choices": CHOICES, "answer": "B"})
    s = score(vqa, "<think>lungs look consolidated</think><answer>B</answer>", require_think=True)
    assert s.score == 1.0 and s.components["think_format"] == 1.0
    s = score(vqa, "B", require_think=True)
    assert s.score == 0.0 and s.components["acc"] == 1.0 and s.format_reason == "think_bad_tags"
    assert score(vqa, "B").score == 1.0 and score(vqa, "B").components["think_format"] == 0.0
    assert score(vqa, "C").score == 0.0
    cls = ref("image_cls", struc_info={"label": "grade 1", "classes": ["grade 0", "grade 1", "grade 2", "grade 3"],
                                       "ordinal": True})
    s = score(cls, "grade 3")
    assert s.score == 0.0 and s.components["grade_dist"] == 2.0
    assert score(cls, "Grade 1").score == 1.0


def test_nap_and_sa_and_cvs_wrong_answers(examples):
    refs = example_refs(examples)
    assert score(refs["next_action"], "cutting").score == 0.0
    s = score(refs["next_action"], "tying or cutting")
    assert s.score == 0.0 and s.reason == "ambiguous_label"
    # reference mean 10/6 = 1.67 (novice); this one's mean is 3 (intermediate)
    sa = ", ".join(f"{a}: 3/5" for a in ("Respect for tissue", "Suture/needle handling", "Time and motion",
                                         "Flow of operation", "Overall performance", "Quality of final product"))
    assert score(refs["skill_assessment"], sa).score == 0.0
    assert score(refs["cvs_assessment"], "Two structures: 0, Cystic plate: 2, Hepatocystic triangle: 1").score == 1.0
    assert score(refs["cvs_assessment"], "Two structures: 2, Cystic plate: 2, Hepatocystic triangle: 2").score == 0.0


def test_scores_against_list_shaped_struc_info_without_answer():
    """Test-file references: no gpt turn, ground truth only in the list-shaped struc_info data/synthetic.py writes."""
    cvs = ref("cvs_assessment", struc_info=[{"cvs_scores": {"two_structures": 2, "cystic_plate": 2,
                                                            "hepatocystic_triangle": 1}}])  # total 5: class 2
    assert score(cvs, "Two structures: 1, Cystic plate: 2, Hepatocystic triangle: 2").score == 1.0  # total 5
    assert score(cvs, "Two structures: 2, Cystic plate: 2, Hepatocystic triangle: 2").score == 0.0  # total 6
    aspects = list(TS.P.SKILL_ASPECTS)
    sa = ref("skill_assessment", struc_info=[{"skill_level": "I", "skill_scores": dict.fromkeys(aspects, 3)}])
    assert score(sa, ", ".join(f"{a}: 3/5" for a in aspects)).score == 1.0  # mean 3: intermediate
    assert score(sa, ", ".join(f"{a}: 5/5" for a in aspects)).score == 0.0  # mean 5: expert
    expert = ref("skill_assessment", struc_info=[{"skill_level": "E"}])  # a level without scores
    assert score(expert, ", ".join(f"{a}: 4/5" for a in aspects)).score == 1.0
    assert score(expert, ", ".join(f"{a}: 2/5" for a in aspects)).score == 0.0
    nap = ref("next_action", struc_info=[{"step_list": ["grasping", "cutting"], "next_action": "cutting"}])
    assert score(nap, "cutting").score == 1.0 and score(nap, "grasping").score == 0.0
    events = [{"start": 0, "end": 10, "caption": "a: x"}, {"start": 20, "end": 30, "caption": "b: y"}]
    for shape in ([events], [{"dc_segments": events}]):
        dvc = ref("dense_captioning_gpt", struc_info=shape)
        assert score(dvc, "0-10 seconds: a: x\n20-30 seconds: b: y").components["f1"] == 1.0
        # one of two events found: precision 1, recall 1/2 at every tIoU -> F1 2/3
        assert score(dvc, "0-10 seconds: a: x").components["f1"] == pytest.approx(2 / 3)


def test_reference_problems_are_reasons_not_crashes():
    s = score(ref("tal"), "1-2 seconds")
    assert s.score == 0.0 and s.reason == "gt_missing"
    assert score(ref("tal", "no times"), "1-2 seconds").reason == "gt_no_segments"
    s = score(ref("made_up_task"), "x")
    assert s.score == 0.0 and s.reason == "unknown_qa_type" and s.family is None


def test_non_finite_metric_is_clamped_and_counted(monkeypatch):
    monkeypatch.setattr(TS.M, "temporal_iou", lambda p, g: float("nan"))
    s = score(ref("tal", "0-10 seconds."), "0-10 seconds.")
    assert s.score == 0.0 and s.components["iou"] == 0.0 and s.reason == "non_finite"


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=300), st.text(alphabet=st.sampled_from(list("0123456789.,:-[] s/ABab")),
                                                max_size=120)))
def test_any_text_scores_in_unit_interval(examples, text):
    for r in example_refs(examples).values():
        s = score(r, text)
        assert 0.0 <= s.score <= 1.0
        assert all(math.isfinite(v) for v in s.components.values())
