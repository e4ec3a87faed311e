"""The one in-memory form of a training/eval instance, and the task vocabulary shared by every part of the system.

MedVidBench instances (video) and image instances (VQA multiple choice, box grounding, image classification)
are both read into ``Instance``. ``struc_info`` keeps the structured ground truth exactly as the file gave it
(dict, list of dicts, empty, or None); reward code reads ground truth from it, falling back to ``answer``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

# qa_type -> task family (the eight MedVidBench tasks, plus image tasks): the one list of qa_types. How each family
# is parsed and scored is its spec in rewards/tasks.py (which adds the qa_types of a task it registers here).
TASK_FAMILY: dict[str, str] = {
    "tal": "tag",
    "stg": "stg",
    "next_action": "nap",
    "dense_captioning_gpt": "dvc",
    "dense_captioning_gemini": "dvc",
    "video_summary_gpt": "vs",
    "video_summary_gemini": "vs",
    "region_caption_gpt": "rc",
    "region_caption_gemini": "rc",
    "skill_assessment": "sa",
    "cvs_assessment": "cvs",
    # image tasks
    "vqa_mc": "vqa",  # multiple choice, struc_info {"choices": [...], "answer": "B"}
    "box_grounding": "box",  # struc_info {"bbox": [x1, y1, x2, y2], "label": str}
    "image_cls": "cls",  # struc_info {"label": str, "classes": [...], "ordinal": bool}
}
IMAGE_FAMILIES = ("vqa", "box", "cls")  # their instances hold one image; every other family's a video
VIDEO_QA_TYPES = tuple(k for k, v in TASK_FAMILY.items() if v not in IMAGE_FAMILIES)
IMAGE_QA_TYPES = tuple(k for k, v in TASK_FAMILY.items() if v in IMAGE_FAMILIES)
# qa_type prefixes of known families: a new variant (``video_summary_x``) maps by its prefix
_PREFIXES = (("dense_captioning", "dvc"), ("video_summary", "vs"), ("region_caption", "rc"))


def task_family(qa_type: str) -> str:
    """Family of a qa_type; unknown prefixes of known families (e.g. ``video_summary_x``) map by prefix."""
    if qa_type in TASK_FAMILY:
        return TASK_FAMILY[qa_type]
    for prefix, fam in _PREFIXES:
        if qa_type.startswith(prefix):
            return fam
    raise KeyError(f"unknown qa_type {qa_type!r}; known: {', '.join(sorted(TASK_FAMILY))}")


def qa_types_of(family: str) -> tuple[str, ...]:
    return tuple(q for q, f in TASK_FAMILY.items() if f == family)


def add_qa_types(family: str, qa_types: "tuple[str, ...] | list[str]") -> None:
    """Make ``qa_types`` known as ``family`` (``rewards.tasks.register``); a qa_type of another family raises."""
    taken = [q for q in qa_types if TASK_FAMILY.get(q, family) != family]
    if taken:
        raise ValueError(f"qa_types {taken} already belong to family {TASK_FAMILY[taken[0]]!r}")
    TASK_FAMILY.update(dict.fromkeys(qa_types, family))


def remove_family(family: str) -> None:
    """Forget every qa_type of ``family`` (``rewards.tasks.unregister``)."""
    for q in qa_types_of(family):
        del TASK_FAMILY[q]


def sample_id(video_id: str, start: "int | str", end: "Optional[int | str]", fps: "float | str") -> str:
    """MedVidBench sample id ``video_id&&start&&end&&fps``."""
    return f"{video_id}&&{start}&&{end if end is not None else ''}&&{fps}"


@dataclass
class Instance:
    id: str
    qa_type: str
    data_source: str
    question: str  # the human turn with the media placeholder (<video>/<image>) removed
    answer: Optional[str] = None  # the reference answer (gpt turn); None in test files
    video: Optional[list[str] | str] = None  # list of frame image paths, or one video file
    image: Optional[str] = None
    fps: float = 1.0  # sampling fps
    start_frame: int = 0
    end_frame: Optional[int] = None
    video_id: str = ""
    struc_info: Any = None
    rc_box: Optional[tuple[float, list[float]]] = None  # (frame index or time, [x1, y1, x2, y2]) for region captions
    extra: dict[str, Any] = field(default_factory=dict)
    # The unique key inside the system (driver, actors, predictions, leaderboard): ``f"{id}#{qa_type}"``, with
    # ``#2``, ``#3``, ... for further repeats of the same (id, qa_type) in one file, in file order. One clip serves
    # several tasks, so ``id`` repeats. ``data.reader.read_instances`` sets it for every instance
    # (``data.reader.UidAllocator``); an Instance built directly defaults to ``f"{id}#{qa_type}"``.
    uid: str = ""

    def __post_init__(self) -> None:
        if not self.uid:
            self.uid = f"{self.id}#{self.qa_type}"

    @property
    def family(self) -> str:
        return task_family(self.qa_type)

    @property
    def key(self) -> str:
        """Normalization key ``data_source/qa_type``."""
        return f"{self.data_source}/{self.qa_type}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
