"""What a rollout produces and the learner consumes: a prompt's G completions with behaviour log-probs.

A ``PromptGroup`` carries its prompt's multimodal tensors once (video decoded once per prompt, shared by the
G samples); the learner expands them per sample when it builds its micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class Completion:
    response_ids: list[int]  # generated tokens, up to and including the stop token when there is one
    logprobs: list[float]  # behaviour-policy log-prob of each response token (temperature-scaled)
    text: str  # decoded response, special tokens removed
    finish_reason: str  # "stop" | "length"


@dataclass
class PromptGroup:
    instance_id: str
    qa_type: str
    data_source: str
    prompt_ids: list[int]
    mm_inputs: dict[str, torch.Tensor]  # pixel_values(_videos), image/video_grid_thw, second_per_grid_ts
    completions: list[Completion]
    policy_version: int
    temperature: float
    extra: dict[str, Any] = field(default_factory=dict)  # timings, frame count, ...

    @property
    def group_size(self) -> int:
        return len(self.completions)


@dataclass
class RolloutFailure:
    """A prompt the rollout could not serve (corrupt video, ...): reported to the driver with a reason."""

    instance_id: str
    reason: str
    detail: str = ""


def first_stop(ids: list[int], stop_ids: set[int]) -> Optional[int]:
    """Index of the first stop token in ``ids`` or None."""
    for i, t in enumerate(ids):
        if t in stop_ids:
            return i
    return None
