"""The CPU weight-sync payload (learner.weight_sync): flat per-dtype layout, checksums, and the receiving contract
(version only moves forward, names/shapes/checksum checked before anything is written)."""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from learner.weight_sync import (OWN_BUFFER_BYTES, SAMPLE_BLOCK, SAMPLE_WINDOW, Bucket, WeightPayload, WeightReceiver,
                                 WeightSyncError, pack_weights, plan_layout, weights_checksum)

BIG = OWN_BUFFER_BYTES // 4  # float32 elements of a tensor that gets a buffer of its own


class Mixed(nn.Module):
    """fp32 and bf16 parameters, small ones and one of exactly 1 MiB (an own buffer)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.big = nn.Parameter(torch.randn(BIG // 512, 512, generator=g))
        self.w = nn.Parameter(torch.randn(3, 4, generator=g))
        self.b = nn.Parameter(torch.randn(4, generator=g))
        self.h = nn.Parameter(torch.randn(5, 2, generator=g).to(torch.bfloat16))
        self.s = nn.Parameter(torch.randn((), generator=g).to(torch.bfloat16))


class Many(nn.Module):
    def __init__(self, n: int, numel: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.p = nn.ParameterList([nn.Parameter(torch.randn(numel, generator=g)) for _ in range(n)])


def _same(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(pa[n].dtype == pb[n].dtype and torch.equal(pa[n], pb[n]) for n in pa)


def test_layout_groups_small_tensors_per_dtype_and_large_ones_alone():
    specs = [("z", "float32", (2, 3)), ("big2", "float32", (BIG,)), ("a", "bfloat16", (7,)),
             ("m", "float32", ()), ("big1", "bfloat16", (BIG * 2,)), ("almost", "float32", (BIG - 1,))]
    plan = plan_layout(specs)
    assert [(b.dtype, b.names, b.shapes) for b in plan] == [
        ("bfloat16", ["a"], [(7,)]),
        ("float32", ["almost", "m", "z"], [(BIG - 1,), (), (2, 3)]),  # 1 MiB - 4 B stays in the shared buffer
        ("bfloat16", ["big1"], [(BIG * 2,)]),
        ("float32", ["big2"], [(BIG,)]),
    ]
    assert [b.nbytes for b in plan] == [14, 4 * (BIG - 1) + 4 + 24, OWN_BUFFER_BYTES, OWN_BUFFER_BYTES]
    assert [b.own for b in plan] == [False, False, True, True]
    assert [b.names for b in plan_layout(reversed(specs))] == [b.names for b in plan]  # order-independent


def test_many_small_tensors_roundtrip_in_one_buffer():
    src, dst = Many(3000, 16, seed=0), Many(3000, 16, seed=1)
    payload = pack_weights(4, src)
    assert len(payload.buffers) == 1 and payload.nbytes == 3000 * 16 * 4
    assert payload.buckets[0].names[:3] == ["p.0", "p.1", "p.10"]  # sorted by name
    rx = WeightReceiver()
    assert rx.apply(dst, payload) == 4 == rx.version
    assert _same(src, dst)
    assert weights_checksum(dst) == payload.checksum == weights_checksum(dict(src.named_parameters()))
    got = dict(payload.named_tensors())
    assert torch.equal(got["p.2999"], src.p[2999]) and torch.equal(payload.tensor("p.17"), src.p[17])


def test_bf16_and_own_buffers_roundtrip_and_copy_semantics():
    src, dst = Mixed(0), Mixed(1)
    shared = pack_weights(1, src, copy=False)
    owned = pack_weights(1, src)
    big_shared, big_owned = shared.buffers[-1], owned.buffers[-1]
    assert shared.buckets[-1].names == ["big"] and big_shared.nbytes == OWN_BUFFER_BYTES
    assert np.shares_memory(big_shared, src.big.detach().numpy())  # copy=False: a view, put() is the only copy
    assert not np.shares_memory(big_owned, src.big.detach().numpy())
    assert not np.shares_memory(shared.buffers[0], src.h.detach().view(torch.int16).numpy())  # small: always copied
    WeightReceiver().apply(dst, owned)
    assert _same(src, dst) and dst.h.dtype == torch.bfloat16
    with torch.no_grad():
        src.big.add_(1.0)
    assert torch.equal(owned.tensor("big"), dst.big)  # the owned payload kept the old values
    assert torch.equal(shared.tensor("big"), src.big)  # the shared one sees the change...
    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        shared.verify()  # ...and its checksum no longer matches: a source modified before the put is refused


def test_corrupted_buffer_is_refused_before_anything_is_written():
    src, dst = Many(40, 2048, seed=0), Many(40, 2048, seed=1)  # one 320 KiB buffer: checked in full
    rx = WeightReceiver(version=2)
    payload = pack_weights(3, src)
    payload.buffers[0][123_457] ^= 0x10  # one flipped bit (2 windows past the sampled block: still covered)
    before = {n: p.clone() for n, p in dst.named_parameters()}
    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        rx.apply(dst, payload)
    assert rx.version == 2 and all(torch.equal(before[n], p) for n, p in dst.named_parameters())
    with pytest.raises(WeightSyncError, match="checksum mismatch"):  # two names of equal shape swapped
        bad = pack_weights(3, src)
        bad.buckets[0].names[0], bad.buckets[0].names[1] = bad.buckets[0].names[1], bad.buckets[0].names[0]
        rx.apply(dst, bad)
    assert WeightReceiver(version=2, verify=False).apply(dst, payload) == 3  # verify off: applied as sent


def test_sampled_checksum_covers_strided_blocks_and_full_covers_every_byte():
    windows = OWN_BUFFER_BYTES // SAMPLE_WINDOW + 8  # an own buffer over 1 MiB: sampled; plus half a window
    size = windows * SAMPLE_WINDOW + SAMPLE_WINDOW // 2
    big = {"t": torch.randn(size // 4)}
    tail = windows * SAMPLE_WINDOW
    sampled = (SAMPLE_WINDOW * 5 + 10, tail + 10, size - 1)  # a window's head, the partial window's, the end
    unsampled = (SAMPLE_WINDOW * 5 + SAMPLE_BLOCK + 10, tail + SAMPLE_BLOCK + 10)
    for mode, caught, missed in (("sampled", sampled, unsampled), ("full", sampled + unsampled, ())):
        for pos in caught + missed:
            p = pack_weights(0, big, checksum=mode)
            p.verify()
            p.buffers[0][pos] ^= 1
            if pos in caught:
                with pytest.raises(WeightSyncError, match="checksum mismatch"):
                    p.verify()
            else:  # the documented limit of "sampled": a lone byte outside the sampled blocks
                p.verify()
    small = Many(1, 50_000, seed=0)  # 200 kB: a shared buffer, covered in full even in "sampled" mode
    covered = pack_weights(0, small)
    assert covered.checksum.startswith("sampled:crc32:")
    covered.buffers[0][SAMPLE_WINDOW + SAMPLE_BLOCK + 10] ^= 1
    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        covered.verify()


def test_full_checksum_format_is_crc32_of_index_and_bytes():
    t = torch.tensor([1.0, -2.0], dtype=torch.float32)
    p = pack_weights(0, {"x": t}, checksum="full")
    header = b"float32\x001\x00x\x00[(2,)]\n"
    data = np.array([1.0, -2.0], dtype="<f4").tobytes()
    assert p.checksum == f"full:crc32:{zlib.crc32(header + data):08x}"
    assert weights_checksum({"x": t}, mode="full") == p.checksum


def test_stale_and_equal_versions_are_refused_without_writing():
    src, dst = Mixed(0), Mixed(1)
    rx = WeightReceiver()
    assert rx.apply(dst, pack_weights(5, src)) == 5
    newer = Mixed(2)
    for v in (4, 5):
        with pytest.raises(WeightSyncError, match="stale weights: payload version"):
            rx.apply(dst, pack_weights(v, newer))
    assert rx.version == 5 and _same(src, dst)
    same_ok = WeightReceiver(version=5, allow_same_version=True)
    assert same_ok.apply(dst, pack_weights(5, newer)) == 5 and _same(newer, dst)


def test_names_shapes_and_structure_checked_before_writing():
    src, dst = Mixed(0), Mixed(1)
    before = {n: p.clone() for n, p in dst.named_parameters()}
    partial = pack_weights(1, {"w": src.w, "b": src.b})
    with pytest.raises(WeightSyncError, match="3 model parameter"):
        WeightReceiver().apply(dst, partial)
    assert WeightReceiver(strict=False).apply(dst, partial) == 1 and torch.equal(dst.w, src.w)
    with pytest.raises(WeightSyncError, match="not in the model"):
        WeightReceiver(strict=False).apply(dst, pack_weights(1, {"nope": src.w}))
    with pytest.raises(WeightSyncError, match="shape mismatch for w"):
        WeightReceiver(strict=False).apply(dst, pack_weights(1, {"w": torch.zeros(4, 3)}))
    truncated = pack_weights(1, src)
    truncated.buffers[0] = truncated.buffers[0][:-2]
    with pytest.raises(WeightSyncError, match="holds 20 bytes, its index needs 22"):
        WeightReceiver().apply(dst, truncated)
    with pytest.raises(WeightSyncError, match="duplicate"):
        pack_weights(1, [("w", src.w), ("w", src.b)])
    with pytest.raises(WeightSyncError, match="expected a WeightPayload"):
        WeightReceiver().apply(dst, {"w": src.w})
    assert torch.equal(dst.big, before["big"]) and torch.equal(dst.h, before["h"])  # only the accepted partial wrote


def test_unchecked_payload_needs_verify_off_and_dtype_cast_on_receive():
    src = Mixed(0)
    bare = pack_weights(1, src, checksum="none")
    assert bare.checksum == "none"
    with pytest.raises(WeightSyncError, match="carries no checksum"):
        WeightReceiver().apply(Mixed(1), bare)
    assert WeightReceiver(verify=False).apply(Mixed(1), bare) == 1
    half = Mixed(1).to(torch.bfloat16)  # a bf16 rollout copy of fp32 weights: the copy casts, the check still runs
    WeightReceiver().apply(half, pack_weights(1, src))
    assert torch.equal(half.w, src.w.detach().to(torch.bfloat16))
    with pytest.raises(ValueError, match="checksum mode"):
        pack_weights(1, src, checksum="md5")


def test_payload_through_the_object_store(ray_local):
    """Read-only zero-copy buffers from Ray: verified and applied; a replaced version is still refused."""
    src, dst = Mixed(0), Mixed(1)
    fetched = ray_local.get(ray_local.put(pack_weights(7, src)), timeout=60)
    assert isinstance(fetched, WeightPayload) and isinstance(fetched.buckets[0], Bucket)
    assert not fetched.buffers[-1].flags.writeable  # object-store memory, not a copy
    rx = WeightReceiver()
    assert rx.apply(dst, fetched) == 7 and _same(src, dst)
    with pytest.raises(WeightSyncError, match="stale"):
        rx.apply(dst, dataclasses.replace(fetched, version=6))
