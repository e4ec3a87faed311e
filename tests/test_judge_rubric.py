"""The judge rubric prompt and the strict-but-forgiving reply parsers (pure; no model, no Ray)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.judge_rubric import (DIMENSION_KEYS, PARSE_REASONS, build_alignment_messages, build_judge_messages,
                                  judge_reward, parse_alignment_reply, parse_judge_reply)

SCORES = {"terminology": 4, "instrument_anatomy": 5, "specificity": 3, "procedure_context": 4, "action_state": 2}
# mean 18/5 = 3.6, reward (3.6 - 1) / 4 = 0.65


def test_rubric_prompt_carries_both_captions_and_all_dimensions(examples):
    ref = examples["region_caption_gpt"]["answer"]
    cand = "A suction cannula clears fluid near the incision."
    msgs = build_judge_messages(ref, cand, task_hint="rc")
    assert [m["role"] for m in msgs] == ["system", "user"]
    system, user = msgs[0]["content"], msgs[1]["content"]
    for title in ("Medical terminology precision", "Instrument and anatomy identification",
                  "Specificity versus vagueness", "Clinical procedure context", "Action and state accuracy"):
        assert title in system
    for key in DIMENSION_KEYS:
        assert f'"{key}"' in system
    assert "JSON" in system and "1 to 5" in system
    assert f"<reference>\n{ref}\n</reference>" in user
    assert f"<candidate>\n{cand}\n</candidate>" in user
    assert "region caption" in user  # the family code became a description
    assert user.index("<reference>") < user.index("<candidate>")


def test_rubric_prompt_rejects_bad_input():
    with pytest.raises(ValueError, match="reference"):
        build_judge_messages("   ", "something")
    with pytest.raises(TypeError):
        build_judge_messages("ref", None)  # type: ignore[arg-type]
    long = "x" * 20000
    user = build_judge_messages("ref", long)[1]["content"]
    assert "[...truncated]" in user and len(user) < 10000


def test_judge_reward_mapping():
    assert judge_reward(1.0) == 0.0
    assert judge_reward(5.0) == 1.0
    assert judge_reward(3.6) == pytest.approx(0.65)
    with pytest.raises(ValueError):
        judge_reward(0.5)


@pytest.mark.parametrize("reply", [
    json.dumps(SCORES),
    "Here is my evaluation:\n```json\n" + json.dumps({**SCORES, "rationale": "close"}) + "\n```\nThanks!",
    '{"scores": ' + json.dumps(SCORES) + ', "overall": 3.6}',
    "1. Medical terminology precision: 4/5\n2. Instrument and anatomy identification: 5/5\n"
    "3. Specificity versus vagueness: 3/5\n4. Clinical procedure context (workflow, safety): 4/5\n"
    "5. Action and state accuracy: 2/5\nOverall: 3.6/5",
    "**Terminology**: 4\n**Instrument/anatomy** - 5\n- Specificity: 3 out of 5\n- Context: 4\n- Action & state: 2",
    "1. Terminology: 4\n2. Tools named: 5\n3) x: 3\n4. y: 4\n5. z: 2",  # unknown labels fall back to the ordinal
    '{"terminology": 4, "instrument_anatomy": 5, "specificity": 3, "procedure_context": 4, "action_state": 2,}',
    "{'terminology': 4, 'instrument_anatomy': 5, 'specificity': 3, 'procedure_context': 4, 'action_state': 2}",
    "Terminology: 4, Instruments: 5, Specificity: 3, Context: 4, Action: 2.",
    '{"terminology": "4/5", "instrument_anatomy": "5", "specificity": {"score": 3}, '
    '"procedure_context": 4.0, "action_state": 2}',
    'An example format is {"terminology": 1}. My scores: ' + json.dumps(SCORES),
])
def test_parse_accepts_the_usual_reply_shapes(reply):
    v = parse_judge_reply(reply)
    assert v.ok, (v.reason, v.detail)
    assert v.scores == {k: float(s) for k, s in SCORES.items()}
    assert v.score == pytest.approx(3.6)
    assert v.reward == pytest.approx(0.65)
    assert v.reason is None


def test_parse_half_points_and_rationale():
    v = parse_judge_reply(json.dumps({**SCORES, "action_state": 2.5, "rationale": "misses the order"}))
    assert v.ok and v.score == pytest.approx(3.7) and v.rationale == "misses the order"


@pytest.mark.parametrize("reply,reason,fragment", [
    (json.dumps({**SCORES, "instrument_anatomy": 7}), "out_of_range", "instrument_anatomy=7"),
    (json.dumps({**SCORES, "action_state": 0}), "out_of_range", "action_state=0"),
    (json.dumps({k: v for k, v in SCORES.items() if k != "specificity"}), "missing_dimension", "specificity"),
    (json.dumps({**SCORES, "terminology": "good"}), "non_numeric", "terminology"),
    (json.dumps({**SCORES, "terminology": True}), "non_numeric", "terminology"),
    ("The candidate is quite close to the reference overall.", "no_scores", "no rubric scores"),
    ("Overall: 4/5", "no_scores", ""),
    ("", "empty", ""),
    ("   \n", "empty", ""),
    (None, "empty", "NoneType"),
    (b'{"terminology": 4}', "empty", "bytes"),
    ("1. Terminology: 4/5\n2. Instrument and anatomy identification: 5/5", "missing_dimension", "specificity"),
])
def test_parse_failures_carry_a_reason(reply, reason, fragment):
    v = parse_judge_reply(reply)
    assert not v.ok
    assert v.reason == reason and v.reason in PARSE_REASONS
    assert fragment in v.detail
    assert v.score is None and v.reward is None


def test_parse_prefers_a_complete_answer_over_an_earlier_partial_one():
    reply = 'Draft: {"terminology": 2}\nFinal:\n```json\n' + json.dumps(SCORES) + "\n```"
    assert parse_judge_reply(reply).score == pytest.approx(3.6)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_parse_never_raises(text):
    v = parse_judge_reply(text)
    assert v.ok or v.reason in PARSE_REASONS
    if v.ok:
        assert 1.0 <= v.score <= 5.0 and 0.0 <= v.reward <= 1.0
    a = parse_alignment_reply(text)
    assert a.ok or a.reason in PARSE_REASONS


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=5, max_size=5))
def test_parse_roundtrip_mean(values):
    v = parse_judge_reply(json.dumps(dict(zip(DIMENSION_KEYS, values))))
    assert v.ok and v.score == pytest.approx(sum(values) / 5)
    assert v.reward == pytest.approx((sum(values) / 5 - 1) / 4)


def test_alignment_prompt():
    msgs = build_alignment_messages("Which organ is shown?", "<think>The image shows the liver.</think>"
                                    "<answer>B</answer>", reference_answer="B")
    user = msgs[1]["content"]
    assert "<question>\nWhich organ is shown?\n</question>" in user
    assert "<reference_answer>\nB\n</reference_answer>" in user
    assert "<think>The image shows the liver.</think>" in user
    assert '"aligned"' in msgs[0]["content"]
    assert "<reference_answer>" not in build_alignment_messages("q", "r")[1]["content"]


@pytest.mark.parametrize("reply,expected", [
    ('{"aligned": 1, "rationale": "sound"}', 1),
    ('{"aligned": false}', 0),
    ('```json\n{"verdict": "yes"}\n```', 1),
    ("Verdict: no", 0),
    ("**Aligned**: Yes", 1),
    ("1", 1),
    ("No.", 0),
])
def test_alignment_parse(reply, expected):
    v = parse_alignment_reply(reply)
    assert v.ok and v.aligned == expected


@pytest.mark.parametrize("reply,reason", [
    ('{"aligned": "maybe"}', "non_numeric"),
    ('{"aligned": 3}', "non_numeric"),
    ("Aligned: yes\nVerdict: no", "ambiguous"),
    ("I am not sure about this one.", "no_scores"),
    ("", "empty"),
])
def test_alignment_parse_failures(reply, reason):
    v = parse_alignment_reply(reply)
    assert not v.ok and v.aligned is None and v.reason == reason
