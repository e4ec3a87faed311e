"""Atomic file writes and the JSON helpers that go with them (checkpoints, evaluation reports, synthetic data).

A write goes to a temporary file in the target's folder, then one ``os.replace``: a reader, or a crash mid-write,
sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then rename it onto ``path`` (parents
    created). The temporary file is removed when ``write`` raises."""
    out = Path(os.fspath(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out


def write_text(path: PathLike, text: str) -> Path:
    """``text`` (UTF-8) at ``path``, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: PathLike, obj: Any, indent: Optional[int] = 1, **dumps_kwargs: Any) -> Path:
    """``obj`` as JSON at ``path``, atomically; NumPy values and tuples are written as ``json_default`` says.
    ``dumps_kwargs`` go to ``json.dumps`` (e.g. ``allow_nan=False``, ``ensure_ascii=False``)."""
    dumps_kwargs.setdefault("default", json_default)
    return write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs))


def read_json(path: PathLike) -> Any:
    return json.loads(Path(os.fspath(path)).read_text(encoding="utf-8"))


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for the NumPy arrays/scalars and tuples that states and metrics hold."""
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
