"""Faults on a real local Ray (issue 5): actors killed for real in the middle of a run, the run continuing with
their state restored, every prompt accounted for; a learner rank's death stopping the job with a clear error and
the resubmitted job resuming from the last checkpoint."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from cluster.config import load_config
from cluster.driver import Trainer
from learner.deepspeed_learner import LearnerError

sys.path.insert(0, str(Path(__file__).parent))
from judge_http_stub import JudgeServer  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture()
def judge_server():
    server = JudgeServer()
    yield server
    server.close()


@pytest.fixture()
def judge_url(judge_server):
    return judge_server.url


def _cfg(synth_dir, tiny_model_dir, run_dir, judge_url, *extra):
    return load_config("cpu_demo", [
        f"run_dir={run_dir}", f"model.path={tiny_model_dir}", f"data.train_files=[{synth_dir}/train.jsonl]",
        "data.eval_files=[]",
        "data.tasks=[tal,stg,video_summary_gpt,cvs_assessment]", "data.prompts_per_step=2", "data.max_frames=4",
        "rollout.group_size=3", "rollout.max_new_tokens=8", "rollout.max_refill_rounds=0",
        "rollout.dynamic_sampling=false", "reward.num_cpus=0", "learner.num_cpus=0", "normalizer.min_samples=4",
        "reward.judge.backend=openai", f"reward.judge.base_url={judge_url}", "reward.judge.model=stub",
        "reward.judge.max_retries=0", "curriculum.enabled=true", "curriculum.window=2",
        "tracking.progress_bar=false", f"tracking.mlflow_uri={Path(run_dir).parent.as_uri()}/mlruns", *extra])


def _history(trainer, name):
    return dict((m.step, m.value) for m in trainer.tracker.client.get_metric_history(trainer.tracker.run_id, name))


def _num_restarts(handle) -> int:
    """From the GCS actor table (the state API would need the dashboard, which the test Ray does not run)."""
    from ray._private.state import actors

    return int(actors(handle._actor_id.hex())["NumRestarts"])


def _inject(trainer, at_step: dict[int, str], judge_server=None):
    """Kill an actor for real (``ray.kill``, Ray may restart it) right before or while the driver uses it, at the
    given (0-based) steps: rollout (while generating), reward (as scoring starts), judge (while it waits on the
    HTTP endpoint), normalizer, curriculum (as τ is read)."""
    acts = trainer.actors
    sent = {"normalized": 0, "observed": 0}
    if judge_server is not None:
        default = judge_server.behavior
        armed = {"step": None}

        def behavior(n, body):
            if armed["step"] is not None:  # the first judge request from the armed step on
                armed["step"] = None
                ray.kill(acts.judge, no_restart=False)  # the judge process dies with this request in flight
                return 200, None, 0.5
            return default(n, body)
        judge_server.behavior = behavior
        score = acts.score

        def arming_score(*a, **k):
            if at_step.get(trainer.global_step) == "judge":
                armed["step"] = trainer.global_step
            return score(*a, **k)
        acts.score = arming_score

    def wrap(name, when_kind, before=True):
        orig = getattr(acts, name)

        def wrapper(*a, **k):
            kind = at_step.get(trainer.global_step)
            if kind == when_kind and before:
                target = {"reward": lambda: acts.rewards.workers[0], "normalizer": lambda: acts.normalizer, "curriculum": lambda: acts.curriculum}[kind]()
                before_kill = _num_restarts(target)
                ray.kill(target, no_restart=False)  # asynchronous: wait until the process is really gone
                deadline = time.monotonic() + 60
                while _num_restarts(target) == before_kill and time.monotonic() < deadline:
                    time.sleep(0.05)
            out = orig(*a, **k)
            if kind == when_kind and not before:  # rollout: killed while its generate call is in flight
                ray.kill(acts.rollouts[0], no_restart=False)
            return out
        setattr(acts, name, wrapper)

    wrap("submit_rollouts", "rollout", before=False)
    wrap("score", "reward")
    wrap("normalize", "normalizer")
    wrap("tau", "curriculum")  # τ is read at the start of every step
    norm = acts.normalize

    def counting_normalize(keys, values, timeout, call_id=None):
        sent["normalized"] += len(values)
        return norm(keys, values, timeout, call_id)
    acts.normalize = counting_normalize
    observe = acts.observe_curriculum

    def counting_observe(*a, **k):
        sent["observed"] += 1
        return observe(*a, **k)
    acts.observe_curriculum = counting_observe
    return sent


def test_actors_killed_mid_run_continue_with_state(ray_local, synth_dir, tiny_model_dir, tmp_path, judge_server):
    cfg = _cfg(synth_dir, tiny_model_dir, tmp_path / "run", judge_server.url,
               "stages=[{name: grpo, kind: grpo, steps: 6}]")
    trainer = Trainer(cfg)
    try:
        sent = _inject(trainer, {1: "rollout", 2: "reward", 3: "judge", 4: "normalizer", 5: "curriculum"},
                       judge_server)
        trainer.run()
        acts = trainer.actors
        norm_state = ray.get(acts.normalizer.state_dict.remote(), timeout=60)
        cur_state = ray.get(acts.curriculum.state_dict.remote(), timeout=60)
        restarts = {"rollout": _num_restarts(acts.rollouts[0]), "reward": _num_restarts(acts.rewards.workers[0]),
                    "judge": _num_restarts(acts.judge), "normalizer": _num_restarts(acts.normalizer),
                    "curriculum": _num_restarts(acts.curriculum)}
        judge_ok = ray.get(acts.judge.score.remote([("the grasper retracts the gallbladder", "grasper retracts")]),
                           timeout=60)[0].ok
        run = trainer.tracker.client.get_run(trainer.tracker.run_id)
        hist = {k: _history(trainer, k) for k in ("accounting/prompts_in", "accounting/prompts_trained",
                                                   "accounting/prompts_dropped", "reward/count/caption_judge_fallback",
                                                   "faults/rollout_actor_lost", "faults/rollout_retried_prompts",
                                                   "faults/normalizer_restores", "faults/curriculum_restores",
                                                   "judge/requests")}
    finally:
        trainer.close()
    assert run.info.status == "FINISHED" and trainer.global_step == 6
    assert restarts == {"rollout": 1, "reward": 1, "judge": 1, "normalizer": 1, "curriculum": 1}
    # accounting identity on every step, and nothing dropped: every killed call was retried
    for step in range(1, 7):
        assert hist["accounting/prompts_in"][step] == 2
        assert hist["accounting/prompts_trained"][step] + hist["accounting/prompts_dropped"][step] == 2
        assert hist["accounting/prompts_dropped"][step] == 0
    # rollout: the share in flight was regenerated on the restarted actor (given the current weights first)
    assert hist["faults/rollout_actor_lost"][2] == 1 and hist["faults/rollout_retried_prompts"][2] == 2
    # judge: the captions of the call it died in fell back to similarity, counted; the restarted judge answers
    assert sum(hist["reward/count/caption_judge_fallback"].values()) >= 1
    assert judge_ok
    # normalizer and curriculum came back from their snapshots, not from zero
    assert hist["faults/normalizer_restores"][5] == 1 and hist["faults/curriculum_restores"][6] == 1
    assert sum(int(v["sketch"]["n"]) for v in norm_state["keys"].values()) == sent["normalized"] > 0
    assert cur_state["steps"] == sent["observed"] >= 1




def test_rollout_share_dropped_with_reason_when_retries_are_used_up(ray_local, synth_dir, tiny_model_dir, tmp_path,
                                                                    judge_url):
    """rollout_retries=0: the killed actor's prompts are reported as dropped (reason), the restarted actor gets
    the current weights and serves the next steps."""
    cfg = _cfg(synth_dir, tiny_model_dir, tmp_path / "run", judge_url, "reward.judge.backend=none",
               "curriculum.enabled=false", "cluster.rollout_retries=0",
               "stages=[{name: grpo, kind: grpo, steps: 3}]")
    trainer = Trainer(cfg)
    try:
        _inject(trainer, {1: "rollout"})
        trainer.run()
        hist = {k: _history(trainer, k) for k in ("accounting/prompts_in", "accounting/prompts_trained",
                                                   "accounting/dropped/rollout_actor_lost", "policy/version")}
        served = ray.get(trainer.actors.rollouts[0].ping.remote(), timeout=60)
    finally:
        trainer.close()
    assert hist["accounting/dropped/rollout_actor_lost"][2] == 2 and hist["accounting/prompts_trained"][2] == 0
    assert hist["accounting/prompts_trained"][3] == 2  # the restarted actor served step 3 ...
    assert served == hist["policy/version"][3]  # ... and holds the learner's weights


def test_normalizer_snapshot_restart_and_idempotent_retry(ray_local, tmp_path):
    """Kill the normalizer between two calls: the restarted actor has the state of the last call, and a call
    retried with the same call_id returns the same answer without counting its scores twice."""
    from actors.normalizer_actor import NormalizerActor

    snap = tmp_path / "normalizer.json"
    actor = NormalizerActor.options(max_restarts=1, max_task_retries=1).remote(min_samples=2,
                                                                               snapshot_path=str(snap))
    keys = [("src", "tal")] * 4
    first, _ = ray.get(actor.process.remote(keys, [0.1, 0.2, 0.3, 0.4], "step-1"), timeout=60)
    ray.kill(actor, no_restart=False)
    again, _ = ray.get(actor.process.remote(keys, [0.1, 0.2, 0.3, 0.4], "step-1"), timeout=60)  # a retry
    assert np.allclose(first, again)
    assert ray.get(actor.restores.remote(), timeout=60) == 1
    assert ray.get(actor.stats.remote(("src", "tal")), timeout=60)["count"] == 4  # not 0 (reset), not 8 (twice)
    ray.get(actor.process.remote(keys, [0.5, 0.6, 0.7, 0.8], "step-2"), timeout=60)
    assert ray.get(actor.stats.remote(("src", "tal")), timeout=60)["count"] == 8
    ray.kill(actor)


def test_learner_rank_death_stops_clearly_and_the_resubmitted_job_resumes(ray_local, synth_dir, tiny_model_dir,
                                                                         tmp_path, judge_url):
    cfg = _cfg(synth_dir, tiny_model_dir, tmp_path / "run", judge_url, "reward.judge.backend=none",
               "curriculum.enabled=false", "checkpoint_every=1", "resume=auto",
               "stages=[{name: grpo, kind: grpo, steps: 4}]")
    trainer = Trainer(cfg)
    try:
        train_step = trainer.actors.learner.train_step

        def dying_train_step(*a, **k):
            if trainer.global_step == 2:
                ray.kill(trainer.actors.learner.ranks[0])  # for good: a lost node, an OOM kill
            return train_step(*a, **k)
        trainer.actors.learner.train_step = dying_train_step
        with pytest.raises(LearnerError, match=r"rank 0 died during train_step.*resume"):
            trainer.run()
        run_id = trainer.tracker.run_id
        status = trainer.tracker.client.get_run(run_id).info.status
    finally:
        trainer.close()
    assert status == "FAILED"
    # the job is resubmitted as is (resume=auto; a RayJob retry does the same): it continues from step 2
    again = Trainer(cfg)
    try:
        assert again.global_step == 2 and again.tracker.run_id == run_id
        again.run()
        run = again.tracker.client.get_run(run_id)
        versions = _history(again, "policy/version")
    finally:
        again.close()
    assert run.info.status == "FINISHED" and again.global_step == 4
    assert sorted(versions) == [1, 2, 3, 4]


@pytest.mark.parametrize("mode", ["failing", "garbage"])
def test_bad_judge_endpoint_falls_back_visibly_in_mlflow(ray_local, synth_dir, tiny_model_dir, tmp_path,
                                                         judge_server, mode):
    """A judge endpoint that fails (HTTP 500, opening the breaker) or answers garbage: bounded waits, the caption
    reward falls back to similarity only, counted per step in MLflow next to the judge's own counters."""
    from judge_http_stub import completion

    judge_server.behavior = (lambda n, body: (500, {"error": "overloaded"}, 0.0)) if mode == "failing" else \
        (lambda n, body: (200, completion("I think it is fine."), 0.0))
    cfg = _cfg(synth_dir, tiny_model_dir, tmp_path / "run", judge_server.url, "curriculum.enabled=false",
               "data.tasks=[video_summary_gpt]", "reward.judge.breaker_failures=2", "reward.judge.timeout_s=2",
               "stages=[{name: grpo, kind: grpo, steps: 2}]")
    trainer = Trainer(cfg)
    try:
        trainer.run()
        m = trainer.tracker.client.get_run(trainer.tracker.run_id).data.metrics
        fallback = _history(trainer, "reward/count/caption_judge_fallback")
    finally:
        trainer.close()
    assert set(fallback) == {1, 2} and all(v == 2 * 3 for v in fallback.values())  # 2 prompts × G=3, each step
    assert m["accounting/prompts_trained"] + m["accounting/prompts_dropped"] == 2
    if mode == "failing":
        assert m["judge/breaker_trips"] >= 1 and m["judge/breaker_open"] == 1
    else:
        assert m["judge/failures/parse_no_scores"] >= 1 and m["judge/missing"] >= 6
