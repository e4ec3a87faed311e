"""Versioned weight synchronisation from the learner to the rollout workers.

Two transports, one receiving contract (a policy ``version`` that only moves forward, names and shapes checked
before anything is written, an end-to-end checksum checked before anything is written where the transport allows):

* **CPU / object store** (``pack_weights`` -> ``WeightPayload`` -> ``WeightReceiver.apply``). Learner rank 0 packs
  the full state dict once; the Ray actor method that returns it puts it in the object store, and every rollout
  actor fetches the same object. Layout (``plan_layout``): tensors sorted by name; every tensor under
  ``OWN_BUFFER_BYTES`` (1 MiB) is packed into one flat uint8 buffer per dtype, every larger tensor travels as a
  buffer of its own (with ``copy=False`` a view of the caller's tensor, so the object-store put is its only copy).
  Ray moves each buffer as one NumPy array without pickling it and the receiver reads it zero-copy, so the cost
  does not grow with the number of tensors the way a dict of thousands of arrays does. The index (``Bucket``:
  dtype, names, shapes; byte offsets follow from the order) is plain data: no torch pickles anywhere. bf16 (no
  NumPy dtype) travels as raw bytes and is viewed back with torch.
* **GPU / NCCL** (``init_sync_group`` + ``BucketBroadcaster`` / ``BucketReceiver``): learner rank 0 broadcasts the
  weights over a dedicated process group (learner rank 0 = group rank 0, rollout workers = ranks 1..n) in
  flattened per-dtype buckets (512 MB by default), after a JSON header with the version and the bucket plan.
  Under ZeRO-3 every learner rank must call ``BucketBroadcaster.broadcast`` because each bucket is first gathered
  with ``deepspeed.zero.GatheredParameters`` (a collective over the learner's data-parallel group).
  **Untested on GPU**: on CPU the same code is exercised over a Gloo group (tests/test_learner.py); the NCCL
  path differs only in the device buffers live on.

Checksum of the CPU path (``checksum=`` of ``pack_weights``; the receiver checks whichever the payload carries,
on the received buffers, before writing anything):

* ``"sampled"`` (default): CRC-32 of the index (names, dtypes, shapes) and, of each buffer over 1 MiB, the 1 KiB
  at every multiple of 32 KiB plus its last 1 KiB (≈ 3 % of the bytes; smaller buffers in full). Any damaged,
  misplaced or stale region of 32 KiB or more is caught (but for CRC-32's 2**-32 chance), a smaller one with
  probability ≈ (its size + 1 KiB) / 32 KiB; a lone flipped bit usually is not. It guards against what goes wrong
  in practice on this path (a source modified while it was being packed or put, a truncated or mixed-up buffer, a
  packing bug) for a few per cent of a copy's cost.
* ``"full"``: CRC-32 of every byte (≈ 2.4 GB/s on one core of the development machine, i.e. about one extra
  memory copy on each side): catches any corruption with probability 1 - 2**-32. Not cryptographic.
* ``"none"``: no checksum; a ``WeightReceiver`` then needs ``verify=False`` to accept the payload.

Why not by default the full check: within a node the object store is shared memory, and between nodes Ray's
transfer runs over TCP; two extra passes over 15 GB of bf16 weights (a 7B model) would add ≈ 12 s to every sync.

``weights_checksum(tensors)`` computes the same digest from named tensors (a model, a state dict), so
``weights_checksum(model) == payload.checksum`` exactly when the model holds the payload's weights (in the
covered bytes, for ``"sampled"``).
"""
from __future__ import annotations

import datetime
import json
import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

DEFAULT_BUCKET_BYTES = 512 * 1024 * 1024
_DTYPES: dict[str, torch.dtype] = {
    str(dt).removeprefix("torch."): dt
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
               torch.int8, torch.uint8, torch.bool)
}
_DTYPE_NAMES: dict[torch.dtype, str] = {dt: name for name, dt in _DTYPES.items()}
_ELEMENT_SIZE: dict[str, int] = {name: torch.empty((), dtype=dt).element_size() for name, dt in _DTYPES.items()}

OWN_BUFFER_BYTES = 1 << 20  # a tensor at least this large travels in a buffer of its own (CPU path)
CHECKSUM_MODES = ("sampled", "full", "none")
DEFAULT_CHECKSUM = "sampled"
SAMPLE_WINDOW = 1 << 15  # "sampled": the SAMPLE_BLOCK bytes at every multiple of SAMPLE_WINDOW, and the last ones
SAMPLE_BLOCK = 1 << 10
SAMPLE_FULL_BYTES = 1 << 20  # "sampled": buffers up to this size are covered in full

NamedTensors = Union[nn.Module, Mapping[str, torch.Tensor], Iterable[tuple[str, torch.Tensor]]]
LoadFn = Callable[[Iterable[tuple[str, torch.Tensor]]], Any]


class WeightSyncError(RuntimeError):
    """A payload that cannot be applied: stale version, unknown/missing names, shape or checksum mismatch."""


def dtype_name(dt: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        raise WeightSyncError(f"unsupported tensor dtype {dt} for weight sync; supported: {', '.join(_DTYPES)}")
    return name


def _named(obj: NamedTensors) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, nn.Module):
        yield from obj.named_parameters()
    elif isinstance(obj, Mapping):
        yield from obj.items()
    else:
        yield from obj


def _tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's raw bytes as a 1-D uint8 NumPy array (a view when the tensor is a contiguous CPU tensor)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


@dataclass
class Bucket:
    """Tensors of one dtype laid end to end in one flat buffer, in ``names`` order (no padding)."""

    dtype: str
    names: list[str]
    shapes: list[tuple[int, ...]]

    @property
    def numels(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def numel(self) -> int:
        return sum(self.numels)

    @property
    def nbytes(self) -> int:
        return self.numel * _ELEMENT_SIZE[self.dtype]

    @property
    def own(self) -> bool:
        """A bucket of one tensor of at least ``OWN_BUFFER_BYTES`` (``plan_layout`` never puts such a tensor with
        others)."""
        return len(self.names) == 1 and self.nbytes >= OWN_BUFFER_BYTES


# --------------------------------------------------------------------------------------------------------------
# CPU path: object store payload
# --------------------------------------------------------------------------------------------------------------
def plan_layout(specs: Iterable[tuple[str, str, tuple[int, ...]]]) -> list[Bucket]:
    """The object-store layout of ``(name, dtype, shape)`` specs: names sorted; first one bucket per dtype (dtypes
    sorted) of every tensor under ``OWN_BUFFER_BYTES``, then each larger tensor alone. A function of the set of
    specs only, so the learner and ``weights_checksum`` on a rollout worker agree whatever the iteration order."""
    items = []
    for name, dt, shape in specs:
        if dt not in _ELEMENT_SIZE:
            raise WeightSyncError(f"unsupported dtype {dt!r} for {name!r}; supported: {', '.join(_DTYPES)}")
        shape = tuple(int(s) for s in shape)
        items.append((name, dt, shape, math.prod(shape) * _ELEMENT_SIZE[dt]))
    return _plan(items)


def _plan(items: Iterable[tuple[str, str, tuple[int, ...], int]]) -> list[Bucket]:
    """``plan_layout`` of ``(name, dtype, shape, nbytes)``."""
    shared: dict[str, Bucket] = {}
    own: list[Bucket] = []
    for name, dt, shape, nbytes in sorted(items, key=lambda s: s[0]):
        if nbytes >= OWN_BUFFER_BYTES:
            own.append(Bucket(dt, [name], [shape]))
        else:
            b = shared.get(dt)
            if b is None:
                b = shared[dt] = Bucket(dt, [], [])
            b.names.append(name)
            b.shapes.append(shape)
    return [shared[dt] for dt in sorted(shared)] + own


def _unique_named(weights: NamedTensors) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in _named(weights):
        if name in out:
            raise WeightSyncError(f"duplicate tensor name {name!r} in weights")
        out[name] = t
    return out


def _layout_of(tensors: Mapping[str, torch.Tensor]) -> list[Bucket]:
    return _plan((name, dtype_name(t.dtype), tuple(t.shape), t.nbytes) for name, t in tensors.items())


def _flatten(ts: list[torch.Tensor], shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
    """A fresh CPU copy of same-dtype tensors laid end to end, as a 1-D uint8 array (one C++ call for CPU ones)."""
    with torch.no_grad():
        if len(ts) == 1:  # flatten_dense_tensors returns a view of a lone tensor: copy it ourselves
            flat = ts[0].detach().reshape(-1).to("cpu", copy=True)
        else:
            try:  # 1-D tensors (biases, norms: most small ones) need no reshaping: cat is ~4x faster then
                flat = (torch.cat(ts) if all(len(s) == 1 for s in shapes)
                        else torch._utils._flatten_dense_tensors(ts))
            except RuntimeError:  # tensors on several devices
                flat = torch.cat([t.detach().reshape(-1).cpu() for t in ts])
            if flat.device.type != "cpu":
                flat = flat.cpu()
    return flat.view(torch.uint8).numpy()


def _unflatten(flat: torch.Tensor, b: Bucket, like: Optional[list[torch.Tensor]] = None) -> list[torch.Tensor]:
    """Views of ``flat`` shaped as the bucket's tensors. ``like`` (tensors of those shapes, e.g. the parameters
    they go to) lets torch build the views of a bucket with many multi-dimensional tensors in one C++ call."""
    if like is not None and not all(len(s) == 1 for s in b.shapes):
        return list(torch._utils._unflatten_dense_tensors(flat, like))
    return [t if len(s) == 1 else t.view(s) for t, s in zip(flat.split(b.numels), b.shapes)]


def _bucket_buffers(tensors: Mapping[str, torch.Tensor], buckets: Sequence[Bucket], copy: bool) -> list[np.ndarray]:
    """One 1-D uint8 buffer per bucket: a tensor of its own bucket as its bytes (a view of a contiguous CPU tensor
    unless ``copy``), the others flattened into a fresh buffer."""
    out: list[np.ndarray] = []
    for b in buckets:
        if b.own:
            t = tensors[b.names[0]]
            raw = _tensor_bytes(t)
            shares = t.device.type == "cpu" and t.is_contiguous()  # else _tensor_bytes already made a fresh copy
            out.append(raw.copy() if copy and shares else raw)
        else:
            out.append(_flatten([tensors[n] for n in b.names], b.shapes))
    return out


def _bucket_header(b: Bucket) -> bytes:
    return f"{b.dtype}\0{len(b.names)}\0{chr(0).join(b.names)}\0{b.shapes!r}\n".encode()


def _digest(buckets: Sequence[Bucket], buffers: Sequence[np.ndarray], mode: str) -> str:
    """The checksum string of a layout and its buffers (module docstring): ``"<mode>:crc32:<8 hex digits>"``."""
    if mode not in ("sampled", "full"):
        raise ValueError(f"checksum mode {mode!r} cannot be computed; allowed: sampled, full")
    crc = 0
    for b, buf in zip(buckets, buffers):
        crc = zlib.crc32(_bucket_header(b), crc)
        if mode == "full" or buf.nbytes <= SAMPLE_FULL_BYTES:
            crc = zlib.crc32(buf, crc)
            continue
        # the first SAMPLE_BLOCK bytes at every multiple of SAMPLE_WINDOW (so any region of a window's length
        # holds sampled bytes), then the last SAMPLE_BLOCK bytes
        rows = buf.nbytes // SAMPLE_WINDOW
        heads = np.ascontiguousarray(buf[: rows * SAMPLE_WINDOW].reshape(rows, SAMPLE_WINDOW)[:, :SAMPLE_BLOCK])
        crc = zlib.crc32(heads, crc)
        crc = zlib.crc32(buf[rows * SAMPLE_WINDOW: rows * SAMPLE_WINDOW + SAMPLE_BLOCK], crc)  # a partial window
        crc = zlib.crc32(buf[-SAMPLE_BLOCK:], crc)
    return f"{mode}:crc32:{crc:08x}"


def weights_checksum(weights: NamedTensors, mode: str = DEFAULT_CHECKSUM) -> str:
    """Fingerprint of named tensors (names, dtypes, shapes, bytes): the checksum ``pack_weights(..., checksum=mode)``
    would give them. Order-independent. ``mode="full"`` covers every byte (use it to compare two models exactly);
    the default ``"sampled"`` covers ≈ 3 % of the bytes of large buffers (module docstring). Costs one copy of the
    tensors under 1 MiB plus the hashing."""
    if mode not in ("sampled", "full"):
        raise ValueError(f"weights_checksum mode {mode!r}; allowed: sampled, full")
    tensors = _unique_named(weights)
    buckets = _layout_of(tensors)
    return _digest(buckets, _bucket_buffers(tensors, buckets, copy=False), mode)


@dataclass
class WeightPayload:
    """A full set of policy weights at one version, in a form Ray's object store moves without pickling tensors.

    ``buffers[i]`` (1-D uint8) holds the tensors of ``buckets[i]`` end to end; ``checksum`` is
    ``"<mode>:crc32:<hex>"`` or ``"none"`` (module docstring). Views returned by ``tensor``/``named_tensors`` are
    read-only in spirit: after a trip through the object store the buffers are read-only shared memory.
    """

    version: int
    buckets: list[Bucket]
    buffers: list[np.ndarray]
    checksum: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.buffers))

    @property
    def checksum_mode(self) -> str:
        return self.checksum.split(":", 1)[0]

    @property
    def meta(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """``{name: (dtype, shape)}`` of every tensor in the payload."""
        return {n: (b.dtype, s) for b in self.buckets for n, s in zip(b.names, b.shapes)}

    def names(self) -> list[str]:
        return [n for b in self.buckets for n in b.names]

    def check(self) -> None:
        """Structural consistency (every buffer a 1-D uint8 array of exactly its bucket's size, supported dtypes,
        unique names, a known checksum mode); raises WeightSyncError. Cheap: no pass over the bytes."""
        if not isinstance(self.version, int) or isinstance(self.version, bool):
            raise WeightSyncError(f"payload version must be an int, got {self.version!r}")
        if len(self.buckets) != len(self.buffers):
            raise WeightSyncError(f"payload has {len(self.buckets)} buckets but {len(self.buffers)} buffers")
        n_names = 0
        for i, (b, buf) in enumerate(zip(self.buckets, self.buffers)):
            if b.dtype not in _DTYPES:
                raise WeightSyncError(f"payload bucket {i}: unsupported dtype {b.dtype!r}")
            if len(b.names) != len(b.shapes) or not b.names:
                raise WeightSyncError(f"payload bucket {i} is empty or inconsistent: {len(b.names)} names, "
                                      f"{len(b.shapes)} shapes")
            if not (isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.ndim == 1):
                raise WeightSyncError(f"payload buffer {i} must be a 1-D uint8 array, got "
                                      f"{type(buf).__name__} {getattr(buf, 'dtype', '')}")
            if buf.nbytes != b.nbytes:
                raise WeightSyncError(f"payload buffer {i} ({b.dtype}, {len(b.names)} tensors starting with "
                                      f"{b.names[0]!r}) holds {buf.nbytes} bytes, its index needs {b.nbytes}")
            n_names += len(b.names)
        if len(set(self.names())) != n_names:
            raise WeightSyncError("duplicate tensor names in the payload")
        if self.checksum != "none" and self.checksum_mode not in ("sampled", "full"):
            raise WeightSyncError(f"payload checksum {self.checksum[:40]!r}: unknown mode "
                                  f"(allowed: {', '.join(CHECKSUM_MODES)})")

    def verify(self) -> None:
        """``check`` plus the checksum recomputed over the buffers; raises WeightSyncError on a mismatch (or when the
        payload carries none)."""
        self.check()
        self._verify_digest()

    def _verify_digest(self) -> None:
        if self.checksum == "none":
            raise WeightSyncError(f"payload version {self.version} carries no checksum (packed with "
                                  f"checksum='none'); construct WeightReceiver(verify=False) to accept it")
        got = _digest(self.buckets, self.buffers, self.checksum_mode)
        if got != self.checksum:
            raise WeightSyncError(f"checksum mismatch in payload version {self.version}: buffers {got}, "
                                  f"sender {self.checksum}; nothing was applied")

    def typed(self, i: int) -> torch.Tensor:
        """Buffer ``i`` as a flat torch tensor of its bucket's dtype (a view, no copy)."""
        with warnings.catch_warnings():  # object-store arrays are read-only; we only ever read (and copy) them
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.from_numpy(self.buffers[i])
        return flat.view(_DTYPES[self.buckets[i].dtype])

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor, as a view of its buffer (a linear search: use ``named_tensors`` for all of them)."""
        for i, b in enumerate(self.buckets):
            if name in b.names:
                j = b.names.index(name)
                start = sum(b.numels[:j])
                return self.typed(i)[start:start + math.prod(b.shapes[j])].view(b.shapes[j])
        raise KeyError(name)

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` pairs, views of the payload's buffers: the form ``load_weights`` APIs (vLLM) take."""
        for i, b in enumerate(self.buckets):
            yield from zip(b.names, _unflatten(self.typed(i), b))


def pack_weights(version: int, weights: NamedTensors, extra: Optional[dict[str, Any]] = None,
                 copy: bool = True, *, checksum: str = DEFAULT_CHECKSUM) -> WeightPayload:
    """Named tensors (a model, a state dict, or pairs) as a ``WeightPayload`` (layout in ``plan_layout``).

    Tensors under 1 MiB are always copied into their dtype's flat buffer. ``copy=False`` lets each larger CPU tensor
    travel as a view of the caller's memory instead of a copy: only for tensors the caller will not modify before
    the payload is in the object store (an actor method that returns the payload puts it there before it returns;
    ``ray.put`` copies at once). ``checksum``: ``"sampled"``, ``"full"`` or ``"none"`` (module docstring).
    """
    if checksum not in CHECKSUM_MODES:
        raise ValueError(f"checksum mode {checksum!r}; allowed: {', '.join(CHECKSUM_MODES)}")
    tensors = _unique_named(weights)
    buckets = _layout_of(tensors)
    buffers = _bucket_buffers(tensors, buckets, copy)
    digest = "none" if checksum == "none" else _digest(buckets, buffers, checksum)
    return WeightPayload(version=int(version), buckets=buckets, buffers=buffers, checksum=digest,
                         extra=dict(extra or {}))


def _copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    foreach = getattr(torch, "_foreach_copy_", None)  # one C++ call for thousands of small tensors
    if foreach is not None:
        foreach(dst, src)
    else:  # pragma: no cover - older torch
        for d, s in zip(dst, src):
            d.copy_(s)


class WeightReceiver:
    """Rollout side of the sync: applies payloads to a model, refusing stale versions and inconsistent payloads.

    ``apply(model, payload)`` checks, before writing anything, that the version is newer than the one held (equal
    is accepted only with ``allow_same_version``), that the payload is well-formed, that every payload name exists
    in the model with the same shape (and, with ``strict``, that every model parameter is covered) and, with
    ``verify``, that the received buffers match the sender's checksum; then copies each bucket into the parameters
    under ``no_grad`` (a parameter of another dtype, e.g. a bf16 rollout copy of fp32 weights, is cast by the copy).
    """

    def __init__(self, version: int = -1, *, strict: bool = True, verify: bool = True,
                 allow_same_version: bool = False) -> None:
        self.version = int(version)
        self.strict = strict
        self.verify = verify
        self.allow_same_version = allow_same_version

    def check_version(self, version: int) -> None:
        if version < self.version or (version == self.version and not self.allow_same_version):
            raise WeightSyncError(f"stale weights: payload version {version}, receiver already at {self.version}")

    def apply(self, model: nn.Module, payload: WeightPayload) -> int:
        if not isinstance(payload, WeightPayload):
            raise WeightSyncError(f"expected a WeightPayload, got {type(payload).__name__}")
        payload.check()
        self.check_version(payload.version)
        params = dict(model.named_parameters())
        names = payload.names()
        unknown = [n for n in names if n not in params]
        if unknown:
            raise WeightSyncError(f"{len(unknown)} payload tensor(s) not in the model, e.g. {unknown[:5]}")
        if self.strict and len(params) > len(names):
            covered = set(names)
            missing = [n for n in params if n not in covered]
            raise WeightSyncError(f"{len(missing)} model parameter(s) missing from the payload, e.g. {missing[:5]}")
        for b in payload.buckets:
            for name, shape in zip(b.names, b.shapes):
                if params[name].shape != shape:
                    raise WeightSyncError(f"shape mismatch for {name}: model {tuple(params[name].shape)}, "
                                          f"payload {tuple(shape)}")
        if self.verify:
            payload._verify_digest()  # check() ran above
        with torch.no_grad():
            for i, b in enumerate(payload.buckets):
                flat = payload.typed(i)
                dst = [params[n] for n in b.names]
                if len(dst) == 1:
                    dst[0].copy_(flat.view(b.shapes[0]))
                else:
                    _copy_all(dst, _unflatten(flat, b, dst))
        self.version = payload.version
        return self.version


# --------------------------------------------------------------------------------------------------------------
# GPU path: bucketed broadcast over a dedicated process group
# --------------------------------------------------------------------------------------------------------------
def plan_buckets(specs: Sequence[tuple[str, str, tuple[int, ...]]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
                 ) -> list[Bucket]:
    """Group ``(name, dtype, shape)`` into per-dtype buckets of at most ``bucket_bytes`` (a larger tensor gets a
    bucket of its own), keeping the given order inside each dtype."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    open_: dict[str, tuple[Bucket, int]] = {}
    out: list[Bucket] = []
    for name, dt, shape in specs:
        size = math.prod(shape) * _ELEMENT_SIZE[dt]
        cur = open_.get(dt)
        if cur is not None and cur[1] + size > bucket_bytes:
            out.append(cur[0])
            cur = None
        if cur is None:
            cur = (Bucket(dt, [], []), 0)
        cur[0].names.append(name)
        cur[0].shapes.append(tuple(int(s) for s in shape))
        open_[dt] = (cur[0], cur[1] + size)
    out.extend(b for b, _ in open_.values())
    return out


@dataclass
class SyncGroup:
    """A weight-sync process group with the store that backs it (kept alive together)."""

    pg: Any
    store: Any
    backend: str
    rank: int
    world_size: int


def init_sync_group(master_addr: str, master_port: int, rank: int, world_size: int, backend: str = "nccl",
                    timeout_s: float = 300.0) -> SyncGroup:
    """A process group for weight sync only, independent of the learner's default (DeepSpeed) group and of the
    rollout engine's own groups: a ``TCPStore`` rendezvous (hosted by rank 0 = learner rank 0) and a
    ``ProcessGroupNCCL`` (or ``ProcessGroupGloo`` for CPU tests). Every collective on it times out after
    ``timeout_s``, so a lost peer raises instead of hanging."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(master_addr, int(master_port), world_size, is_master=(rank == 0), timeout=timeout)
    prefixed = dist.PrefixStore("medgrpo-weight-sync", store)
    if backend == "nccl":
        pg = dist.ProcessGroupNCCL(prefixed, rank, world_size, timeout)
    elif backend == "gloo":
        pg = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    else:
        raise ValueError(f"weight-sync backend {backend!r}; allowed: nccl, gloo")
    return SyncGroup(pg=pg, store=store, backend=backend, rank=rank, world_size=world_size)


def _broadcast(group: SyncGroup, t: torch.Tensor, timeout_s: Optional[float]) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    if timeout_s is not None:
        opts.timeout = datetime.timedelta(seconds=timeout_s)
    work = group.pg.broadcast([t], opts)
    if timeout_s is not None:
        work.wait(datetime.timedelta(seconds=timeout_s))
    else:
        work.wait()


def _full_shape(p: torch.Tensor) -> tuple[int, ...]:
    """Full shape of a parameter, also when ZeRO-3 has partitioned it (``ds_shape``)."""
    return tuple(int(s) for s in getattr(p, "ds_shape", p.shape))


def iter_gathered(module: Union[nn.Module, Sequence[tuple[str, torch.Tensor]]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
                  ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Full (gathered) parameters of ``module`` (or of the given ``(name, parameter)`` pairs) in chunks of about
    ``bucket_bytes``.

    Under ZeRO-3 each chunk is gathered with ``deepspeed.zero.GatheredParameters`` for the duration of the ``yield``
    only, so every data-parallel rank must iterate to the end (it is a collective) and consumers must copy what they
    keep. Without ZeRO-3 the parameters are already whole and the gather is a no-op.
    """
    named = list(module.named_parameters()) if isinstance(module, nn.Module) else list(module)
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, p in named:
        nbytes = math.prod(_full_shape(p)) * p.element_size()
        if chunk and size + nbytes > bucket_bytes:
            yield from _gathered(chunk)
            chunk, size = [], 0
        chunk.append((name, p))
        size += nbytes
    if chunk:
        yield from _gathered(chunk)


def _gathered(items: list[tuple[str, torch.Tensor]]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Yield ``items`` once, with their ZeRO-3 shards gathered for the duration of the ``yield`` (a collective
    over the learner's ranks); parameters that are not partitioned are yielded as they are."""
    if any(hasattr(p, "ds_id") for _, p in items):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in items], modifier_rank=None):
            yield items
    else:
        yield items


class _Staging:
    """One flat staging buffer reused for every bucket of every sync (buckets are sent one at a time).

    On CPU a fresh 80 MB buffer per bucket costs ≈4× the broadcast itself in page faults (``bench.broadcast``);
    on CUDA the caching allocator already reuses freed blocks, so the buffer is not kept between syncs there
    (it would pin up to ``bucket_bytes`` of GPU memory while vLLM sleeps)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.keep = device.type == "cpu"
        self.buf: Optional[torch.Tensor] = None

    def take(self, bucket: Bucket) -> torch.Tensor:
        """A flat tensor of ``bucket``'s dtype and length, viewing the staging buffer."""
        if self.buf is None or self.buf.numel() < bucket.nbytes:
            self.buf = None
            self.buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.device)
        return self.buf[:bucket.nbytes].view(_DTYPES[bucket.dtype])

    def release(self) -> None:
        if not self.keep:
            self.buf = None


class BucketBroadcaster:
    """Learner side of the GPU path. Call ``broadcast(module, version)`` on **every** learner rank (ZeRO-3 gathers
    are collectives); only learner rank 0 (which must be rank 0 of ``group``) sends. Untested on GPU."""

    def __init__(self, group: Optional[SyncGroup], learner_rank: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 timeout_s: float = 300.0, device: Optional[torch.device] = None) -> None:
        if learner_rank == 0 and (group is None or group.rank != 0):
            raise ValueError("learner rank 0 must be rank 0 of the weight-sync group (the broadcast root)")
        self.group = group
        self.learner_rank = learner_rank
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        backend = group.backend if group is not None else "gloo"
        self.device = device or (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
                                 else torch.device("cpu"))
        self.staging = _Staging(self.device)

    def broadcast(self, module: nn.Module, version: int) -> list[Bucket]:
        named = list(module.named_parameters())
        specs = [(n, dtype_name(p.dtype), _full_shape(p)) for n, p in named]
        plan = plan_buckets(specs, self.bucket_bytes)
        sender = self.learner_rank == 0
        if sender:
            header = json.dumps({"version": int(version), "buckets": [
                {"dtype": b.dtype, "names": b.names, "shapes": [list(s) for s in b.shapes]} for b in plan]}).encode()
            raw = torch.frombuffer(bytearray(header), dtype=torch.uint8).to(self.device)
            _broadcast(self.group, torch.tensor([raw.numel()], dtype=torch.int64, device=self.device), self.timeout_s)
            _broadcast(self.group, raw, self.timeout_s)
        # Gather in the plan's order, bucket by bucket, so at most one bucket is materialised at a time.
        by_name = dict(named)
        try:
            with torch.no_grad():
                for b in plan:
                    for gathered in _gathered([(n, by_name[n]) for n in b.names]):
                        if not sender:
                            continue
                        flat = self.staging.take(b)
                        torch.cat([(p if p.device == self.device else p.to(self.device, non_blocking=True)).reshape(-1)
                                   for _, p in gathered], out=flat)
                        _broadcast(self.group, flat, self.timeout_s)
        finally:
            self.staging.release()
        return plan


class BucketReceiver:
    """Rollout side of the GPU path: ``receive(model_or_load_fn)`` takes the header, then each bucket, and hands the
    unflattened tensors to ``model.named_parameters()`` copies or to a ``load_fn(iterable of (name, tensor))`` (the
    form vLLM's ``load_weights`` takes). Returns the new version. With a model and ``strict`` (default), a model
    parameter the broadcast does not cover is an error too (nothing is applied), as in ``WeightReceiver``. A
    ``load_fn`` gets views of a staging buffer that is overwritten by the next bucket: it must copy what it keeps
    (vLLM's ``load_weights`` does). Untested on GPU."""

    def __init__(self, group: SyncGroup, version: int = -1, timeout_s: float = 300.0,
                 device: Optional[torch.device] = None, allow_same_version: bool = False, strict: bool = True) -> None:
        self.group = group
        self.timeout_s = timeout_s
        self.version = int(version)
        self.allow_same_version = allow_same_version
        self.strict = strict
        backend = group.backend
        self.device = device or (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
                                 else torch.device("cpu"))
        self.staging = _Staging(self.device)

    def receive(self, target: Union[nn.Module, LoadFn]) -> int:
        n = torch.zeros(1, dtype=torch.int64, device=self.device)
        _broadcast(self.group, n, self.timeout_s)
        raw = torch.empty(int(n.item()), dtype=torch.uint8, device=self.device)
        _broadcast(self.group, raw, self.timeout_s)
        header = json.loads(bytes(raw.cpu().numpy().tobytes()).decode())
        version = int(header["version"])
        buckets = [Bucket(b["dtype"], list(b["names"]), [tuple(s) for s in b["shapes"]]) for b in header["buckets"]]
        params = dict(target.named_parameters()) if isinstance(target, nn.Module) else None
        stale = version < self.version or (version == self.version and not self.allow_same_version)
        problems: list[str] = []
        if params is not None:
            problems = [n for b in buckets for n, s in zip(b.names, b.shapes)
                        if n not in params or tuple(params[n].shape) != tuple(s)]
            if self.strict:
                sent = {n for b in buckets for n in b.names}
                problems += [f"{n} (not broadcast)" for n in params if n not in sent]
        # Receive every bucket even when we are going to refuse the payload: the sender is mid-collective.
        try:
            for b in buckets:
                flat = self.staging.take(b)
                _broadcast(self.group, flat, self.timeout_s)
                if stale or problems:
                    continue
                if params is not None:
                    dst = [params[n] for n in b.names]
                    with torch.no_grad():
                        _copy_all(dst, _unflatten(flat, b, dst))
                else:
                    target(list(zip(b.names, _unflatten(flat, b))))  # type: ignore[operator]
        finally:
            self.staging.release()
        if stale:
            raise WeightSyncError(f"stale weights: broadcast version {version}, receiver already at {self.version}")
        if problems:
            raise WeightSyncError(f"{len(problems)} tensor(s) unknown to the model, of another shape or not "
                                  f"broadcast, e.g. {problems[:5]}; nothing was applied")
        self.version = version
        return version
