"""Typed configuration: OmegaConf structured dataclasses, YAML presets in configs/, CLI dotlist overrides.

Each component's config lives beside its consumer (data/config.py, learner/config.py, actors/config.py,
rewards/config.py); this module adds the job's own parts (stages, cluster, tracking) and composes them all into
``TrainConfig``. Every field that takes one of a fixed set of values declares it with ``choice(...)``, every
bounded number with ``bounded(...)`` (common/config_fields.py); ``load_config`` checks them all at start-up and
names the key and what is allowed.
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

from actors.config import RolloutConfig
from common.config_fields import bounded, choice, list_of
from data.config import DataConfig
from learner.config import LearnerConfig, ModelConfig
from rewards.config import CurriculumConfig, NormalizerConfig, RewardConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESET_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and what is allowed."""


@dataclass
class StageConfig:
    """One stage of the job: SFT or GRPO, on a subset of tasks, for a number of steps (VRFT-Aug stage curriculum)."""

    name: str = "grpo"
    kind: str = choice("grpo", "sft", "grpo")
    steps: int = bounded(10, 0)
    tasks: list[str] = list_of()  # empty: data.tasks
    lr: Optional[float] = None  # empty: learner.lr
    prompts_per_step: Optional[int] = None  # empty: data.prompts_per_step


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
    # A fresh run (resume=never) into a run_dir holding another run's state: false stops with the ways out,
    # true deletes that state first (cluster.run_dir). Ignored when resuming.
    overwrite: bool = False
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


def _check_pairs(cfg: TrainConfig) -> None:
    """Keys that only act together with another key: implied by it (``curriculum.enabled`` turns on an unset
    ``reward.iou_threshold_reward``) or refused at start-up, naming both (never a silent no-op)."""
    r = cfg.reward
    if r.length_mode != "none" and r.length_weight <= 0:
        raise ConfigError(f"reward.length_mode={r.length_mode!r} needs reward.length_weight > 0 (it is "
                          f"{r.length_weight}, which turns the length reward off); set both, e.g. "
                          "reward.length_weight=0.5")
    if r.length_mode == "none" and r.length_weight > 0:
        raise ConfigError(f"reward.length_weight={r.length_weight} has no effect with reward.length_mode='none'; "
                          "set reward.length_mode to ecr or cwr, or leave the weight at 0")
    if r.iou_threshold_reward is None:  # unset: the curriculum implies its thresholded reward
        r.iou_threshold_reward = cfg.curriculum.enabled
    if cfg.curriculum.enabled and not r.iou_threshold_reward:
        raise ConfigError("curriculum.enabled=true with reward.iou_threshold_reward=false: the curriculum's tau only "
                          "acts through the thresholded grounding reward 1[IoU >= tau]; leave "
                          "reward.iou_threshold_reward unset (the curriculum turns it on) or disable the curriculum")
    if r.iou_threshold_reward and not cfg.curriculum.enabled:
        raise ConfigError("reward.iou_threshold_reward=true needs curriculum.enabled=true, which supplies tau (for a "
                          "fixed tau set curriculum.tau_max equal to curriculum.tau0)")
    if cfg.cluster.colocate and not cfg.rollout.enable_sleep_mode:
        raise ConfigError("cluster.colocate=true needs rollout.enable_sleep_mode=true: colocated rollout engines "
                          "must sleep while the learner trains on the same GPU")
    if cfg.cluster.colocate and cfg.rollout.max_staleness > 0:
        raise ConfigError(f"cluster.colocate=true needs rollout.max_staleness=0 (it is {cfg.rollout.max_staleness}): "
                          "colocated rollout engines sleep while the learner trains, so no rollouts can run ahead")
    if r.semantic_alignment_weight > 0 and r.judge.backend == "none":
        raise ConfigError(f"reward.semantic_alignment_weight={r.semantic_alignment_weight} needs a judge: set "
                          "reward.judge.backend (openai, hf or vllm)")
    if r.recitation_coef != 0 and not cfg.data.knowledge_file:
        raise ConfigError(f"reward.recitation_coef={r.recitation_coef} needs data.knowledge_file (the recitation "
                          "term compares the reasoning with the injected knowledge)")


def _check_semantics(cfg: TrainConfig) -> None:
    _check_pairs(cfg)
    if cfg.learner.clip_high < cfg.learner.clip_low:
        raise ConfigError(f"learner.clip_high={cfg.learner.clip_high} must be >= learner.clip_low={cfg.learner.clip_low}")
    if cfg.curriculum.tau_max < cfg.curriculum.tau0:
        raise ConfigError(f"curriculum.tau_max={cfg.curriculum.tau_max} must be >= curriculum.tau0={cfg.curriculum.tau0}")
    if cfg.data.min_pixels > cfg.data.max_pixels:
        raise ConfigError(f"data.min_pixels={cfg.data.min_pixels} must be <= data.max_pixels={cfg.data.max_pixels}")
    if cfg.normalizer.mode in ("static", "warm") and not cfg.normalizer.table_file:
        raise ConfigError(f"normalizer.table_file is required when normalizer.mode={cfg.normalizer.mode!r}")
    if cfg.rollout.weight_path == "nccl" and cfg.rollout.backend != "vllm":
        raise ConfigError(f"rollout.weight_path=nccl needs rollout.backend=vllm (the receiver is a vLLM worker "
                          f"extension); with rollout.backend={cfg.rollout.backend!r} allowed: object_store")
    if cfg.rollout.weight_path == "nccl" and cfg.cluster.colocate:
        raise ConfigError("rollout.weight_path=nccl cannot run with cluster.colocate=true (NCCL refuses two "
                          "processes on one GPU); allowed with colocate: object_store")
    if not cfg.stages:
        raise ConfigError("stages must list at least one stage (kind: sft or grpo)")
    key_env = cfg.reward.judge.api_key_env
    if key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
        # never echo the value: it is most likely the key itself, pasted in the wrong place
        raise ConfigError("reward.judge.api_key_env must name an environment variable (letters, digits, _); "
                          "put the key itself in that variable, never in the config")
    if cfg.resume not in ("never", "auto") and not Path(cfg.resume).exists():
        raise ConfigError(f"resume={cfg.resume!r}: allowed values are 'never', 'auto' or an existing checkpoint directory")
    if cfg.learner.ref_model_path is not None:
        if cfg.learner.kl_coef <= 0:
            raise ConfigError(f"learner.ref_model_path={cfg.learner.ref_model_path!r} is only used with "
                              f"learner.kl_coef > 0 (it is {cfg.learner.kl_coef}); set both or neither")
        if not Path(cfg.learner.ref_model_path).is_dir():
            raise ConfigError(f"learner.ref_model_path={cfg.learner.ref_model_path!r}: no such folder; allowed: an "
                              f"HF model folder (config.json + safetensors) or empty (the policy at the GRPO start)")
    if cfg.model.lora_rank > 0 and cfg.learner.zero_stage == 3:
        raise ConfigError("model.lora_rank > 0 with learner.zero_stage=3 is not supported (peft adapters on a "
                          "ZeRO-3 partitioned model); use learner.zero_stage 0, 1 or 2 with LoRA")
    if cfg.model.lora_rank > 0 and cfg.rollout.weight_path == "nccl":
        raise ConfigError("model.lora_rank > 0 with rollout.weight_path=nccl is not supported (the bucketed broadcast "
                          "sends parameters as they are, not merged); use rollout.weight_path=object_store with LoRA")
    if cfg.model.lora_rank > 0:
        bad = [m for m in cfg.model.lora_target_modules if not re.fullmatch(r"[A-Za-z0-9_.]+", str(m))]
        if not cfg.model.lora_target_modules or bad:
            raise ConfigError(f"model.lora_target_modules={list(cfg.model.lora_target_modules)!r}: with "
                              f"model.lora_rank > 0 it must list module names (letters, digits, _ and .), e.g. "
                              f"[q_proj, v_proj]")
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
