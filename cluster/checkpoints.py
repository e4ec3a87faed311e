"""Run checkpoints: written atomically (temporary folder, manifest, then rename), the last K kept, and a
truncated or tampered checkpoint detected on resume and skipped for the previous one.

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
from typing import Optional

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


class CheckpointManager:
    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)
        self.root.mkdir(parents=True, exist_ok=True)

    def begin(self, step: int) -> Path:
        """A fresh temporary folder to write a checkpoint into; ``commit`` publishes it."""
        tmp = self.root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, step: int) -> Path:
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(tmp))] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        manifest = tmp / MANIFEST
        write_json(manifest, {"step": step, "files": files})
        with manifest.open("rb") as f:
            os.fsync(f.fileno())
        final = self.root / f"{PREFIX}{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one filesystem: a reader sees all of it or none
        self._prune()
        return final

    def _prune(self) -> None:
        ckpts = self.list()
        for old in ckpts[: max(0, len(ckpts) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in self.root.glob(f".tmp-{PREFIX}*"):  # leftovers of a crash mid-write
            shutil.rmtree(tmp, ignore_errors=True)

    def list(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"{PREFIX}*") if p.is_dir())

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
        for path in reversed(self.list()):
            problem = self.verify(path)
            if problem is None:
                return path
            log.warning("skipping checkpoint %s: %s", path, problem)
        return None
