"""Reward workers: rule-based scores + similarity + judge per sample, the judge asked asynchronously, shaping terms,
and the Ray pool that splits a batch across workers and puts it back in order."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from judge_http_stub import GOOD, KEY_ENV, SECRET, JudgeServer

from actors.reward_worker import RewardWorkerPool
from rewards.judge import JudgeCore
from rewards.judge_backends import JudgeBackend
from rewards.scoring import LocalJudgeClient, RewardItem, RewardScorer, ScoredSample
from rewards.config import JudgeConfig, RewardConfig
from data.schema import Instance
from rewards.assembly import combine, normalization_requests
from rewards.task_scores import score as task_score


def inst(examples: dict, key: str, **kw: Any) -> Instance:
    e = examples[key]
    base = dict(id=f"{key}-0", qa_type=key, data_source="SRC", question=e["question"], answer=e["answer"])
    base.update(kw)
    return Instance(**base)


class FixedSimilarity:
    """0.8 for every pair with a non-empty candidate, 0 otherwise; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def similarity(self, refs, cands):
        self.calls.append((list(refs), list(cands)))
        return np.array([0.8 if c.strip() else 0.0 for c in cands])


class Scripted(JudgeBackend):
    name = "scripted"
    thread_safe = True

    def __init__(self, reply: str = GOOD, delay: float = 0.0) -> None:
        self.reply, self.delay = reply, delay
        self.called_at: list[float] = []

    def complete(self, conversations):
        self.called_at.append(time.monotonic())
        time.sleep(self.delay)
        return [self.reply if "<candidate>" in c[1]["content"] else '{"aligned": 1}' for c in conversations]


def local_judge(reply: str = GOOD, delay: float = 0.0) -> tuple[LocalJudgeClient, Scripted]:
    be = Scripted(reply, delay)
    return LocalJudgeClient(JudgeCore(JudgeConfig(backend="openai", model="m", max_retries=0), backend=be)), be


def test_mixed_batch_components_by_task(examples):
    judge, _ = local_judge()
    sim = FixedSimilarity()
    scorer = RewardScorer(RewardConfig(), judge, similarity=sim)
    rc = inst(examples, "region_caption_gpt")
    items = [
        RewardItem(inst(examples, "tal"), "1.1-2.05 seconds."),  # IoU 0.95 / 1.9 = 0.5
        RewardItem(rc, "A suction cannula clears fluid near the incision."),
        (inst(examples, "next_action"), "tying", 3),
        (inst(examples, "tal"), "no idea"),
        (inst(examples, "tal", qa_type="made_up_task"), "x"),
        (inst(examples, "video_summary_gpt"), ""),
    ]
    out = scorer.score_batch(items)
    assert [type(s) for s in out] == [ScoredSample] * 6
    tag, cap, nap, bad, unknown, empty_vs = out
    assert tag.family == "tag" and tag.components == {"task": pytest.approx(0.5)} and tag.iou == pytest.approx(0.5)
    assert tag.format_ok and tag.reason is None and tag.reasons == [] and not tag.judge_missing
    assert cap.components == {"task": 0.0, "judge": pytest.approx(0.65), "similarity": pytest.approx(0.8)}
    assert cap.judge_score == pytest.approx(3.6) and not cap.judge_missing
    assert nap.components["task"] == 1.0 and nap.correct is True and "judge" not in nap.components
    assert bad.components["task"] == 0.0 and bad.reason == "no_segments" and "task_no_segments" in bad.reasons
    assert not bad.format_ok and "format_no_segments" in bad.reasons
    assert unknown.components == {"task": None} and unknown.reason == "unknown_qa_type"
    assert unknown.family == "unknown"
    # an empty summary: lowest judge score without a call (reward part 0), similarity 0 -- both real zeros
    assert empty_vs.components["judge"] == 0.0 and empty_vs.components["similarity"] == 0.0
    assert sim.calls == [([rc.answer, examples["video_summary_gpt"]["answer"]],
                          ["A suction cannula clears fluid near the incision.", ""])]
    m = scorer.metrics()
    assert m["reward_worker/samples"] == 6 and m["reward_worker/task_unknown_qa_type"] == 1

    # the output feeds rewards.assembly directly: identity "normalization" gives hand-computable rewards
    keys, values, where = normalization_requests(out)
    assert ("SRC", "region_caption_gpt", "judge") in keys and ("SRC", "tal") in keys
    res = combine(out, values, where, judge_weight=0.5)
    assert res.rewards[0] == pytest.approx(0.5)
    assert res.rewards[1] == pytest.approx(0.5 * 0.65 + 0.5 * 0.8)
    assert np.isnan(res.rewards[4])  # unknown task: no reward, the driver drops the group


def test_judge_failures_are_missing_with_reasons_never_zero(examples):
    rc = inst(examples, "region_caption_gpt")
    judge, _ = local_judge(reply="I cannot rate this.")
    out = RewardScorer(RewardConfig(), judge, similarity=FixedSimilarity()).score_batch([(rc, "A cannula.")])
    assert out[0].components["judge"] is None and out[0].judge_missing and out[0].judge_score is None
    assert out[0].components["similarity"] == pytest.approx(0.8)
    assert "judge_parse_no_scores" in out[0].reasons

    off = RewardScorer(RewardConfig(), None, similarity=FixedSimilarity()).score_batch([(rc, "A cannula.")])
    assert off[0].components["judge"] is None and off[0].judge_missing and "judge_disabled" in off[0].reasons

    no_ref = replace(rc, answer=None)
    judge, be = local_judge()
    s = RewardScorer(RewardConfig(), judge, similarity=FixedSimilarity()).score_batch([(no_ref, "A cannula.")])[0]
    assert s.components["similarity"] is None and s.components["judge"] is None and be.called_at == []
    assert {"judge_no_reference", "similarity_no_reference"} <= set(s.reasons)

    slow, _ = local_judge(delay=2.0)
    t0 = time.monotonic()
    late = RewardScorer(RewardConfig(), slow, similarity=FixedSimilarity(), judge_wait_s=0.2).score_batch(
        [(rc, "A cannula.")])[0]
    assert time.monotonic() - t0 < 1.5
    assert late.components["judge"] is None and "judge_timeout" in late.reasons


def test_judge_and_similarity_compare_the_answer_part_not_the_reasoning(examples):
    """A caption inside <think>…</think><answer>…</answer> reaches the judge and the similarity model as the bare
    answer (as in the leaderboard); the alignment check of a VQA answer still gets the whole response."""
    rc = inst(examples, "region_caption_gpt")
    caption = "A suction cannula clears fluid near the incision."
    wrapped = f"<think>The tool is thin and metallic; fluid is pooling.</think><answer> {caption} </answer>"
    sim = FixedSimilarity()
    seen: list[str] = []

    class Recording(Scripted):
        def complete(self, conversations):
            seen.extend(c[1]["content"] for c in conversations)
            return super().complete(conversations)

    be = Recording()
    judge = LocalJudgeClient(JudgeCore(JudgeConfig(backend="openai", model="m", max_retries=0), backend=be))
    scorer = RewardScorer(RewardConfig(semantic_alignment_weight=0.1), judge, similarity=sim)
    vqa = Instance(id="v-0", qa_type="vqa_mc", data_source="SRC", question="What is shown? A. polyp B. ulcer",
                   answer="A", struc_info={"choices": ["polyp", "ulcer"], "answer": "A"})
    vqa_response = "<think>round, raised, mucosal</think><answer>A</answer>"
    bare, boxed, _ = scorer.score_batch([(rc, caption), (rc, wrapped), (vqa, vqa_response)])
    assert sim.calls == [([rc.answer, rc.answer], [caption, caption])]
    assert bare.components["judge"] == boxed.components["judge"] and boxed.components["similarity"] == 0.8
    caption_prompts = [c for c in seen if "<candidate>" in c]
    # one judge call: the two captions are now the same (reference, candidate) pair, which the judge deduplicates
    assert len(caption_prompts) == 1 and caption in caption_prompts[0] and "<think>" not in caption_prompts[0]
    assert any("round, raised, mucosal" in c for c in seen if "<candidate>" not in c)  # alignment: reasoning kept


def test_judge_is_asked_before_rule_based_scoring_and_runs_meanwhile(examples):
    events: list[tuple[str, float]] = []

    def slow_task_score(instance, prediction, **kw):
        time.sleep(0.15)
        events.append(("task_done", time.monotonic()))
        return task_score(instance, prediction, **kw)

    judge, be = local_judge(delay=0.6)
    scorer = RewardScorer(RewardConfig(), judge, similarity=FixedSimilarity(), score_fn=slow_task_score)
    rc = inst(examples, "region_caption_gpt")
    t0 = time.monotonic()
    out = scorer.score_batch([(inst(examples, "tal"), "1.1-3.0 seconds."), (rc, "A cannula."),
                              (inst(examples, "next_action"), "tying")])
    elapsed = time.monotonic() - t0
    assert out[1].components["judge"] == pytest.approx(0.65)
    assert be.called_at[0] < events[0][1]  # the judge was working before the first rule-based score finished
    assert elapsed < 0.95  # overlapped: 3 x 0.15 s of task scoring during 0.6 s of judging, not their sum (1.05 s)


def test_iou_threshold_and_format_gate(examples):
    tal = inst(examples, "tal")
    on = RewardScorer(RewardConfig(iou_threshold_reward=True), None, similarity=FixedSimilarity())
    assert on.score_batch([(tal, "1.1-2.05 seconds.")], iou_threshold=0.6)[0].components["task"] == 0.0
    hit = on.score_batch([(tal, "1.1-2.05 seconds.")], iou_threshold=0.4)[0]
    assert hit.components["task"] == 1.0 and hit.iou == pytest.approx(0.5)
    off = RewardScorer(RewardConfig(iou_threshold_reward=False), None, similarity=FixedSimilarity())
    assert off.score_batch([(tal, "1.1-2.05 seconds.")], iou_threshold=0.6)[0].components["task"] == pytest.approx(0.5)
    # format gate: a prose-wrapped answer keeps its IoU only when the gate is off
    seen = []
    RewardScorer(RewardConfig(format_gate=False), None,
                 score_fn=lambda i, p, **kw: seen.append(kw) or task_score(i, p, **kw)).score_batch([(tal, "x")])
    assert seen == [{"iou_threshold": None, "format_gate": False, "require_think": False}]


def test_shaping_terms(examples):
    nap = inst(examples, "next_action")
    cfg = RewardConfig(length_mode="cwr", length_weight=0.5, length_target=10)
    out = RewardScorer(cfg, None).score_batch([(nap, "tying", 5), (nap, "cutting", 5), (nap, "tying")])
    assert out[0].shaping == {"length": pytest.approx(0.5 * 5 / 10)}
    assert out[1].shaping == {"length": 0.0}  # CWR: no length reward when wrong
    assert out[2].shaping == {} and "length_no_token_count" in out[2].reasons

    vqa = Instance(id="v", qa_type="vqa_mc", data_source="PMC", question="Which organ? A. liver B. spleen",
                   answer="A", struc_info={"choices": ["liver", "spleen"], "answer": "A"})
    knowledge = "The liver is the largest solid organ of the abdomen."
    text = f"<think>{knowledge}</think><answer>A</answer>"
    judge, _ = local_judge()
    cfg = RewardConfig(semantic_alignment_weight=0.3, recitation_coef=-0.5)
    s = RewardScorer(cfg, judge, knowledge={"PMC": knowledge}).score_batch([(vqa, text)])[0]
    assert s.components["task"] == 1.0 and s.components["alignment"] == 1.0
    assert s.shaping["alignment"] == pytest.approx(0.3)
    assert s.shaping["recitation"] == pytest.approx(-0.5)  # verbatim recitation: BLEU 1, full penalty


def test_bad_items_raise_and_task_errors_are_counted(examples):
    scorer = RewardScorer(RewardConfig(), None, score_fn=lambda *a, **k: 1 / 0)
    with pytest.raises(TypeError, match="item 0"):
        scorer.score_batch([("not an instance", "x")])
    with pytest.raises(TypeError, match="text"):
        scorer.score_batch([(inst(examples, "tal"), None)])
    out = scorer.score_batch([(inst(examples, "tal"), "1.1-3.0 seconds.")])
    assert out[0].components["task"] is None and out[0].reason == "task_score_error"
    assert scorer.metrics()["reward_worker/task_score_error"] == 1


# ------------------------------------------------------------------------------------------------ Ray pool

@pytest.fixture
def server():
    s = JudgeServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _ship_test_stubs_by_value():
    """Ray workers cannot import this test module: pickle its stubs (FixedSimilarity) by value."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_pool_deals_whole_prompt_groups_round_robin(examples):
    from actors.reward_worker import deal_by_prompt

    a, b, c = (inst(examples, k) for k in ("tal", "region_caption_gpt", "next_action"))
    a2 = replace(a)  # an equal instance object (same id) counts as the same prompt
    items = [RewardItem(x, "t") for x in (a, a2, a, b, b, c, a, a)]
    assert deal_by_prompt(items, 2) == [[0, 1, 2, 5], [3, 4, 6, 7]]  # runs: a×3, b×2, c, a×2
    assert deal_by_prompt(items, 3) == [[0, 1, 2, 6, 7], [3, 4], [5]]
    assert deal_by_prompt(items, 8) == [[0, 1, 2], [3, 4], [5], [6, 7]]  # no empty shards
    assert deal_by_prompt(items, 1) == [list(range(8))] and deal_by_prompt([], 4) == []


@pytest.mark.ray
def test_pool_on_local_ray_keeps_order_and_uses_the_judge_actor(ray_local, server, examples):
    from actors.judge import create_judge_actor
    from learner.experience import Completion, PromptGroup

    jcfg = JudgeConfig(backend="openai", model="judge", base_url=server.url, api_key_env=KEY_ENV,
                       max_retries=0, timeout_s=5.0)
    judge = create_judge_actor(jcfg, runtime_env={"env_vars": {KEY_ENV: SECRET}})
    pool = RewardWorkerPool(RewardConfig(num_workers=2, judge=jcfg), judge=judge, similarity=FixedSimilarity(),
                            get_timeout_s=120)
    try:
        tal, rc, nap = inst(examples, "tal"), inst(examples, "region_caption_gpt"), inst(examples, "next_action")
        preds = [(tal, "1.1-2.05 seconds."), (rc, "A cannula clears fluid."), (nap, "tying"), (nap, "cutting"),
                 (tal, "1.1-3.0 seconds.")]
        out = pool.score(preds)
        assert [s.qa_type for s in out] == ["tal", "region_caption_gpt", "next_action", "next_action", "tal"]
        assert [s.components["task"] for s in out] == pytest.approx([0.5, 0.0, 1.0, 0.0, 1.0])
        assert out[1].components["judge"] == pytest.approx(0.65) and out[1].components["similarity"] == 0.8
        assert len(server.requests) == 1

        def group(i: Instance, texts: list[str]) -> PromptGroup:
            return PromptGroup(i.id, i.qa_type, i.data_source, [1], {},
                               [Completion([5] * (k + 1), [0.0] * (k + 1), t, "stop") for k, t in enumerate(texts)],
                               policy_version=0, temperature=1.0)

        nested = pool.score_groups([group(nap, ["tying", "cutting", "suturing"]), group(tal, ["1.1-2.05 seconds."])],
                                   [nap, tal], timeout=60)
        assert [[s.components["task"] for s in g] for g in nested] == [[1.0, 0.0, 0.0], [pytest.approx(0.5)]]
        with pytest.raises(KeyError):
            pool.score_groups([group(rc, ["x"])], {nap.id: nap})
        m = pool.metrics()
        assert m["reward_worker/samples"] == 9 and m["reward_worker/batches"] == 4 and m["judge/ok"] == 1
        assert SECRET not in str(m)
        assert pool.score([]) == []
    finally:
        pool.shutdown()
        ray_local.kill(judge)


@pytest.mark.ray
def test_pool_survives_a_dead_judge(ray_local, examples):
    from actors.judge import create_judge_actor

    jcfg = JudgeConfig(backend="openai", model="judge", base_url="http://127.0.0.1:9/v1", max_retries=0)
    judge = create_judge_actor(jcfg, max_restarts=0)
    ray_local.kill(judge)
    pool = RewardWorkerPool(RewardConfig(num_workers=1, judge=jcfg), judge=judge, similarity=FixedSimilarity(),
                            get_timeout_s=120, judge_wait_s=30)
    try:
        out = pool.score([(inst(examples, "region_caption_gpt"), "A cannula.")])
        assert out[0].components["judge"] is None and out[0].judge_missing
        assert "judge_unavailable" in out[0].reasons and out[0].components["similarity"] == 0.8
    finally:
        pool.shutdown()
