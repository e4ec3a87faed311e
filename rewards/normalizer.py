"""MedGRPO cross-dataset reward normalization (SPEC §1): raw task score -> logistic of its IQR-scaled distance
to the key's median.

    r = 1 / (1 + exp(-k * (x - p50) / max(p75 - p25, eps)))        a score at p50 maps to exactly 0.5

Keys are ``(data_source, qa_type)`` or ``(data_source, qa_type, part)`` tuples, or the same joined with ``/``
(``"AVOS/tal"``, ``"AVOS/video_summary_gpt/judge"``); both spellings name the same key. Caption rewards use
a third part per component (``judge``, ``similarity``), each normalized on its own.

Modes (where the quantiles of a key come from):

* ``off``       identity; scores are still observed so metrics and ``save_table`` work.
* ``static``    the table only (the paper's setting). A key missing from the table passes raw scores through,
                and every such score is counted (``missing_table``).
* ``streaming`` online quantiles of the scores the run produces, one bounded ``QuantileSketch`` per key. Until a
                key has ``min_samples`` finite scores it uses the table's entry when there is one, else passes
                raw scores through.
* ``warm``      the table's quantiles act as ``warm_samples`` pseudo-observations: with ``n`` streamed scores
                (``n >= min_samples``) the quantiles used are ``(1 - w)·table + w·stream`` with
                ``w = n / (n + warm_samples)``. Below ``min_samples`` the table is used alone; a key missing
                from the table behaves as in ``streaming``. (A convex blend keeps p25 <= p50 <= p75.)

The ``source`` of a key, reported by ``stats``/``metrics``, is one of ``stream``, ``static``, ``blend`` or
``passthrough`` (``off`` in mode ``off``).

Step semantics: ``process`` (one call per training step) first adds the step's finite scores to the sketches,
then normalizes them with the updated quantiles (``update_first=True``, the default): the very first step of a
key is then already normalized by its own scores once it reaches ``min_samples``, and every sample of a key in
one step uses the same quantiles. With ``update_first=False`` a step is normalized with the quantiles of the
steps before it. NaN/inf scores never enter a sketch: they are counted (``nonfinite``) and come back as NaN, which
the caller must mask (a missing reward, never a silent 0).

Table files (``from_table_file`` / ``save_table``):

* JSON: ``{"AVOS/tal": {"p25": 0.1, "p50": 0.3, "p75": 0.5, "count": 812}, ...}``; a value may also be a list
  ``[p25, p50, p75]``; the mapping may be wrapped as ``{"quantiles": {...}}``. ``count`` is optional.
* CSV: a header row, then one row per key, with either a ``key`` column (``AVOS/tal``) or ``data_source`` and
  ``qa_type`` columns (plus an optional ``part`` column), and ``p25``, ``p50``, ``p75`` (``count`` optional).

Every entry must be finite with p25 <= p50 <= p75; a bad one is a ``ValueError`` naming the key or row.
"""
from __future__ import annotations

import csv
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from rewards.config import NORMALIZER_MODES, NormalizerConfig
from rewards.quantile_sketch import QuantileSketch

_D = NormalizerConfig  # the defaults, written once there

Key = Union[str, tuple[str, ...], list[str]]
Quantiles = tuple[float, float, float]
SOURCES = ("off", "stream", "static", "blend", "passthrough")
STATE_VERSION = 1
_QS = (0.25, 0.5, 0.75)


def canonical_key(key: Key) -> str:
    """``("AVOS", "tal")`` / ``"AVOS/tal"`` -> ``"AVOS/tal"``; 2 or 3 non-empty parts.

    In a tuple, a part's own ``%`` and ``/`` are escaped as ``%25`` / ``%2F`` so every tuple maps to one string.
    """
    if isinstance(key, str):
        parts = key.split("/")
    elif isinstance(key, (tuple, list)):
        parts = [str(p).replace("%", "%25").replace("/", "%2F") for p in key]
    else:
        raise TypeError(f"normalizer key must be a str or tuple, got {type(key).__name__}: {key!r}")
    if len(parts) not in (2, 3) or any(not p.strip() for p in parts):
        raise ValueError(f"normalizer key {key!r} must be (data_source, qa_type[, part]) or 'src/qa[/part]'")
    return "/".join(parts)


def logistic_normalize(x: np.ndarray, quantiles: Quantiles, k: float = _D.k, eps: float = _D.eps) -> np.ndarray:
    """SPEC §1 formula, numerically stable for large |z|; ``x == p50`` gives exactly 0.5. NaN stays NaN."""
    p25, p50, p75 = quantiles
    with np.errstate(invalid="ignore", over="ignore"):
        z = k * (np.asarray(x, dtype=np.float64) - p50) / max(p75 - p25, eps)
        out = np.empty_like(z)
        pos = z >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
        ez = np.exp(z[~pos])  # z < 0 (or NaN): exp cannot overflow
        out[~pos] = ez / (1.0 + ez)
    return out


def _check_quantiles(name: str, q: Sequence[Any]) -> Quantiles:
    try:
        vals = tuple(float(v) for v in q)
    except (TypeError, ValueError):
        raise ValueError(f"table entry {name}: quantiles must be numbers, got {q!r}") from None
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"table entry {name}: need three finite numbers p25, p50, p75, got {q!r}")
    if not vals[0] <= vals[1] <= vals[2]:
        raise ValueError(f"table entry {name}: need p25 <= p50 <= p75, got {vals}")
    return vals  # type: ignore[return-value]


def _table_from_mapping(raw: Mapping[Any, Any]) -> dict[str, Quantiles]:
    if "quantiles" in raw and isinstance(raw["quantiles"], Mapping):
        raw = raw["quantiles"]
    table: dict[str, Quantiles] = {}
    for key, val in raw.items():
        name = canonical_key(key)
        if isinstance(val, Mapping):
            missing = [c for c in ("p25", "p50", "p75") if c not in val]
            if missing:
                raise ValueError(f"table entry {name}: missing {', '.join(missing)}")
            val = (val["p25"], val["p50"], val["p75"])
        if not isinstance(val, (list, tuple)):
            raise ValueError(f"table entry {name}: expected {{p25, p50, p75}} or [p25, p50, p75], got {val!r}")
        if name in table:
            raise ValueError(f"table entry {name} given twice")
        table[name] = _check_quantiles(name, val)
    return table


def load_table(path: Union[str, Path]) -> dict[str, Quantiles]:
    """Read a JSON or CSV quantile table (format in the module docstring), chosen by the file suffix."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"normalizer table {p} does not exist")
    if p.suffix.lower() == ".json":
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"normalizer table {p}: invalid JSON ({e})") from None
        if not isinstance(raw, Mapping):
            raise ValueError(f"normalizer table {p}: expected a JSON object of key -> quantiles")
        return _table_from_mapping(raw)
    if p.suffix.lower() == ".csv":
        table: dict[str, Quantiles] = {}
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or [])
            if not {"p25", "p50", "p75"} <= cols or not ("key" in cols or {"data_source", "qa_type"} <= cols):
                raise ValueError(f"normalizer table {p}: header needs p25,p50,p75 and key (or data_source,qa_type);"
                                 f" got {sorted(cols)}")
            for line, row in enumerate(reader, start=2):
                if "key" in cols and row.get("key"):
                    key: Key = row["key"]
                else:
                    parts = [row.get("data_source") or "", row.get("qa_type") or ""]
                    if row.get("part"):
                        parts.append(row["part"])
                    key = tuple(parts)
                try:
                    name = canonical_key(key)
                    if name in table:
                        raise ValueError(f"key {name} given twice")
                    table[name] = _check_quantiles(name, (row["p25"], row["p50"], row["p75"]))
                except ValueError as e:
                    raise ValueError(f"normalizer table {p} line {line}: {e}") from None
        return table
    raise ValueError(f"normalizer table {p}: unsupported suffix {p.suffix!r}; use .json or .csv")


_NUMERIC_FIELDS = ("count", "nonfinite", "passthrough", "missing_table", "stream_weight", "batch_count",
                   "batch_nonfinite", "batch_raw_mean", "batch_norm_mean")


def flatten_metrics(per_key: Mapping[str, Mapping[str, Any]], prefix: str = "normalizer") -> dict[str, float]:
    """Per-key metrics (``metrics()`` or the second value of ``process``) as flat numbers for a tracker:
    ``{prefix}/{key}/{field}`` for count, nonfinite, passthrough, missing_table, stream_weight, p25/p50/p75 (when
    the key has quantiles) and the batch_* fields, plus ``{prefix}/keys_{source}``: how many keys use each source.
    NaN values (e.g. a batch mean with no finite score) are left out."""
    pre = f"{prefix}/" if prefix else ""
    flat: dict[str, float] = {f"{pre}keys_{s}": 0.0 for s in SOURCES}
    for name, st in per_key.items():
        base = f"{pre}{name}"
        flat[f"{pre}keys_{st['source']}"] += 1.0
        vals = {f: st[f] for f in _NUMERIC_FIELDS if st.get(f) is not None}
        if st.get("quantiles") is not None:
            vals.update(zip(("p25", "p50", "p75"), st["quantiles"]))
        for f, v in vals.items():
            if math.isfinite(float(v)):
                flat[f"{base}/{f}"] = float(v)
    return flat


@dataclass
class _KeyState:
    sketch: QuantileSketch
    nonfinite: int = 0  # non-finite scores seen (skipped)
    missing_table: int = 0  # scores passed through in static mode because the key has no table entry
    passthrough: int = 0  # scores returned raw (too few samples and no table entry, or missing from table)


class RewardNormalizer:
    """Per-key logistic reward normalization with static, streaming or warm-started quantiles (module docstring).

    ``sketch_size``: the most scores one key's sketch retains (its memory cap, ~16 KiB at 2048); rank error is
    about 1.7 / (0.41 · sketch_size), i.e. ~0.002 at 2048, ~0.01 at 400. ``warm_samples``: the table's weight
    in ``warm`` mode, in pseudo-observations. ``update_first``: see "Step semantics". ``seed``: seeds the
    sketches' compaction coins (one derived seed per key), so a run is reproducible.
    """

    def __init__(self, mode: str = _D.mode, k: float = _D.k, eps: float = _D.eps, min_samples: int = _D.min_samples,
                 table: Optional[Mapping[Any, Any]] = None, sketch_size: int = _D.sketch_size, *,
                 warm_samples: int = _D.warm_samples, update_first: bool = _D.update_first, seed: int = 0) -> None:
        if mode not in NORMALIZER_MODES:
            raise ValueError(f"normalizer mode {mode!r}; allowed: {', '.join(NORMALIZER_MODES)}")
        if not (math.isfinite(k) and k > 0):
            raise ValueError(f"normalizer k={k} must be a finite number > 0")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"normalizer eps={eps} must be a finite number > 0")
        if int(min_samples) < 1:
            raise ValueError(f"normalizer min_samples={min_samples} must be >= 1")
        if int(warm_samples) < 0:
            raise ValueError(f"normalizer warm_samples={warm_samples} must be >= 0")
        self.table: dict[str, Quantiles] = _table_from_mapping(table) if table else {}
        if mode in ("static", "warm") and not self.table:
            raise ValueError(f"normalizer mode {mode!r} needs a non-empty quantile table")
        self.mode = mode
        self.k = float(k)
        self.eps = float(eps)
        self.min_samples = int(min_samples)
        self.sketch_size = int(sketch_size)
        self.warm_samples = int(warm_samples)
        self.update_first = bool(update_first)
        self.seed = int(seed)
        QuantileSketch(self.sketch_size)  # validate the size now, not at the first update
        self._keys: dict[str, _KeyState] = {}

    @classmethod
    def from_table_file(cls, path: Union[str, Path], mode: str = "static", **kwargs: Any) -> "RewardNormalizer":
        """A normalizer whose table is read from a JSON or CSV file (format in the module docstring)."""
        return cls(mode=mode, table=load_table(path), **kwargs)

    def save_table(self, path: Union[str, Path]) -> int:
        """Write the quantiles every non-passthrough key uses now (JSON or CSV by suffix); returns the row count.

        In mode ``off`` the streamed quantiles of keys with at least ``min_samples`` scores are written, so a run
        with normalization off (or streaming) can produce the table for a later ``static`` run.
        """
        p = Path(path)
        rows: dict[str, dict[str, Any]] = {}
        for name in sorted(set(self.table) | set(self._keys)):
            st = self.stats(name)
            if st["quantiles"] is None:
                continue
            p25, p50, p75 = st["quantiles"]
            rows[name] = {"p25": p25, "p50": p50, "p75": p75, "count": st["count"], "source": st["resolved"]}
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        if p.suffix.lower() == ".json":
            tmp.write_text(json.dumps(rows, indent=1, sort_keys=True))
        elif p.suffix.lower() == ".csv":
            with tmp.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["key", "p25", "p50", "p75", "count", "source"])
                for name, r in rows.items():
                    w.writerow([name, repr(r["p25"]), repr(r["p50"]), repr(r["p75"]), r["count"], r["source"]])
        else:
            raise ValueError(f"save_table {p}: unsupported suffix {p.suffix!r}; use .json or .csv")
        tmp.replace(p)
        return len(rows)

    # -- per-key state ---------------------------------------------------------------------------------------
    def _state(self, name: str) -> _KeyState:
        st = self._keys.get(name)
        if st is None:
            # A per-key seed derived from the key name (crc32: stable across processes, unlike hash()).
            seed = (self.seed << 32) ^ zlib.crc32(name.encode())
            st = self._keys[name] = _KeyState(QuantileSketch(self.sketch_size, seed=seed))
        return st

    def _resolve(self, name: str) -> tuple[str, Optional[Quantiles], float]:
        """(source, quantiles or None, stream weight) for a key under this mode, ignoring ``off``."""
        st = self._keys.get(name)
        n = st.sketch.n if st else 0
        tab = self.table.get(name)
        stream: Optional[Quantiles] = None
        if st is not None and n >= self.min_samples:
            stream = tuple(float(v) for v in st.sketch.quantiles(_QS))  # type: ignore[assignment]
        if self.mode == "static":
            return ("static", tab, 0.0) if tab else ("passthrough", None, 0.0)
        if stream is None:
            return ("static", tab, 0.0) if tab else ("passthrough", None, 0.0)
        if self.mode == "warm" and tab is not None:
            w = n / (n + self.warm_samples) if (n + self.warm_samples) > 0 else 1.0
            if w < 1.0:
                blended = tuple((1.0 - w) * t + w * s for t, s in zip(tab, stream))
                return "blend", blended, w  # type: ignore[return-value]
        return "stream", stream, 1.0

    # -- public API ------------------------------------------------------------------------------------------
    def update(self, key: Key, scores: Iterable[float] | np.ndarray | float) -> int:
        """Add a key's raw scores; non-finite ones are skipped and counted. Returns how many were added."""
        return self._update(canonical_key(key), np.atleast_1d(np.asarray(scores, dtype=np.float64)).ravel())

    def _update(self, name: str, arr: np.ndarray) -> int:
        st = self._state(name)
        finite = np.isfinite(arr)
        n_finite = int(finite.sum())
        st.nonfinite += arr.size - n_finite
        st.sketch.update(arr if n_finite == arr.size else arr[finite])
        return n_finite

    def normalize(self, key: Key, scores: Iterable[float] | np.ndarray | float) -> np.ndarray:
        """Normalized rewards for one key's raw scores (float64 array, same length; non-finite in -> NaN out)."""
        return self._normalize(canonical_key(key), np.atleast_1d(np.asarray(scores, dtype=np.float64)).ravel())

    def _normalize(self, name: str, arr: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(arr)
        if self.mode == "off":
            out = arr.copy()
        else:
            _, q, _ = self._resolve(name)
            if q is None:
                out = arr.copy()
                st = self._state(name)
                st.passthrough += int((~bad).sum())
                if self.mode == "static":
                    st.missing_table += int((~bad).sum())
            else:
                out = logistic_normalize(arr, q, self.k, self.eps)
        out[bad] = np.nan
        return out

    @staticmethod
    def _group(keys: Sequence[Key]) -> dict[str, np.ndarray]:
        """Canonical key -> ascending indices of its samples, keys in order of first appearance.

        Each distinct key spelling is canonicalized once, not once per sample (a large batch has few keys), and
        the per-sample work is done by C loops (dict building, ``np.fromiter``, a stable argsort).
        """
        if len(keys) == 0:
            return {}
        try:
            uniq = dict.fromkeys(keys)
        except TypeError:  # an unhashable key (a list): canonicalize per sample
            keys = [canonical_key(k) for k in keys]
            uniq = dict.fromkeys(keys)
        names: dict[str, int] = {}
        remap = np.empty(len(uniq), dtype=np.intp)
        for j, raw in enumerate(uniq):
            remap[j] = names.setdefault(canonical_key(raw), len(names))
        if len(names) == 1:
            return {next(iter(names)): np.arange(len(keys), dtype=np.intp)}
        pos = {raw: j for j, raw in enumerate(uniq)}
        ids = np.fromiter(map(pos.__getitem__, keys), dtype=np.intp, count=len(keys))
        if len(names) < len(uniq):  # several spellings of one key
            ids = remap[ids]
        order = np.argsort(ids, kind="stable")
        bounds = np.cumsum(np.bincount(ids, minlength=len(names)))[:-1]
        return dict(zip(names, np.split(order, bounds)))

    def process(self, keys: Sequence[Key], scores: Sequence[float] | np.ndarray
                ) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
        """One step: observe and normalize a batch of (key, raw score) pairs in one call.

        Returns the normalized rewards (same order as the inputs; NaN where the input was not finite) and, per
        key in the batch, ``stats(key)`` plus the batch's ``batch_count``, ``batch_nonfinite``, ``batch_raw_mean``
        and ``batch_norm_mean`` (NaN when the batch had no finite score of that key).

        Cost: about that of ``update`` + ``normalize`` per key; the per-key metrics reuse the quantiles computed
        for normalization (the sketch caches them until its next update).
        """
        arr = np.asarray(scores, dtype=np.float64).ravel()
        if len(keys) != arr.size:
            raise ValueError(f"process: {len(keys)} keys but {arr.size} scores")
        groups = self._group(keys)
        raw = {name: arr[idx] for name, idx in groups.items()}
        out = np.full(arr.size, np.nan)
        if self.update_first:
            for name, x in raw.items():
                self._update(name, x)
        norm = {name: self._normalize(name, x) for name, x in raw.items()}
        for name, idx in groups.items():
            out[idx] = norm[name]
        if not self.update_first:
            for name, x in raw.items():
                self._update(name, x)
        metrics: dict[str, dict[str, Any]] = {}
        for name, x in raw.items():
            fin = np.isfinite(x)
            n_fin = int(np.count_nonzero(fin))
            y = norm[name]
            if n_fin < x.size:
                x, y = x[fin], y[fin]
            m = self._stats(name)
            m["batch_count"] = int(fin.size)
            m["batch_nonfinite"] = int(fin.size - n_fin)
            # sum / count: the same IEEE result as ndarray.mean, without its per-call overhead
            m["batch_raw_mean"] = float(x.sum()) / n_fin if n_fin else math.nan
            m["batch_norm_mean"] = float(y.sum()) / n_fin if n_fin else math.nan
            metrics[name] = m
        return out, metrics

    def quantiles(self, key: Key) -> Quantiles:
        """(p25, p50, p75) that ``normalize`` applies to ``key`` now (in mode ``off``: those it would apply).

        Raises KeyError when the key passes raw scores through (too few samples and no table entry).
        """
        name = canonical_key(key)
        _, q, _ = self._resolve(name)
        if q is None:
            st = self._keys.get(name)
            n = st.sketch.n if st else 0
            raise KeyError(f"normalizer key {name} passes raw scores through: {n} finite samples "
                           f"(min_samples={self.min_samples}) and no table entry")
        return q

    def stats(self, key: Key) -> dict[str, Any]:
        """Count, quantiles in use and their source for one key (plus stream/table quantiles and counters)."""
        name = canonical_key(key)
        return self._stats(name)

    def _stats(self, name: str) -> dict[str, Any]:
        st = self._keys.get(name)
        resolved, q, w = self._resolve(name)
        stream = None
        if st is not None and st.sketch.n > 0:
            stream = tuple(float(v) for v in st.sketch.quantiles(_QS))
        return {
            "key": name,
            "count": st.sketch.n if st else 0,
            "source": "off" if self.mode == "off" else resolved,
            "resolved": resolved,
            "quantiles": q,
            "stream_weight": w,
            "stream_quantiles": stream,
            "table_quantiles": self.table.get(name),
            "nonfinite": st.nonfinite if st else 0,
            "passthrough": st.passthrough if st else 0,
            "missing_table": st.missing_table if st else 0,
            "sketch_items": st.sketch.size if st else 0,
        }

    def keys(self) -> list[str]:
        """Every key observed or in the table, sorted."""
        return sorted(set(self._keys) | set(self.table))

    def metrics(self) -> dict[str, dict[str, Any]]:
        """``stats`` of every key observed or in the table."""
        return {name: self.stats(name) for name in self.keys()}

    def flat_metrics(self, prefix: str = "normalizer") -> dict[str, float]:
        """``flatten_metrics(self.metrics(), prefix)``: every key's numbers, for a tracker."""
        return flatten_metrics(self.metrics(), prefix)

    def merge(self, other: "RewardNormalizer") -> None:
        """Fold another normalizer's observations (sketches and counters) into this one, key by key."""
        for name, ost in other._keys.items():
            st = self._state(name)
            st.sketch.merge(ost.sketch)
            st.nonfinite += ost.nonfinite
            st.passthrough += ost.passthrough
            st.missing_table += ost.missing_table

    # -- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the run has learned (per-key sketches and counters), as plain JSON-able data.

        Settings (mode, k, eps, min_samples, table) are recorded for reference but come from the constructor
        on ``load_state_dict``, so a resumed run may change them (e.g. switch ``streaming`` -> ``static``).
        """
        return {
            "version": STATE_VERSION,
            "settings": {"mode": self.mode, "k": self.k, "eps": self.eps, "min_samples": self.min_samples,
                         "sketch_size": self.sketch_size, "warm_samples": self.warm_samples,
                         "update_first": self.update_first, "seed": self.seed},
            "keys": {name: {"sketch": st.sketch.state_dict(), "nonfinite": st.nonfinite,
                            "passthrough": st.passthrough, "missing_table": st.missing_table}
                     for name, st in sorted(self._keys.items())},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output exactly (replacing all per-key state); ValueError if malformed.

        Restored sketches keep the size they were saved with; keys first seen afterwards use ``sketch_size``.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"normalizer state must be a dict, got {type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"normalizer state version {state.get('version')!r}; this code reads {STATE_VERSION}")
        keys: dict[str, _KeyState] = {}
        for name, ks in dict(state.get("keys", {})).items():
            try:
                keys[canonical_key(name)] = _KeyState(
                    QuantileSketch.from_state(ks["sketch"]), nonfinite=int(ks["nonfinite"]),
                    passthrough=int(ks["passthrough"]), missing_table=int(ks["missing_table"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"normalizer state for key {name}: {e}") from None
        self._keys = keys

    def __repr__(self) -> str:
        return (f"RewardNormalizer(mode={self.mode!r}, k={self.k}, eps={self.eps}, min_samples={self.min_samples}, "
                f"keys={len(self._keys)}, table={len(self.table)})")
