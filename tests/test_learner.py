"""The DeepSpeed learner on a tiny random Qwen2.5-VL: one rank in-process (ZeRO-0 over gloo) and ranks as real Ray
actors (ZeRO-2 / ZeRO-3), checkpoints, HF export, weight sync (object store and bucketed broadcast over gloo)."""
from __future__ import annotations

import copy
import os
import socket
import threading
from types import SimpleNamespace as NS

import pytest
import torch

from cluster.config import load_config
from learner.deepspeed_learner import DeepSpeedLearner, build_policy_batch, build_sft_batch, split_batch
from learner.weight_sync import (BucketBroadcaster, BucketReceiver, WeightReceiver, WeightSyncError, init_sync_group,
                                 pack_weights, plan_buckets, weights_checksum)

PROMPTS: dict[str, tuple[list[int], dict[str, torch.Tensor]]] = {}  # kind -> (prompt ids, media), from the processor
TOKENS: dict[str, int] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The project's tiny offline Qwen2.5-VL (official processor classes), and one video and one image prompt
    built by its processor exactly as the rollout builds them."""
    import numpy as np
    from transformers import AutoConfig

    from learner.model_io import build_inputs, load_model_and_processor
    from data.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2.5-vl"))
    _, proc = load_model_and_processor(path)
    cfg = AutoConfig.from_pretrained(path)
    TOKENS.update(video=cfg.video_token_id, image=cfg.image_token_id)
    rng = np.random.default_rng(0)
    for kind, inputs in (
            ("video", build_inputs(proc, "What happens?", frames=rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8),
                                   fps=1.0)),
            ("image", build_inputs(proc, "What is shown?", image=rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)))):
        mm = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        PROMPTS[kind] = (inputs["input_ids"][0].tolist(), mm)
    return str(path)


def _cfg(*overrides: str):
    return load_config(None, ["learner.lr=1e-2", "learner.micro_batch_size=2", "rollout.max_new_tokens=8",
                              "cluster.get_timeout_s=240", "learner.collective_timeout_s=120", *overrides])


def _group(seed: int, n: int, kind: str = "video"):
    """A rollout group (the shape of ``learner.experience.PromptGroup``) with n random completions."""
    g = torch.Generator().manual_seed(seed)
    prompt, mm = PROMPTS[kind]
    comps = [NS(response_ids=torch.randint(10, 1000, (3 + i,), generator=g).tolist(), logprobs=[-5.5] * (3 + i))
             for i in range(n)]
    return NS(prompt_ids=prompt, mm_inputs=mm, completions=comps, temperature=1.0)


def _batch():
    """5 samples: a video prompt with 3 completions, an image prompt with 2 (rank 1 of 2 gets only the image)."""
    return build_policy_batch([_group(1, 3, "video"), _group(2, 2, "image")],
                              [[1.0, -0.5, -0.5], [0.7, -0.7]])


def _params(learner: DeepSpeedLearner) -> dict[str, torch.Tensor]:
    return learner.state_for_sync()[1]


def _fresh(tiny_dir, *overrides: str) -> DeepSpeedLearner:
    """A rank-0-of-1 learner in this process (the first one creates the process group, later ones reuse it). The
    rank's environment variables (RANK, MASTER_PORT, ...) are restored afterwards so they do not leak into Ray
    workers or other tests."""
    saved = dict(os.environ)
    lrn = DeepSpeedLearner(_cfg(*overrides), 0, 1, "127.0.0.1", _free_port(), model_path=tiny_dir)
    try:
        lrn.setup()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return lrn


@pytest.fixture(scope="module")
def learner(tiny_dir):
    return _fresh(tiny_dir, "learner.zero_stage=0")


def _hf_model(tiny_dir, state=None):
    """HF's own model class and forward, with the RoPE positions every project loader installs (vLLM's rule for the
    text after a video, ``learner.model_io.use_reference_mrope``)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from learner.model_io import use_reference_mrope

    m = use_reference_mrope(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32))
    if state is not None:
        m.load_state_dict(state, strict=False)
    return m.eval()


# ---------------------------------------------------------------------------------------------- batch building
def test_build_policy_batch_layout(tiny_dir):
    b = _batch()
    pv, pi = len(PROMPTS["video"][0]), len(PROMPTS["image"][0])
    width = max(pv + 5, pi + 4)  # longest prompt + response
    assert b["input_ids"].shape == (5, width)
    assert b["response_mask"][0].tolist() == [0] * pv + [1] * 3 + [0] * (width - pv - 3)
    assert b["old_logprobs"][4, pi:].tolist() == [-5.5] * 4 + [0.0] * (width - pi - 4)
    assert b["attention_mask"][4].sum() == pi + 4 and b["input_ids"][4, pi + 4:].eq(0).all()
    assert b["mm_index"].tolist() == [0, 0, 0, 1, 1] and len(b["multimodal"]) == 2
    parts = split_batch(b, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [3, 2]
    assert parts[1]["mm_index"].tolist() == [0, 0] and "pixel_values" in parts[1]["multimodal"][0]
    tiny = split_batch(build_policy_batch([_group(3, 2)], [[1.0, -1.0]]), 3)
    assert [int(p["response_mask"].sum()) for p in tiny] == [3, 4, 0]  # the filler row has nothing to learn
    with pytest.raises(ValueError, match="2 completions but 3 advantages"):
        build_policy_batch([_group(1, 2)], [[1.0, 0.0, -1.0]])


# ---------------------------------------------------------------------------------------------- one rank
def test_logprobs_match_plain_hf_forward(learner, tiny_dir):
    """The learner's forward (vision tower run once per prompt, features reused) equals HF's own forward."""
    b = _batch()
    lp = learner.compute_logprobs(b)
    hf = _hf_model(tiny_dir, _params(learner))
    rows = [0, 1, 2]  # the video prompt; HF's native path with the video repeated per sample
    vids = b["multimodal"][0]
    ids = b["input_ids"][rows]
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=b["attention_mask"][rows],
                 pixel_values_videos=torch.cat([vids["pixel_values_videos"]] * 3),
                 video_grid_thw=torch.cat([vids["video_grid_thw"]] * 3),
                 second_per_grid_ts=torch.cat([vids["second_per_grid_ts"]] * 3),
                 mm_token_type_ids=(ids == TOKENS["video"]).int() * 2)
    ref = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    am = b["attention_mask"][rows][:, 1:].bool()
    assert torch.allclose(lp[rows][:, 1:][am], ref[am], atol=1e-4)


def test_train_step_changes_weights(learner):
    before = _params(learner)
    b = _batch()
    m = learner.train_step(b)
    after = _params(learner)
    assert m["tokens"] == 3 + 4 + 5 + 3 + 4 and m["sequences"] == 5
    assert m["optimizer_steps"] == 1 and m["skipped_nonfinite"] == 0 and m["version"] == learner.version >= 1
    assert m["ratio_mean"] != 1.0 and 0 <= m["clip_frac"] <= 1 and m["entropy"] > 0 and m["grad_norm"] > 0
    lm = "lm_head.weight"
    assert not torch.equal(before[lm], after[lm])
    frozen = [k for k in before if k.startswith("model.visual.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # freeze_vision_tower


def test_nonfinite_loss_skips_update(learner):
    before = _params(learner)
    version = learner.version
    b = _batch()
    b["advantages"] = torch.full((5,), 3e38)  # finite inputs, but the loss overflows to inf/nan
    m = learner.train_step(b)
    assert m["skipped_nonfinite"] == 1 and m["optimizer_steps"] == 0 and learner.version == version
    after = _params(learner)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a bad sample is left out with a reason; the rest still trains
    b = _batch()
    b["advantages"][1] = float("nan")
    m = learner.train_step(b)
    assert m["skipped_samples/nonfinite_advantage"] == 1 and m["optimizer_steps"] == 1
    assert m["tokens"] == 3 + 5 + 3 + 4


def test_media_token_mismatch_is_counted(learner):
    b = _batch()
    at = int((b["input_ids"][3] == TOKENS["image"]).nonzero()[0])
    b["input_ids"][3, at] = 5  # one image placeholder fewer than the image's features
    m = learner.train_step(b)
    assert m["skipped_samples/media_token_mismatch"] == 1 and m["sequences"] == 4


def test_set_lr_takes_effect(learner):
    before = _params(learner)
    learner.set_lr(0.0)
    try:
        m = learner.train_step(_batch())
    finally:
        learner.set_lr(1e-2)
    assert m["lr"] == 0.0 and m["optimizer_steps"] == 1
    after = _params(learner)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_roundtrip_gives_identical_next_step(learner, tmp_path):
    path = tmp_path / "ckpt"
    learner.train_step(_batch())  # non-trivial optimizer state
    learner.save_checkpoint(path)
    assert (path / "learner_state.json").exists() and not (tmp_path / ".ckpt.staging").exists()
    v = learner.version
    first = learner.train_step(_batch())
    second = learner.train_step(_batch())
    w_after = _params(learner)
    assert learner.load_checkpoint(path) == v
    again = learner.train_step(_batch())
    assert again["loss"] == pytest.approx(first["loss"], abs=1e-6)
    assert learner.train_step(_batch())["loss"] == pytest.approx(second["loss"], abs=1e-6)  # optimizer state too
    w = _params(learner)
    assert all(torch.allclose(w[k], w_after[k], atol=1e-6) for k in w)


def test_export_hf_reloads_with_equal_weights(learner, tmp_path):
    out = tmp_path / "hf"
    learner.export_hf(out)
    assert list(out.glob("*.safetensors"))
    from learner.model_io import load_model_and_processor

    reloaded, processor = load_model_and_processor(out)  # a complete model folder: the processor came along
    assert processor.tokenizer.convert_tokens_to_ids("<|video_pad|>") == TOKENS["video"]
    mine = _params(learner)
    theirs = dict(reloaded.named_parameters())
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_sft_step_loss_equals_hf_loss(tiny_dir):
    lrn = _fresh(tiny_dir, "learner.zero_stage=0", "model.freeze_vision_tower=false",
                 "model.gradient_checkpointing=true")
    g = _group(5, 1, "video")
    ids = g.prompt_ids + g.completions[0].response_ids
    labels = [-100] * len(g.prompt_ids) + g.completions[0].response_ids
    ex = [{"input_ids": ids, "labels": labels, "mm_inputs": g.mm_inputs},
          {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]}]
    batch = build_sft_batch(ex)
    hf = _hf_model(tiny_dir)
    with torch.no_grad():  # HF's own loss on the same two sequences (mean over the 3 + 3 supervised tokens)
        a = hf(input_ids=torch.tensor([ids]), pixel_values_videos=g.mm_inputs["pixel_values_videos"],
               video_grid_thw=g.mm_inputs["video_grid_thw"], second_per_grid_ts=g.mm_inputs["second_per_grid_ts"],
               mm_token_type_ids=(torch.tensor([ids]) == TOKENS["video"]).int() * 2, labels=torch.tensor([labels])).loss
        b = hf(input_ids=torch.tensor([[5, 6, 7, 8, 9]]), labels=torch.tensor([[-100, -100, 7, 8, 9]])).loss
    m = lrn.sft_step(batch)
    assert m["tokens"] == 6 and m["optimizer_steps"] == 1
    assert m["loss"] == pytest.approx(float(a + b) / 2, abs=1e-5)
    assert lrn.sft_step(batch)["loss"] < m["loss"]


# ---------------------------------------------------------------------------------------------- weight sync
def test_weight_payload_roundtrip_through_object_store(ray_local, learner, tiny_dir):
    if learner.version == 0:  # run alone (-k): move the weights away from the checkpoint's first
        learner.train_step(_batch())
    payload = learner.weight_payload()
    assert payload.version == learner.version and payload.checksum == weights_checksum(learner.model)
    fetched = ray_local.get(ray_local.put(payload), timeout=60)
    model = _hf_model(tiny_dir)
    assert weights_checksum(model) != payload.checksum
    rx = WeightReceiver(version=0)
    assert rx.apply(model, fetched) == learner.version
    assert weights_checksum(model) == payload.checksum
    with pytest.raises(WeightSyncError, match="stale"):
        rx.apply(model, fetched)
    bad = pack_weights(payload.version + 1, {"lm_head.weight": torch.zeros(3, 3)})
    with pytest.raises(WeightSyncError, match="missing from the payload"):
        rx.apply(model, bad)
    with pytest.raises(WeightSyncError, match="shape mismatch"):
        WeightReceiver(strict=False).apply(model, bad)
    assert weights_checksum(model) == payload.checksum  # refused payloads wrote nothing


def test_state_for_sync_without_copy_shares_the_live_parameters(learner):
    """ZeRO-0 on CPU: ``copy=False`` hands out the parameters themselves (the learner actor's export makes no copy
    of its own; the object store's is the only one), ``copy=True`` fresh memory with the same values."""
    live = {n: p for n, p in learner.model.named_parameters()}
    _, shared = learner.state_for_sync(copy=False)
    _, copied = learner.state_for_sync()
    assert shared.keys() == copied.keys() and shared
    for n, t in shared.items():
        assert t.data_ptr() == live[n].data_ptr(), n
        assert copied[n].data_ptr() != live[n].data_ptr() and torch.equal(copied[n], live[n]), n
    assert learner.weight_payload(copy=False).checksum == learner.weight_payload().checksum


def _over_gloo(send, receive) -> dict:
    """Run ``send(group)`` as rank 0 and ``receive(group)`` as rank 1 of a fresh Gloo sync group, in two threads;
    returns {"sent": ..., "received": ...} or the exceptions raised."""
    port, out = _free_port(), {}

    def run(rank: int) -> None:
        try:
            pg = init_sync_group("127.0.0.1", port, rank, 2, backend="gloo", timeout_s=60)
            out["sent" if rank == 0 else "received"] = (send if rank == 0 else receive)(pg)
        except Exception as e:  # noqa: BLE001
            out[f"error{rank}"] = e

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def test_bucketed_broadcast_over_gloo():
    """The NCCL path's logic (header, per-dtype buckets, unflatten) over a Gloo group between two threads: two syncs
    through the same sender/receiver (one reused staging buffer, fp32 and bf16 buckets), a load_fn receiver, and a
    model parameter the broadcast does not cover (refused, nothing applied)."""
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    src[1].to(torch.bfloat16)
    dst = copy.deepcopy(src)
    for p in dst.parameters():
        torch.nn.init.zeros_(p)
    plan = plan_buckets([(n, str(p.dtype)[6:], tuple(p.shape)) for n, p in src.named_parameters()], bucket_bytes=300)
    assert [b.dtype for b in plan] == ["float32", "float32", "bfloat16"]  # 512 B weight alone, bias, then bf16
    def send(version):
        return lambda pg: BucketBroadcaster(pg, learner_rank=0, bucket_bytes=300, timeout_s=60).broadcast(src, version)

    out = _over_gloo(send(7), lambda pg: BucketReceiver(pg, timeout_s=60).receive(dst))
    assert "error0" not in out and "error1" not in out, out
    assert out["received"] == 7 and weights_checksum(dst, mode="full") == weights_checksum(src, mode="full")

    # the same broadcaster and receiver twice: the staging buffer is reused and holds the last bucket
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    sender, receiver = {}, {}

    def send_twice(pg):
        sender["b"] = BucketBroadcaster(pg, learner_rank=0, bucket_bytes=300, timeout_s=60)
        sender["b"].broadcast(src, 8)
        buf = sender["b"].staging.buf
        with torch.no_grad():
            for p in src.parameters():
                p.mul_(-0.5)
        sender["b"].broadcast(src, 9)
        return buf is not None and sender["b"].staging.buf is buf

    def receive_twice(pg):
        receiver["r"] = BucketReceiver(pg, version=7, timeout_s=60)
        receiver["r"].receive(dst)
        buf = receiver["r"].staging.buf
        got = receiver["r"].receive(dst)
        return got, buf is not None and receiver["r"].staging.buf is buf

    out = _over_gloo(send_twice, receive_twice)
    assert out["sent"] is True and out["received"] == (9, True), out
    assert weights_checksum(dst, mode="full") == weights_checksum(src, mode="full")

    # a load_fn target gets every tensor (it must copy: the views are of the staging buffer)
    loaded: dict[str, torch.Tensor] = {}
    out = _over_gloo(send(10), lambda pg: BucketReceiver(pg, version=9, timeout_s=60).receive(
        lambda pairs: loaded.update({n: t.clone() for n, t in pairs})))
    assert out["received"] == 10 and weights_checksum(loaded, mode="full") == weights_checksum(src, mode="full")

    # the receiver's model has a parameter the sender does not broadcast: refused, nothing written
    bigger = torch.nn.Sequential(*copy.deepcopy(dst), torch.nn.Linear(2, 2))
    before = weights_checksum(bigger, mode="full")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(3.0)
    out = _over_gloo(send(11), lambda pg: BucketReceiver(pg, version=10, timeout_s=60).receive(bigger))
    assert isinstance(out.get("error1"), WeightSyncError) and "2.weight (not broadcast)" in str(out["error1"])
    assert "error0" not in out and weights_checksum(bigger, mode="full") == before


def test_sync_group_times_out_without_peer():
    with pytest.raises(Exception, match="(?i)timeout|timed out|wait"):
        init_sync_group("127.0.0.1", _free_port(), 0, 2, backend="gloo", timeout_s=1)


# ---------------------------------------------------------------------------------------------- Ray ranks
@pytest.mark.ray
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_two_ranks_match_one_rank(ray_local, tiny_dir, tmp_path, stage):
    """Same global batch on 1 rank (ZeRO-0, in-process) and on 2 Ray ranks (ZeRO-0 / 2 / 3): same metrics and
    weights; a non-finite step is dropped identically; (ZeRO-3) multi-rank checkpoint and HF export."""
    from actors.learner_actor import LearnerGroup

    bad = _batch()
    bad["advantages"] = torch.full((5,), 3e38)
    ref = _fresh(tiny_dir, "learner.zero_stage=0")
    ref_m1 = ref.train_step(_batch())
    ref_w = _params(ref)
    assert ref.train_step(bad)["skipped_nonfinite"] == 1
    ref_m2 = ref.train_step(_batch())

    group = LearnerGroup(_cfg(f"learner.zero_stage={stage}", "learner.num_ranks=2", "learner.num_cpus=0"),
                         model_path=tiny_dir)
    try:
        m = group.train_step(_batch())  # rank 0: 3 video samples (2 micro-batches); rank 1: 2 image samples
        for k in ("loss", "tokens", "clip_frac", "ratio_mean", "entropy", "grad_norm"):
            assert m[k] == pytest.approx(ref_m1[k], rel=1e-4, abs=1e-6), k
        h1 = group.get_weights()
        p1 = ray_local.get(h1.ref, timeout=60)
        assert h1.version == p1.version == 1
        model = _hf_model(tiny_dir)
        WeightReceiver(version=0).apply(model, p1)
        got = dict(model.named_parameters())
        # Adam's first step moves every weight by ≈ lr = 1e-2 whatever the gradient's size, so a wrong gradient
        # direction shows as a 2e-2 difference; gradients that are pure float noise (e.g. key biases, which softmax
        # ignores) may legitimately differ by a few 1e-5 between reduction orders.
        assert all(torch.allclose(got[k], ref_w[k], atol=1e-4) for k in ref_w)

        if stage == 2:  # the GPU path's protocol over gloo: rank 0 actor sends, this process receives
            addr, port = group.weight_sync_address()
            joining = group.init_weight_sync(addr, port, world_size=2, backend="gloo")
            rx_group = init_sync_group(addr, port, 1, 2, backend="gloo", timeout_s=60)
            group.wait(joining)
            sending = group.broadcast_weights()
            target = _hf_model(tiny_dir)
            assert BucketReceiver(rx_group, version=0, timeout_s=60).receive(target) == 1
            assert group.wait(sending) == [1, 1]
            assert weights_checksum(target) == p1.checksum

        skipped = group.train_step(bad)
        assert skipped["skipped_nonfinite"] == 1 and skipped["optimizer_steps"] == 0
        h2 = group.get_weights()
        assert h2.version == 1 and ray_local.get(h2.ref, timeout=60).checksum == p1.checksum  # nothing applied
        if stage == 3:
            group.save_checkpoint(str(tmp_path / "ckpt"))
        m2 = group.train_step(_batch())  # the optimizer state survived the dropped step as on one rank
        assert m2["loss"] == pytest.approx(ref_m2["loss"], rel=1e-4, abs=1e-6)
        if stage == 3:
            assert group.load_checkpoint(str(tmp_path / "ckpt")) == 1
            assert group.train_step(_batch())["loss"] == pytest.approx(m2["loss"], abs=1e-6)
            group.export_hf(str(tmp_path / "hf"))
            exported = dict(_hf_model(str(tmp_path / "hf")).named_parameters())
            current = ray_local.get(group.get_weights().ref, timeout=60)
            assert all(torch.equal(exported[n], t) for n, t in current.named_tensors())
    finally:
        group.shutdown()


# ---------------------------------------------------------------------------------------------- KL reference
def _sft_batch():
    g = _group(7, 2, "video")
    return build_sft_batch([{"input_ids": g.prompt_ids + c.response_ids,
                             "labels": [-100] * len(g.prompt_ids) + c.response_ids, "mm_inputs": g.mm_inputs}
                            for c in g.completions])


def test_kl_zero_loads_no_reference(learner):
    assert float(learner.cfg.learner.kl_coef) == 0.0
    assert learner._ref is None and learner._ref_source == "none"
    assert "reference" not in [n.split(".")[0] for n, _ in learner.engine.named_modules()]


def test_kl_reference_is_the_policy_at_grpo_start_and_survives_a_checkpoint(tiny_dir, tmp_path):
    """kl_coef > 0: the reference is the policy after SFT (KL 0 at the first GRPO step, > 0 once the policy has
    moved), the loss is the KL-free loss + β·KL, and a checkpoint brings the same reference back."""
    beta = 0.5
    kl = _fresh(tiny_dir, "learner.zero_stage=0", f"learner.kl_coef={beta}")
    plain = _fresh(tiny_dir, "learner.zero_stage=0")
    try:
        assert kl._ref is not None and kl._ref_source == "initial"
        for lrn in (kl, plain):
            lrn.sft_step(_sft_batch())
        post_sft = _params(kl)
        first = kl.train_step(_batch())
        assert kl._ref_source == "snapshot" and first["kl_ref"] == pytest.approx(0.0, abs=1e-7)
        ref_w = dict(kl._ref_model_module().named_parameters())
        assert all(torch.equal(ref_w[k], post_sft[k]) for k in post_sft)
        # at π_θ = π_ref the k3 term has zero gradient: the first updates are equal, bit for bit (the reference
        # log-probs are the training forward's own; float noise there would become lr-sized Adam moves)
        assert first["loss"] == pytest.approx(plain.train_step(_batch())["loss"], abs=1e-6)
        w_kl, w_plain = _params(kl), _params(plain)
        assert all(torch.equal(w_kl[k], w_plain[k]) for k in w_plain)
        kl.save_checkpoint(tmp_path / "ckpt")
        second, second_plain = kl.train_step(_batch()), plain.train_step(_batch())
        assert second["kl_ref"] > 1e-4
        assert second["loss"] == pytest.approx(second_plain["loss"] + beta * second["kl_ref"], rel=1e-4)
        assert all(torch.equal(ref_w[k], post_sft[k]) for k in post_sft)  # frozen
    finally:
        plain.shutdown()
    kl.shutdown()
    again = _fresh(tiny_dir, "learner.zero_stage=0", f"learner.kl_coef={beta}")
    try:
        again.load_checkpoint(tmp_path / "ckpt")
        assert again._ref_source == "snapshot" and again._ref_ready
        ref_w = dict(again._ref_model_module().named_parameters())
        assert all(torch.equal(ref_w[k], post_sft[k]) for k in post_sft)
        m = again.train_step(_batch())
        assert m["kl_ref"] == pytest.approx(second["kl_ref"], rel=1e-5) and m["loss"] == pytest.approx(
            second["loss"], abs=1e-6)
    finally:
        again.shutdown()


def test_kl_later_ppo_epochs_use_the_first_epochs_reference(tiny_dir):
    """ppo_epochs=2 at the first GRPO step: epoch 1's own log-probs are the reference for epoch 2 (KL small and
    > 0 once the policy moved; an unfilled reference, log-prob 0, would give a k3 of hundreds)."""
    lrn = _fresh(tiny_dir, "learner.zero_stage=0", "learner.kl_coef=0.5", "learner.ppo_epochs=2")
    try:
        m = lrn.train_step(_batch())
        assert m["optimizer_steps"] == 2 and 1e-6 < m["kl_ref"] < 1.0
    finally:
        lrn.shutdown()


@pytest.mark.ray
@pytest.mark.parametrize("stage", [2, 3])
def test_kl_two_ranks_match_one_rank(ray_local, tiny_dir, tmp_path, stage):
    """kl_coef > 0 on 2 Ray ranks (ZeRO-2: a full reference per rank; ZeRO-3: a partitioned one): the same KL and
    loss as one rank; (ZeRO-3) the snapshot reference survives a multi-rank checkpoint."""
    from actors.learner_actor import LearnerGroup

    ref = _fresh(tiny_dir, "learner.zero_stage=0", "learner.kl_coef=0.5")
    ref.sft_step(_sft_batch())
    ref_m = [ref.train_step(_batch()) for _ in range(2)]
    ref.shutdown()
    group = LearnerGroup(_cfg(f"learner.zero_stage={stage}", "learner.num_ranks=2", "learner.num_cpus=0",
                              "learner.kl_coef=0.5"), model_path=tiny_dir)
    try:
        group.sft_step(_sft_batch())
        m = group.train_step(_batch())
        if stage == 3:
            group.save_checkpoint(str(tmp_path / "ckpt"))
        m2 = group.train_step(_batch())
        for got, want in ((m, ref_m[0]), (m2, ref_m[1])):
            for k in ("loss", "kl_ref", "tokens", "ratio_mean"):
                assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
        assert m2["kl_ref"] > 1e-4
        if stage == 3:
            group.shutdown()
            group = LearnerGroup(_cfg("learner.zero_stage=3", "learner.num_ranks=2", "learner.num_cpus=0",
                                      "learner.kl_coef=0.5"), model_path=tiny_dir)
            assert group.load_checkpoint(str(tmp_path / "ckpt")) == 2
            again = group.train_step(_batch())
            assert again["kl_ref"] == pytest.approx(m2["kl_ref"], rel=1e-4) and again["loss"] == pytest.approx(
                m2["loss"], rel=1e-4, abs=1e-6)
    finally:
        group.shutdown()


# ---------------------------------------------------------------------------------------------- LoRA
LORA = ("model.lora_rank=4", "model.lora_alpha=8", "model.lora_target_modules=[q_proj,v_proj,down_proj]")


def _merged_expected(lrn: DeepSpeedLearner, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """base + (alpha / rank) · B · A from the learner's own adapter tensors, per targeted module."""
    out = dict(base)
    peft_params = dict(lrn.model.named_parameters())
    for name, a in peft_params.items():
        if ".lora_A.default." in name:
            b = peft_params[name.replace("lora_A", "lora_B")]
            mod = name.split(".lora_A.")[0][len("base_model.model."):]
            out[f"{mod}.weight"] = base[f"{mod}.weight"] + (8 / 4) * (b @ a)
    return out


def test_lora_trains_adapters_only_and_pushes_merged_weights(tiny_dir, tmp_path):
    """LoRA at ZeRO-0: only adapter parameters change; the pushed weights carry the base model's names and equal
    base + scale·B·A; the learner's log-probs are those of an HF model holding them; the HF export reloads; the
    checkpoint holds the adapters as safetensors and resumes to the same next step."""
    from peft import PeftModel

    lrn = _fresh(tiny_dir, "learner.zero_stage=0", *LORA)
    base = dict(_hf_model(tiny_dir).named_parameters())
    start = {n: p.detach().clone() for n, p in lrn.model.named_parameters()}
    trainable = [n for n, p in lrn.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any(".visual." in n for n in trainable)  # freeze_vision_tower: no adapters there
    try:
        for _ in range(3):
            assert lrn.train_step(_batch())["optimizer_steps"] == 1
        now = dict(lrn.model.named_parameters())
        changed = {n for n in now if not torch.equal(now[n], start[n])}
        assert changed and all(".lora_" in n for n in changed)
        assert any(".lora_B." in n for n in changed)
        payload = lrn.weight_payload()
        pushed = dict(payload.named_tensors())
        assert set(pushed) == set(base)
        want = _merged_expected(lrn, {k: v.detach() for k, v in base.items()})
        moved = [k for k in base if not torch.equal(want[k], base[k])]
        assert len(moved) == 3 * 2  # q, v, down_proj of the tiny model's 2 layers
        assert all(torch.allclose(pushed[k], want[k], atol=1e-6) for k in base)
        model = _hf_model(tiny_dir)
        WeightReceiver(version=0).apply(model, payload)  # the rollout's loading path, unchanged (strict names)
        b = _batch()
        lp = lrn.compute_logprobs(b)
        rows = [3, 4]  # the image prompt, HF's own path
        ids = b["input_ids"][rows]
        img = b["multimodal"][1]
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=b["attention_mask"][rows],
                        pixel_values=torch.cat([img["pixel_values"]] * 2),
                        image_grid_thw=torch.cat([img["image_grid_thw"]] * 2),
                        mm_token_type_ids=(ids == TOKENS["image"]).int())
        ref = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        am = b["attention_mask"][rows][:, 1:].bool()
        assert torch.allclose(lp[rows][:, 1:][am], ref[am], atol=1e-4)

        lrn.export_hf(tmp_path / "hf")
        exported = dict(_hf_model(str(tmp_path / "hf")).named_parameters())
        assert set(exported) == set(base) and all(torch.allclose(exported[k], pushed[k]) for k in base)

        lrn.save_checkpoint(tmp_path / "ckpt")
        assert (tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors").is_file()
        adapted = PeftModel.from_pretrained(_hf_model(tiny_dir), str(tmp_path / "ckpt" / "adapter")).merge_and_unload()
        assert all(torch.allclose(dict(adapted.named_parameters())[k], pushed[k], atol=1e-6) for k in base)
        nxt = lrn.train_step(_batch())
    finally:
        lrn.shutdown()
    again = _fresh(tiny_dir, "learner.zero_stage=0", *LORA)
    try:
        assert again.load_checkpoint(tmp_path / "ckpt") == 3
        assert again.train_step(_batch())["loss"] == pytest.approx(nxt["loss"], abs=1e-6)
    finally:
        again.shutdown()


def test_lora_bad_target_is_a_startup_error_naming_the_key(tiny_dir):
    from learner.deepspeed_learner import LearnerError

    with pytest.raises(LearnerError, match=r"model\.lora_target_modules: \['qkv_nope'\] match no linear module"):
        _fresh(tiny_dir, "learner.zero_stage=0", "model.lora_rank=4", "model.lora_target_modules=[q_proj,qkv_nope]")


def test_lora_kl_reference_is_the_base_with_adapters_disabled(tiny_dir):
    lrn = _fresh(tiny_dir, "learner.zero_stage=0", "learner.kl_coef=0.5", *LORA)
    try:
        assert lrn._ref is None  # no copy: the base model is the policy with its adapters disabled
        first = lrn.train_step(_batch())
        assert first["kl_ref"] == pytest.approx(0.0, abs=1e-7) and lrn._ref is None
        assert lrn.train_step(_batch())["kl_ref"] > 1e-5
    finally:
        lrn.shutdown()


@pytest.mark.ray
@pytest.mark.parametrize("stage", [2])
def test_lora_two_ranks_match_one_rank(ray_local, tiny_dir, stage):
    """LoRA on 2 Ray ranks (ZeRO-2; ZeRO-3 is refused at start-up, tests/test_config.py): same loss and same pushed merged weights as one rank at ZeRO-0."""
    from actors.learner_actor import LearnerGroup

    one = _fresh(tiny_dir, "learner.zero_stage=0", *LORA)
    ref_m = [one.train_step(_batch()) for _ in range(2)]
    ref_w = _params(one)
    one.shutdown()
    group = LearnerGroup(_cfg(f"learner.zero_stage={stage}", "learner.num_ranks=2", "learner.num_cpus=0", *LORA),
                         model_path=tiny_dir)
    try:
        got = [group.train_step(_batch()) for _ in range(2)]
        for g, w in zip(got, ref_m):
            assert g["loss"] == pytest.approx(w["loss"], rel=1e-4, abs=1e-6)
        pushed = dict(ray_local.get(group.get_weights().ref, timeout=60).named_tensors())
        assert set(pushed) == set(ref_w) and all(torch.allclose(pushed[k], ref_w[k], atol=1e-4) for k in ref_w)
    finally:
        group.shutdown()


_ONE_RANK_INIT = """
import importlib
import sys
import torch.distributed as dist
from cluster.config import load_config
from learner.deepspeed_learner import DeepSpeedLearner

def build_shm_op():
    raise SystemExit("DeepSpeed's shm op was built for a lone CPU rank")

ds_torch = importlib.import_module("deepspeed.comm.torch")  # `import deepspeed.comm.torch as` gives torch itself
ds_torch.build_shm_op = build_shm_op
lrn = DeepSpeedLearner(load_config(None, []), 0, 1, "127.0.0.1", int(sys.argv[1]), model_path="unused")
lrn._init_distributed()
assert dist.is_initialized() and dist.get_world_size() == 1
assert ds_torch.build_shm_op is build_shm_op, "the op builder was not put back"
print("one rank up")
"""


def test_one_cpu_rank_starts_without_building_deepspeeds_shm_op():
    """A lone gloo rank never all-reduces over shared memory: DeepSpeed's JIT build of that op (≈35 s on a cold
    cache) is skipped, and the builder is restored afterwards. A fresh process: this one's group already exists."""
    import subprocess
    import sys

    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    out = subprocess.run([sys.executable, "-c", _ONE_RANK_INIT, str(_free_port())], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0 and "one rank up" in out.stdout, out.stderr[-3000:]
