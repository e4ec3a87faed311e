"""Code that runs inside vLLM's worker processes: the ``worker_extension_cls`` of the rollout engine.

vLLM mixes this class into its worker, so the methods below are reachable by name through
``LLM.collective_rpc("medgrpo_...", args=...)`` — no function is pickled, no ``VLLM_ALLOW_INSECURE_SERIALIZATION``.
Weights always enter the engine through the worker's ``reload_weights(weights_iterator=...,
is_checkpoint_format=True)``: it takes Hugging Face checkpoint names and re-runs vLLM's post-load processing
(fused q/k/v, repacked linear layers), which a bare ``model.load_weights`` into the running engine does not.
The caller resets the prefix and encoder caches afterwards (``VLLMBackend``). Imported by vLLM by qualified name;
no Ray here.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from learner.weight_sync import WeightSyncError, weights_checksum


class WeightSyncExtension:
    """Methods vLLM adds to its worker (``self`` is the worker: ``self.reload_weights`` is vLLM's)."""

    _medgrpo_group: Any = None
    _medgrpo_receiver: Any = None

    def medgrpo_load_file(self, path: str, checksum: str) -> str:
        """Load the safetensors file ``path`` (HF names) into the engine. ``checksum`` (the learner's, ``"none"``
        to skip) is recomputed on the tensors read here and must match before anything is loaded. Returns the
        checksum of what was loaded (``weights_checksum`` of the file's tensors in the payload's mode)."""
        from safetensors.torch import load_file

        tensors = load_file(path, device="cpu")
        got = "none"
        if checksum != "none":
            got = weights_checksum(tensors, checksum.split(":", 1)[0])
            if got != checksum:
                raise WeightSyncError(f"checksum mismatch inside the engine: file {got}, sender {checksum}; "
                                      f"nothing was loaded")
        self.reload_weights(weights_iterator=iter(tensors.items()), is_checkpoint_format=True)
        return got

    def medgrpo_init_weight_sync(self, master_addr: str, master_port: int, rank: int, world_size: int,
                                 backend: str, version: int, timeout_s: float) -> None:
        """Join the learner's weight-sync group as ``rank`` (``learner.weight_sync.init_sync_group``; the
        learner's rank 0 hosts it and must join concurrently)."""
        from learner.weight_sync import BucketReceiver, init_sync_group

        self._medgrpo_group = init_sync_group(master_addr, master_port, rank, world_size, backend=backend,
                                              timeout_s=timeout_s)
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self._medgrpo_receiver = BucketReceiver(self._medgrpo_group, version=version, timeout_s=timeout_s,
                                                device=device)

    def medgrpo_receive_weights(self) -> int:
        """Take one bucketed broadcast (``BucketBroadcaster`` on the learner) and load it; returns its version.
        Every bucket is copied as it arrives (the staging buffer is reused), then loaded in one
        ``reload_weights``: a transient second copy of the weights on the engine's device."""
        if self._medgrpo_receiver is None:
            raise WeightSyncError("receive_weights before init_weight_sync: the engine is in no weight-sync group")
        received: list[tuple[str, torch.Tensor]] = []
        version = self._medgrpo_receiver.receive(lambda pairs: received.extend((n, t.clone()) for n, t in pairs))
        self.reload_weights(weights_iterator=iter(received), is_checkpoint_format=True)
        return version

    def medgrpo_close_weight_sync(self) -> Optional[int]:
        self._medgrpo_group = self._medgrpo_receiver = None
        return None
