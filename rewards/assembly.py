"""From raw per-sample reward components to the final scalar reward of each sample (pure, no Ray).

Two passes around the normalizer, so the driver makes one normalizer call per step:
1. ``normalization_requests`` lists, per sample, the (key, raw value) pairs to normalize: the task score under
   ``(data_source, qa_type)``, and for captions the judge part and the similarity part under their own keys.
2. ``combine`` turns the normalized values back into one reward per sample: caption reward =
   w·norm(judge) + (1−w)·norm(similarity) (a missing judge falls back to similarity only, counted), plus
   shaping terms (length, recitation, semantic alignment) and the per-task weight.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from rewards.tasks import judged_in_reward

JUDGE, SIMILARITY, TASK = "judge", "similarity", "task"


@dataclass
class SampleReward:
    """What a reward worker returns for one sample (raw values; normalization happens after)."""

    data_source: str
    qa_type: str
    family: str
    components: dict[str, Optional[float]]  # "task", and for captions "judge" (0–1 or None) and "similarity"
    reason: Optional[str] = None  # parse failure reason code
    shaping: dict[str, float] = field(default_factory=dict)  # additive terms already weighted (length, ...)
    iou: Optional[float] = None  # grounding tasks: the raw IoU (MedLoc-R1 curriculum statistics)
    correct: Optional[bool] = None


def is_caption(family: str) -> bool:
    """The family's reward is judge + similarity (its spec's ``judged_in_reward``), not the task score."""
    return judged_in_reward(family)


def normalization_requests(samples: list[SampleReward]) -> tuple[list[tuple], list[float], list[tuple[int, str]]]:
    """(keys, raw values, (sample index, component)) for every value to normalize this step."""
    keys: list[tuple] = []
    values: list[float] = []
    where: list[tuple[int, str]] = []
    for i, s in enumerate(samples):
        parts = (JUDGE, SIMILARITY) if is_caption(s.family) else (TASK,)
        for part in parts:
            v = s.components.get(part)
            if v is None or not math.isfinite(v):
                continue
            keys.append((s.data_source, s.qa_type, part) if is_caption(s.family) else (s.data_source, s.qa_type))
            values.append(float(v))
            where.append((i, part))
    return keys, values, where


@dataclass
class CombineResult:
    rewards: list[float]
    counters: Counter  # e.g. caption_judge_fallback, reward_nonfinite


def combine(samples: list[SampleReward], normalized: list[float], where: list[tuple[int, str]],
            judge_weight: float = 0.5, fallback: str = "similarity_only",
            task_weights: Optional[dict[str, float]] = None) -> CombineResult:
    """Final reward per sample; a sample whose reward cannot be formed gets NaN (the driver drops its group)."""
    norm: dict[tuple[int, str], float] = {w: float(v) for w, v in zip(where, normalized)}
    counters: Counter = Counter()
    out: list[float] = []
    for i, s in enumerate(samples):
        if is_caption(s.family):
            j, sim = norm.get((i, JUDGE)), norm.get((i, SIMILARITY))
            if j is not None and sim is not None:
                r = judge_weight * j + (1.0 - judge_weight) * sim
            elif sim is not None and fallback == "similarity_only":
                counters["caption_judge_fallback"] += 1
                r = sim
            elif j is not None:
                counters["caption_similarity_missing"] += 1
                r = j
            else:
                counters["caption_reward_missing"] += 1
                r = float("nan")
        else:
            r = norm.get((i, TASK), float("nan"))
        r = r * (task_weights or {}).get(s.qa_type, 1.0) + sum(s.shaping.values())
        if not math.isfinite(r):
            counters["reward_nonfinite"] += 1
            r = float("nan")
        out.append(r)
    return CombineResult(out, counters)


def raw_reward(s: SampleReward, judge_weight: float = 0.5) -> float:
    """The un-normalized reward (for logging raw vs normalized side by side)."""
    if is_caption(s.family):
        j, sim = s.components.get(JUDGE), s.components.get(SIMILARITY)
        if j is not None and sim is not None:
            return judge_weight * j + (1 - judge_weight) * sim
        return sim if sim is not None else (j if j is not None else float("nan"))
    v = s.components.get(TASK)
    return float("nan") if v is None else float(v)
