"""The task registry: every family has one spec, and a new task registers end to end (parse, score, reward,
leaderboard) and unregisters without a trace."""
from __future__ import annotations

import re

import pytest

from data.schema import TASK_FAMILY, Instance, task_family
from rewards import parsing as P
from rewards import tasks as T
from rewards.assembly import combine, is_caption, normalization_requests
from rewards.config import RewardConfig
from rewards.leaderboard import COLUMNS, evaluate
from rewards.scoring import RewardScorer
from rewards.task_scores import score


def test_every_family_of_the_data_has_one_spec():
    assert {s.name for s in T.specs()} == set(TASK_FAMILY.values())
    for spec in T.specs():
        assert spec.qa_types and all(task_family(q) == spec.name for q in spec.qa_types)
    # issue 13 item 5: DVC's captions are judged in the training reward too (F1 + caption reward of the matched
    # segments), as on the leaderboard; it keeps its task score, so it is not a caption-only reward
    assert T.get("dvc").caption and T.get("dvc").judged_in_reward and not is_caption("dvc")
    assert [s.name for s in T.specs() if s.judged_in_reward] == ["dvc", "vs", "rc"]
    assert [s.name for s in T.specs() if s.grounding] == ["stg", "tag", "box"]


def _parse_count(text, offered):
    m = re.search(r"\d+", P.answer_text(text))
    return P.Parsed(int(m.group())) if m else P.Parsed(reason="no_number")


def _gt_count(inst):
    return _parse_count(inst.answer or "", None) if inst.answer else P.Parsed(reason="gt_missing")


TOY = T.TaskSpec(
    "toy", parse=_parse_count, ground_truth=_gt_count,
    metric=lambda pred, ref, inst: {"acc": float(pred == ref)}, score_key="acc",
    format_check=lambda t, offered: None if t.strip().isdigit() else "extra_text",
    columns=(T.Column("toy_acc", "acc"),), qa_types=("toy_count",), accuracy=True)


@pytest.fixture
def toy():
    T.register(TOY)
    try:
        yield TOY
    finally:
        T.unregister("toy")


def _inst(i, answer="3"):
    return Instance(id=f"t{i}", qa_type="toy_count", data_source="Toy", question="How many tools?", answer=answer)


def test_a_registered_toy_task_runs_end_to_end(toy):
    assert task_family("toy_count") == "toy" and T.spec_of(_inst(0)) is toy
    # parse and score, with the format gate
    good, chatty, wrong = score(_inst(0), "3"), score(_inst(0), "I count 3 tools"), score(_inst(0), "4")
    assert (good.score, good.format_ok, good.components["acc"]) == (1.0, True, 1.0)
    assert chatty.score == 0.0 and chatty.format_reason == "extra_text" and chatty.components["acc"] == 1.0
    assert wrong.score == 0.0 and wrong.format_ok
    assert T.format_problem("toy", "12") is None
    # the reward worker's core and the assembly: a rule-scored accuracy task
    scored = RewardScorer(RewardConfig(), None).score_batch([(_inst(0), "3", 4), (_inst(0), "5", 4)])
    assert [s.family for s in scored] == ["toy", "toy"] and [s.correct for s in scored] == [True, False]
    keys, values, where = normalization_requests(scored)
    assert keys == [("Toy", "toy_count")] * 2 and values == [1.0, 0.0]
    assert combine(scored, [0.9, 0.1], where).rewards == [0.9, 0.1]
    # the leaderboard gets the spec's column
    res = evaluate([_inst(0), _inst(1), _inst(2, "7")], {"t0#toy_count": "3", "t1#toy_count": "2",
                                                        "t2#toy_count": "7"})
    assert "toy_acc" in res["columns"] and res["table"]["toy_acc"] == pytest.approx(2 / 3)


def test_unregister_leaves_no_trace(toy):
    T.unregister("toy")
    try:
        assert "toy_count" not in TASK_FAMILY and T.spec_of(_inst(0)) is None
        assert score(_inst(0), "3").reason == "unknown_qa_type"
        res = evaluate([_inst(0)], {"t0#toy_count": "3"})
        assert res["columns"] == list(COLUMNS) and res["counts"]["unknown_qa_type"] == 1
    finally:
        T.register(TOY)  # the fixture unregisters it again


def test_register_refuses_clashes():
    with pytest.raises(ValueError, match="already registered"):
        T.register(T.get("tag"))
    with pytest.raises(ValueError, match="already belong to family 'tag'"):
        T.register(T.TaskSpec("tag2", TOY.parse, TOY.ground_truth, TOY.metric, "acc", TOY.format_check,
                              qa_types=("tal",)))
    with pytest.raises(ValueError, match="offered='options'; allowed: labels, choices or None"):
        T.register(T.TaskSpec("toy3", TOY.parse, TOY.ground_truth, TOY.metric, "acc", TOY.format_check,
                              offered="options"))
    assert "tag2" not in {s.name for s in T.specs()} and "toy3" not in {s.name for s in T.specs()}
