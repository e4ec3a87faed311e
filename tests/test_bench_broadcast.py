"""bench/broadcast.py: its pure pieces, and one real 2-process Gloo run on tiny models (no timed assertions)."""
from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from bench.broadcast import (bucket_label, check_world, default_backend, main, parse_spec, raw_digest,
                             summarize)
from bench.common import Timing
from learner.weight_sync import DEFAULT_BUCKET_BYTES


def test_parse_spec():
    assert parse_spec("linear:1024:19") == ("linear", 1024, 19)
    assert parse_spec("small:5000:64") == ("small", 5000, 64)
    for bad in ("linear:1024", "conv:3:3", "linear:a:3", "small:0:64", "linear:8:2:1"):
        with pytest.raises(ValueError, match="model spec"):
            parse_spec(bad)


def test_backend_and_world_checks():
    assert default_backend(True) == "nccl" and default_backend(False) == "gloo"
    check_world("gloo", 3, False, 0)
    check_world("nccl", 2, True, 2)
    with pytest.raises(ValueError, match="needs CUDA"):
        check_world("nccl", 2, False, 0)
    with pytest.raises(ValueError, match="one GPU per process .*found 1"):
        check_world("nccl", 2, True, 1)
    with pytest.raises(ValueError, match="at least one receiver"):
        check_world("gloo", 1, False, 0)
    with pytest.raises(ValueError, match="backend 'mpi'"):
        check_world("mpi", 2, False, 0)


def test_bucket_label():
    assert bucket_label(DEFAULT_BUCKET_BYTES) == "bucketed"
    assert bucket_label(16 * 2**20) == "bucketed_16MiB"
    assert bucket_label(2048) == "bucketed_2KiB"
    assert bucket_label(1536) == "bucketed_1536B"


def test_raw_digest_is_crc32_of_the_bytes():
    buf = torch.tensor(list(b"123456789"), dtype=torch.uint8)
    assert raw_digest(buf) == "cbf43926"  # the standard CRC-32 check value


def test_summarize_rates_ratios_and_noise():
    t = {"bucketed": Timing([0.01, 0.02, 0.01]), "bucketed_16MiB": Timing([0.02, 0.02, 0.02]),
         "per_tensor": Timing([0.04, 0.04, 0.05]), "raw": Timing([0.005, 0.01, 0.005]),
         "copy": Timing([0.001, 0.001, 0.003]), "ctl": Timing([0.0005, 0.0004, 0.0006])}
    row = summarize("m", 250_000, 3, 1_000_000, 2, t, ["bucketed", "bucketed_16MiB"], True)
    assert row["bucketed_MBs"] == pytest.approx(100.0)  # 1e6 B / 0.01 s (median)
    assert row["per_tensor_MBs"] == pytest.approx(25.0)
    assert row["raw_MBs"] == pytest.approx(200.0)
    assert row["copy_MBs"] == pytest.approx(1000.0)
    assert row["bucketed_vs_per_tensor"] == pytest.approx(4.0)  # median(4, 2, 5)
    assert row["bucketed_vs_raw"] == pytest.approx(0.5)  # median(0.5, 0.5, 0.5)
    assert row["bucketed_16MiB_vs_raw"] == pytest.approx(0.25)  # median(0.25, 0.5, 0.25)
    assert row["raw_vs_copy"] == pytest.approx(0.2)  # median(0.2, 0.1, 0.6)
    assert row["ctl_ms"] == pytest.approx(0.5)
    assert row["noise"] == pytest.approx(2.0)  # copy: (0.003 - 0.001) / 0.001
    assert (row["bytes"], row["buckets"], row["in_sync"]) == (1_000_000, 2, True)


def test_two_process_gloo_run_is_in_sync():
    rec = main(["--backend", "gloo", "--models", "linear:16:2", "small:20:8", "--bucket-mib", "0.0001",
                "--rounds", "1", "--min-time", "0", "--timeout", "60"])
    rows = rec["tables"]["broadcast"]
    assert [r["model"] for r in rows] == ["0.0M params, 4 tensors", "20 tensors x 8"]
    assert [r["bytes"] for r in rows] == [2 * (16 * 16 + 16) * 4, 20 * 8 * 4]
    assert [r["tensors"] for r in rows] == [4, 20]
    assert [r["buckets"] for r in rows] == [1, 1]  # one fp32 bucket under the default 512 MiB
    for r in rows:
        assert r["in_sync"] is True
        for k in ("bucketed_MBs", "bucketed_105B_MBs", "per_tensor_MBs", "raw_MBs", "copy_MBs", "ctl_ms"):
            assert r[k] > 0, k
    assert rec["summary"]["all_in_sync"] is True and rec["summary"]["backend"] == "gloo"
    assert not [p for p in mp.active_children() if p.name.startswith("bench-broadcast")]


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        main(["--backend", "gloo", "--receivers", "0"])
    with pytest.raises(SystemExit):
        main(["--backend", "gloo", "--models", "conv:1:1"])
