"""Learner checkpoints: DeepSpeed state (weights, optimizer, LR schedule) for exact resume, and Hugging Face export
(safetensors, loadable by ``from_pretrained``) for serving and evaluation. Both are written atomically: into a
staging folder beside the target, then renamed over it, so a crash leaves either the old folder or the new one.

Multi-rank protocol (all learner ranks see the same filesystem): rank 0 ``prepare_staging`` → barrier → every rank
writes its shard into the staging folder → barrier → rank 0 ``commit_staging`` → barrier.

Layout of a DeepSpeed checkpoint folder: ``learner_state.json`` (policy version, optimizer steps, skip counters,
ZeRO stage and world size it was written with) and DeepSpeed's own files under ``state/`` (``torch.save`` pickles).

Safe loading: DeepSpeed 0.19 unpickles its files with ``torch.load(weights_only=False)``, which runs any code a
tampered file names. ``load_engine_state`` never lets it: the engine's checkpoint engine is swapped for one whose
``load`` uses ``weights_only=True`` with a minimal allowlist (``DEEPSPEED_SAFE_GLOBALS``), and for the duration of
the load every other ``torch.load`` in the process (DeepSpeed's ZeRO-3 weights-only path reads files directly) is
forced to ``weights_only=True`` too. A file that names anything else is refused with ``UnsafeCheckpointError``
before any of it runs. DeepSpeed reads the weights file before the optimizer files, so after a refusal the engine
may hold part of the checkpoint: treat the learner as unusable (the driver stops on the error).
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import re
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
# The non-tensor types DeepSpeed 0.19 pickles into its checkpoint files, found by saving at ZeRO 0, 1, 2 and 3
# (fp32 and bf16, CPU over gloo) and listing every global the pickles name: the ZeRO 1/2/3 optimizer files hold a
# ``LossScaler`` and a ``ZeroStageEnum``, ZeRO 1/2 also ``fragment_address`` (param slice mappings). Everything else
# (tensors, storages, ``torch.Size``, ``OrderedDict``, builtins) is allowed by ``weights_only`` itself.
DEEPSPEED_SAFE_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler:LossScaler",
                          "deepspeed.runtime.zero.config:ZeroStageEnum",
                          "deepspeed.utils.tensor_fragment:fragment_address")
_FORCE_SAFE, _FORCE_UNSAFE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


class CheckpointError(RuntimeError):
    """A learner checkpoint that cannot be loaded; the message names the file and why."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file names a Python object outside the allowlist (tampered or foreign): refused, nothing run."""


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


def safe_globals() -> list[Any]:
    """The allowlisted DeepSpeed classes (imported on first use: DeepSpeed is a heavy import)."""
    import importlib

    out = []
    for spec in DEEPSPEED_SAFE_GLOBALS:
        module, name = spec.split(":")
        out.append(getattr(importlib.import_module(module), name))
    return out


def _allowlisted() -> Any:
    """``torch.serialization.safe_globals`` for the allowlisted classes not allowed yet. Torch's context removes
    what it was given on exit, so nesting it with the same classes would empty the outer one's allowlist."""
    present = torch.serialization.get_safe_globals()
    return torch.serialization.safe_globals([g for g in safe_globals() if g not in present])


def _refusal(what: str, err: BaseException) -> UnsafeCheckpointError:
    """Keep torch's diagnosis ("Unsupported global: GLOBAL posix.system") but not its advice to load unsafely."""
    m = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed global|\.?\n|$)", str(err))
    why = m.group(1).strip() if m else str(err).strip().splitlines()[0]
    return UnsafeCheckpointError(f"refused to load {what}: {why}. Learner checkpoints hold only tensors and the "
                                 f"allowlisted DeepSpeed types ({', '.join(DEEPSPEED_SAFE_GLOBALS)}); this file was "
                                 f"tampered with or not written by medgrpo")


def safe_torch_load(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load(weights_only=True)`` with the DeepSpeed allowlist; a disallowed object raises
    ``UnsafeCheckpointError``, an unreadable file ``CheckpointError`` (both name the file)."""
    try:
        with _allowlisted():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(str(path), e) from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint file ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'})") from None


@functools.cache
def _safe_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, saving the same files, loading them with ``safe_torch_load``."""

        def load(self, path: str, map_location: Any = None) -> Any:
            return safe_torch_load(path, map_location=map_location)

    return SafeTorchCheckpointEngine


def use_safe_checkpoint_engine(engine: Any) -> None:
    """Give ``engine`` (a DeepSpeedEngine) the safe checkpoint engine; idempotent. Any other kind of checkpoint
    engine (a configured checkpoint writer) is refused rather than left loading unsafely."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    safe_cls = _safe_engine_class()
    current = getattr(engine, "checkpoint_engine", None)
    if isinstance(current, safe_cls):
        return
    if type(current) is not TorchCheckpointEngine:
        raise CheckpointError(f"DeepSpeed checkpoint engine {type(current).__name__} has no safe load; configure "
                              f"no checkpoint writer (the default torch engine is made safe)")
    engine.checkpoint_engine = safe_cls(engine._config)


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """For the duration, every ``torch.load`` in this process runs with ``weights_only=True`` and the DeepSpeed
    allowlist, whatever its call site asks: DeepSpeed's own direct ``torch.load(..., weights_only=False)`` calls
    (``zero_to_fp32`` on a ZeRO-3 weights-only load) included. Process-wide (an environment variable torch reads
    on every load): meant for the learner's checkpoint load, a collective nothing else runs beside."""
    saved = {k: os.environ.get(k) for k in (_FORCE_SAFE, _FORCE_UNSAFE)}
    os.environ[_FORCE_SAFE] = "1"
    os.environ.pop(_FORCE_UNSAFE, None)  # both set is an error in torch; safe wins here
    try:
        with _allowlisted():
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def save_engine_state(engine: Any, staging: str | Path, client_state: Optional[dict[str, Any]] = None,
                      trainable_only: bool = False) -> None:
    """Every rank: DeepSpeed's model + optimizer + scheduler state into ``staging/state`` (a collective).
    ``trainable_only`` (LoRA): the module state holds the trainable parameters only (the frozen base comes from
    the model folder again on load)."""
    engine.save_checkpoint(str(staging), tag=DS_TAG, client_state=dict(client_state or {}), save_latest=True,
                           exclude_frozen_parameters=trainable_only)


def load_engine_state(engine: Any, directory: str | Path, load_optimizer: bool = True,
                      trainable_only: bool = False) -> dict[str, Any]:
    """Every rank: restore the DeepSpeed state, unpickling only tensors and allowlisted types (see the module
    docstring); returns the client state saved with it. Raises ``UnsafeCheckpointError`` for a tampered file."""
    use_safe_checkpoint_engine(engine)
    try:
        with weights_only_loads():
            path, client_state = engine.load_checkpoint(str(directory), tag=DS_TAG,
                                                        load_optimizer_states=load_optimizer,
                                                        load_lr_scheduler_states=load_optimizer,
                                                        load_module_only=not load_optimizer,
                                                        load_module_strict=not trainable_only)
    except pickle.UnpicklingError as e:  # a direct torch.load inside DeepSpeed, made safe by weights_only_loads
        raise _refusal(f"a file of checkpoint {directory}", e) from None
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
