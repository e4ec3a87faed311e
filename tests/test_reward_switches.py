"""Reward switches act where a training step scores: graded ordinal reward (VRFT-Aug), recitation with the project's
own knowledge file, DVC captions judged segment by segment (scorer -> assembly, the path of the driver's step)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cluster.config import load_config
from data.knowledge import apply_knowledge, load_knowledge
from data.reader import read_instances
from data.schema import Instance
from rewards.assembly import combine, normalization_requests, raw_reward
from rewards.config import RewardConfig
from rewards.judge import JudgeOutcome
from rewards.scoring import RewardScorer
from rewards.task_scores import caption_pairs

GRADES = ("none", "mild", "moderate", "severe")


def ordinal_instance(synth_dir) -> Instance:
    rows = read_instances(synth_dir / "images_train.jsonl").instances
    inst = next(r for r in rows if r.qa_type == "image_cls" and r.struc_info.get("label") == "mild")
    assert inst.struc_info.get("ordinal") and list(inst.struc_info["classes"]) == list(GRADES)
    return inst


def graded_answer(grade: str) -> str:
    return f"<think>Blood in the view.</think><answer>{grade}</answer>"


@pytest.mark.ray
def test_graded_ordinal_reward_through_the_reward_workers(ray_local, synth_dir):
    from actors.reward_worker import RewardWorkerPool

    inst = ordinal_instance(synth_dir)
    items = [(inst, graded_answer(g), 8) for g in GRADES]  # distances 1, 0, 1, 2 from "mild"
    on = RewardWorkerPool(load_config("cpu_demo", ["reward.graded_ordinal=true"]).reward, num_workers=1)
    off = RewardWorkerPool(load_config("cpu_demo").reward, num_workers=1)
    try:
        graded = [s.components["task"] for s in on.score(items)]
        binary = [s.components["task"] for s in off.score(items)]
    finally:
        on.shutdown()
        off.shutdown()
    assert graded == pytest.approx([0.5, 1.0, 0.5, 0.2])  # 1 / (1 + d²)
    assert binary == [0.0, 1.0, 0.0, 0.0]
    # a wrong format earns nothing even when graded
    bad = RewardScorer(RewardConfig(graded_ordinal=True)).score_batch([(inst, "moderate, I think")])[0]
    assert bad.components["task"] == 0.0


def test_recitation_penalty_fires_with_the_synthetic_knowledge_file(synth_dir):
    entries = load_knowledge(synth_dir / "knowledge.json")
    inst = ordinal_instance(synth_dir)  # the reward worker gets the instance without the injected text
    shown = apply_knowledge(inst, entries).extra["knowledge"]  # what the rollout put in the prompt
    assert entries["image_cls"] in shown and entries["mild"] in shown
    scorer = RewardScorer(RewardConfig(recitation_coef=-1.0), knowledge=entries)
    recited = f"<think>{entries['mild']}</think><answer>mild</answer>"
    own = "<think>I see two tiny spots near the top edge.</think><answer>mild</answer>"
    out = scorer.score_batch([(inst, recited), (inst, own)])
    assert out[0].shaping["recitation"] < -0.8  # a verbatim knowledge sentence: BLEU ~1
    assert out[1].shaping["recitation"] > -0.2
    # the penalty enters the reward the learner sees
    keys, values, where = normalization_requests(out)
    rewards = combine(out, values, where).rewards
    assert rewards[0] < rewards[1] - 0.6


REF = ("0.0-10.0 seconds: the grasper retracts the gallbladder fundus. "
       "20.0-30.0 seconds: the clipper places two clips on the cystic duct.")
CAP1, CAP2 = "the grasper retracts the gallbladder fundus.", "the clipper places two clips on the cystic duct."


def dvc_instance() -> Instance:
    return Instance(id="d", qa_type="dense_captioning_gpt", data_source="SRC", question="Captions?", answer=REF)


class ExactJudge:
    """A synchronous JudgeClient: 5 for a caption equal to its reference, 1 otherwise; records pairs and hints."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[list, list]] = []

    def submit_score(self, pairs, hints):
        self.calls.append((list(pairs), list(hints)))
        if self.fail:
            return [JudgeOutcome(reason="timeout") for _ in pairs]
        return [JudgeOutcome(score=5.0, reward=1.0) if r.strip() == c.strip() else JudgeOutcome(score=1.0, reward=0.0)
                for r, c in pairs]

    def submit_align(self, items):
        raise AssertionError("no alignment asked")

    def gather(self, handle, timeout_s):
        return handle


class ExactSimilarity:
    def similarity(self, refs, cands):
        return np.array([1.0 if r.strip() == c.strip() else 0.25 for r, c in zip(refs, cands)])


def test_dvc_caption_pairs_follow_the_temporal_matching():
    inst = dvc_instance()
    pred = f"20.5-30.0 seconds: {CAP2} 0.0-9.0 seconds: something else. 40.0-50.0 seconds: {CAP1}"
    cp = caption_pairs(inst, pred)
    c1, c2 = CAP1.rstrip("."), CAP2.rstrip(".")  # the event parser drops a caption's final period
    assert cp.n == 2 and cp.pairs == [(c1, "something else"), (c2, c2)]  # by reference event, matched in time
    assert caption_pairs(inst, "nothing timed").pairs == [] and caption_pairs(inst, "nothing timed").n == 2
    assert caption_pairs(replace(inst, answer=""), "x").n == 0


def test_dvc_reward_mixes_f1_with_the_judged_captions_of_matched_segments():
    inst = dvc_instance()
    both = f"0.0-10.0 seconds: {CAP1} 20.0-30.0 seconds: {CAP2}"
    wrong_second = f"0.0-10.0 seconds: {CAP1} 20.0-30.0 seconds: a hook dissects tissue."
    first_only = f"0.0-10.0 seconds: {CAP1}"
    judge = ExactJudge()
    cfg = RewardConfig(caption_judge_weight=0.5, dvc_caption_weight=0.5)
    out = RewardScorer(cfg, judge, similarity=ExactSimilarity()).score_batch(
        [(inst, both), (inst, wrong_second), (inst, first_only)])
    assert [s.details["f1"] for s in out] == pytest.approx([1.0, 1.0, 2 / 3])
    assert [s.components["judge"] for s in out] == pytest.approx([1.0, 0.5, 0.5])  # unmatched reference: 0
    assert [s.components["similarity"] for s in out] == pytest.approx([1.0, 0.625, 0.5])
    assert out[1].judge_score == pytest.approx(3.0)
    assert set(judge.calls[0][1]) == {"dvc"} and len(judge.calls[0][0]) == 5  # one pair per matched segment
    keys, values, where = normalization_requests(out)
    assert ("SRC", "dense_captioning_gpt") in keys and ("SRC", "dense_captioning_gpt", "judge") in keys
    rewards = combine(out, values, where, judge_weight=0.5, dvc_caption_weight=0.5).rewards
    assert rewards == pytest.approx([1.0, 0.5 + 0.5 * 0.5625, 0.5 * 2 / 3 + 0.5 * 0.5])
    assert raw_reward(out[1], 0.5, 0.5) == pytest.approx(rewards[1])

    # the judge fails: similarity only, counted as for VS/RC
    failed = RewardScorer(cfg, ExactJudge(fail=True), similarity=ExactSimilarity()).score_batch([(inst, both)])
    assert failed[0].judge_missing and "judge_timeout" in failed[0].reasons
    keys, values, where = normalization_requests(failed)
    res = combine(failed, values, where, dvc_caption_weight=0.5)
    assert res.rewards == pytest.approx([1.0]) and res.counters["caption_judge_fallback"] == 1

    # dvc_caption_weight = 0: F1 only, no judge call, no caption parts
    quiet = ExactJudge()
    f1_only = RewardScorer(RewardConfig(dvc_caption_weight=0.0), quiet, similarity=ExactSimilarity()).score_batch(
        [(inst, wrong_second)])
    assert quiet.calls == [] and set(f1_only[0].components) == {"task"}
    keys, values, where = normalization_requests(f1_only)
    assert combine(f1_only, values, where, dvc_caption_weight=0.0).rewards == pytest.approx([1.0])
