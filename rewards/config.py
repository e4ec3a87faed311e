"""Configuration of the reward side: reward workers, the LLM judge, the normalizer, the MedLoc-R1 curriculum.

Each default and each list of allowed values is written here once; the code that consumes a config
(rewards/normalizer.py, rewards/curriculum.py, rewards/shaping.py, rewards/judge.py) takes its defaults and
choice lists from these classes. cluster/config.py composes them into ``TrainConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from common.config_fields import bounded, choice, dict_of

JUDGE_BACKENDS = ("none", "openai", "hf", "vllm")
LENGTH_MODES = ("none", "ecr", "cwr")
NORMALIZER_MODES = ("off", "static", "streaming", "warm")
CURRICULUM_SCHEDULES = ("step", "linear", "cosine")


@dataclass
class JudgeConfig:
    backend: str = choice("none", *JUDGE_BACKENDS)
    model: str = ""
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # the key itself is only ever read from this environment variable
    timeout_s: float = bounded(30.0, 0.1)
    max_retries: int = bounded(2, 0)
    backoff_s: float = bounded(0.5, 0.0)
    batch_size: int = bounded(8, 1)
    max_concurrency: int = bounded(8, 1)
    cache_size: int = bounded(10000, 0)
    breaker_failures: int = bounded(5, 1)  # consecutive failures that open the circuit
    breaker_cooldown_s: float = bounded(30.0, 0.0)
    max_new_tokens: int = bounded(256, 1)
    num_gpus: float = bounded(0.0, 0.0)
    gpu_memory_utilization: float = bounded(0.3, 0.05, 0.95)  # vllm backend, when it shares a GPU


@dataclass
class RewardConfig:
    num_workers: int = bounded(1, 1)
    num_cpus: float = bounded(1.0, 0.0)  # per reward worker
    similarity_mapping: str = choice("clip", "clip", "affine")  # cosine -> [0,1]: max(cos,0) or (cos+1)/2
    require_think: bool = False  # medical VQA: the <think>…</think><answer>…</answer> layout is part of the gate
    format_gate: bool = True  # reward = format ok × task score (MedGRPO)
    caption_judge_weight: float = bounded(0.5, 0.0, 1.0)  # rest goes to semantic similarity
    caption_fallback: str = choice("similarity_only", "similarity_only", "drop")
    # DVC reward = (1 - c)·norm(F1) + c·caption reward of the temporally matched segments (rewards/assembly.py);
    # 0: F1 only, no judge call for DVC
    dvc_caption_weight: float = bounded(0.5, 0.0, 1.0)
    similarity_model: str = "all-MiniLM-L6-v2"
    length_mode: str = choice("none", *LENGTH_MODES)
    length_target: int = bounded(256, 1)
    length_weight: float = bounded(0.0, 0.0)
    graded_ordinal: bool = False  # VRFT-Aug multi-grade fuzzy reward: ordinal cls scores 1/(1+d^2) (task_scores)
    recitation_coef: float = 0.0  # VRFT-Aug: negative penalises BLEU to the injected knowledge
    semantic_alignment_weight: float = bounded(0.0, 0.0)  # medical VQA: judge verdict on the reasoning
    # MedLoc-R1: r = 1[IoU >= tau] for grounding, tau from the curriculum; unset (None): on exactly when
    # curriculum.enabled (cluster/config.py resolves it at start-up)
    iou_threshold_reward: Optional[bool] = None
    task_weights: dict[str, float] = dict_of()  # qa_type -> multiplier on the final reward
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class NormalizerConfig:
    mode: str = choice("streaming", *NORMALIZER_MODES)
    k: float = bounded(3.0, 1e-6)
    eps: float = bounded(1e-3, 1e-12)
    min_samples: int = bounded(32, 1)
    table_file: Optional[str] = None
    sketch_size: int = bounded(2048, 64)
    warm_samples: int = bounded(1000, 1)  # warm: weight of the stream = n / (n + warm_samples)
    update_first: bool = True  # a step's own scores enter the quantiles before they are normalized


@dataclass
class CurriculumConfig:
    enabled: bool = False
    tau0: float = bounded(0.3, 0.0, 1.0)
    tau_max: float = bounded(0.8, 0.0, 1.0)
    window: int = bounded(30, 2)
    margin: float = bounded(0.10, 0.0, 1.0)
    schedule: str = choice("step", *CURRICULUM_SCHEDULES)
    delta_max: float = bounded(0.15, 0.0, 1.0)  # linear/cosine: the step at tau0 ...
    delta_min: float = bounded(0.05, 0.0, 1.0)  # ... decaying to this at tau_max
