"""vLLM inside the project's actors, on a real engine: the rollout actor (a Ray actor holding the engine) serves
groups and takes weights from the object store exactly as the driver pushes them (``ActorSet.push_weights``:
a ref to the learner's payload), refusing a stale one; the ``vllm`` judge backend answers a rubric request."""
from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from data.reader import read_instances  # noqa: E402
from learner.experience import PromptGroup  # noqa: E402
from learner.weight_sync import pack_weights, weights_checksum  # noqa: E402


def test_rollout_actor_runs_the_engine_and_takes_pushed_weights(ray_local, vllm_model_dir, synth_dir, engine_kwargs):
    import ray
    from safetensors.torch import load_file

    from actors.rollout import RolloutActor

    images = read_instances(synth_dir / "images_train.jsonl").instances[:2]
    actor = RolloutActor.options(num_cpus=1).remote(
        str(vllm_model_dir), backend="vllm", dtype="float32", max_frames=4, max_pixels=112 * 112,
        min_pixels=4 * 28 * 28, vllm_kwargs={"seed": 0, "engine_kwargs": engine_kwargs})
    try:
        groups = ray.get(actor.generate.remote(images, 3, max_new_tokens=6, seed=1), timeout=600)
        assert all(isinstance(g, PromptGroup) and len(g.completions) == 3 for g in groups), groups
        base = ray.get(actor.generate.remote(images, 2, max_new_tokens=8, temperature=0.0), timeout=300)

        original = load_file(str(vllm_model_dir / "model.safetensors"))
        bumped = {n: (t * 1.5 if n == "lm_head.weight" else t) for n, t in original.items()}
        ref = ray.put(pack_weights(3, bumped))  # what LearnerGroup.get_weights hands to apply_weights
        assert ray.get(actor.apply_weights.remote(ref), timeout=300) == 3
        assert ray.get(actor.checksum.remote(), timeout=60) == weights_checksum(bumped)
        with pytest.raises(ray.exceptions.RayTaskError, match="stale"):
            ray.get(actor.apply_weights.remote(ray.put(pack_weights(2, original))), timeout=300)
        again = ray.get(actor.generate.remote(images, 2, max_new_tokens=8, temperature=0.0), timeout=300)
        assert all(g.policy_version == 3 for g in again)
        assert ray.get(actor.apply_weights.remote(ray.put(pack_weights(4, original))), timeout=300) == 4
        restored = ray.get(actor.generate.remote(images, 2, max_new_tokens=8, temperature=0.0), timeout=300)
        ids = [[c.response_ids for c in g.completions] for g in restored]
        assert ids == [[c.response_ids for c in g.completions] for g in base]
    finally:
        ray.kill(actor)


def test_vllm_judge_backend_answers_a_rubric_request(vllm_model_dir, engine_kwargs, close_engine):
    from rewards.judge_backends import VLLMBackend
    from rewards.config import JudgeConfig
    from rewards.judge_rubric import build_judge_messages, parse_judge_reply

    judge = VLLMBackend(JudgeConfig(backend="vllm", model=str(vllm_model_dir), max_new_tokens=16,
                                    gpu_memory_utilization=0.2), engine_kwargs=engine_kwargs)
    try:
        # reward.judge.gpu_memory_utilization (0.2, not the default) is the engine's
        assert judge.llm.llm_engine.vllm_config.cache_config.gpu_memory_utilization == 0.2
        messages = build_judge_messages("The gallbladder is dissected from the liver bed.",
                                        "The surgeon dissects the gallbladder.", task_hint="video_summary_gpt")
        replies = judge.complete([messages, messages])
    finally:
        close_engine(judge.llm)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies), replies
    assert replies[0] == replies[1]  # greedy: the same request, the same answer
    parse_judge_reply(replies[0])  # a random tiny model's text: parsed (most likely as unparseable), never raised
