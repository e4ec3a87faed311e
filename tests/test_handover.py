"""SFT hands over to GRPO and eval for real (weights pushed, versions followed, resume from an SFT checkpoint equals
an uninterrupted run, the first GRPO step is on-policy), the staleness bound N holds with N batches in flight,
and colocated rollout engines sleep and wake around the learner's phases — on a real local Ray."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.driver import Trainer
from common.files import read_json

SFT_GRPO = "stages=[{name: sft, kind: sft, steps: 2, lr: 0.01}, {name: grpo, kind: grpo, steps: 1}]"


def _cfg(synth_dir, tiny_model_dir, run_dir, *extra):
    return load_config("cpu_demo", [
        f"run_dir={run_dir}", f"model.path={tiny_model_dir}",
        f"data.train_files=[{synth_dir}/train.jsonl]", f"data.eval_files=[{synth_dir}/eval.jsonl]",
        "data.tasks=[cvs_assessment,tal]", "data.prompts_per_step=2", "data.max_frames=4", "data.eval_max_samples=2",
        "rollout.group_size=3", "rollout.max_new_tokens=8", "rollout.dynamic_sampling=false",
        "reward.num_cpus=0", "learner.num_cpus=0", "normalizer.min_samples=4", "tracking.progress_bar=false",
        f"tracking.mlflow_uri={Path(run_dir).parent.as_uri()}/mlruns", *extra])


def _history(trainer, name):
    return {m.step: m.value for m in trainer.tracker.client.get_metric_history(trainer.tracker.run_id, name)}


def _run(cfg, before_close=None):
    trainer = Trainer(cfg)
    try:
        trainer.run()
        return before_close(trainer) if before_close else trainer
    finally:
        trainer.close()


@pytest.mark.ray
def test_sft_hands_over_and_resumes_in_the_sft_stage(ray_local, synth_dir, tiny_model_dir, tmp_path):
    """Eval during SFT scores the learner's weights; the first GRPO step after SFT has ratio 1 (its behaviour
    log-probs come from the post-SFT policy); a run stopped in the SFT stage and resumed equals the full run."""
    import ray

    seen = []  # (rollout actor's version, learner's version) at every eval

    def record(trainer):
        predict = trainer.actors.predict

        def wrapped(*a, **k):
            seen.append((ray.get(trainer.actors.rollouts[0].ping.remote()), trainer.actors.learner.version()))
            return predict(*a, **k)

        trainer.actors.predict = wrapped

    full = Trainer(_cfg(synth_dir, tiny_model_dir, tmp_path / "full", SFT_GRPO, "checkpoint_every=1",
                        "eval_every=1"))
    try:
        record(full)
        full.run()
        hist = {k: _history(full, k) for k in ("train/ratio_mean", "train/ratio_max", "sft/version", "loss/sft",
                                                "loss/policy", "reward/raw_mean")}
    finally:
        full.close()
    assert seen == [(1, 1), (2, 2), (3, 3)]  # evals after SFT steps 1, 2 and GRPO step 3
    assert hist["sft/version"] == {1: 1.0, 2: 2.0}
    assert hist["train/ratio_mean"][3] == pytest.approx(1.0, abs=1e-3)
    assert hist["train/ratio_max"][3] == pytest.approx(1.0, abs=1e-3)

    part = tmp_path / "part"  # stopped after SFT step 1 of 2 (its checkpoint is in the SFT stage)
    _run(_cfg(synth_dir, tiny_model_dir, part, "checkpoint_every=1", "eval_every=1",
              "stages=[{name: sft, kind: sft, steps: 1, lr: 0.01}]"))
    state = read_json(part / "checkpoints" / "ckpt-00000001" / "driver_state.json")
    assert (state["stage_index"], state["stage_step"], state["weight_version"]) == (0, 1, 1)
    from cluster.cli import main as cli_main

    assert cli_main(["resume", str(part), SFT_GRPO]) == 0
    for f in ("driver_state.json", "normalizer.json"):
        a = read_json(tmp_path / "full" / "checkpoints" / "ckpt-00000003" / f)
        b = read_json(part / "checkpoints" / "ckpt-00000003" / f)
        if f == "driver_state.json":
            assert a["sampler"] == b["sampler"] and a["weight_version"] == b["weight_version"] == 3
        else:
            assert a == b
    # the resumed steps log into the part run's MLflow run, with the full run's values
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"{tmp_path.as_uri()}/mlruns")
    run_id = read_json(part / "checkpoints" / "ckpt-00000003" / "driver_state.json")["mlflow_run_id"]
    for name in ("loss/sft", "loss/policy", "reward/raw_mean", "train/ratio_mean"):
        got = {m.step: m.value for m in client.get_metric_history(run_id, name)}
        assert got == pytest.approx(hist[name], rel=1e-5), name


@pytest.mark.ray
def test_staleness_bound_n_batches_in_flight(ray_local, synth_dir, tiny_model_dir, tmp_path):
    """rollout.max_staleness=2: two batches in flight ahead of the learner (both in the checkpoint), lag 2 occurs
    and never more; nothing is generated past the stage's end."""
    run = tmp_path / "run"
    hist = _run(_cfg(synth_dir, tiny_model_dir, run, "rollout.max_staleness=2", "checkpoint_every=1",
                     "keep_checkpoints=4",
                     "stages=[{name: grpo, kind: grpo, steps: 4}]"),
                lambda t: {k: _history(t, k) for k in ("staleness/max", "staleness/mean", "policy/version")})
    assert hist["policy/version"] == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}  # every step trained
    assert hist["staleness/max"] == {1: 0.0, 2: 1.0, 3: 2.0, 4: 2.0}
    assert max(hist["staleness/max"].values()) <= 2 and hist["staleness/mean"][3] == 2.0
    pending = [read_json(run / "checkpoints" / f"ckpt-0000000{s}" / "driver_state.json")["pending_prompts"]
               for s in (1, 2, 3, 4)]
    assert [len(p) for p in pending] == [2, 2, 1, 0]  # steps 2-3, 3-4, 4 in flight; none past the end
    assert all(len(batch) == 2 for p in pending for batch in p)


@pytest.mark.ray
def test_colocated_engines_sleep_and_wake_in_order(ray_local, synth_dir, tiny_model_dir, tmp_path):
    """cluster.colocate: the rollout engine sleeps before every learner phase and wakes weights → load → KV cache
    before it generates again (the hf backend's calls as RolloutWorker records them)."""
    import ray

    events = _run(_cfg(synth_dir, tiny_model_dir, tmp_path / "run", "cluster.colocate=true",
                       "rollout.enable_sleep_mode=true", "data.prompts_per_step=1",
                       "stages=[{name: sft, kind: sft, steps: 1}, {name: grpo, kind: grpo, steps: 1}]"),
                  lambda t: ray.get(t.actors.rollouts[0].events.remote()))
    handover = [("wake_up", ("weights",)), ("load", 1), ("wake_up", ("kv_cache",))]
    assert events == [("sleep", 1), *handover,  # SFT trains, then the SFT weights go to the engine
                      ("generate", 1), ("sleep", 1), ("wake_up", ("weights",)), ("load", 2),
                      ("wake_up", ("kv_cache",))]


def test_hf_backend_sleep_releases_the_weights(tiny_model_dir):
    """Sleep leaves the module without parameter storage and refuses generation; wake restores the same weights."""
    from actors.rollout import RolloutWorker

    w = RolloutWorker(str(tiny_model_dir))
    before = w.checksum()
    w.sleep(1)
    assert sum(p.numel() for p in w.engine.model.parameters()) == 0
    with pytest.raises(RuntimeError, match="asleep"):
        w.engine.generate_batch([{}], 1, max_new_tokens=1, temperature=0.0, top_p=1.0, seed=0)
    w.wake_up(["kv_cache"])  # the KV cache alone brings no weights back
    assert sum(p.numel() for p in w.engine.model.parameters()) == 0
    w.wake_up(["weights"])
    assert w.checksum() == before
    assert w.events() == [("sleep", 1), ("wake_up", ("kv_cache",)), ("wake_up", ("weights",))]
