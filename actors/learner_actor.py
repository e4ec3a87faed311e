"""The learner as Ray actors: ``LearnerRank`` (one DeepSpeed rank, a thin shell over
``learner.deepspeed_learner.DeepSpeedLearner``) and ``LearnerGroup`` (the driver-side handle that creates N ranks,
rendezvouses them on rank 0's address and a free port, fans calls out with each rank's slice of the batch and
returns rank 0's metrics). Every ``ray.get`` has a timeout (``cluster.get_timeout_s`` unless given).
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import ray
import torch

from actors.actor_pool import ActorLost, ActorPool, Call, RetryPolicy
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

    def setup(self, rendezvous: tuple[str, int]) -> dict[str, Any]:
        """Join the group at rank 0's ``address()`` (passed as that call's object ref: Ray resolves it before this
        runs, so rank 0's address never makes a round trip through the driver), load the model, build the engine."""
        master_addr, master_port = rendezvous
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
    """N learner ranks as Ray actors. Blocks in ``__init__`` until every rank is set up (or raises); with
    ``wait=False`` it returns once the ranks and their set-up are submitted, and ``ready()`` waits (the driver starts
    its other actors meanwhile)."""

    def __init__(self, cfg: Any, model_path: Optional[str] = None, *, num_ranks: Optional[int] = None,
                 timeout_s: Optional[float] = None, placement_group: Any = None,
                 bundle_indices: Optional[Sequence[int]] = None, wait: bool = True) -> None:
        self.cfg = cfg
        self.world_size = int(num_ranks or cfg.learner.num_ranks)
        self.timeout = float(timeout_s if timeout_s is not None else cfg.cluster.get_timeout_s)
        opts: dict[str, Any] = {"num_cpus": float(cfg.learner.num_cpus), "num_gpus": float(cfg.learner.num_gpus)}
        if not cfg.learner.num_gpus:
            opts["runtime_env"] = {"env_vars": {"DS_ACCELERATOR": "cpu"}}
        ranks = []
        for r in range(self.world_size):
            o = dict(opts)
            if placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                idx = bundle_indices[r] if bundle_indices is not None else r
                o["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=idx)
            ranks.append(LearnerRank.options(name=None, **o).remote(cfg, r, self.world_size, model_path))
        # a gang: one lost rank stops the group (the others would sit in a collective); no retries
        self.pool = ActorPool(ranks, "learner-rank", RetryPolicy(kill_hung=False), gang=True)
        self._setup: Optional[list[Call]] = self.pool.submit_all("setup", self.pool.submit(0, "address").ref)
        self.info: list[dict[str, Any]] = []
        self.pad_id = 0
        if wait:
            self.ready()

    def ready(self) -> "LearnerGroup":
        """Wait until every rank is set up (at once if it is); on failure the ranks are stopped and it raises."""
        if self._setup is not None:
            try:
                self.info = self._get(self._setup, "setup")
            except BaseException:
                self.shutdown()
                raise
            self._setup = None
            self.pad_id = int(self.info[0]["pad_id"])
        return self

    @property
    def ranks(self) -> list[Any]:
        """The rank actors' handles (empty once the group is stopped)."""
        return self.pool.actors if hasattr(self, "pool") else []

    # -- plumbing ------------------------------------------------------------------------------------------
    def _get(self, calls: Call | Sequence[Call], what: str, timeout: Optional[float] = None) -> Any:
        """The calls' results (one call: its result) that fail fast and clearly: the first rank to die ends the
        wait (the others would sit in a collective until its timeout), and the surviving ranks are stopped, since
        the group cannot go on."""
        t = self.timeout if timeout is None else timeout
        single = isinstance(calls, Call)
        try:
            out = self.pool.gather([calls] if single else list(calls), t)
        except ActorLost as e:
            if e.lost.reason == "timeout":
                raise LearnerError(f"learner {what} did not finish within {t:.0f} s (cluster.get_timeout_s); "
                                   f"a rank may be lost or stuck in a collective") from None
            self.abort()
            raise LearnerError(f"learner rank {e.lost.actor} died during {what} ({type(e.lost.error).__name__}); "
                               f"the learner group is stopped. Resume the run from its last checkpoint "
                               f"(resume=auto, or `medgrpo resume RUN_DIR`)") from None
        return out[0] if single else out

    def abort(self) -> None:
        """Kill every rank now (no graceful shutdown: survivors of a dead rank are stuck in a collective)."""
        self.pool.kill()

    def _fan_out(self, method: str, batch: Mapping[str, Any], what: str) -> list[Any]:
        parts = split_batch(batch, self.world_size)
        return self._get([self.pool.submit(i, method, p) for i, p in enumerate(parts)], what)

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
        self._get(self.pool.submit_all("set_lr", lr), "set_lr")

    # -- weights -------------------------------------------------------------------------------------------
    def get_weights(self) -> WeightsHandle:
        """Put the current weights in the object store once (rank 0 packs them; every rank takes part in the
        ZeRO-3 gather) and return the handle; nothing large comes to the driver."""
        pairs = [a.weight_payload.remote() for a in self.ranks]
        versions = self._get([Call(i, v) for i, (v, _) in enumerate(pairs)], "weight export")
        # wait for the non-zero ranks' (empty) payload objects too, so the gather collective has finished;
        # ray.wait, not a gather: the payload must not come to the driver
        _, pending = ray.wait([p for _, p in pairs], num_returns=len(pairs), timeout=self.timeout)
        if pending:
            raise LearnerError(f"weight export: {len(pending)} rank(s) did not finish within {self.timeout:.0f} s")
        return WeightsHandle(version=int(versions[0]), ref=pairs[0][1])

    def weight_sync_address(self) -> tuple[str, int]:
        """Where the GPU weight-sync group rendezvouses: learner rank 0's node and a port free there."""
        addr, port = self._get(self.pool.submit(0, "address"), "address")
        return str(addr), int(port)

    def init_weight_sync(self, master_addr: str, master_port: int, world_size: int,
                         backend: Optional[str] = None) -> list[Any]:
        """Start joining the weight-sync group (learner rank 0 = group rank 0). Returns the refs without waiting:
        the rollout workers must join concurrently (``learner.weight_sync.init_sync_group`` with ranks 1..n-1);
        wait on these refs together with theirs."""
        return [c.ref for c in self.pool.submit_all("init_weight_sync", master_addr, master_port, world_size, backend)]

    def broadcast_weights(self) -> list[Any]:
        """Start a bucketed broadcast of the current weights (every rank takes part: ZeRO-3 gathers). Returns the
        refs (each resolves to the version sent) without waiting; the rollout workers call
        ``BucketReceiver.receive`` concurrently. Untested on GPU."""
        return [c.ref for c in self.pool.submit_all("broadcast_weights")]

    def wait(self, refs: Sequence[Any], what: str = "call") -> list[Any]:
        """The results of one call per rank (``refs`` in rank order), with this group's timeout and a clear error."""
        return self._get([Call(i, r) for i, r in enumerate(refs)], what)

    def version(self) -> int:
        return int(self._get(self.pool.submit(0, "version"), "version"))

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str) -> str:
        return self._get(self.pool.submit_all("save_checkpoint", str(directory)), "save_checkpoint")[0]

    def load_checkpoint(self, directory: str, load_optimizer: bool = True) -> int:
        return self._get(self.pool.submit_all("load_checkpoint", str(directory), load_optimizer), "load_checkpoint")[0]

    def export_hf(self, directory: str, dtype: Optional[str] = None) -> str:
        return self._get(self.pool.submit_all("export_hf", str(directory), dtype), "export_hf")[0]

    def shutdown(self) -> None:
        """Stop this group's rank actors (only those this group created)."""
        for a in self.ranks:
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - best effort before the kill
                pass
        if hasattr(self, "pool"):
            self.pool.kill()
