"""``medgrpo train`` end to end with ``rollout.backend=vllm`` on a real engine: the CLI, a local Ray, the vLLM engine
inside the rollout actor, the DeepSpeed learner actor, a reward worker and the normalizer; 2 SFT steps then 2 GRPO
steps on the synthetic MedVidBench (video and frame-list prompts), the tiny Qwen2.5-VL with text head size 32."""
from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("vllm")

pytestmark = pytest.mark.ray


def test_medgrpo_train_sft_then_grpo_with_the_vllm_backend(ray_local, synth_dir, vllm_model_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from cluster.cli import main

    run_dir, store = tmp_path / "run", (tmp_path / "mlruns").as_uri()
    assert main(["train", "cpu_demo", f"run_dir={run_dir}", f"model.path={vllm_model_dir}",
                 f"data.train_files=[{synth_dir}/train.jsonl]", f"data.eval_files=[{synth_dir}/eval.jsonl]",
                 "data.tasks=[tal,stg,cvs_assessment]", "data.prompts_per_step=2", "data.max_frames=4",
                 "rollout.backend=vllm", "rollout.enforce_eager=true", "rollout.group_size=3",
                 "rollout.max_new_tokens=8",
                 "rollout.dynamic_sampling=false", "reward.num_cpus=0", "normalizer.min_samples=4",
                 "checkpoint_every=0", "tracking.progress_bar=false", f"tracking.mlflow_uri={store}",
                 "stages=[{name: sft, kind: sft, steps: 2}, {name: grpo, kind: grpo, steps: 2}]"]) == 0
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("medgrpo-cpu-demo").experiment_id])
    assert run.info.status == "FINISHED"

    def history(name):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}

    assert sorted(history("loss/sft")) == [1, 2] and all(math.isfinite(v) for v in history("loss/sft").values())
    # the untrained tiny model earns reward 0 on every sample; without dynamic sampling its zero-advantage groups
    # are still trained, so every GRPO step is an update and a push. Versions: 2 after SFT, 3 and 4 after the GRPO
    # steps. push_weights checks every rollout actor reports the version sent, and each GRPO step's groups were
    # sampled by the engine at the version pushed before it (staleness 0 in synchronous mode).
    assert history("policy/version") == {3: 3.0, 4: 4.0}
    assert history("staleness/max") == {3: 0.0, 4: 0.0}
    for step in (3, 4):
        ins, trained = (history(f"accounting/prompts_{k}")[step] for k in ("in", "trained"))
        assert ins == trained >= 2
        assert math.isfinite(history("reward/raw_mean")[step]) and history("throughput/tokens_per_s")[step] > 0
    rows = [json.loads(x) for x in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["reward"]) for r in rows)
    assert {r["step"] for r in rows} == {3, 4}
