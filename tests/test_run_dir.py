"""A run owns its folder: a fresh run into a used folder is refused with the ways out, or starts clean with
overwrite=true; pruning and resume see only the current run's checkpoints; a foreign checkpoint is refused."""
from __future__ import annotations

import pytest

from cluster.checkpoints import CheckpointManager, ForeignCheckpoint
from cluster.config import ConfigError, load_config
from cluster.run_dir import RunDirInUse, claim, read_run_id
from common.files import write_json


def _ckpt(mgr, step, before_prune=None):
    tmp = mgr.begin(step)
    write_json(tmp / "driver_state.json", {"step": step})
    return mgr.commit(tmp, step, before_prune=before_prune)


def test_fresh_run_into_a_used_folder_is_refused_with_the_ways_out(tmp_path):
    a = claim(tmp_path, "never")
    assert read_run_id(tmp_path) == a
    _ckpt(CheckpointManager(tmp_path / "checkpoints", run_id=a), 300)
    (tmp_path / "rollouts.jsonl").write_text("{}\n")
    with pytest.raises(RunDirInUse) as e:
        claim(tmp_path, "never")
    msg = str(e.value)
    assert str(tmp_path) in msg and a in msg and "ckpt-00000300" in msg
    assert "resume=auto" in msg and "run_dir=" in msg and "overwrite=true" in msg
    assert read_run_id(tmp_path) == a and (tmp_path / "rollouts.jsonl").exists()  # nothing touched


def test_overwrite_starts_clean_and_leaves_other_files(tmp_path):
    a = claim(tmp_path, "never")
    mgr = CheckpointManager(tmp_path / "checkpoints", run_id=a)
    _ckpt(mgr, 250)
    _ckpt(mgr, 300)
    (tmp_path / "rollouts.jsonl").write_text("{}\n")
    (tmp_path / "actor_state" / "job-1").mkdir(parents=True)
    (tmp_path / "actor_state" / "job-1" / "normalizer.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    b = claim(tmp_path, "never", overwrite=True)
    assert b != a and read_run_id(tmp_path) == b
    assert not any((tmp_path / n).exists() for n in ("rollouts.jsonl", "checkpoints", "actor_state"))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # overwrite acts for a fresh run only: resume=auto continues the recorded run, whatever the flag
    assert claim(tmp_path, "auto", overwrite=True) == b


def test_resume_auto_continues_the_recorded_run_and_starts_one_in_an_empty_folder(tmp_path):
    a = claim(tmp_path / "a", "never")
    assert claim(tmp_path / "a", "auto") == a
    fresh = claim(tmp_path / "b", "auto")  # a RayJob's first attempt: nothing to resume yet
    assert fresh != a and read_run_id(tmp_path / "b") == fresh
    legacy = tmp_path / "legacy"  # state without RUN.json: whose checkpoints they are is unknown
    _ckpt(CheckpointManager(legacy / "checkpoints"), 50)
    with pytest.raises(RunDirInUse, match="RUN.json"):
        claim(legacy, "auto")
    with pytest.raises(RunDirInUse):
        claim(legacy, "auto", overwrite=True)  # never deleted under resume=auto
    assert (legacy / "checkpoints" / "ckpt-00000050").exists()


def test_pruning_and_resume_see_only_this_runs_checkpoints(tmp_path):
    """The issue's crash: run A left steps 250 and 300; run B's step 50 was pruned at once, its artifact lost."""
    root = tmp_path / "checkpoints"
    run_a = CheckpointManager(root, keep=2, run_id="aaaa")
    _ckpt(run_a, 250)
    _ckpt(run_a, 300)
    run_b = CheckpointManager(root, keep=2, run_id="bbbb")
    assert run_b.list() == [] and run_b.latest_valid() is None and len(run_b.foreign()) == 2
    seen = []
    p50 = _ckpt(run_b, 50, before_prune=lambda p: seen.append((p / "normalizer_table.json").exists()
                                                              or (p / "driver_state.json").exists()))
    assert p50.exists() and seen == [True]
    _ckpt(run_b, 100)
    _ckpt(run_b, 150)
    assert [p.name for p in run_b.list()] == ["ckpt-00000100", "ckpt-00000150"]
    assert [p.name for p in run_a.list()] == ["ckpt-00000250", "ckpt-00000300"]  # untouched
    assert run_b.latest_valid().name == "ckpt-00000150" and run_a.latest_valid().name == "ckpt-00000300"
    with pytest.raises(ForeignCheckpoint, match="aaaa"):  # same step as one of A's: never overwritten
        _ckpt(run_b, 300)
    assert CheckpointManager.run_of(root / "ckpt-00000300") == "aaaa"
    assert not list(root.glob(".tmp-*"))


def test_resume_refuses_a_foreign_checkpoint(tmp_path):
    a = claim(tmp_path / "a", "never")
    a_ckpt = _ckpt(CheckpointManager(tmp_path / "a" / "checkpoints", run_id=a), 2)
    b = claim(tmp_path / "b", "never")
    with pytest.raises(ForeignCheckpoint) as e:
        claim(tmp_path / "b", str(a_ckpt))
    assert a in str(e.value) and b in str(e.value) and str(a_ckpt) in str(e.value)
    assert read_run_id(tmp_path / "b") == b
    assert claim(tmp_path / "a", str(a_ckpt)) == a  # its own run's checkpoint
    assert claim(tmp_path / "c", str(a_ckpt)) == a  # a new, empty folder continues that run
    unowned = _ckpt(CheckpointManager(tmp_path / "old"), 1)  # a manifest without a run id
    with pytest.raises(ForeignCheckpoint, match="no run id"):
        claim(tmp_path / "d", str(unowned))


def test_train_into_a_used_run_dir_stops_before_ray_starts(tmp_path, capsys, monkeypatch):
    import cluster.driver
    from cluster.cli import main

    def no_ray(cfg):
        raise AssertionError("Ray was started for a run that had to be refused")

    monkeypatch.setattr(cluster.driver, "connect_ray", no_ray)
    run = tmp_path / "run"
    a = claim(run, "never")
    (run / "config.yaml").write_text("seed: 0\n")
    assert main(["train", "cpu_demo", f"run_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and str(run) in err and a in err and "overwrite=true" in err
    assert main(["train", "cpu_demo", f"run_dir={run}", f"resume={run / 'nope'}"]) == 2  # no such checkpoint


def test_overwrite_key_is_validated():
    assert load_config("cpu_demo").overwrite is False
    assert load_config("cpu_demo", ["overwrite=true"]).overwrite is True
    with pytest.raises(ConfigError, match="overwrite"):
        load_config("cpu_demo", ["overwrite=maybe"])
