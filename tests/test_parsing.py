"""Answer parsers, format checks and ground-truth extraction (rewards/parsing.py)."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.schema import Instance
from rewards import parsing as P
from rewards import tasks as T

FAMILY_OF_EXAMPLE = {"tal": "tag", "stg": "stg", "dense_captioning_gpt": "dvc", "dense_captioning_gemini": "dvc",
                     "video_summary_gpt": "vs", "video_summary_gemini": "vs", "region_caption_gpt": "rc",
                     "region_caption_gemini": "rc", "next_action": "nap", "skill_assessment": "sa",
                     "cvs_assessment": "cvs"}
CHOICES = ["A. Edema", "B. Pneumonia", "C. Pleural effusion", "D. Normal"]


def inst(qa_type: str = "tal", answer=None, struc_info=None, question: str = "q", **extra) -> Instance:
    return Instance(id="x", qa_type=qa_type, data_source="S", question=question, answer=answer,
                    struc_info=struc_info, extra=extra)


# ---------------------------------------------------------------- the real examples


def test_every_real_example_parses_to_hand_read_values(examples):
    assert set(FAMILY_OF_EXAMPLE) <= set(examples)
    assert P.parse_segments(examples["tal"]["answer"]).value == [(1.1, 3.0)]
    assert P.parse_stg(examples["stg"]["answer"]).value == {1.0: (235.08, 261.2, 561.58, 1005.62),
                                                             5.0: (274.26, 261.2, 561.58, 1005.62)}
    ev = P.parse_events(examples["dense_captioning_gemini"]["answer"]).value
    assert [(e.start, e.end) for e in ev] == [(1.0, 29.0)]
    assert ev[0].caption.startswith("check: The healthcare professional retrieves")
    ev = P.parse_events(examples["dense_captioning_gpt"]["answer"]).value
    assert [(e.start, e.end) for e in ev] == [(36.0, 49.0)]
    assert P.parse_cvs(examples["cvs_assessment"]["answer"]).value == (2, 1, 0)
    assert list(P.parse_skill(examples["skill_assessment"]["answer"]).value.values()) == [2, 1, 1, 2, 1, 3]
    labels = P.labels_from_question(examples["next_action"]["question"])
    assert labels == ["cutting", "tying", "suturing"]
    assert P.parse_label(examples["next_action"]["answer"], labels).value == "tying"


@pytest.mark.parametrize("qa_type", sorted(FAMILY_OF_EXAMPLE))
def test_every_real_reference_answer_passes_its_format_check(examples, qa_type):
    ex = examples[qa_type]
    labels = P.labels_from_question(ex["question"])
    assert T.format_problem(FAMILY_OF_EXAMPLE[qa_type], ex["answer"], labels=labels) is None


# ---------------------------------------------------------------- TAG


@pytest.mark.parametrize("text, expected", [
    ("22.0-78.0, 89.0-94.0 seconds.", [(22.0, 78.0), (89.0, 94.0)]),
    ("22 - 78s", [(22.0, 78.0)]),
    ("[22.0, 78.0]", [(22.0, 78.0)]),
    ("from 22 to 78 seconds", [(22.0, 78.0)]),
    ("The action happens from 22.5s to 78 s and again between 89 and 94 seconds.", [(22.5, 78.0), (89.0, 94.0)]),
    ("22\u201378 seconds", [(22.0, 78.0)]),  # en dash
    ("(1:05, 1:30)", [(65.0, 90.0)]),
    ("<think>it starts near 3</think><answer>3.0-7.5 seconds.</answer>", [(3.0, 7.5)]),
    ("22.0-78.0, 30-10 seconds", [(22.0, 78.0)]),  # the reversed one is dropped
])
def test_parse_segments_forms(text, expected):
    p = P.parse_segments(text)
    assert p.ok and p.value == expected


@pytest.mark.parametrize("text, reason", [
    ("", "empty"), ("   \n\t", "empty"), ("no time here", "no_segments"), ("at 5 seconds", "no_segments"),
    ("30-10 seconds", "bad_segment"), (None, "not_text"), (12.5, "not_text"), (float("nan"), "not_text"),
    ("nan-inf seconds", "no_segments"), ("<think>unfinished", "empty"),
])
def test_parse_segments_failures(text, reason):
    assert P.parse_segments(text).reason == reason


def test_tag_format_is_strict_about_prose():
    assert T.format_problem("tag", "22.0-78.0, 89.0-94.0 seconds.") is None
    assert T.format_problem("tag", "from 22 to 78 seconds") is None
    assert T.format_problem("tag", "The action happens at 22-78 seconds.") == "extra_text"
    assert T.format_problem("tag", "22.0-78.0, 30-10 seconds") == "bad_segment"


# ---------------------------------------------------------------- STG


@pytest.mark.parametrize("text, expected", [
    ("1.0 seconds: [235.08, 261.2, 561.58, 1005.62] 5.0 seconds: 1365, 55, 1630, 357)",
     {1.0: (235.08, 261.2, 561.58, 1005.62), 5.0: (1365.0, 55.0, 1630.0, 357.0)}),
    ("t=1.0s: 1,2,3,4; t=2.0s: (5 6 7 8)", {1.0: (1, 2, 3, 4), 2.0: (5, 6, 7, 8)}),
    ("At 3 seconds the forceps are at [10, 20, 30, 40].", {3.0: (10, 20, 30, 40)}),
    ("5.0 seconds: [1, 2, 3, 4]\n1.0 seconds: [5, 6, 7, 8]", {1.0: (5, 6, 7, 8), 5.0: (1, 2, 3, 4)}),
])
def test_parse_stg_forms(text, expected):
    p = P.parse_stg(text)
    assert p.ok and p.value == expected and list(p.value) == sorted(expected)


def test_parse_stg_failures_and_drops():
    assert P.parse_stg("[1, 2, 3, 4]").reason == "no_timestamps"
    assert P.parse_stg("1.0 seconds: none").reason == "no_boxes"
    assert P.parse_stg("1.0 seconds: [30, 2, 10, 4]").reason == "bad_box"
    p = P.parse_stg("1.0 s: [1, 2, 3, 4] 1.0 s: [5, 6, 7, 8] 2.0 s: [9, 9, 1, 1]")
    assert p.value == {1.0: (1, 2, 3, 4)} and p.dropped == 2  # repeated time and reversed box
    assert T.format_problem("stg", "1.0 s: [1, 2, 3, 4] 1.0 s: [5, 6, 7, 8]") == "bad_box"
    assert T.format_problem("stg", "At 3 seconds the forceps are at [10, 20, 30, 40].") == "extra_text"


# ---------------------------------------------------------------- image box


def test_parse_box_forms_and_scaling():
    assert P.parse_box("[10, 20, 110, 220]").value == (10, 20, 110, 220)
    assert P.parse_box('```json\n[{"bbox_2d": [10, 20, 110, 220], "label": "polyp"}]\n```').value == (10, 20, 110, 220)
    assert P.parse_box("The polyp is at (10 20 110 220)").value == (10, 20, 110, 220)
    assert P.parse_box("[110, 20, 10, 220]").reason == "bad_box"
    assert P.parse_box("somewhere left").reason == "no_boxes"
    assert T.format_problem("box", "[1, 2, 3, 4] and [5, 6, 7, 8]") == "several_boxes"
    # fractions scale by the image size only when the reference is in pixels and the size is known
    assert P.scale_box((0.1, 0.2, 0.5, 1.0), (10, 20, 50, 100), (200.0, 100.0)) == (20.0, 20.0, 100.0, 100.0)
    assert P.scale_box((0.1, 0.2, 0.5, 1.0), (10, 20, 50, 100), None) == (0.1, 0.2, 0.5, 1.0)
    assert P.scale_box((0.1, 0.2, 0.5, 1.0), (0.1, 0.2, 0.5, 1.0), (200.0, 100.0)) == (0.1, 0.2, 0.5, 1.0)
    assert P.image_size_of(inst("box_grounding", struc_info={"bbox": [1, 2, 3, 4], "image_size": [640, "480"]})) \
        == (640.0, 480.0)


# ---------------------------------------------------------------- DVC


def test_parse_events_multi_line_and_single_line():
    text = "0.0-12.5 seconds: handwashing: the nurse washes.\n12.5-30 seconds: check: she checks the chart from 13 to 14."
    ev = P.parse_events(text).value
    assert [(e.start, e.end) for e in ev] == [(0.0, 12.5), (12.5, 30.0)]
    assert ev[1].caption == "check: she checks the chart from 13 to 14"  # a range without colon stays in the caption
    one = P.parse_events("1-2 seconds: a b c. 3-4 seconds: d e f.").value
    assert one == [P.Event(1.0, 2.0, "a b c"), P.Event(3.0, 4.0, "d e f")]
    assert P.parse_events("Nothing happens.").reason == "no_events"
    assert P.parse_events("9-3 seconds: backwards").reason == "bad_event"
    assert T.format_problem("dvc", "Here are the events: 1-2 seconds: a b c") == "extra_text"
    assert T.format_problem("dvc", "Between 1 and 2 s nothing. 3-4 seconds: a b c") == "extra_text"
    assert T.format_problem("dvc", "1-2 seconds: a b c. 3-4 seconds:") == "empty_caption"


# ---------------------------------------------------------------- CVS and skill


@pytest.mark.parametrize("text, expected", [
    ("Two structures: 2, Cystic plate: 1, Hepatocystic triangle: 0", (2, 1, 0)),
    ("hepatocystic triangle: 2/2; cystic plate - 2; two structures 1", (1, 2, 2)),
    ("The CVS scores are: two structures enter the gallbladder: 2, cystic plate: 0, Calot's triangle: 1.", (2, 0, 1)),
    ("2, 1, 0", (2, 1, 0)),
])
def test_parse_cvs_forms(text, expected):
    p = P.parse_cvs(text)
    assert p.ok and tuple(p.value) == expected and p.value.total == sum(expected)


def test_parse_cvs_failures():
    assert P.parse_cvs("Two structures: 2, Cystic plate: 1").reason == "missing_criterion"
    assert P.parse_cvs("Two structures: 3, Cystic plate: 1, Hepatocystic triangle: 0").reason == "bad_score"
    assert P.parse_cvs("Two structures, Cystic plate: 1, Hepatocystic triangle: 0").reason == "missing_criterion"
    assert T.format_problem("cvs", "The CVS scores are: Two structures: 2, Cystic plate: 1, "
                                   "Hepatocystic triangle: 0") == "extra_text"


def test_parse_skill_forms_and_failures():
    full = ("Respect for tissue: 2/5, Suture and needle handling: 1/5, Time & motion: 1 out of 5, "
            "Flow of operation: 2/5, Overall: 1.5/5, Quality of the final product: 3/5")
    assert list(P.parse_skill(full).value.values()) == [2, 1, 1, 2, 1.5, 3]
    assert list(P.parse_skill("2/5, 1/5, 1/5, 2/5, 1/5, 3/5").value.values()) == [2, 1, 1, 2, 1, 3]
    assert P.parse_skill("Respect for tissue: 2/5, Time and motion: 1/5").reason == "missing_aspect"
    assert P.parse_skill(full.replace("Time & motion: 1 out of 5", "Time & motion: 0/5")).reason == "bad_score"
    assert P.parse_skill(full.replace("2/5, Suture", "7/5, Suture")).reason == "bad_score"


# ---------------------------------------------------------------- labels and choices


def test_labels_and_label_picking():
    q = "Steps: [\"surgeon's knot\", 'tying', 'continuous suturing', 'suturing']. What comes next?"
    labels = P.labels_from_question(q)
    assert labels == ["surgeon's knot", "tying", "continuous suturing", "suturing"]
    assert P.parse_label("Tying.", labels).value == "tying"
    assert P.parse_label("The next action is continuous suturing", labels).value == "continuous suturing"
    assert P.parse_label("Surgeon's knot", labels).value == "surgeon's knot"
    assert P.parse_label("tying, then suturing", labels).reason == "ambiguous_label"
    assert P.parse_label("cutting", labels).reason == "no_label"
    assert P.parse_label("Cutting!", None).value == "cutting"
    assert P.labels_from_question("What comes next?") == []
    assert T.format_problem("nap", "The next action is tying", labels=labels) == "not_a_label"
    assert T.format_problem("nap", "tying", labels=labels) is None
    many = "continuous suturing " * 5_000
    start = time.perf_counter()
    assert P.parse_label(many, labels).value == "continuous suturing"
    assert P.parse_label("a " * 15_000 + "b", ["a", "a b", "b"]).reason == "ambiguous_label"
    assert time.perf_counter() - start < 1.0
    # a reference answer outside the offered list is still the reference
    q = "The procedure includes the following step list: ['cutting', 'tying']. What comes next?"
    assert P.gt_label(inst("next_action", answer="Knot pushing", question=q)).value == "Knot pushing"
    assert P.gt_label(inst("next_action", answer="Tying.", question=q)).value == "tying"


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("b", "B"), ("Answer: B", "B"), ("**B**", "B"),
    ("B. Pneumonia", "B"), ("The answer is (C).", "C"), ("Pneumonia", "B"), ("pleural effusion.", "C"),
    ("I think it shows a pleural effusion", "C"), ("I think it's B.", "B"), ("It is A", "A"), ("<think>A or B?</think><answer>(D)</answer>", "D"),
])
def test_parse_choice_forms(text, letter):
    assert P.parse_choice(text, CHOICES).value == letter


def test_parse_choice_failures_and_format():
    assert P.parse_choice("E", CHOICES).reason == "bad_choice"
    assert P.parse_choice("no idea", CHOICES).reason == "no_choice"
    assert P.parse_choice("(A) or (B)", CHOICES).reason == "ambiguous_choice"
    assert P.parse_choice("Edema or pneumonia", CHOICES).reason == "ambiguous_choice"
    assert P.parse_choice("F", None).value == "F"  # without options any letter is allowed
    assert P.choice_texts({"B": "Pneumonia", "A": "Edema"}) == ["Edema", "Pneumonia"]
    assert T.format_problem("vqa", "B", choices=CHOICES) is None
    assert T.format_problem("vqa", "Answer: B", choices=CHOICES) is None
    assert T.format_problem("vqa", "I think it shows a pleural effusion", choices=CHOICES) == "extra_text"


# ---------------------------------------------------------------- tags


def test_extract_answer_and_think_format():
    assert P.extract_answer("<think>a</think><answer>x</answer><answer>y</answer>") == "y"
    assert P.extract_answer("<think>a</think> final: y") == " final: y"
    assert P.extract_answer("<answer>truncated") == "truncated"
    assert P.extract_answer("<think>never closed") == ""
    assert P.extract_answer("plain") == "plain"
    assert P.think_answer_problem("<think>x</think>\n<answer>B</answer>\n") is None
    assert P.think_answer_problem("<think>x</think>B") == "bad_tags"
    assert P.think_answer_problem("hi <think>x</think><answer>B</answer>") == "text_outside_tags"
    assert P.think_answer_problem("<think>x</think><answer> </answer>") == "empty_answer"
    assert P.think_answer_problem("<answer>B</answer><think>x</think>") == "bad_tags"
    assert P.think_answer_problem(None) == "not_text"


def test_caption_format():
    assert T.format_problem("vs", "Forceps retract tissue.") is None
    assert T.format_problem("rc", "Forceps.") == "too_short"


# ---------------------------------------------------------------- ground truth from Instance


def test_gt_segments_from_every_struc_info_shape():
    spans = [{"action": "Disinfect skin", "spans": [{"start": "1.1", "end": "3.0"}, {"start": 5, "end": 6}]}]
    assert P.gt_segments(inst(struc_info=spans)).value == [(1.1, 3.0), (5.0, 6.0)]
    assert P.gt_segments(inst(struc_info={"spans": [[1, 2]]})).value == [(1.0, 2.0)]
    assert P.gt_segments(inst(struc_info={"start": 1, "end": 2})).value == [(1.0, 2.0)]
    for empty in ({}, [], None):
        assert P.gt_segments(inst(answer="1.1-3.0 seconds.", struc_info=empty)).value == [(1.1, 3.0)]
    assert P.gt_segments(inst(gnd="4-5 seconds")).value == [(4.0, 5.0)]
    assert P.gt_segments(inst()).reason == "gt_missing"
    assert P.gt_segments(inst(answer="unclear")).reason == "gt_no_segments"
    two = [{"action": "Check", "spans": [{"start": 0, "end": 1}]},
           {"action": "Disinfect skin", "spans": [{"start": 2, "end": 4}]}]
    q = "Possible actions are: Check, Disinfect skin. Find the segment(s) where Disinfect skin happens."
    assert P.gt_segments(inst(struc_info=two, question=q)).value == [(2.0, 4.0)]
    assert P.gt_segments(inst(struc_info=two, question=q, answer="0-1 seconds.")).value == [(0.0, 1.0)]
    assert P.gt_segments(inst(struc_info=two, question="Find it.")).reason == "gt_ambiguous_action"


def test_gt_stg_and_others_from_struc_info():
    si = [{"bbox_dict": {"1.0": [1, 2, 3, 4], "5.0": ["5", "6", "7", "8"], "bad": [1, 2]}}, {"bbox_dict": {}}]
    assert P.gt_stg_boxes(inst("stg", struc_info=si)).value == {1.0: (1, 2, 3, 4), 5.0: (5, 6, 7, 8)}
    assert P.gt_stg_boxes(inst("stg", struc_info={"bbox_dict": {"2.0": [1, 1, 2, 2]}})).value == {2.0: (1, 1, 2, 2)}
    assert P.gt_stg_boxes(inst("stg", answer="2.0 seconds: [1, 1, 2, 2]", struc_info=[])).value == {2.0: (1, 1, 2, 2)}
    ev = P.gt_events(inst("dense_captioning_gpt", struc_info=[{"start": 0, "end": 2, "caption": "a"},
                                                              {"segment": [3, 4], "description": "b"}]))
    assert ev.value == [P.Event(0.0, 2.0, "a"), P.Event(3.0, 4.0, "b")]
    cvs = inst("cvs_assessment", struc_info={"two_structures": "2", "cystic_plate": 1, "hepatocystic_triangle": 0})
    assert P.gt_cvs(cvs).value == (2, 1, 0)
    sa = {a: 3 for a in P.SKILL_ASPECTS}
    assert list(P.gt_skill(inst("skill_assessment", struc_info=sa)).value.values()) == [3.0] * 6
    vqa = inst("vqa_mc", struc_info={"choices": CHOICES, "answer": "Pneumonia"})
    assert P.gt_choice(vqa).value == "B"
    assert P.gt_box(inst("box_grounding", struc_info={"bbox": [1, 2, 3, 4], "label": "x"})).value == (1, 2, 3, 4)
    cls = inst("image_cls", struc_info={"label": "grade 2", "classes": ["grade 1", "grade 2"]})
    assert P.gt_label(cls).value == "grade 2" and P.labels_for(cls) == ["grade 1", "grade 2"]
    assert P.gt_caption(inst("video_summary_gpt", answer="  text ")).value == "text"
    assert P.gt_caption(inst("video_summary_gpt")).reason == "gt_missing"
    assert T.family_of(inst("not_a_task")) is None


# ---------------------------------------------------------------- robustness

_PARSERS = [P.parse_segments, P.parse_stg, P.parse_box, P.parse_events, P.parse_cvs, P.parse_skill,
            lambda t: P.parse_label(t, ["cutting", "tying"]), P.parse_label,
            lambda t: P.parse_choice(t, CHOICES), P.parse_choice]
_FAMILIES = ["tag", "stg", "dvc", "cvs", "sa", "nap", "vqa", "box", "cls", "vs", "rc"]
_KNOWN = set(P.REASONS) | set(P.FORMAT_REASONS) - {"unknown_family"}

answerish = st.text(alphabet=st.sampled_from(list("0123456789.,:-[]() stoand/5\n<>answer")), max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), answerish, st.binary().map(lambda b: b.decode("utf-8", errors="surrogateescape")),
                 st.binary()))
def test_parsers_never_raise_and_reasons_are_known(text):
    for parse in _PARSERS:
        p = parse(text)
        assert (p.value is not None) if p.ok else (p.value is None)
        assert p.reason is None or p.reason in _KNOWN
    for fam in _FAMILIES:
        r = T.format_problem(fam, text, labels=["a"] if fam == "nap" else None, choices=CHOICES)
        assert r is None or r in _KNOWN
    assert P.think_answer_problem(text) in (None, "bad_tags", "text_outside_tags", "empty_answer", "not_text")


@pytest.mark.parametrize("text", [
    "1" * 200_000, "1-" * 100_000, "[1," * 60_000, "1.0 seconds: " * 20_000, " " * 200_000 + "1-2",
    "<answer>" * 30_000, "Two structures " * 20_000, "a" * 200_000, "\udcff\x00" * 50_000, "9" * 400 + "-1",
])
def test_parsers_are_fast_and_safe_on_huge_inputs(text):
    start = time.perf_counter()
    for parse in _PARSERS:
        parse(text)
    for fam in _FAMILIES:
        T.format_problem(fam, text)
    assert time.perf_counter() - start < 3.0


# ---------------------------------------------------------------- ground truth from list-shaped struc_info, no answer
# (test files have no gpt turn: struc_info is then the only ground truth)

EVENTS = [{"start": 0.5, "end": 3.0, "caption": "grasping: the grasper retracts tissue"},
          {"start": 3.5, "end": 7.5, "caption": "cutting: scissors cut"}]
SCORES = {"Respect for tissue": 2, "Suture/needle handling": 2, "Time and motion": 1, "Flow of operation": 1,
          "Overall performance": 2, "Quality of final product": 3}


def test_gt_from_list_shaped_struc_info_without_answer():
    cvs = inst("cvs_assessment", struc_info=[{"cvs_scores": {"two_structures": 1, "cystic_plate": "0",
                                                             "hepatocystic_triangle": 2}}])
    assert cvs.answer is None and P.gt_cvs(cvs).value == (1, 0, 2)
    assert P.gt_cvs(inst("cvs_assessment", struc_info={"cvs_scores": [2, 2, 1]})).value == (2, 2, 1)
    assert P.gt_cvs(inst("cvs_assessment", struc_info=[{"cvs_scores": {"two_structures": 3, "cystic_plate": 0,
                                                                       "hepatocystic_triangle": 0}}])).reason \
        == "gt_missing"  # 3 is off the 0-2 scale and there is no answer to fall back on
    sa = P.gt_skill(inst("skill_assessment", struc_info=[{"skill_level": "N", "skill_scores": SCORES}]))
    assert sa.value == {a: float(SCORES[a]) for a in P.SKILL_ASPECTS}
    level_only = P.gt_skill(inst("skill_assessment", struc_info=[{"skill_level": "E"}]))
    assert level_only.value == {a: 4.0 for a in P.SKILL_ASPECTS}
    mid = P.gt_skill(inst("skill_assessment", struc_info=[{"skill_level": "intermediate"}]))
    assert mid.value["Time and motion"] == 3.0
    assert P.gt_skill(inst("skill_assessment", struc_info=[{"skill_level": "Q"}])).reason == "gt_missing"
    nap = inst("next_action", struc_info=[{"step_list": ["grasping", "cutting", "irrigating"],
                                           "next_action": "cutting"}])
    assert P.gt_label(nap).value == "cutting" and P.labels_for(nap) == ["grasping", "cutting", "irrigating"]
    assert P.gt_label(inst("next_action", struc_info=[{"next_action": " tying "}])).value == "tying"
    want = [P.Event(0.5, 3.0, "grasping: the grasper retracts tissue"), P.Event(3.5, 7.5, "cutting: scissors cut")]
    for shape in ([EVENTS], [{"dc_segments": EVENTS}], EVENTS, {"events": EVENTS}, [[EVENTS[0]], [EVENTS[1]]]):
        assert P.gt_events(inst("dense_captioning_gpt", struc_info=shape)).value == want, shape


def test_answer_text_fallback_is_kept_for_empty_or_unusable_struc_info():
    answer = "Two structures: 2, Cystic plate: 1, Hepatocystic triangle: 0"
    for si in ([], {}, None, [{"cvs_scores": {}}], [{"other": 1}]):
        assert P.gt_cvs(inst("cvs_assessment", answer=answer, struc_info=si)).value == (2, 1, 0)
    text = ", ".join(f"{a}: 5/5" for a in P.SKILL_ASPECTS)
    # the answer's real scores win over a struc_info level without scores
    assert P.gt_skill(inst("skill_assessment", answer=text, struc_info=[{"skill_level": "N"}])).value == \
        {a: 5.0 for a in P.SKILL_ASPECTS}
    assert P.gt_label(inst("next_action", answer="Tying", struc_info=[{"step_list": ["tying"]}])).value == "tying"
    ev = P.gt_events(inst("dense_captioning_gpt", answer="1-2 seconds: a", struc_info=[[{"caption": "no times"}]]))
    assert ev.value == [P.Event(1.0, 2.0, "a")]
    assert P.gt_events(inst("dense_captioning_gpt", struc_info=[[]])).reason == "gt_missing"


def test_gt_from_every_synthetic_struc_shape_matches_the_answer():
    """Every struc_info shape data/synthetic.py writes (tidy and messy) gives, without the answer, the ground
    truth the answer text gives without struc_info."""
    import numpy as np

    from data import synthetic as S

    gt_fns = {"tag": P.gt_segments, "stg": P.gt_stg_boxes, "nap": P.gt_label, "dvc": P.gt_events,
              "sa": P.gt_skill, "cvs": P.gt_cvs}
    profile = S.SOURCE_PROFILES["SynthEasy"]
    checked = set()
    for level in ("novice", "intermediate", "expert"):
        spec = S.make_video_spec(f"v-{level}", profile, "train", 0, level)
        for qa_type, make in S.VIDEO_TASKS.items():
            fam = T.family_of(inst(qa_type))
            if fam not in gt_fns:
                continue
            task = make(spec, profile, np.random.default_rng(0))
            from_answer = gt_fns[fam](inst(qa_type, answer=task.answer, question=task.question))
            assert from_answer.ok, (qa_type, from_answer.reason)
            shapes = [task.tidy] + [v for kind, v in task.messy if kind == "struc" and v]
            for shape in shapes:
                got = gt_fns[fam](inst(qa_type, struc_info=shape, question=task.question))
                assert got.ok, (qa_type, shape, got.reason)
                if fam == "dvc":  # captions: the answer's parse strips the header's punctuation
                    assert [(e.start, e.end) for e in got.value] == [(e.start, e.end) for e in from_answer.value]
                    assert [e.caption.rstrip(".") for e in got.value] == [e.caption for e in from_answer.value]
                else:
                    assert got.value == from_answer.value, (qa_type, shape)
                checked.add(fam)
    assert checked == set(gt_fns)
