"""Run checkpoints: written atomically (temporary folder, manifest, then rename), the last K kept, and a
truncated or tampered checkpoint detected on resume and skipped for the previous one.

Each manifest records the id of the run that wrote it (``cluster.run_dir``): a manager with a ``run_id`` lists,
prunes and resumes from that run's checkpoints only, never deletes another run's, and refuses to overwrite one.

A checkpoint folder ``ckpt-00000042`` holds ``driver_state.json`` (step, stage, weight version, sampler,
normalizer, curriculum, RNG states, MLflow run id), the learner's DeepSpeed state under ``learner/``, and
``MANIFEST.json`` listing every file with its size and SHA-256. The driver's own files are JSON; the learner's
DeepSpeed state files are torch archives, loaded only with ``weights_only=True`` (``learner.checkpoint``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

from cluster.config import ConfigError
from common.files import read_json, write_json

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"
PREFIX = "ckpt-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ForeignCheckpoint(ConfigError):
    """A checkpoint written by another run than the one asked to use or overwrite it."""


class CheckpointManager:
    """``run_id``: the run whose checkpoints this manager sees (None: every checkpoint under ``root``)."""

    def __init__(self, root: str | Path, keep: int = 2, run_id: Optional[str] = None) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)
        self.run_id = run_id
        self.root.mkdir(parents=True, exist_ok=True)

    def begin(self, step: int) -> Path:
        """A fresh temporary folder to write a checkpoint into; ``commit`` publishes it."""
        tmp = self.root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, step: int, before_prune: Optional[Callable[[Path], None]] = None) -> Path:
        """Publish ``tmp`` as the checkpoint of ``step``; ``before_prune(path)`` runs on the published checkpoint
        before older ones are pruned (its artifacts are logged from files that exist)."""
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(tmp))] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        manifest = tmp / MANIFEST
        write_json(manifest, {"step": step, "run_id": self.run_id, "files": files})
        with manifest.open("rb") as f:
            os.fsync(f.fileno())
        final = self.root / f"{PREFIX}{step:08d}"
        if final.exists():
            if not self._owns(final):
                shutil.rmtree(tmp, ignore_errors=True)
                raise ForeignCheckpoint(f"checkpoint {final} belongs to run {self.run_of(final)!r}, not to this run "
                                        f"{self.run_id!r}: not overwritten")
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one filesystem: a reader sees all of it or none
        if before_prune is not None:
            before_prune(final)
        self.prune(final)
        return final

    def prune(self, newest: Optional[Path] = None) -> None:
        """Keep this run's last K checkpoints (``newest`` always among them); clear crashed writes."""
        ckpts = [p for p in self.list() if p != newest]
        for old in ckpts[: max(0, len(ckpts) - (self.keep - (newest is not None)))]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in self.root.glob(f".tmp-{PREFIX}*"):  # leftovers of a crash mid-write
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def run_of(path: Path) -> Optional[str]:
        """The run id a checkpoint's manifest records (None: none recorded, or no readable manifest)."""
        try:
            run_id = read_json(path / MANIFEST).get("run_id")
        except (OSError, ValueError, AttributeError):
            return None
        return run_id if isinstance(run_id, str) else None

    def _owns(self, path: Path) -> bool:
        return self.run_id is None or self.run_of(path) == self.run_id

    def _all(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"{PREFIX}*") if p.is_dir())

    def list(self) -> list[Path]:
        """This run's checkpoints, oldest first."""
        return [p for p in self._all() if self._owns(p)]

    def foreign(self) -> list[Path]:
        """Checkpoints under ``root`` that another run (or no recorded run) wrote."""
        return [p for p in self._all() if not self._owns(p)]

    @staticmethod
    def verify(path: Path) -> Optional[str]:
        """None when the checkpoint is whole, else the reason it is not."""
        manifest = path / MANIFEST
        if not manifest.exists():
            return "no manifest"
        try:
            files = read_json(manifest)["files"]
        except (ValueError, KeyError) as e:
            return f"bad manifest: {e}"
        for rel, meta in files.items():
            p = path / rel
            if not p.exists():
                return f"missing {rel}"
            if p.stat().st_size != meta["size"]:
                return f"truncated {rel}"
            if _sha256(p) != meta["sha256"]:
                return f"corrupt {rel}"
        return None

    def latest_valid(self) -> Optional[Path]:
        """This run's newest whole checkpoint; another run's checkpoints are never considered."""
        others = self.foreign()
        if others:
            log.warning("ignoring %d checkpoint(s) in %s that this run did not write (%s)", len(others), self.root,
                        ", ".join(p.name for p in others[:4]))
        for path in reversed(self.list()):
            problem = self.verify(path)
            if problem is None:
                return path
            log.warning("skipping checkpoint %s: %s", path, problem)
        return None
