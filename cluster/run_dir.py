"""A run owns its folder: ``RUN.json`` in ``run_dir`` names the run writing there, and a fresh run never mixes
its checkpoints, actor snapshots and rollout log with another run's.

``claim`` runs first thing in a job, before Ray starts. A fresh run (``resume=never``) into a folder that holds
another run's state (``STATE``) stops with ``RunDirInUse``, naming the folder and the ways out: ``resume=auto`` to
continue that run, a new ``run_dir`` to keep both, or ``overwrite=true`` to delete that state (those entries only;
any other file in the folder is left alone; the MLflow store lies outside ``run_dir`` and keeps the old run).
``resume=auto`` continues the run ``RUN.json`` names, from its own checkpoints only; ``resume=<checkpoint>``
of another run is refused (``ForeignCheckpoint``).
"""
from __future__ import annotations

import logging
import secrets
import shutil
import time
from pathlib import Path
from typing import Optional

from cluster.checkpoints import CheckpointManager, ForeignCheckpoint
from cluster.config import ConfigError
from common.files import read_json, write_json

log = logging.getLogger("medgrpo")
RUN_FILE = "RUN.json"
# what a run writes into its folder (Trainer, ActorSet snapshots, the demo's report)
STATE = (RUN_FILE, "config.yaml", "checkpoints", "actor_state", "rollouts.jsonl", "demo_report.json")


class RunDirInUse(ConfigError):
    """A fresh run asked to write into a folder that holds another run's state."""


def read_run_id(run_dir: str | Path) -> Optional[str]:
    """The id ``RUN.json`` records (None: no such file, or not a readable one)."""
    try:
        run_id = read_json(Path(run_dir) / RUN_FILE).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and run_id else None


def existing_state(run_dir: str | Path) -> list[str]:
    """The entries of ``STATE`` present in ``run_dir`` (an empty folder does not count)."""
    found = []
    for name in STATE:
        p = Path(run_dir) / name
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            found.append(name)
    return found


def _in_use(run_dir: Path, found: list[str], resume: str) -> RunDirInUse:
    owner = read_run_id(run_dir)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*")) if "checkpoints" in found else []
    what = ", ".join(found) + (f"; checkpoints {ckpts[0]} … {ckpts[-1]}" if len(ckpts) > 1 else
                               f"; checkpoint {ckpts[0]}" if ckpts else "")
    ways = []
    if owner:
        ways.append("resume=auto to continue that run")
    ways += [f"run_dir=<a new folder> to keep both", f"overwrite=true (with resume=never) to delete that state and "
             f"start over (its MLflow run stays in the tracking store)"]
    why = (f"resume=auto found no {RUN_FILE} there, so it cannot tell whose checkpoints they are"
           if resume == "auto" else "a fresh run (resume=never) does not mix its state with it")
    return RunDirInUse(f"run_dir={run_dir} holds another run's state ({what}"
                       f"{', run ' + owner if owner else ''}); {why}. Ways out: " + "; ".join(ways))


def _start(run_dir: Path, run_id: Optional[str] = None) -> str:
    run_id = run_id or secrets.token_hex(6)
    write_json(run_dir / RUN_FILE, {"run_id": run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return run_id


def clear(run_dir: str | Path) -> list[str]:
    """Delete the ``STATE`` entries of ``run_dir`` (nothing else); returns what was there."""
    run_dir = Path(run_dir)
    found = [name for name in STATE if (run_dir / name).exists()]
    for name in found:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return found


def claim(run_dir: str | Path, resume: str, overwrite: bool = False) -> str:
    """The id of the run that owns ``run_dir`` from now on: a new one for a fresh run, the recorded one for
    ``resume=auto``, the checkpoint's for ``resume=<checkpoint>``. Raises ``RunDirInUse`` / ``ForeignCheckpoint``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    owner = read_run_id(run_dir)
    if resume == "auto" and owner is not None:
        return owner
    if resume in ("never", "auto"):
        found = existing_state(run_dir)
        if found:
            if not (overwrite and resume == "never"):
                raise _in_use(run_dir, found, resume)
            cleared = clear(run_dir)
            log.warning("overwrite=true: deleted the previous run's %s in %s", ", ".join(cleared), run_dir)
        return _start(run_dir)
    ckpt = Path(resume)  # an explicit checkpoint: it must be this folder's run's, or start a folder of its own
    theirs = CheckpointManager.run_of(ckpt)
    if theirs is None:
        raise ForeignCheckpoint(f"resume={ckpt}: its manifest records no run id (no manifest, or written before "
                                f"checkpoints recorded their run); allowed: a checkpoint of a medgrpo run, 'auto' "
                                f"or 'never'")
    if owner is None:
        found = existing_state(run_dir)
        if found:
            raise _in_use(run_dir, found, "never")
        return _start(run_dir, theirs)  # this folder continues that run
    if theirs != owner:
        raise ForeignCheckpoint(f"resume={ckpt}: this checkpoint belongs to run {theirs}, but run_dir={run_dir} "
                                f"belongs to run {owner}; resume run {theirs} from its own run_dir (or a new, "
                                f"empty one), or start this folder's run again with resume=auto")
    return owner
