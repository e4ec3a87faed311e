"""From an ``Instance`` to model inputs: decode its media once, inject prior knowledge (VRFT-Aug), render the
chat template through the official processor. The same path serves rollouts, SFT examples and evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from data.schema import Instance
from data.video import VideoFrames, load_frames, open_image


@dataclass
class Media:
    frames: Optional[VideoFrames] = None
    image: Any = None  # PIL image


def load_media(inst: Instance, *, max_frames: int, max_pixels: int, min_pixels: int, backend: str = "auto") -> Media:
    """Decode the instance's video (or open its image) once; raises ``data.video.VideoError`` with a reason code
    from ``data.video.REASONS``."""
    if inst.video:
        return Media(frames=load_frames(inst, max_frames=max_frames, max_pixels=max_pixels, min_pixels=min_pixels,
                                        backend=backend))
    if inst.image:
        return Media(image=open_image(inst.image))
    return Media()


def question_text(inst: Instance, knowledge: Optional[dict] = None) -> str:
    if knowledge:
        from data.knowledge import apply_knowledge

        inst = apply_knowledge(inst, knowledge)
    return inst.question


def prompt_inputs(processor: Any, inst: Instance, media: Media, *, knowledge: Optional[dict] = None,
                  max_pixels: Optional[int] = None, min_pixels: Optional[int] = None, with_text: bool = True
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model inputs of one row, raw media + prompt text for an engine that takes them, e.g. vLLM).
    ``with_text=False`` skips rendering the prompt text a second time when the engine takes token ids."""
    from learner.model_io import build_inputs, prompt_messages

    question = question_text(inst, knowledge)
    inputs = build_inputs(processor, question, frames=media.frames, image=media.image,
                          min_pixels=min_pixels, max_pixels=max_pixels)
    text = processor.apply_chat_template(
        prompt_messages(question, video=media.frames is not None, image=media.image is not None),
        tokenize=False, add_generation_prompt=True) if with_text else None
    raw = {"prompt_text": text, "image": media.image,
           "frames": media.frames.frames if media.frames is not None else None,
           "fps": media.frames.fps if media.frames is not None else None}
    return dict(inputs), raw


def answer_ids(processor: Any, answer: str) -> list[int]:
    """Token ids of a reference answer as the assistant turn, ending with the stop token ``<|im_end|>``."""
    tok = processor.tokenizer
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    return list(ids) + [tok.convert_tokens_to_ids("<|im_end|>")]
