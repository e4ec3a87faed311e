"""Run checkpoints: atomic publish, keep-last-K, truncated/corrupt ones skipped on resume."""
from __future__ import annotations

from cluster.checkpoints import CheckpointManager
from common.files import read_json, write_json


def _save(mgr, step, payload=b"x" * 1000):
    tmp = mgr.begin(step)
    write_json(tmp / "driver_state.json", {"step": step})
    (tmp / "learner").mkdir()
    (tmp / "learner" / "model.safetensors").write_bytes(payload)
    return mgr.commit(tmp, step)


def test_commit_keeps_last_k_and_no_temp_left(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    for s in (1, 2, 3):
        _save(mgr, s)
    assert [p.name for p in mgr.list()] == ["ckpt-00000002", "ckpt-00000003"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert read_json(mgr.latest_valid() / "driver_state.json") == {"step": 3}


def test_truncated_and_corrupt_checkpoints_are_skipped(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=3)
    _save(mgr, 1)
    p2 = _save(mgr, 2)
    p3 = _save(mgr, 3)
    (p3 / "learner" / "model.safetensors").write_bytes(b"x" * 10)  # truncated
    assert "truncated" in mgr.verify(p3)
    assert mgr.latest_valid() == p2
    (p2 / "learner" / "model.safetensors").write_bytes(b"y" * 1000)  # same size, other bytes
    assert "corrupt" in mgr.verify(p2)
    assert mgr.latest_valid().name == "ckpt-00000001"


def test_crash_mid_write_leaves_no_visible_checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    _save(mgr, 1)
    tmp = mgr.begin(2)
    (tmp / "driver_state.json").write_text("{")  # the process dies here: never committed
    assert mgr.latest_valid().name == "ckpt-00000001"
    _save(mgr, 3)  # the next commit clears the leftover
    assert not list(tmp_path.glob(".tmp-*"))


def test_missing_manifest_is_invalid(tmp_path):
    (tmp_path / "ckpt-00000009").mkdir()
    mgr = CheckpointManager(tmp_path)
    assert mgr.verify(tmp_path / "ckpt-00000009") == "no manifest"
    assert mgr.latest_valid() is None
