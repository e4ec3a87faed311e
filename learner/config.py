"""Configuration of the policy model and the learner ranks, with the learner's lists of allowed values
(advantage estimators, loss aggregations) written once: learner/losses.py checks against the same tuples.
cluster/config.py composes these into ``TrainConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from common.config_fields import bounded, choice, list_of

ADVANTAGE_ESTIMATORS = ("grpo", "drgrpo", "rloo")
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-sum-max-len")


@dataclass
class ModelConfig:
    path: str = "runs/tiny-qwen2.5-vl"
    dtype: str = choice("float32", "float32", "bfloat16", "float16")
    freeze_vision_tower: bool = True
    gradient_checkpointing: bool = False
    # LoRA (peft): rank 0 = full fine-tuning. With a rank, only the adapters train (scale lora_alpha / lora_rank) on
    # the language model's modules named here (name suffixes); with freeze_vision_tower: false also on the vision
    # tower's modules of those names. Weight push and HF export send merged weights under the base model's names.
    lora_rank: int = bounded(0, 0)
    lora_alpha: int = bounded(16, 1)
    lora_target_modules: list[str] = list_of("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj")
    attn_implementation: str = choice("sdpa", "sdpa", "eager", "flash_attention_2")


@dataclass
class LearnerConfig:
    num_ranks: int = bounded(1, 1)
    zero_stage: int = choice(0, 0, 1, 2, 3)
    lr: float = bounded(1e-5, 0.0)
    weight_decay: float = bounded(0.0, 0.0)
    warmup_steps: int = bounded(0, 0)
    micro_batch_size: int = bounded(8, 1)
    ppo_epochs: int = bounded(1, 1)
    advantage: str = choice("grpo", *ADVANTAGE_ESTIMATORS)
    loss_agg: str = choice("token-mean", *LOSS_AGGREGATIONS)
    clip_low: float = bounded(0.2, 0.0, 1.0)
    clip_high: float = bounded(0.3, 0.0, 10.0)
    kl_coef: float = bounded(0.0, 0.0)
    # kl_coef > 0: the frozen reference policy. Empty: the policy as it is at the start of each GRPO stage (with
    # LoRA and no SFT before, the base model with its adapters disabled: no copy); else an HF model folder.
    ref_model_path: Optional[str] = None
    max_grad_norm: float = bounded(1.0, 0.0)
    bf16: bool = False
    backend: str = choice("auto", "auto", "gloo", "nccl")
    collective_timeout_s: float = bounded(300.0, 1.0)
    num_cpus: float = bounded(1.0, 0.0)
    num_gpus: float = bounded(0.0, 0.0)
