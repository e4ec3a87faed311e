"""Typed configuration: OmegaConf structured dataclasses, YAML presets in configs/, CLI dotlist overrides.

Every field that takes one of a fixed set of values declares it with ``choice(...)``, every bounded number with
``bounded(...)``; ``load_config`` checks them all at start-up and names the key and what is allowed.
Unknown keys and wrong types are refused by OmegaConf itself; we re-raise with the same key-first message.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESET_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and what is allowed."""


def choice(default: Any, *allowed: Any) -> Any:
    return field(default=default, metadata={"choices": tuple(allowed)})


def bounded(default: Any, lo: Optional[float] = None, hi: Optional[float] = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


def _list(*items: Any) -> Any:
    return field(default_factory=lambda: list(items))


def _dict(**items: Any) -> Any:
    return field(default_factory=lambda: dict(items))


@dataclass
class DataConfig:
    train_files: list[str] = _list("runs/synth/train.jsonl")
    eval_files: list[str] = _list("runs/synth/eval.jsonl")
    # Every video/frame path an instance names must lie under one of these roots (empty: the file's own folder).
    data_roots: list[str] = _list()
    task_weights: dict[str, float] = _dict()  # qa_type -> sampling weight (missing: 1.0)
    source_weights: dict[str, float] = _dict()  # data_source -> sampling weight (missing: 1.0)
    tasks: list[str] = _list()  # restrict to these qa_types (empty: all)
    prompts_per_step: int = bounded(8, 1)
    max_frames: int = bounded(16, 1, 768)
    max_pixels: int = bounded(48 * 28 * 28, 28 * 28)
    min_pixels: int = bounded(4 * 28 * 28, 28 * 28)
    video_backend: str = choice("auto", "auto", "decord", "pyav")
    knowledge_file: Optional[str] = None  # VRFT-Aug prior knowledge: JSON {data_source or label: text}
    eval_max_samples: int = bounded(64, 0)


@dataclass
class ModelConfig:
    path: str = "runs/tiny-qwen2.5-vl"
    dtype: str = choice("float32", "float32", "bfloat16", "float16")
    freeze_vision_tower: bool = True
    gradient_checkpointing: bool = False
    lora_rank: int = bounded(0, 0)
    lora_alpha: int = bounded(16, 1)
    attn_implementation: str = choice("sdpa", "sdpa", "eager", "flash_attention_2")


@dataclass
class RolloutConfig:
    backend: str = choice("hf", "hf", "vllm")
    num_actors: int = bounded(1, 1)
    group_size: int = bounded(8, 2)
    max_new_tokens: int = bounded(64, 1)
    temperature: float = bounded(1.0, 0.0)
    top_p: float = bounded(1.0, 0.0, 1.0)
    # Asynchronous rollout: generate step t+1 while the learner trains step t; 0 = synchronous.
    max_staleness: int = bounded(0, 0, 4)
    dynamic_sampling: bool = True
    max_refill_rounds: int = bounded(2, 0)
    gpu_memory_utilization: float = bounded(0.5, 0.05, 0.95)
    tensor_parallel_size: int = bounded(1, 1)
    enable_sleep_mode: bool = False
    # hf backend: one generate over all of a call's prompts x G (1.7-2x the per-prompt loop on CPU); 0 = no cap on
    # the prompts per batch (set one to bound GPU memory)
    batch_prompts: bool = True
    max_batch_prompts: int = bounded(0, 0)
    num_cpus: float = bounded(1.0, 0.0)
    num_gpus: float = bounded(0.0, 0.0)


@dataclass
class JudgeConfig:
    backend: str = choice("none", "none", "openai", "hf", "vllm")
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
    similarity_model: str = "all-MiniLM-L6-v2"
    length_mode: str = choice("none", "none", "ecr", "cwr")
    length_target: int = bounded(256, 1)
    length_weight: float = bounded(0.0, 0.0)
    graded_ordinal: bool = False  # VRFT-Aug multi-grade fuzzy reward
    recitation_coef: float = 0.0  # VRFT-Aug: negative penalises BLEU to the injected knowledge
    semantic_alignment_weight: float = bounded(0.0, 0.0)  # medical VQA: judge verdict on the reasoning
    iou_threshold_reward: bool = False  # MedLoc-R1: r = 1[IoU >= tau] for grounding
    task_weights: dict[str, float] = _dict()  # qa_type -> multiplier on the final reward
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class NormalizerConfig:
    mode: str = choice("streaming", "off", "static", "streaming", "warm")
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
    schedule: str = choice("step", "step", "linear", "cosine")
    delta_max: float = bounded(0.15, 0.0, 1.0)  # linear/cosine: the step at tau0 ...
    delta_min: float = bounded(0.05, 0.0, 1.0)  # ... decaying to this at tau_max


@dataclass
class StageConfig:
    """One stage of the job: SFT or GRPO, on a subset of tasks, for a number of steps (VRFT-Aug stage curriculum)."""

    name: str = "grpo"
    kind: str = choice("grpo", "sft", "grpo")
    steps: int = bounded(10, 0)
    tasks: list[str] = _list()  # empty: data.tasks
    lr: Optional[float] = None  # empty: learner.lr
    prompts_per_step: Optional[int] = None  # empty: data.prompts_per_step


@dataclass
class LearnerConfig:
    num_ranks: int = bounded(1, 1)
    zero_stage: int = choice(0, 0, 1, 2, 3)
    lr: float = bounded(1e-5, 0.0)
    weight_decay: float = bounded(0.0, 0.0)
    warmup_steps: int = bounded(0, 0)
    micro_batch_size: int = bounded(8, 1)
    ppo_epochs: int = bounded(1, 1)
    advantage: str = choice("grpo", "grpo", "drgrpo", "rloo")
    loss_agg: str = choice("token-mean", "token-mean", "seq-mean-token-mean", "seq-sum-max-len")
    clip_low: float = bounded(0.2, 0.0, 1.0)
    clip_high: float = bounded(0.3, 0.0, 10.0)
    kl_coef: float = bounded(0.0, 0.0)
    max_grad_norm: float = bounded(1.0, 0.0)
    bf16: bool = False
    backend: str = choice("auto", "auto", "gloo", "nccl")
    collective_timeout_s: float = bounded(300.0, 1.0)
    num_cpus: float = bounded(1.0, 0.0)
    num_gpus: float = bounded(0.0, 0.0)


@dataclass
class ClusterConfig:
    address: Optional[str] = None  # default: RAY_ADDRESS, else a local Ray started by the driver
    colocate: bool = False  # rollout and learner share GPUs (vLLM sleep/wake)
    placement_strategy: str = choice("PACK", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
    dashboard_host: str = "127.0.0.1"
    num_cpus: Optional[int] = None  # for a local Ray only
    get_timeout_s: float = bounded(600.0, 1.0)
    # Fault tolerance: Ray restarts a dead rollout/reward/judge/normalizer/curriculum actor up to this many times
    # (-1: without limit); the normalizer and curriculum come back from their last per-step snapshot.
    max_actor_restarts: int = bounded(3, -1)
    # A rollout share whose actor died (or hung past get_timeout_s) is regenerated this many times on the
    # restarted actor before its prompts are dropped (reason rollout_actor_lost / rollout_timeout).
    rollout_retries: int = bounded(1, 0)


@dataclass
class TrackingConfig:
    mlflow_uri: Optional[str] = None  # default: MLFLOW_TRACKING_URI, else ./mlruns under the run dir's parent
    experiment: str = "medgrpo"
    run_name: Optional[str] = None
    rollout_samples_per_step: int = bounded(4, 0)
    log_checkpoints: bool = False  # also copy each checkpoint into MLflow's artifact store
    progress_bar: bool = True


@dataclass
class TrainConfig:
    run_dir: str = "runs/demo"
    seed: int = 0
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    checkpoint_every: int = bounded(0, 0)
    keep_checkpoints: int = bounded(2, 1)
    eval_every: int = bounded(0, 0)
    resume: str = "never"  # never | auto | a checkpoint directory
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


_YAML_BOOLS = {"False": "off", "True": "on"}


def _check_values(obj: Any, prefix: str = "") -> None:
    """Walk the dataclass tree and check every ``choice``/``bounded`` field."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        allowed = f.metadata.get("choices")
        if allowed is not None and isinstance(value, str) and value in _YAML_BOOLS and _YAML_BOOLS[value] in allowed:
            # YAML 1.1 reads an unquoted `off`/`on` as a boolean; OmegaConf then stores 'False'/'True'.
            value = _YAML_BOOLS[value]
            setattr(obj, f.name, value)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            raise ConfigError(f"{key}={value!r} is out of range; allowed: [{lo if lo is not None else '-inf'}, "
                              f"{hi if hi is not None else 'inf'}]")
        if dataclasses.is_dataclass(value):
            _check_values(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_values(item, f"{key}[{i}].")


def _check_semantics(cfg: TrainConfig) -> None:
    if cfg.learner.clip_high < cfg.learner.clip_low:
        raise ConfigError(f"learner.clip_high={cfg.learner.clip_high} must be >= learner.clip_low={cfg.learner.clip_low}")
    if cfg.curriculum.tau_max < cfg.curriculum.tau0:
        raise ConfigError(f"curriculum.tau_max={cfg.curriculum.tau_max} must be >= curriculum.tau0={cfg.curriculum.tau0}")
    if cfg.data.min_pixels > cfg.data.max_pixels:
        raise ConfigError(f"data.min_pixels={cfg.data.min_pixels} must be <= data.max_pixels={cfg.data.max_pixels}")
    if cfg.normalizer.mode in ("static", "warm") and not cfg.normalizer.table_file:
        raise ConfigError(f"normalizer.table_file is required when normalizer.mode={cfg.normalizer.mode!r}")
    if not cfg.stages:
        raise ConfigError("stages must list at least one stage (kind: sft or grpo)")
    key_env = cfg.reward.judge.api_key_env
    if key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
        # never echo the value: it is most likely the key itself, pasted in the wrong place
        raise ConfigError("reward.judge.api_key_env must name an environment variable (letters, digits, _); "
                          "put the key itself in that variable, never in the config")
    if cfg.resume not in ("never", "auto") and not Path(cfg.resume).exists():
        raise ConfigError(f"resume={cfg.resume!r}: allowed values are 'never', 'auto' or an existing checkpoint directory")
    for name, weights in (("data.task_weights", cfg.data.task_weights), ("data.source_weights", cfg.data.source_weights)):
        for k, w in weights.items():
            if w < 0:
                raise ConfigError(f"{name}.{k}={w} must be >= 0")


def preset_path(preset: str) -> Path:
    """A preset name (``cpu_demo``) or a path to a YAML file."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = PRESET_DIR / f"{preset}.yaml"
    if candidate.exists():
        return candidate
    names = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown preset {preset!r}; allowed: {', '.join(names)} or a path to a .yaml file")


def load_config(preset: Optional[str] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    """Merge defaults ← preset YAML ← dotlist overrides, then validate. Raises ConfigError naming the key."""
    schema = OmegaConf.structured(TrainConfig)
    try:
        layers: list[DictConfig] = [schema]
        if preset:
            layers.append(OmegaConf.load(preset_path(preset)))
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        cfg: TrainConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {msg}") from None
    _check_values(cfg)
    _check_semantics(cfg)
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_flat_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Flattened ``a.b.c -> value`` for MLflow params. Holds no secret: keys are read from the environment only."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list) and node and isinstance(node[0], dict):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(OmegaConf.structured(cfg)), "")
    return out
