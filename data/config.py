"""Configuration of the data: files, roots, task and source weights, media limits. cluster/config.py composes it
into ``TrainConfig``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from common.config_fields import bounded, choice, dict_of, list_of


@dataclass
class DataConfig:
    train_files: list[str] = list_of("runs/synth/train.jsonl")
    eval_files: list[str] = list_of("runs/synth/eval.jsonl")
    # Every video/frame path an instance names must lie under one of these roots (empty: the file's own folder).
    data_roots: list[str] = list_of()
    task_weights: dict[str, float] = dict_of()  # qa_type -> sampling weight (missing: 1.0)
    source_weights: dict[str, float] = dict_of()  # data_source -> sampling weight (missing: 1.0)
    tasks: list[str] = list_of()  # restrict to these qa_types (empty: all)
    prompts_per_step: int = bounded(8, 1)
    max_frames: int = bounded(16, 1, 768)
    max_pixels: int = bounded(48 * 28 * 28, 28 * 28)
    min_pixels: int = bounded(4 * 28 * 28, 28 * 28)
    video_backend: str = choice("auto", "auto", "decord", "pyav")
    knowledge_file: Optional[str] = None  # VRFT-Aug prior knowledge: JSON {data_source, qa_type or class: text}
    eval_max_samples: int = bounded(64, 0)
