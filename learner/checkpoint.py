"""Learner checkpoints: DeepSpeed state (weights, optimizer, LR schedule) for exact resume, and Hugging Face export
(safetensors, loadable by ``from_pretrained``) for serving and evaluation. Both are written atomically: into a
staging folder beside the target, then renamed over it, so a crash leaves either the old folder or the new one.

Multi-rank protocol (all learner ranks see the same filesystem): rank 0 ``prepare_staging`` → barrier → every rank
writes its shard into the staging folder → barrier → rank 0 ``commit_staging`` → barrier.

Layout of a DeepSpeed checkpoint folder: ``learner_state.json`` (policy version, optimizer steps, skip counters,
ZeRO stage and world size it was written with) and DeepSpeed's own files under ``state/``. DeepSpeed stores those
with ``torch.save``, so load checkpoints only from locations you trust.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch

LEARNER_STATE = "learner_state.json"
DS_TAG = "state"
# Files of an HF model folder that are not weights: copied from the source model on export so the export is a
# complete model folder (processor, tokenizer, chat template), not just weights.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
               "merges.txt", "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
               "chat_template.json", "chat_template.jinja", "generation_config.json")


def staging_path(final: str | Path) -> Path:
    """Deterministic staging folder for ``final`` (same on every rank)."""
    final = Path(final)
    return final.parent / f".{final.name}.staging"


def prepare_staging(final: str | Path) -> Path:
    """Create an empty staging folder for ``final`` (removing a leftover of an interrupted write)."""
    tmp = staging_path(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())


def commit_staging(staging: str | Path, final: str | Path) -> Path:
    """Publish ``staging`` as ``final``: fsync, move any old ``final`` aside, rename, then delete the old one."""
    staging, final = Path(staging), Path(final)
    if not staging.is_dir():
        raise FileNotFoundError(f"staging folder {staging} does not exist")
    _fsync_tree(staging)
    old = final.parent / f".{final.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Single-writer form: ``with atomic_dir(out) as tmp: write into tmp`` publishes ``out`` only on success."""
    tmp = prepare_staging(final)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_staging(tmp, final)


def write_learner_state(directory: str | Path, state: Mapping[str, Any]) -> None:
    path = Path(directory) / LEARNER_STATE
    path.write_text(json.dumps(dict(state), indent=1, sort_keys=True))


def read_learner_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / LEARNER_STATE
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a learner checkpoint: {LEARNER_STATE} is missing")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: unreadable learner state ({e})") from None


def save_engine_state(engine: Any, staging: str | Path, client_state: Optional[dict[str, Any]] = None) -> None:
    """Every rank: DeepSpeed's model + optimizer + scheduler state into ``staging/state`` (a collective)."""
    engine.save_checkpoint(str(staging), tag=DS_TAG, client_state=dict(client_state or {}), save_latest=True)


def load_engine_state(engine: Any, directory: str | Path, load_optimizer: bool = True) -> dict[str, Any]:
    """Every rank: restore the DeepSpeed state; returns the client state saved with it."""
    path, client_state = engine.load_checkpoint(str(directory), tag=DS_TAG, load_optimizer_states=load_optimizer,
                                                load_lr_scheduler_states=load_optimizer,
                                                load_module_only=not load_optimizer)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint '{DS_TAG}' under {directory}")
    return dict(client_state or {})


def export_hf(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], directory: str | Path,
              source_dir: Optional[str | Path] = None, dtype: Optional[torch.dtype] = None) -> Path:
    """Write an HF model folder (config + safetensors weights, plus the processor/tokenizer files of
    ``source_dir``) atomically. ``state_dict`` must hold the full, gathered weights (see ``iter_gathered``)."""
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state_dict.items()}
    with atomic_dir(directory) as tmp:
        module.save_pretrained(str(tmp), state_dict=sd, safe_serialization=True)
        if source_dir is not None and Path(source_dir).is_dir():
            for name in _SIDE_FILES:
                src = Path(source_dir) / name
                if src.is_file() and not (tmp / name).exists():
                    shutil.copy2(src, tmp / name)
        if not any(tmp.glob("*.safetensors")):
            raise RuntimeError(f"save_pretrained wrote no safetensors file into {tmp}")
    return Path(directory)
