"""The learner as Ray actors: ``LearnerRank`` (one DeepSpeed rank, a thin shell over
``learner.deepspeed_learner.DeepSpeedLearner``) and ``LearnerGroup`` (the driver-side handle that creates N ranks,
rendezvouses them on rank 0's address and a free port, fans calls out with each rank's slice of the batch and
returns rank 0's metrics). Every ``ray.get`` has a timeout (``cluster.get_timeout_s`` unless given).
"""
from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import ray
import torch

from learner.deepspeed_learner import (DeepSpeedLearner, LearnerError, batch_size, build_policy_batch,
                                       build_sft_batch, split_batch)
from learner.weight_sync import WeightPayload

log = logging.getLogger(__name__)


class _LearnerRankImpl:
    """Actor body; see ``LearnerRank``."""

    def __init__(self, cfg: Any, rank: int, world_size: int, model_path: Optional[str] = None) -> None:
        self.cfg, self.rank, self.world_size, self.model_path = cfg, rank, world_size, model_path
        self.learner: Optional[DeepSpeedLearner] = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a port free right now (rank 0 hosts the rendezvous)."""
        ip = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ip, port

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        self.learner = DeepSpeedLearner(self.cfg, self.rank, self.world_size, master_addr, master_port,
                                        local_rank=0, model_path=self.model_path)
        info = self.learner.setup()
        info["pad_id"] = self.learner._pad_id()
        return info

    def _l(self) -> DeepSpeedLearner:
        if self.learner is None:
            raise LearnerError("rank not set up")
        return self.learner

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        return self._l().train_step(batch)

    def sft_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        return self._l().sft_step(batch)

    def compute_logprobs(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self._l().compute_logprobs(batch)

    @ray.method(num_returns=2)
    def weight_payload(self) -> tuple[int, Optional[WeightPayload]]:
        # No copy of the live parameters: Ray puts the returned payload in the object store before this actor
        # runs its next call (one call at a time), so no optimizer step can change them in between.
        payload = self._l().weight_payload(copy=False)
        return self._l().version, payload

    def set_lr(self, lr: float) -> None:
        self._l().set_lr(lr)

    def init_weight_sync(self, master_addr: str, master_port: int, world_size: int,
                         backend: Optional[str] = None) -> None:
        self._l().init_weight_sync(master_addr, master_port, world_size, backend)

    def broadcast_weights(self) -> int:
        return self._l().broadcast_weights()

    def save_checkpoint(self, directory: str) -> str:
        return self._l().save_checkpoint(directory)

    def load_checkpoint(self, directory: str, load_optimizer: bool = True) -> int:
        return self._l().load_checkpoint(directory, load_optimizer=load_optimizer)

    def export_hf(self, directory: str, dtype: Optional[str] = None) -> str:
        return self._l().export_hf(directory, dtype=dtype)

    def version(self) -> int:
        return self._l().version

    def shutdown(self) -> None:
        if self.learner is not None:
            self.learner.shutdown()
            self.learner = None


LearnerRank = ray.remote(_LearnerRankImpl)


@dataclass
class WeightsHandle:
    """A weight payload in the object store: pass ``ref`` to rollout actors (Ray resolves it there; the driver
    never fetches the weights)."""

    version: int
    ref: Any  # ray.ObjectRef[WeightPayload]


class LearnerGroup:
    """N learner ranks as Ray actors. Blocks in ``__init__`` until every rank is set up (or raises)."""

    def __init__(self, cfg: Any, model_path: Optional[str] = None, *, num_ranks: Optional[int] = None,
                 timeout_s: Optional[float] = None, placement_group: Any = None,
                 bundle_indices: Optional[Sequence[int]] = None) -> None:
        self.cfg = cfg
        self.world_size = int(num_ranks or cfg.learner.num_ranks)
        self.timeout = float(timeout_s if timeout_s is not None else cfg.cluster.get_timeout_s)
        opts: dict[str, Any] = {"num_cpus": float(cfg.learner.num_cpus), "num_gpus": float(cfg.learner.num_gpus)}
        if not cfg.learner.num_gpus:
            opts["runtime_env"] = {"env_vars": {"DS_ACCELERATOR": "cpu"}}
        self.ranks = []
        for r in range(self.world_size):
            o = dict(opts)
            if placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                idx = bundle_indices[r] if bundle_indices is not None else r
                o["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=idx)
            self.ranks.append(LearnerRank.options(name=None, **o).remote(cfg, r, self.world_size, model_path))
        try:
            addr, port = self._get(self.ranks[0].address.remote(), "address")
            self.info = self._get([a.setup.remote(addr, port) for a in self.ranks], "setup")
        except BaseException:
            self.shutdown()
            raise
        self.pad_id = int(self.info[0]["pad_id"])

    # -- plumbing ------------------------------------------------------------------------------------------
    def _get(self, refs: Any, what: str, timeout: Optional[float] = None) -> Any:
        """``ray.get`` that fails fast and clearly: the first rank to die ends the wait (the others would sit in
        a collective until its timeout), and the surviving ranks are stopped, since the group cannot go on."""
        t = self.timeout if timeout is None else timeout
        single = not isinstance(refs, (list, tuple))
        todo = [refs] if single else list(refs)
        deadline = time.monotonic() + t
        pending = list(todo)
        results: dict[Any, Any] = {}
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
                if not ready:
                    raise LearnerError(f"learner {what} did not finish within {t:.0f} s (cluster.get_timeout_s); "
                                       f"a rank may be lost or stuck in a collective")
                results[ready[0]] = ray.get(ready[0], timeout=t)  # raises if that rank failed
        except ray.exceptions.RayActorError as e:
            rank = next((i for i, a in enumerate(self.ranks) if a._actor_id.hex() == getattr(e, "actor_id", None)),
                        None)
            self.abort()
            who = f"rank {rank}" if rank is not None else "a rank"
            raise LearnerError(f"learner {who} died during {what} ({type(e).__name__}); the learner group is "
                               f"stopped. Resume the run from its last checkpoint (resume=auto, or "
                               f"`medgrpo resume RUN_DIR`)") from None
        out = [results[r] for r in todo]
        return out[0] if single else out

    def abort(self) -> None:
        """Kill every rank now (no graceful shutdown: survivors of a dead rank are stuck in a collective)."""
        for a in self.ranks:
            ray.kill(a)
        self.ranks = []

    def _fan_out(self, method: str, batch: Mapping[str, Any], what: str) -> list[Any]:
        parts = split_batch(batch, self.world_size)
        return self._get([getattr(a, method).remote(p) for a, p in zip(self.ranks, parts)], what)

    # -- training ------------------------------------------------------------------------------------------
    def train_step(self, batch: Any, advantages: Any = None) -> dict[str, float]:
        """One GRPO update on the global batch: a batch dict (see ``learner.deepspeed_learner``) or rollout groups
        plus their advantages ``[num_groups][G]``. Returns the global metrics (rank 0's)."""
        if advantages is not None:
            batch = build_policy_batch(batch, advantages, pad_id=self.pad_id)
        if batch_size(batch) == 0:
            raise ValueError("empty batch")
        return self._fan_out("train_step", batch, "train_step")[0]

    def sft_step(self, batch: Any) -> dict[str, float]:
        """One SFT update: a batch dict with ``labels``, or a list of tokenised examples (``input_ids``, ``labels``,
        optional ``mm_inputs``)."""
        if not isinstance(batch, Mapping):
            batch = build_sft_batch(batch, pad_id=self.pad_id)
        return self._fan_out("sft_step", batch, "sft_step")[0]

    def compute_logprobs(self, batch: Mapping[str, Any]) -> torch.Tensor:
        n = batch_size(batch)
        parts = self._fan_out("compute_logprobs", batch, "compute_logprobs")
        out = torch.cat(parts, dim=0)
        return out[:n]  # a rank given a filler row (batch smaller than world size) returns one extra row

    def set_lr(self, lr: float) -> None:
        self._get([a.set_lr.remote(lr) for a in self.ranks], "set_lr")

    # -- weights -------------------------------------------------------------------------------------------
    def get_weights(self) -> WeightsHandle:
        """Put the current weights in the object store once (rank 0 packs them; every rank takes part in the
        ZeRO-3 gather) and return the handle; nothing large comes to the driver."""
        pairs = [a.weight_payload.remote() for a in self.ranks]
        versions = self._get([v for v, _ in pairs], "weight export")
        # wait for the non-zero ranks' (empty) payload objects too, so the gather collective has finished
        ready, pending = ray.wait([p for _, p in pairs], num_returns=len(pairs), timeout=self.timeout)
        if pending:
            raise LearnerError(f"weight export: {len(pending)} rank(s) did not finish within {self.timeout:.0f} s")
        return WeightsHandle(version=int(versions[0]), ref=pairs[0][1])

    def weight_sync_address(self) -> tuple[str, int]:
        """Where the GPU weight-sync group rendezvouses: learner rank 0's node and a port free there."""
        addr, port = self._get(self.ranks[0].address.remote(), "address")
        return str(addr), int(port)

    def init_weight_sync(self, master_addr: str, master_port: int, world_size: int,
                         backend: Optional[str] = None) -> list[Any]:
        """Start joining the weight-sync group (learner rank 0 = group rank 0). Returns the refs without waiting:
        the rollout workers must join concurrently (``learner.weight_sync.init_sync_group`` with ranks 1..n-1);
        wait on these refs together with theirs."""
        return [a.init_weight_sync.remote(master_addr, master_port, world_size, backend) for a in self.ranks]

    def broadcast_weights(self) -> list[Any]:
        """Start a bucketed broadcast of the current weights (every rank takes part: ZeRO-3 gathers). Returns the
        refs (each resolves to the version sent) without waiting; the rollout workers call
        ``BucketReceiver.receive`` concurrently. Untested on GPU."""
        return [a.broadcast_weights.remote() for a in self.ranks]

    def wait(self, refs: Sequence[Any], what: str = "call") -> list[Any]:
        """``ray.get`` with this group's timeout and a clear error."""
        return self._get(list(refs), what)

    def version(self) -> int:
        return int(self._get(self.ranks[0].version.remote(), "version"))

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str) -> str:
        return self._get([a.save_checkpoint.remote(str(directory)) for a in self.ranks], "save_checkpoint")[0]

    def load_checkpoint(self, directory: str, load_optimizer: bool = True) -> int:
        return self._get([a.load_checkpoint.remote(str(directory), load_optimizer) for a in self.ranks],
                         "load_checkpoint")[0]

    def export_hf(self, directory: str, dtype: Optional[str] = None) -> str:
        return self._get([a.export_hf.remote(str(directory), dtype) for a in self.ranks], "export_hf")[0]

    def shutdown(self) -> None:
        """Stop this group's rank actors (only those this group created)."""
        for a in getattr(self, "ranks", []):
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - best effort before the kill
                pass
            ray.kill(a)
        self.ranks = []
