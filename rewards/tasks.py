"""The task registry: one ``TaskSpec`` per task family, the one place that says how a family is scored.

A spec holds the family's qa_types, its answer parser and ground-truth extractor (rewards/parsing.py), its metric
(rewards/metrics.py), its strict format check, its leaderboard columns and its flags. Scoring
(rewards/task_scores.py), reward scoring and assembly (rewards/scoring.py, rewards/assembly.py), the leaderboard
and baselines, and the driver dispatch through it; nothing else lists families. ``data.schema.TASK_FAMILY`` is the
data's vocabulary (qa_type -> family, used by the reader and sampler, which sit below rewards/); a spec's
``qa_types`` are read from it, and ``register`` adds a new spec's qa_types to it. Adding a task: docs/tasks.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from data.schema import IMAGE_FAMILIES, Instance, add_qa_types, qa_types_of, remove_family, task_family
from rewards import metrics as M
from rewards import parsing as P

Components = dict[str, float]
CaptionPairList = tuple[list[tuple[str, str]], int, Optional[str]]  # (pairs, reference captions, reason)


@dataclass(frozen=True)
class Column:
    """One leaderboard column: the mean of ``component`` (thresholded at ``iou_threshold`` when given)."""

    name: str
    component: str
    iou_threshold: Optional[float] = None


@dataclass(frozen=True)
class TaskSpec:
    """How one task family is parsed, checked and scored.

    ``parse(text, offered)``: the prediction, leniently (``Parsed``); ``ground_truth(instance)``: the reference
    (``Parsed``); ``metric(pred, ref, instance)``: components of a parsed prediction against the parsed reference;
    ``score_key``: the component that is the task score (None: no rule score, the family is judged);
    ``format_check(answer_text, offered)``: None when the prepared answer follows the layout strictly, else a
    reason code; ``offered``: what the instance offers to choose from and parse/format_check get ("labels":
    ``parsing.labels_for``, "choices": ``parsing.choices_for``, None: nothing); ``columns``: the leaderboard's rule
    columns. ``caption_pairs(instance, text)``: the (reference, candidate) caption pairs the reward's judge and
    similarity model compare, the number of reference captions they average over, and a reason when there are
    none (``rewards.task_scores.CaptionPairs``). Flags: ``caption`` free text, judged (1-5 rubric) and embedded
    against the reference on the leaderboard (``<name>_llm``, ``<name>_sim``); ``judged_in_reward`` the training
    reward has judge + similarity parts on ``caption_pairs`` (rewards/assembly.py): the reward alone without a
    ``score_key`` (vs, rc), mixed with the task score by ``reward.dvc_caption_weight`` with one (dvc); ``grounding`` IoU-scored (MedLoc-R1 threshold and curriculum,
    mean-box baselines); ``accuracy`` a score of 1 means correct (length shaping, majority baselines); ``ordinal``
    an ordinal label list adds ``grade_dist``; ``reasoning`` (medical VQA) the ``<think>/<answer>`` layout is always
    reported and the judge's semantic-alignment verdict on the reasoning may shape the reward.
    """

    name: str
    parse: Callable[[Any, Any], P.Parsed[Any]]
    ground_truth: Callable[[Instance], P.Parsed[Any]]
    metric: Callable[[Any, Any, Instance], Components]
    score_key: Optional[str]
    format_check: Callable[[str, Any], Optional[str]]
    columns: tuple[Column, ...] = ()
    qa_types: tuple[str, ...] = ()
    offered: Optional[str] = None
    caption_pairs: Optional[Callable[[Instance, Any], CaptionPairList]] = None
    caption: bool = False
    judged_in_reward: bool = False
    grounding: bool = False
    accuracy: bool = False
    ordinal: bool = False
    reasoning: bool = False

    @property
    def image(self) -> bool:
        """An image task: its leaderboard columns appear only when such references are present."""
        return self.name in IMAGE_FAMILIES

    def offered_of(self, instance: Instance) -> Any:
        return _OFFERED[self.offered](instance) if self.offered else None

    def llm_column(self) -> Optional[str]:
        return f"{self.name}_llm" if self.caption else None

    def sim_column(self) -> Optional[str]:
        return f"{self.name}_sim" if self.caption else None


_OFFERED: dict[str, Callable[[Instance], Any]] = {"labels": P.labels_for, "choices": P.choices_for}
_REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` (its ``qa_types`` join ``data.schema.TASK_FAMILY``). Raises ``ValueError`` on a taken name,
    a qa_type of another family, or an ``offered`` other than labels/choices/None."""
    if spec.name in _REGISTRY:
        raise ValueError(f"task family {spec.name!r} is already registered")
    if spec.offered is not None and spec.offered not in _OFFERED:
        raise ValueError(f"task {spec.name!r}: offered={spec.offered!r}; allowed: {', '.join(_OFFERED)} or None")
    add_qa_types(spec.name, spec.qa_types)
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a registered family and its qa_types (tests, plugins)."""
    _REGISTRY.pop(name)
    remove_family(name)


def specs() -> list[TaskSpec]:
    """Every registered spec, in registration order (the leaderboard's column order)."""
    return list(_REGISTRY.values())


def get(family: str) -> TaskSpec:
    if family not in _REGISTRY:
        raise KeyError(f"unknown task family {family!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[family]


def spec_of_family(family: Optional[str]) -> Optional[TaskSpec]:
    return _REGISTRY.get(family) if family is not None else None


def family_of(inst: Instance) -> Optional[str]:
    """The task family of an instance, or None for an unknown qa_type (never raises)."""
    try:
        return task_family(inst.qa_type) if isinstance(inst.qa_type, str) else None
    except KeyError:
        return None


def spec_of(item: Union[Instance, str]) -> Optional[TaskSpec]:
    """The spec of an instance or a qa_type; None when its qa_type or family is unknown."""
    if isinstance(item, Instance):
        fam = family_of(item)
    else:
        try:
            fam = task_family(item)
        except KeyError:
            fam = None
    return spec_of_family(fam)


def judged_in_reward(family: str) -> bool:
    """Whether ``family``'s training reward has judge + similarity parts (False for an unknown family)."""
    spec = _REGISTRY.get(family)
    return bool(spec and spec.judged_in_reward)


def format_problem(family: str, text: Any, *, labels: Optional[Any] = None, choices: Any = None) -> Optional[str]:
    """None when ``text`` (its answer part) follows ``family``'s answer format strictly, else a reason code
    (``unknown_family`` for a family without a spec). ``labels``/``choices``: what the instance offers."""
    t, r = P.prepare_answer(text)
    if r:
        return r
    spec = _REGISTRY.get(family)
    if spec is None:
        return "unknown_family"
    return spec.format_check(t, {"labels": labels, "choices": choices}.get(spec.offered or ""))


# -- the built-in families ------------------------------------------------------------------------------------


def _compare(metric: str, key: str) -> Callable[[Any, Any, Instance], Components]:
    """``{key: rewards.metrics.<metric>(pred, ref)}``; the metric is looked up at call time (tests patch it)."""
    return lambda pred, ref, inst: {key: getattr(M, metric)(pred, ref)}


def _box_iou(pred: Any, ref: Any, inst: Instance) -> Components:
    return {"iou": M.box_iou(P.scale_box(pred, ref, P.image_size_of(inst)), ref)}


def _dvc_f1(pred: Any, ref: Any, inst: Instance) -> Components:
    return {"f1": M.dvc_f1([(e.start, e.end) for e in pred], [(e.start, e.end) for e in ref])}


def answer_caption_pairs(inst: Instance, text: Any) -> CaptionPairList:
    """vs/rc: the reference answer against the prediction's answer part (one pair)."""
    if not (inst.answer or "").strip():
        return [], 0, "no_reference"
    return [(inst.answer, P.answer_text(text))], 1, None


def _event_caption_pairs(inst: Instance, text: Any) -> CaptionPairList:
    """DVC: reference and predicted events matched one-to-one by the F1's greedy temporal matching
    (``metrics.matched_segments``) at the loosest F1 threshold (tIoU 0.3: every pair the F1 counts at some
    threshold is judged); each match compares the two events' captions. The count is the reference events with a
    caption, so an event no prediction matches adds 0 to the caption part."""
    gt = P.gt_events(inst)
    refs = [e for e in gt.value if e.caption.strip()] if gt.ok else []  # type: ignore[union-attr]
    if not refs:
        return [], 0, "no_reference"
    p = P.parse_events(text)
    if not p.ok:
        return [], len(refs), p.reason
    pred = p.value
    matches = M.matched_segments([(e.start, e.end) for e in pred], [(e.start, e.end) for e in refs],  # type: ignore[union-attr]
                                 M.DVC_TIOU_THRESHOLDS[0])
    return [(refs[g].caption, pred[j].caption) for g, j in matches], len(refs), None  # type: ignore[index]


def _plain(parse: Callable[[Any], P.Parsed[Any]]) -> Callable[[Any, Any], P.Parsed[Any]]:
    return lambda text, offered: parse(text)


def _plain_check(check: Callable[[str], Optional[str]]) -> Callable[[str, Any], Optional[str]]:
    return lambda t, offered: check(t)


def _caption(name: str) -> TaskSpec:
    return TaskSpec(name, _plain(P.parse_caption), P.gt_caption, lambda pred, ref, inst: {}, None,
                    _plain_check(P.caption_format), qa_types=qa_types_of(name), caption_pairs=answer_caption_pairs,
                    caption=True, judged_in_reward=True)


def _acc(name: str, parse: Callable[[Any, Any], P.Parsed[Any]], gt: Callable[[Instance], P.Parsed[Any]],
         metric: str, check: Callable[[str, Any], Optional[str]], **kw: Any) -> TaskSpec:
    return TaskSpec(name, parse, gt, _compare(metric, "acc"), "acc", check, (Column(f"{name}_acc", "acc"),),
                    qa_types_of(name), accuracy=True, **kw)


# Registration order is the leaderboard's column order: cvs_acc, nap_acc, sa_acc, stg_miou, tag_miou@0.3/0.5,
# dvc_f1, dvc_llm, vs_llm, rc_llm, then the image columns.
for _spec in (
    _acc("cvs", _plain(P.parse_cvs), P.gt_cvs, "cvs_accuracy", _plain_check(P.cvs_format)),
    _acc("nap", P.parse_label, P.gt_label, "label_match", P.label_format, offered="labels"),
    _acc("sa", _plain(P.parse_skill), P.gt_skill, "skill_accuracy", _plain_check(P.skill_format)),
    TaskSpec("stg", _plain(P.parse_stg), P.gt_stg_boxes, _compare("st_mean_iou", "iou"), "iou",
             _plain_check(P.stg_format), (Column("stg_miou", "iou"),), qa_types_of("stg"), grounding=True),
    TaskSpec("tag", _plain(P.parse_segments), P.gt_segments, _compare("temporal_iou", "iou"), "iou",
             _plain_check(P.segments_format), (Column("tag_miou@0.3", "iou", 0.3), Column("tag_miou@0.5", "iou", 0.5)),
             qa_types_of("tag"), grounding=True),
    # DVC: F1 and the judged captions of its temporally matched segments, in training (reward.dvc_caption_weight)
    # as on the leaderboard (dvc_f1, dvc_llm)
    TaskSpec("dvc", _plain(P.parse_events), P.gt_events, _dvc_f1, "f1", _plain_check(P.events_format),
             (Column("dvc_f1", "f1"),), qa_types_of("dvc"), caption_pairs=_event_caption_pairs, caption=True,
             judged_in_reward=True),
    _caption("vs"),
    _caption("rc"),
    _acc("vqa", P.parse_choice, P.gt_choice, "choice_accuracy", P.choice_format, offered="choices",
         reasoning=True),
    TaskSpec("box", _plain(P.parse_box), P.gt_box, _box_iou, "iou", _plain_check(P.box_format),
             (Column("box_miou", "iou"),), qa_types_of("box"), grounding=True),
    _acc("cls", P.parse_label, P.gt_label, "label_match", P.label_format, offered="labels", ordinal=True),
):
    _REGISTRY[_spec.name] = _spec  # their qa_types are data.schema's already
del _spec
