"""Benchmark of the GPU weight-sync path (the bucketed broadcast of ``learner.weight_sync``) between processes.

The bucketed broadcast is timed against one broadcast per tensor, one raw broadcast of the same bytes and a device
memcpy, side by side in one run.

Processes: this one is the sender (rank 0 of a group made by ``init_sync_group``, as learner rank 0 is); ``N``
receivers (``--receivers``, default 1) are ``multiprocessing`` spawn children, ranks 1..N, each holding a model of
the same architecture with different values. ``--backend nccl`` (the default when CUDA is available) puts every
process on its own GPU (``cuda:rank``; NCCL refuses two ranks on one GPU, so it needs N + 1 GPUs); ``gloo`` runs
on CPU over loopback TCP.

Candidates, per model (timed interleaved by ``bench.common.compare``; one call = one full transfer of the weights):

* ``bucketed``        the sender's ``BucketBroadcaster.broadcast(model, version)`` (JSON header, then per-dtype
                      buckets of ``DEFAULT_BUCKET_BYTES`` = 512 MiB, each flattened with ``torch.cat``) and every
                      receiver's ``BucketReceiver.receive(model)`` (into a fresh flat buffer per bucket, then one
                      ``copy_`` per parameter); ``bucketed_<k>MiB`` the same with ``--bucket-mib`` buckets;
* ``per_tensor``      the naive baseline written here with the same plumbing (``SyncGroup``, ``_broadcast``): one
                      broadcast per parameter, straight from the sender's parameter, into a fresh tensor on each
                      receiver that is then copied into the receiver's parameter (no header: both sides know the
                      model);
* ``raw``             one broadcast of a preallocated flat uint8 buffer of the same byte count, nothing else: the
                      collective's own bandwidth;
* ``copy``            ``dst.copy_(src)`` of the same bytes on the sender's device (cuda for nccl, cpu for gloo):
                      the memory-copy bandwidth. MB/s counts the bytes once (not read + write);
* ``ctl``             the per-call control traffic alone (command + acknowledgement, below): a fixed latency in
                      every candidate but ``copy``, reported in ms.

What the clock covers (``time.perf_counter`` on the sender, per call): the sender broadcasts a 3-int64 command
(which candidate; the version for ``bucketed``), runs its side of the candidate, then joins a 1-int64 all-reduce
(SUM) to which every receiver contributes 1 only after its side has finished (weights received and copied into its
parameters); the call ends when that all-reduce has completed on the sender (``torch.cuda.synchronize`` after it on
CUDA) and the sum equals N. The previous call's acknowledgement is the barrier before the next one: no receiver is
still working when the clock starts. So each call = command + transfer + receivers' copies + acknowledgement; the
``ctl ms`` column gives the command + acknowledgement share. ``copy`` is purely local (no receivers involved).

Headline ratios are of throughput (> 1: the first is faster), each the median of per-round ratios:
``bucketed / per_tensor``, ``bucketed / raw`` (what bucketing, flattening and copying cost over the bare
collective; the bucketed path makes one copy of the weights on the sender, ``torch.cat``, and one on each receiver,
so it cannot reach 1) and ``raw / copy`` (the collective's bandwidth as a fraction of the device's copy bandwidth).

After timing, each candidate is checked once more on changed data: the sender adds 1 to every weight (to every byte
of the raw buffer, of the copy source), runs the candidate once, and every receiver's ``weights_checksum(model,
mode="full")`` (CRC-32 of the raw buffer for ``raw``) must equal the sender's (``in sync``); receivers report their
digests through the group's TCP store.

Reading CPU (gloo) figures: every bucketed call allocates a fresh flat buffer per bucket on both sides (the
sender's ``torch.cat``, the receiver's ``torch.empty``). On CPU a large fresh buffer is new memory each time, and
touching it first costs several memcpys: on the 2-core development machine, a raw 80 MB gloo broadcast into a
fresh buffer took ≈ 300 ms against ≈ 78 ms into a preallocated one, and ``torch.cat`` of the 20M model ≈ 130 ms
against a ≈ 14 ms copy. So on CPU a 512 MiB bucket loses to 16 MiB ones and to ``per_tensor``.
CUDA's caching allocator reuses its blocks: those CPU figures say nothing about the GPU.

Models: ``bench.weight_sync.build_model`` (stacks of ``nn.Linear`` of ≈1M, 20M and, in the full run, 100M fp32
parameters; 5000 tensors of 64 floats), or ``--models kind:a:b ...``.

Run: ``python -m bench.broadcast [--quick] [--json PATH] [--backend gloo|nccl] [--receivers N]``.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import zlib
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from bench.common import Report, Timing, compare, fmt_bytes, fmt_num, free_port, parser, ratio
from bench.weight_sync import ModelSpec, build_model, spec_name
from learner.weight_sync import (DEFAULT_BUCKET_BYTES, BucketBroadcaster, BucketReceiver, SyncGroup, _broadcast,
                                 dtype_name, init_sync_group, plan_buckets, weights_checksum)

# sender -> receivers commands: int64 [op, a, b]
OP_STOP, OP_MODEL, OP_RUN, OP_CHECK = 0, 1, 2, 3
K_CTL, K_BUCKETED, K_PER_TENSOR, K_RAW = 0, 1, 2, 3  # OP_RUN kinds (a); b = version for K_BUCKETED
C_MODEL, C_RAW = 0, 1  # OP_CHECK kinds (a); b = check sequence number
STORE_PREFIX = "bench-broadcast"
QUICK_MODELS: tuple[ModelSpec, ...] = (("linear", 256, 15), ("linear", 1024, 19), ("small", 5000, 64))
FULL_MODELS: tuple[ModelSpec, ...] = (("linear", 256, 15), ("linear", 1024, 19), ("linear", 2048, 24),
                                      ("small", 5000, 64))
JOIN_TIMEOUT_S = 60.0


# -- pure pieces -------------------------------------------------------------------------------------------------
def parse_spec(text: str) -> ModelSpec:
    """``"linear:WIDTH:LAYERS"`` or ``"small:COUNT:NUMEL"`` -> a ``bench.weight_sync`` model spec."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("linear", "small"):
        raise ValueError(f"model spec {text!r}: expected linear:WIDTH:LAYERS or small:COUNT:NUMEL")
    try:
        a, b = int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"model spec {text!r}: sizes must be integers") from None
    if a < 1 or b < 1:
        raise ValueError(f"model spec {text!r}: sizes must be >= 1")
    return (parts[0], a, b)


def default_backend(cuda_available: bool) -> str:
    return "nccl" if cuda_available else "gloo"


def check_world(backend: str, world_size: int, cuda_available: bool, device_count: int) -> None:
    """Raise ValueError when ``backend`` cannot run ``world_size`` processes here (nccl: one GPU per process)."""
    if world_size < 2:
        raise ValueError(f"need at least one receiver (world size {world_size})")
    if backend == "nccl":
        if not cuda_available:
            raise ValueError("--backend nccl needs CUDA, which is not available here; use --backend gloo")
        if device_count < world_size:
            raise ValueError(f"--backend nccl needs one GPU per process ({world_size} = 1 sender + "
                             f"{world_size - 1} receiver(s)), found {device_count}: NCCL refuses two ranks on one "
                             "GPU. Use fewer --receivers or --backend gloo")
    elif backend != "gloo":
        raise ValueError(f"backend {backend!r}; allowed: gloo, nccl")


def bucket_label(bucket_bytes: int) -> str:
    """Candidate name of a bucket size: ``bucketed`` for the default, else ``bucketed_<size>MiB``."""
    if bucket_bytes == DEFAULT_BUCKET_BYTES:
        return "bucketed"
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if bucket_bytes % size == 0:
            return f"bucketed_{bucket_bytes // size}{unit}"
    return f"bucketed_{bucket_bytes}B"


def summarize(model: str, params: int, tensors: int, nbytes: int, buckets: int, timings: Mapping[str, Timing],
              bucketed: Sequence[str], in_sync: bool) -> dict[str, Any]:
    """One table row from a model's timings: MB/s per candidate (1 MB = 1e6 bytes), throughput ratios (medians of
    per-round time ratios: ``ratio(den_time, num_time)``), ``ctl`` latency and the noise (largest spread among the
    transfer candidates). ``bucketed[0]`` is the headline bucketed candidate."""
    row: dict[str, Any] = {"model": model, "params": params, "tensors": tensors, "bytes": nbytes,
                           "buckets": buckets}
    for name in (*bucketed, "per_tensor", "raw", "copy"):
        row[f"{name}_MBs"] = nbytes / timings[name].median / 1e6
    head = bucketed[0]
    row["bucketed_vs_per_tensor"] = ratio(timings["per_tensor"], timings[head])
    row["bucketed_vs_raw"] = ratio(timings["raw"], timings[head])
    for name in bucketed[1:]:
        row[f"{name}_vs_raw"] = ratio(timings["raw"], timings[name])
    row["raw_vs_copy"] = ratio(timings["copy"], timings["raw"])
    row["ctl_ms"] = 1e3 * timings["ctl"].median if "ctl" in timings else None
    row["in_sync"] = in_sync
    row["noise"] = max(timings[n].spread for n in (*bucketed, "per_tensor", "raw", "copy"))
    return row


def raw_digest(buf: torch.Tensor) -> str:
    """CRC-32 of a flat uint8 buffer's bytes (on any device)."""
    return f"{zlib.crc32(buf.detach().cpu().contiguous().numpy()):08x}"


# -- both sides --------------------------------------------------------------------------------------------------
def _device(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ack(group: SyncGroup, device: torch.device, value: int, timeout_s: float) -> int:
    """All-reduce (SUM) of one int64: every receiver adds 1 once its side of the operation is done."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=device)
    opts = dist.AllreduceOptions()
    opts.reduceOp = dist.ReduceOp.SUM
    opts.timeout = datetime.timedelta(seconds=timeout_s)
    group.pg.allreduce([t], opts).wait(datetime.timedelta(seconds=timeout_s))
    return int(t.item())


def _shutdown(group: SyncGroup) -> None:
    """Release the group's communicators (NCCL warns at exit otherwise); every rank calls it after the last op."""
    try:
        group.pg.shutdown()
    except Exception as e:  # noqa: BLE001 - nothing left to sync: say so and go on
        print(f"bench.broadcast: rank {group.rank}: process group shutdown failed: {e}", flush=True)


def _nbytes(model: nn.Module) -> int:
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def _per_tensor_receive(group: SyncGroup, model: nn.Module, timeout_s: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            buf = torch.empty_like(p)
            _broadcast(group, buf, timeout_s)
            p.copy_(buf)


def _receiver_main(rank: int, world_size: int, port: int, backend: str, specs: list[ModelSpec], seed: int,
                   threads: int, timeout_s: float) -> None:
    """A receiving process: joins the group, then serves commands until ``OP_STOP``. On any error it leaves the
    message in the store (``<prefix>/error/<rank>``) for the sender and exits non-zero."""
    group: Optional[SyncGroup] = None
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        group = init_sync_group("127.0.0.1", port, rank, world_size, backend=backend, timeout_s=timeout_s)
        device = _device(backend)
        receiver = BucketReceiver(group, timeout_s=timeout_s, device=device)
        model: Optional[nn.Module] = None
        raw: Optional[torch.Tensor] = None
        cmd = torch.zeros(3, dtype=torch.int64, device=device)
        while True:
            _broadcast(group, cmd, timeout_s)
            op, a, b = (int(x) for x in cmd.tolist())
            if op == OP_STOP:
                _shutdown(group)
                return
            if op == OP_MODEL:
                model = raw = None
                model = build_model(specs[a], seed + 1000 + rank).to(device)  # other values than the sender's
                raw = torch.zeros(_nbytes(model), dtype=torch.uint8, device=device)
            elif op in (OP_RUN, OP_CHECK) and (model is None or raw is None):
                raise RuntimeError(f"command {op} before any model was set up")
            elif op == OP_RUN:
                if a == K_BUCKETED:
                    got = receiver.receive(model)
                    if got != b:
                        raise RuntimeError(f"bucketed receive returned version {got}, sender sent {b}")
                elif a == K_PER_TENSOR:
                    _per_tensor_receive(group, model, timeout_s)
                elif a == K_RAW:
                    _broadcast(group, raw, timeout_s)
                elif a != K_CTL:
                    raise RuntimeError(f"unknown run kind {a}")
            elif op == OP_CHECK:
                digest = weights_checksum(model, mode="full") if a == C_MODEL else raw_digest(raw)
                group.store.set(f"{STORE_PREFIX}/check/{b}/{rank}", digest)
            else:
                raise RuntimeError(f"unknown command {op}")
            _sync(device)
            _ack(group, device, 1, timeout_s)
    except BaseException as e:
        if group is not None:
            try:
                group.store.set(f"{STORE_PREFIX}/error/{rank}", f"{type(e).__name__}: {e}")
            except Exception:  # noqa: BLE001 - the store may be gone with the sender; the exit code still says it
                pass
        raise


# -- sender ------------------------------------------------------------------------------------------------------
class Sender:
    """Rank 0: starts the receivers, joins the group, and drives them with commands."""

    def __init__(self, backend: str, receivers: int, specs: Sequence[ModelSpec], seed: int, threads: int,
                 timeout_s: float) -> None:
        self.backend = backend
        self.receivers = receivers
        self.timeout_s = timeout_s
        self.checks = 0
        self.version = 0  # of bucketed broadcasts: only moves forward, across models (one BucketReceiver each)
        if backend == "nccl":
            torch.cuda.set_device(0)
        port = free_port()
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_receiver_main, name=f"bench-broadcast-rx{r}", daemon=True,
                                  args=(r, receivers + 1, port, backend, list(specs), seed, threads, timeout_s))
                      for r in range(1, receivers + 1)]
        for p in self.procs:
            p.start()
        try:
            self.group = init_sync_group("127.0.0.1", port, 0, receivers + 1, backend=backend, timeout_s=timeout_s)
        except BaseException:
            self.kill()
            raise
        self.device = _device(backend)
        self._cmd = torch.zeros(3, dtype=torch.int64, device=self.device)

    def command(self, op: int, a: int = 0, b: int = 0) -> None:
        self._cmd.copy_(torch.tensor([op, a, b], dtype=torch.int64))
        _broadcast(self.group, self._cmd, self.timeout_s)

    def ack(self) -> None:
        got = _ack(self.group, self.device, 0, self.timeout_s)
        _sync(self.device)
        if got != self.receivers:
            raise RuntimeError(f"acknowledgement sum {got}, expected {self.receivers}: the processes are out of step")

    def call(self, op: int, a: int = 0, b: int = 0, body: Optional[Callable[[], Any]] = None) -> None:
        self.command(op, a, b)
        if body is not None:
            body()
        _sync(self.device)
        self.ack()

    def check(self, kind: int) -> list[str]:
        """Every receiver's digest of its model (``C_MODEL``) or raw buffer (``C_RAW``)."""
        self.checks += 1
        self.call(OP_CHECK, kind, self.checks)
        return [self.group.store.get(f"{STORE_PREFIX}/check/{self.checks}/{r}").decode()
                for r in range(1, self.receivers + 1)]

    def receiver_errors(self) -> list[str]:
        out = []
        for r in range(1, self.receivers + 1):
            key = f"{STORE_PREFIX}/error/{r}"
            try:
                if self.group.store.check([key]):
                    out.append(f"rank {r}: {self.group.store.get(key).decode()}")
            except Exception:  # noqa: BLE001 - best effort while failing
                pass
        for p in self.procs:
            p.join(2)  # a receiver that failed is on its way out
            if p.exitcode not in (None, 0):
                out.append(f"{p.name} exited with code {p.exitcode}")
        return out

    def stop(self) -> None:
        self.command(OP_STOP)
        _shutdown(self.group)
        for p in self.procs:
            p.join(JOIN_TIMEOUT_S)
        self.kill()

    def kill(self) -> None:
        """Terminate the receivers this sender started that are still running."""
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
            if p.is_alive():
                p.kill()
                p.join(10)


def bench_model(s: Sender, index: int, spec: ModelSpec, bucket_sizes: Sequence[int], rounds: int, min_time: float,
                seed: int) -> tuple[dict[str, Any], list[str]]:
    """Time and check every candidate on one model; returns (table row, names of candidates found out of sync)."""
    device = s.device
    model = build_model(spec, seed).to(device)
    s.call(OP_MODEL, index)
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = sum(1 for _ in model.parameters())
    nbytes = _nbytes(model)
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g).to(device)
    copy_dst = torch.empty_like(raw)
    labels = [bucket_label(b) for b in bucket_sizes]
    broadcasters = {lab: BucketBroadcaster(s.group, 0, bucket_bytes=b, timeout_s=s.timeout_s, device=device)
                    for lab, b in zip(labels, bucket_sizes)}

    def bucketed(label: str) -> Callable[[], None]:
        def run() -> None:
            s.version += 1
            s.call(OP_RUN, K_BUCKETED, s.version, lambda: broadcasters[label].broadcast(model, s.version))
        return run

    def per_tensor_send() -> None:
        for p in model.parameters():
            _broadcast(s.group, p.detach(), s.timeout_s)

    def copy() -> None:
        copy_dst.copy_(raw)
        _sync(device)

    candidates: dict[str, Callable[[], None]] = {lab: bucketed(lab) for lab in labels}
    candidates["per_tensor"] = lambda: s.call(OP_RUN, K_PER_TENSOR, 0, per_tensor_send)
    candidates["raw"] = lambda: s.call(OP_RUN, K_RAW, 0, lambda: _broadcast(s.group, raw, s.timeout_s))
    candidates["copy"] = copy
    candidates["ctl"] = lambda: s.call(OP_RUN, K_CTL)
    timings = compare(candidates, rounds=rounds, min_time=min_time)

    # correctness on changed data: every receiver must end up with exactly the sender's bytes
    bad: list[str] = []
    with torch.no_grad():
        for name in (*labels, "per_tensor"):
            for p in model.parameters():
                p.add_(1.0)
            candidates[name]()
            want = weights_checksum(model, mode="full")
            if any(d != want for d in s.check(C_MODEL)):
                bad.append(name)
        raw.add_(1)
        candidates["raw"]()
        if any(d != raw_digest(raw) for d in s.check(C_RAW)):
            bad.append("raw")
        raw.add_(1)
        copy()
        if not torch.equal(copy_dst, raw):
            bad.append("copy")
    specs = [(n, dtype_name(p.dtype), tuple(p.shape)) for n, p in model.named_parameters()]
    buckets = len(plan_buckets(specs, bucket_sizes[0]))
    row = summarize(spec_name(spec, n_params), n_params, n_tensors, nbytes, buckets, timings, labels, not bad)
    return row, bad


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("broadcast", __doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--backend", choices=("gloo", "nccl"), default=default_backend(cuda),
                    help=f"process-group backend (default here: {default_backend(cuda)}; nccl needs one GPU per "
                         "process)")
    ap.add_argument("--receivers", type=int, default=1, help="receiving processes (default 1)")
    ap.add_argument("--bucket-mib", type=float, nargs="*", default=[16.0],
                    help="extra bucket sizes in MiB, timed besides the default 512 MiB (default: 16; none given: "
                         "only the default)")
    ap.add_argument("--models", nargs="+", metavar="KIND:A:B",
                    help="models to time, e.g. linear:1024:19 small:5000:64 (default: 1M, 20M, [100M,] 5000 "
                         "small tensors)")
    ap.add_argument("--timeout", type=float, default=300.0, help="timeout of every collective, s (default 300)")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default: 3 quick, 5 full)")
    ap.add_argument("--min-time", type=float, default=-1.0,
                    help="seconds per candidate per round (default: 0.1 quick, 0.5 full)")
    args: argparse.Namespace = ap.parse_args(argv)
    try:
        check_world(args.backend, args.receivers + 1, cuda, torch.cuda.device_count() if cuda else 0)
        specs = [parse_spec(m) for m in args.models] if args.models else list(QUICK_MODELS if args.quick
                                                                               else FULL_MODELS)
        if args.timeout <= 0:
            raise ValueError(f"--timeout must be > 0, got {args.timeout}")
    except ValueError as e:
        ap.error(str(e))
    extra = [int(round(m * 2**20)) for m in args.bucket_mib]
    if any(b <= 0 for b in extra):
        ap.error(f"--bucket-mib sizes must be > 0, got {args.bucket_mib}")
    bucket_sizes = [DEFAULT_BUCKET_BYTES] + [b for b in dict.fromkeys(extra) if b != DEFAULT_BUCKET_BYTES]
    rep = Report("broadcast", args, uses_torch=True)
    rounds = args.rounds if args.rounds > 0 else (3 if args.quick else 5)
    min_time = args.min_time if args.min_time >= 0 else (0.1 if args.quick else 0.5)
    sender = Sender(args.backend, args.receivers, specs, args.seed, args.threads, args.timeout)
    results: list[tuple[dict[str, Any], list[str]]] = []
    try:
        for i, spec in enumerate(specs):
            results.append(bench_model(sender, i, spec, bucket_sizes, rounds, min_time, args.seed))
        sender.stop()
    except BaseException as e:
        errors = sender.receiver_errors()
        sender.kill()
        if errors:
            raise RuntimeError(f"broadcast benchmark failed ({type(e).__name__}: {e}); receivers: "
                               + "; ".join(errors)) from e
        raise
    rows = [r for r, _ in results]
    labels = [bucket_label(b) for b in bucket_sizes]
    columns = [("model", "model", str), ("bytes", "bytes", fmt_bytes), ("buckets", "buckets", fmt_num)]
    columns += [(f"{n}_MBs", f"{n} MB/s", fmt_num) for n in (*labels, "per_tensor", "raw", "copy")]
    columns += [("bucketed_vs_per_tensor", "bucketed/per-tensor", fmt_num),
                ("bucketed_vs_raw", "bucketed/raw", fmt_num)]
    columns += [(f"{n}_vs_raw", f"{n}/raw", fmt_num) for n in labels[1:]]
    columns += [("raw_vs_copy", "raw/copy", fmt_num), ("ctl_ms", "ctl ms", fmt_num), ("in_sync", "in sync", fmt_num),
                ("noise", "noise", lambda x: fmt_num(x, 2))]
    dev = "cuda" if args.backend == "nccl" else "cpu"
    rep.table("broadcast", f"Weight broadcast, {args.backend}, 1 sender -> {args.receivers} receiver(s), MB/s "
              f"(1 MB = 1e6 bytes of weights per call); ratios of throughput (>1: the first is faster); copy = "
              f"{dev} memcpy on the sender; buckets = of the default 512 MiB plan; ctl = command + ack per call",
              rows, columns)
    for k in ("bucketed_vs_per_tensor", "bucketed_vs_raw", "raw_vs_copy"):
        rep.summary[f"{k}_min"] = min(r[k] for r in rows)
        rep.summary[f"{k}_max"] = max(r[k] for r in rows)
    rep.summary["all_in_sync"] = all(r["in_sync"] for r in rows)
    rep.summary["backend"] = args.backend
    rep.summary["receivers"] = args.receivers
    for row, bad in results:
        if bad:
            rep.note(f"{row['model']}: NOT in sync after {', '.join(bad)}")
    rep.note("clock per call (sender): 3-int64 command broadcast + the candidate + receivers' copies + 1-int64 "
             "all-reduce acknowledgement (+ cuda synchronize); copy is local to the sender")
    rep.note(f"rounds {rounds}, min {min_time} s per candidate per round; torch threads {args.threads} in every "
             "process")
    return rep.finish()


if __name__ == "__main__":
    main()
