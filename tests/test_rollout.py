"""Rollout actor: behaviour log-probs agree with the learner's recomputation (ratio 1 at step 0) for greedy and
sampled decoding on video and image prompts, batched (all prompts in one generate) and per prompt; the batched
path gives the per-prompt path's prompt ids, vision inputs and greedy tokens; weight sync makes the rollout copy
equal the learner's; GRPO on an easy reward learns; a corrupt video is reported, not a crash."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from actors.rollout import RolloutWorker
from actors.rollout_backends import collate_prompts
from cluster.config import load_config
from learner.deepspeed_learner import DeepSpeedLearner, build_policy_batch

LOGPROB_ATOL = 2e-4  # fp32 CPU: KV-cached incremental decoding vs one full forward


@pytest.fixture(scope="module")
def prompts(media_prompts):
    return [media_prompts[k] for k in ("video", "frames", "image")]


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    return RolloutWorker(str(tiny_model_dir), max_frames=6, max_pixels=112 * 112, min_pixels=28 * 28 * 4)


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    cfg = load_config("cpu_demo", [f"model.path={tiny_model_dir}", "learner.lr=0.05", "learner.micro_batch_size=64"])
    lrn = DeepSpeedLearner(cfg, rank=0, world_size=1, master_port=29611)
    lrn.setup()
    yield lrn
    lrn.shutdown()


@pytest.mark.parametrize("temperature,batched", [(0.0, True), (1.0, True), (1.0, False)])
def test_behaviour_logprobs_match_learner(worker, learner, prompts, temperature, batched):
    groups = worker.generate(prompts, 3, max_new_tokens=12, temperature=temperature, seed=1, batched=batched)
    assert all(g.extra.get("batch_prompts", 1) == (len(prompts) if batched else 1) for g in groups)
    assert all(hasattr(g, "completions") for g in groups), groups
    assert {bool(g.mm_inputs.get("pixel_values_videos") is not None) for g in groups} == {True, False}
    for g in groups:
        assert g.policy_version == 0 and len(g.completions) == 3
        for c in g.completions:
            assert len(c.response_ids) == len(c.logprobs) >= 1 and c.finish_reason in ("stop", "length")
    batch = build_policy_batch(groups, [[0.0] * 3 for _ in groups])
    new = learner.compute_logprobs(batch)
    mask = batch["response_mask"].bool()
    diff = (new[mask] - batch["old_logprobs"][mask]).abs()
    assert diff.max().item() < LOGPROB_ATOL, diff.max()
    ratio = torch.exp(new[mask] - batch["old_logprobs"][mask])
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-3)


def test_batched_greedy_equals_per_prompt(worker, prompts):
    """Video file, frame list and image prompts of different lengths in one batch (so left padding is exercised):
    same prompt ids, vision inputs and greedy tokens as one call per prompt; chunked batches too."""
    mixed = prompts + prompts[2:]  # two image prompts around the videos
    per = worker.generate(mixed, 2, max_new_tokens=16, temperature=0.0, batched=False)
    whole = worker.generate(mixed, 2, max_new_tokens=16, temperature=0.0, batched=True)
    worker.max_batch_prompts = 3
    try:
        chunked = worker.generate(mixed, 2, max_new_tokens=16, temperature=0.0, batched=True)
    finally:
        worker.max_batch_prompts = 0
    assert len({len(g.prompt_ids) for g in per}) > 1, "prompts of one length would not test the padding"
    assert [g.extra["batch_prompts"] for g in chunked] == [3, 3, 3, 1]
    for ref, *others in zip(per, whole, chunked):
        assert sum(len(c.response_ids) for c in ref.completions) >= 4
        for g in others:
            assert g.instance_id == ref.instance_id and g.prompt_ids == ref.prompt_ids
            assert g.mm_inputs.keys() == ref.mm_inputs.keys()
            assert all(torch.equal(torch.as_tensor(g.mm_inputs[k]), torch.as_tensor(ref.mm_inputs[k]))
                       for k in ref.mm_inputs)
            assert [c.response_ids for c in g.completions] == [c.response_ids for c in ref.completions]
            for c, r in zip(g.completions, ref.completions):
                assert c.finish_reason == r.finish_reason
                assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(r.logprobs), atol=LOGPROB_ATOL)


def test_collate_prompts_left_pads_and_concatenates_media():
    a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
         "mm_token_type_ids": torch.tensor([[0, 2, 0]]), "pixel_values_videos": torch.ones(2, 4),
         "video_grid_thw": torch.tensor([[1, 1, 2]]), "second_per_grid_ts": [0.5]}
    b = {"input_ids": torch.tensor([[8, 9]]), "attention_mask": torch.ones(1, 2, dtype=torch.long),
         "pixel_values": torch.zeros(3, 4), "image_grid_thw": torch.tensor([[1, 1, 3]])}
    c = {"input_ids": torch.tensor([[4]]), "pixel_values_videos": torch.full((1, 4), 2.0),
         "video_grid_thw": torch.tensor([[1, 1, 1]]), "second_per_grid_ts": [2.0]}
    batch = collate_prompts([a, b, c], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9], [0, 0, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 2, 0], [0, 0, 0], [0, 0, 0]]
    assert batch["pixel_values_videos"][:, 0].tolist() == [1.0, 1.0, 2.0]
    assert batch["video_grid_thw"].tolist() == [[1, 1, 2], [1, 1, 1]]
    assert batch["second_per_grid_ts"].tolist() == [0.5, 2.0]
    assert batch["pixel_values"].shape == (3, 4) and batch["image_grid_thw"].tolist() == [[1, 1, 3]]
    with pytest.raises(ValueError, match="one row"):
        collate_prompts([{"input_ids": torch.tensor([1, 2])}], pad_id=0)


def test_no_vision_placeholder_in_responses(worker, prompts):
    groups = worker.generate(prompts, 4, max_new_tokens=24, temperature=1.5, seed=3)
    banned = set(worker.engine.suppressed)
    assert banned, "vision placeholders must be suppressed"
    assert not any(t in banned for g in groups for c in g.completions for t in c.response_ids)


def test_weight_sync_after_train_step(worker, learner, prompts):
    groups = worker.generate(prompts, 4, max_new_tokens=8, temperature=1.0, seed=5)
    adv = [[1.0, -1.0, 0.5, -0.5] for _ in groups]
    metrics = learner.train_step(build_policy_batch(groups, adv))
    assert metrics["skipped_nonfinite"] == 0 and metrics.get("skipped_samples/media_missing", 0) == 0
    payload = learner.weight_payload()
    before = worker.checksum()
    version = worker.apply_weights(payload)
    assert version == payload.version >= 1 and worker.version == version
    assert worker.checksum() == payload.checksum != before
    with pytest.raises(Exception, match="stale"):
        worker.apply_weights(dataclasses.replace(payload, version=payload.version - 1))


def test_corrupt_video_is_reported_not_raised(worker, prompts, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    inst = dataclasses.replace(prompts[0], video=str(bad), uid="bad#tal")
    out = worker.generate([inst, prompts[2]], 2, max_new_tokens=4, seed=0)
    assert out[0].reason.startswith("media:") and out[0].instance_id == "bad#tal"
    assert out[1].instance_id == prompts[2].uid and len(out[1].completions) == 2


def test_grpo_learns_an_easy_reward(tiny_model_dir, prompts):
    """Reward = share of response tokens in a fixed 5 % slice of the vocabulary: GRPO must push it well up."""
    from learner.losses import compute_advantages

    cfg = load_config("cpu_demo", [f"model.path={tiny_model_dir}", "learner.lr=0.02", "learner.micro_batch_size=64"])
    lrn = DeepSpeedLearner(cfg, rank=0, world_size=1, master_port=29613)
    lrn.setup()
    w = RolloutWorker(str(tiny_model_dir), max_frames=4, max_pixels=112 * 112, min_pixels=28 * 28 * 4)
    vocab = w.engine.model.config.text_config.vocab_size
    target = set(range(300, 300 + vocab // 20))
    means = []
    try:
        for step in range(16):
            groups = w.generate(prompts[2:] * 2, 8, max_new_tokens=8, temperature=1.0, seed=100 + step)
            rewards = torch.tensor([[sum(t in target for t in c.response_ids) / len(c.response_ids)
                                     for c in g.completions] for g in groups])
            means.append(rewards.mean().item())
            lrn.train_step(build_policy_batch(groups, compute_advantages(rewards, "grpo")))
            w.apply_weights(lrn.weight_payload())
    finally:
        lrn.shutdown()
    start, end = sum(means[:3]) / 3, sum(means[-3:]) / 3
    print("mean reward per step:", [round(m, 3) for m in means])
    assert end > max(3 * start, start + 0.25), means


# ---------------------------------------------------------------------------------------------- vLLM wiring
# The vllm backend runs on a real engine in the vLLM lane (tests/vllm_lane/, `bash run.sh test`); here only the pure
# helpers that need no vLLM.
def test_vllm_completion_unpacking():
    from types import SimpleNamespace as NS

    from actors.rollout_backends import _prompt_mismatch, _vllm_completion, _vllm_request

    def out(ids, lps, reason="length"):
        return NS(token_ids=ids, logprobs=[{t: NS(logprob=lp)} for t, lp in zip(ids, lps)], text="x",
                  finish_reason=reason)

    c = _vllm_completion(out([11, 12, 99], [-1.0, -2.0, -3.0], "stop"), frozenset({99}))
    assert c.response_ids == [11, 12] and c.logprobs == [-1.0, -2.0] and c.finish_reason == "suppressed"
    c = _vllm_completion(out([11, 7], [-1.0, -0.5], "stop"), frozenset({99}))
    assert c.response_ids == [11, 7] and c.finish_reason == "stop"
    with pytest.raises(RuntimeError, match="1 log-probs for 2 tokens"):
        _vllm_completion(NS(token_ids=[11, 12], logprobs=[{11: NS(logprob=-1.0)}], text="", finish_reason="stop"),
                         frozenset())
    assert _prompt_mismatch([1, 2, 3], [1, 2, 3]) == ""
    assert "first difference at token 1" in _prompt_mismatch([1, 5, 3, 4], [1, 2, 3])
    import numpy as np

    req = _vllm_request({"prompt_text": "p", "frames": np.zeros((4, 28, 28, 3), np.uint8), "fps": 2.0},
                        {"min_pixels": 784, "max_pixels": 3136})
    frames, meta = req["multi_modal_data"]["video"]
    assert frames.shape == (4, 28, 28, 3) and meta["total_num_frames"] == 4 and meta["duration"] == 2.0
    assert meta["frames_indices"] == [0, 1, 2, 3] and meta["do_sample_frames"] is False
    assert req["mm_processor_kwargs"]["size"] == {"shortest_edge": 784, "longest_edge": 3136}
