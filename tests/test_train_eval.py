"""In-training eval (cluster/driver.py ``evaluate_result``) scores with the run's own judge actor, telling it each
pair's task, and with the reward workers' similarity model: the LLM and similarity columns are filled."""
from __future__ import annotations

import numpy as np
import pytest
from judge_http_stub import KEY_ENV, SECRET, JudgeServer

from cluster.actor_set import ActorSet
from data.reader import read_instances
from rewards.config import JudgeConfig, RewardConfig
from rewards.leaderboard import evaluate


class EqualCosine:
    """Cosine 1 for equal texts, 0.5 otherwise (picklable, goes to the reward workers)."""

    def cosine(self, refs, cands):
        return np.array([1.0 if r.strip() == c.strip() else 0.5 for r, c in zip(refs, cands)])

    def similarity(self, refs, cands):
        return self.cosine(refs, cands)


@pytest.fixture(autouse=True)
def _ship_test_stubs_by_value():
    """Ray workers cannot import this test module: pickle its stub (EqualCosine) by value."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture()
def server():
    s = JudgeServer()
    yield s
    s.close()


def _actor_set(judge, pool) -> ActorSet:
    """The ActorSet parts ``eval_scorers`` uses (the judge actor, the reward workers), without rollout/learner."""
    acts = object.__new__(ActorSet)
    acts.judge, acts.rewards, acts.timeout = judge, pool, 60.0
    return acts


@pytest.mark.ray
def test_eval_fills_llm_and_similarity_columns_with_the_runs_judge(ray_local, synth_dir, server):
    from actors.judge import create_judge_actor
    from actors.reward_worker import RewardWorkerPool

    refs = read_instances(synth_dir / "eval.jsonl").instances
    preds = {r.uid: r.answer for r in refs}
    preds.update({r.uid: "a hook dissects tissue" for r in refs if r.qa_type.startswith("video_summary")})
    jcfg = JudgeConfig(backend="openai", model="judge", base_url=server.url, api_key_env=KEY_ENV, max_retries=0)
    judge = create_judge_actor(jcfg, runtime_env={"env_vars": {KEY_ENV: SECRET}})
    pool = RewardWorkerPool(RewardConfig(judge=jcfg), judge=judge, num_workers=1, similarity=EqualCosine(),
                            get_timeout_s=120)
    try:
        res = evaluate(refs, preds, **_actor_set(judge, pool).eval_scorers())
        quiet = evaluate(refs, preds, **_actor_set(None, pool).eval_scorers())
    finally:
        pool.shutdown()
        ray_local.kill(judge)
    for col in ("dvc_llm", "vs_llm", "rc_llm"):  # the stub's rubric reply has mean 3.6
        assert res["table"][col] == pytest.approx(3.6) and res["counts"]["n"][col] == 4, col
    assert res["skipped"] == [] and res["counts"]["judge_missing"] == {}
    tasks = [next(m["content"] for m in body["messages"] if m["role"] == "user").split("\n")[0]
             for _, body in server.requests]
    assert {t for t in tasks} == {"Task: dense video captions: timed segments, each with a caption",
                                  "Task: video summary of a surgical or clinical procedure video",
                                  "Task: region caption: what the object in a marked bounding box is doing"}
    assert res["table"]["rc_sim"] == pytest.approx(1.0) and res["table"]["vs_sim"] == pytest.approx(0.5)
    # without a judge: LLM columns skipped, similarity columns still filled
    assert quiet["skipped"] == ["dvc_llm", "vs_llm", "rc_llm"] and quiet["table"]["dvc_sim"] == pytest.approx(1.0)
