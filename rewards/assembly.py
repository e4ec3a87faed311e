"""From raw per-sample reward components to the final scalar reward of each sample (pure, no Ray).

Two passes around the normalizer, so the driver makes one normalizer call per step:
1. ``normalization_requests`` lists, per sample, the (key, raw value) pairs to normalize: the task score under
   ``(data_source, qa_type)``, and for captions the judge part and the similarity part under their own keys.
2. ``combine`` turns the normalized values back into one reward per sample: caption reward =
   w·norm(judge) + (1−w)·norm(similarity) (a missing judge falls back to similarity only, counted), plus
   shaping terms (length, recitation, semantic alignment) and the per-task weight.

Which tasks have a caption reward (SPEC §1-2; the ``judged_in_reward`` flag of rewards/tasks.py): VS and RC are
captions only (``is_caption``: no task score). DVC is temporal localisation *and* captioning: its reward is
``(1 − c)·norm(F1) + c·caption reward``, with ``c = reward.dvc_caption_weight`` (default 0.5: localisation and
caption quality weigh alike, as judge and similarity do inside the caption reward) and the caption parts taken over the temporally matched segments
(``rewards.task_scores.caption_pairs``). When both caption parts are missing the DVC reward is its F1 alone
(counted ``dvc_caption_missing``); ``c = 0`` is the F1-only reward and asks no judge. ``caption_judged`` says
which families a scorer sends to the judge and the similarity model.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from rewards.tasks import judged_in_reward, spec_of_family

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
    """The family's reward is the caption reward alone: judged in reward, without a task score (vs, rc)."""
    spec = spec_of_family(family)
    return spec is not None and spec.judged_in_reward and spec.score_key is None


def caption_judged(family: str, cfg: Any) -> bool:
    """The family's reward has caption parts (judge, similarity) under ``cfg`` (a ``RewardConfig``): its spec's
    ``judged_in_reward``, unless it also has a task score and ``reward.dvc_caption_weight`` is 0."""
    return is_caption(family) or (judged_in_reward(family) and cfg.dvc_caption_weight > 0)


def _parts(s: SampleReward) -> tuple[str, ...]:
    if is_caption(s.family):
        return (JUDGE, SIMILARITY)
    if judged_in_reward(s.family) and (JUDGE in s.components or SIMILARITY in s.components):
        return (TASK, JUDGE, SIMILARITY)
    return (TASK,)


def _caption_reward(j: Optional[float], sim: Optional[float], judge_weight: float, fallback: str,
                    counters: Counter) -> float:
    """w·j + (1−w)·sim; a missing part falls back (counted); NaN when it cannot be formed."""
    if j is not None and sim is not None:
        return judge_weight * j + (1.0 - judge_weight) * sim
    if sim is not None and fallback == "similarity_only":
        counters["caption_judge_fallback"] += 1
        return sim
    if j is not None:
        counters["caption_similarity_missing"] += 1
        return j
    counters["caption_reward_missing"] += 1
    return float("nan")


def normalization_requests(samples: list[SampleReward]) -> tuple[list[tuple], list[float], list[tuple[int, str]]]:
    """(keys, raw values, (sample index, component)) for every value to normalize this step."""
    keys: list[tuple] = []
    values: list[float] = []
    where: list[tuple[int, str]] = []
    for i, s in enumerate(samples):
        for part in _parts(s):
            v = s.components.get(part)
            if v is None or not math.isfinite(v):
                continue
            keys.append((s.data_source, s.qa_type) if part == TASK else (s.data_source, s.qa_type, part))
            values.append(float(v))
            where.append((i, part))
    return keys, values, where


@dataclass
class CombineResult:
    rewards: list[float]
    counters: Counter  # e.g. caption_judge_fallback, reward_nonfinite


def combine(samples: list[SampleReward], normalized: list[float], where: list[tuple[int, str]],
            judge_weight: float = 0.5, fallback: str = "similarity_only",
            task_weights: Optional[dict[str, float]] = None, dvc_caption_weight: float = 0.5) -> CombineResult:
    """Final reward per sample; a sample whose reward cannot be formed gets NaN (the driver drops its group)."""
    norm: dict[tuple[int, str], float] = {w: float(v) for w, v in zip(where, normalized)}
    counters: Counter = Counter()
    out: list[float] = []
    for i, s in enumerate(samples):
        parts = _parts(s)
        if TASK not in parts:
            r = _caption_reward(norm.get((i, JUDGE)), norm.get((i, SIMILARITY)), judge_weight, fallback, counters)
        elif JUDGE in parts:  # DVC: F1 and the caption reward of its matched segments
            r = norm.get((i, TASK), float("nan"))
            j, sim = norm.get((i, JUDGE)), norm.get((i, SIMILARITY))
            if j is None and sim is None:
                counters["dvc_caption_missing"] += 1
            else:
                r = (1.0 - dvc_caption_weight) * r + dvc_caption_weight * _caption_reward(
                    j, sim, judge_weight, fallback, counters)
        else:
            r = norm.get((i, TASK), float("nan"))
        r = r * (task_weights or {}).get(s.qa_type, 1.0) + sum(s.shaping.values())
        if not math.isfinite(r):
            counters["reward_nonfinite"] += 1
            r = float("nan")
        out.append(r)
    return CombineResult(out, counters)


def raw_reward(s: SampleReward, judge_weight: float = 0.5, dvc_caption_weight: float = 0.5) -> float:
    """The un-normalized reward (for logging raw vs normalized side by side)."""
    parts = _parts(s)
    cap = float("nan")
    if JUDGE in parts:
        j, sim = s.components.get(JUDGE), s.components.get(SIMILARITY)
        if j is not None and sim is not None:
            cap = judge_weight * j + (1 - judge_weight) * sim
        else:
            cap = sim if sim is not None else (j if j is not None else float("nan"))
    if TASK not in parts:
        return cap
    v = s.components.get(TASK)
    task = float("nan") if v is None else float(v)
    if JUDGE in parts and math.isfinite(cap):
        return (1 - dvc_caption_weight) * task + dvc_caption_weight * cap
    return task
