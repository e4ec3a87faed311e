"""Load a vision-language checkpoint and turn a question plus decoded media into model inputs.

Role: the one loading path every part uses (rollout, learner, SFT, eval), identical for the tiny offline model
(``data.tiny_model``) and a real ``Qwen/Qwen2.5-VL-7B-Instruct`` folder: ``AutoModelForImageTextToText`` +
``AutoProcessor``, safetensors weights only (no pickle), local files only.

``build_inputs`` renders the chat template and runs the official processor. Video frames arrive already decoded
(``data.video.VideoFrames`` or a uint8 ``[T, H, W, 3]`` array plus its sampling fps) and are handed to the
processor with ``VideoMetadata`` so that Qwen2.5-VL's ``second_per_grid_ts`` (seconds per temporal patch,
``temporal_patch_size / fps``) and hence its time positions are right.

``use_reference_mrope`` (applied by every loader: here and the DeepSpeed learner's) gives a loaded Qwen2.5-VL the
multimodal RoPE positions of Qwen's reference code and vLLM: transformers 5.3 - 5.23 start the text after a video at
``max(h, w)`` past the video's first position, ignoring how far its time positions reach, so the learner and vLLM
gave the same video prompt different positions (see ``qwen2_5_vl_rope_index``).
"""
from __future__ import annotations

import itertools
import math
import os
import types
from pathlib import Path
from typing import Any, Optional, Sequence, Union

DTYPES = ("float32", "bfloat16", "float16")
_VIDEO_MARK = "<|vision_start|><|video_pad|><|vision_end|>"
_IMAGE_MARK = "<|vision_start|><|image_pad|><|vision_end|>"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded safely (missing files, pickle-only weights)."""


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return getattr(torch, dtype)
    raise ValueError(f"dtype={dtype!r} is not allowed; allowed values: {', '.join(DTYPES)}")


def check_checkpoint(path: Union[str, os.PathLike]) -> Path:
    """The checkpoint folder as a ``Path`` once it is known to hold a config and safetensors weights."""
    p = Path(os.fspath(path)).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such checkpoint folder")
    if not (p / "config.json").is_file():
        raise CheckpointError(f"{p}: no config.json; not a Hugging Face checkpoint folder")
    if not ((p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file()):
        pickles = sorted(x.name for x in p.glob("*.bin")) + sorted(x.name for x in p.glob("*.pt"))
        raise CheckpointError(f"{p}: no model.safetensors(.index.json)"
                              + (f"; only pickle weights ({', '.join(pickles[:3])}), which are never loaded"
                                 if pickles else ""))
    return p


def resolve_attn_implementation(requested: str) -> str:
    """``requested``, or ``sdpa`` (logged) when it is ``flash_attention_2`` and ``flash_attn`` is not importable."""
    import importlib.util
    import logging

    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        logging.getLogger(__name__).warning("model.attn_implementation=flash_attention_2 but the flash-attn package "
                                            "is not installed: using sdpa")
        return "sdpa"
    return requested


def load_model_and_processor(path: Union[str, os.PathLike], dtype: Any = "float32", device: str = "cpu",
                             attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """``(model, processor)`` from a local checkpoint folder; the model is on ``device`` in eval mode.

    ``dtype``: ``float32`` | ``bfloat16`` | ``float16`` (or a ``torch.dtype``); ``attn_implementation``: ``sdpa`` |
    ``eager`` | ``flash_attention_2`` (CUDA only; ``sdpa``, with a warning, where the ``flash-attn`` package is
    not installed: the ``gpu`` extra does not install it, its wheels are built per torch/CUDA version). Raises ``FileNotFoundError``/``CheckpointError`` for a folder
    that is missing or not loadable safely.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    p = check_checkpoint(path)
    torch_dtype = _torch_dtype(dtype)
    dev = torch.device(device)
    if attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"attn_implementation={attn_implementation!r} is not allowed; allowed values: sdpa, eager, "
                         f"flash_attention_2")
    if attn_implementation == "flash_attention_2" and dev.type != "cuda":
        raise ValueError(f"attn_implementation='flash_attention_2' needs a CUDA device, got device={device!r}")
    attn_implementation = resolve_attn_implementation(attn_implementation)
    model = AutoModelForImageTextToText.from_pretrained(
        str(p), dtype=torch_dtype, attn_implementation=attn_implementation, use_safetensors=True,
        local_files_only=True)
    use_reference_mrope(model)
    model.to(dev)
    model.eval()
    processor = AutoProcessor.from_pretrained(str(p), local_files_only=True)
    return model, processor


def qwen2_5_vl_rope_index(model: Any, input_ids: Any, mm_token_type_ids: Any = None, image_grid_thw: Any = None,
                          video_grid_thw: Any = None, second_per_grid_ts: Any = None, attention_mask: Any = None,
                          **_: Any) -> tuple[Any, Any]:
    """Qwen2.5-VL's multimodal RoPE positions ``[3, B, L]`` and their deltas ``[B, 1]``, by the rule of Qwen's
    reference code and of vLLM (``Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions``): every text run
    starts one past the largest position so far, vision items are ``(t * tokens_per_second * second_per_grid_ts,
    h, w)`` grids (time quantised down after the product, in float64 as vLLM does) offset by that start.

    A drop-in for transformers' ``Qwen2_5_VLModel.get_rope_index`` (same arguments and outputs; ``model`` is that
    ``Qwen2_5_VLModel``). Transformers 5.3 - 5.23 advance the position after a vision item by ``max(h, w)`` only,
    which for a video whose time positions reach further (``(t - 1) * tokens_per_second * second_per_grid_ts + 1 >
    max(h, w)``, i.e. nearly every video: 4 frames at 1 fps, ``tokens_per_second = 2``, already reach 5) puts the
    following text inside the video's time range; images and the text before a video agree either way.
    ``mm_token_type_ids`` (0 text, 1 image, 2 video) defaults to the model config's image/video token ids.
    """
    import torch

    cfg = model.config
    vcfg = cfg.vision_config
    merge = int(vcfg.spatial_merge_size)
    tokens_per_second = float(getattr(vcfg, "tokens_per_second", 1.0) or 1.0)
    if mm_token_type_ids is None:
        mm_token_type_ids = torch.zeros_like(input_ids, dtype=torch.int32)
        mm_token_type_ids[input_ids == cfg.image_token_id] = 1
        mm_token_type_ids[input_ids == cfg.video_token_id] = 2
    grids = {1: iter(image_grid_thw.tolist() if image_grid_thw is not None else []),
             2: iter(video_grid_thw.tolist() if video_grid_thw is not None else [])}
    seconds = iter(second_per_grid_ts.reshape(-1).tolist() if second_per_grid_ts is not None else [])
    position_ids = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=input_ids.device)
    deltas = []
    for row in range(input_ids.shape[0]):
        keep = (attention_mask[row].bool() if attention_mask is not None
                else torch.ones(input_ids.shape[1], dtype=torch.bool, device=input_ids.device))
        kinds = mm_token_type_ids[row][keep].tolist()
        chunks: list[Any] = []
        start = 0
        for kind, run in itertools.groupby(kinds):
            n = len(list(run))
            if kind == 0:
                chunk = torch.arange(n, dtype=torch.long).view(1, -1).expand(3, -1)
            else:
                t, h, w = next(grids[int(kind)])
                h, w = h // merge, w // merge
                step = tokens_per_second * float(next(seconds, 1.0)) if kind == 2 else 1.0
                tt = (torch.arange(t, dtype=torch.float64) * step).long()
                chunk = torch.stack(torch.meshgrid(tt, torch.arange(h), torch.arange(w), indexing="ij")).reshape(3, -1)
                if chunk.shape[1] != n:
                    raise ValueError(f"row {row}: {n} {'video' if kind == 2 else 'image'} placeholder tokens but "
                                     f"its grid {[t, h * merge, w * merge]} makes {chunk.shape[1]}")
            chunk = chunk + start
            chunks.append(chunk)
            start = int(chunk.max()) + 1
        pos = torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.long)
        position_ids[:, row, keep] = pos.to(position_ids)
        deltas.append(start - len(kinds))
    return position_ids, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def use_reference_mrope(model: Any) -> Any:
    """Make a loaded Qwen2.5-VL (``...ForConditionalGeneration``, before any LoRA wrapping) compute its RoPE
    positions with ``qwen2_5_vl_rope_index`` in every forward and in ``generate``; other models are returned
    untouched. Binds the function on the inner ``Qwen2_5_VLModel`` instance (transformers calls
    ``self.get_rope_index`` / ``self.model.get_rope_index`` everywhere), so the class is not changed."""
    inner = getattr(model, "model", None)
    if getattr(getattr(model, "config", None), "model_type", None) == "qwen2_5_vl" and hasattr(inner, "get_rope_index"):
        inner.get_rope_index = types.MethodType(qwen2_5_vl_rope_index, inner)
    return model


def prompt_messages(question: str, *, video: bool = False, image: bool = False,
                    system: Optional[str] = None) -> list[dict[str, Any]]:
    """Chat messages for one user turn: the media placeholders (image first, then video), then the question."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    content: list[dict[str, Any]] = []
    if image:
        content.append({"type": "image"})
    if video:
        content.append({"type": "video"})
    content.append({"type": "text", "text": question})
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return messages


def _as_video(frames: Any, fps: Optional[float]) -> tuple[Any, float]:
    """(uint8 [T, H, W, 3] numpy array, fps) from an array/tensor, a list of frames, or a ``VideoFrames``."""
    import numpy as np

    if hasattr(frames, "frames") and not isinstance(frames, np.ndarray):  # data.video.VideoFrames and alikes
        fps = getattr(frames, "fps", None) if fps is None else fps
        frames = frames.frames
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("frames is an empty list")
        frames = np.stack([np.asarray(f) for f in frames])
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a uint8 [T, H, W, 3] array, a list of frames or VideoFrames, "
                        f"got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must have shape [T, H, W, 3] with T >= 1, got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (0-255), got {frames.dtype}")
    if fps is None:
        raise ValueError("fps (the sampling rate of the frames) is required for video input")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return frames, float(fps)


def _as_image(image: Any) -> Any:
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "frames") and not isinstance(image, np.ndarray):  # a one-frame VideoFrames
        arr = np.asarray(image.frames)
        if arr.ndim != 4 or arr.shape[0] != 1:
            raise ValueError(f"image given as decoded frames must hold exactly one frame, got {tuple(arr.shape)}")
        image = arr[0]
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
        return Image.fromarray(image)
    raise TypeError(f"image must be a PIL image or a uint8 [H, W, 3] array, got {type(image).__name__}")


def _pixel_size(proc: Any, min_pixels: Optional[int], max_pixels: Optional[int]) -> Optional[dict[str, int]]:
    if min_pixels is None and max_pixels is None:
        return None
    size = dict(getattr(proc, "size", None) or {})
    lo = int(min_pixels if min_pixels is not None else size.get("shortest_edge", 56 * 56))
    hi = int(max_pixels if max_pixels is not None else size.get("longest_edge", 28 * 28 * 1280))
    if lo < 1 or hi < lo:
        raise ValueError(f"need 1 <= min_pixels <= max_pixels, got min_pixels={lo}, max_pixels={hi}")
    return {"shortest_edge": lo, "longest_edge": hi}


def build_inputs(processor: Any, messages_or_question: Union[str, Sequence[dict[str, Any]]], frames: Any = None,
                 image: Any = None, *, fps: Optional[float] = None, system: Optional[str] = None,
                 min_pixels: Optional[int] = None, max_pixels: Optional[int] = None,
                 add_generation_prompt: bool = True, return_tensors: str = "pt") -> Any:
    """Model inputs (a ``BatchFeature`` of one row) for a question and its decoded media.

    ``messages_or_question``: the question text (a user turn is built with the media placeholders, see
    ``prompt_messages``) or chat messages already holding one ``{"type": "video"}``/``{"type": "image"}`` item
    per medium passed. ``frames``: uint8 ``[T, H, W, 3]`` (array, tensor, list of frames) sampled at ``fps``, or a
    ``VideoFrames`` (its ``fps`` is used); ``image``: a PIL image or uint8 ``[H, W, 3]`` array.
    ``min_pixels``/``max_pixels``: the per-image/per-frame pixel budget (default: the processor's own).
    Returns ``input_ids``, ``attention_mask`` and, per medium, ``pixel_values_videos``/``video_grid_thw``/
    ``second_per_grid_ts`` or ``pixel_values``/``image_grid_thw`` (plus ``mm_token_type_ids``).
    """
    from transformers.video_utils import VideoMetadata

    video = None
    if frames is not None:
        video, fps = _as_video(frames, fps)
    pil = _as_image(image) if image is not None else None
    if isinstance(messages_or_question, str):
        messages = prompt_messages(messages_or_question, video=video is not None, image=pil is not None,
                                   system=system)
    elif isinstance(messages_or_question, Sequence) and all(isinstance(m, dict) for m in messages_or_question):
        if system is not None:
            raise ValueError("system is only used with a question string; put the system turn in the messages")
        messages = list(messages_or_question)
    else:
        raise TypeError("messages_or_question must be a question string or a list of chat message dicts")
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    n_video, n_image = text.count(_VIDEO_MARK), text.count(_IMAGE_MARK)
    if n_video != (video is not None) or n_image != (pil is not None):
        raise ValueError(f"the prompt has {n_video} video and {n_image} image placeholders but "
                         f"{int(video is not None)} video and {int(pil is not None)} image were passed")
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": return_tensors}
    if video is not None:
        t, h, w = (int(v) for v in video.shape[:3])
        kwargs["videos"] = [video]
        kwargs["video_metadata"] = [VideoMetadata(total_num_frames=t, fps=fps, width=w, height=h,
                                                  duration=t / fps, frames_indices=list(range(t)))]
        videos_kwargs: dict[str, Any] = {"cap_pixels_per_frame": True}
        size = _pixel_size(processor.video_processor, min_pixels, max_pixels)
        if size:
            videos_kwargs["size"] = size
        kwargs["videos_kwargs"] = videos_kwargs
    if pil is not None:
        kwargs["images"] = [pil]
        size = _pixel_size(processor.image_processor, min_pixels, max_pixels)
        if size:
            kwargs["images_kwargs"] = {"size": size}
    return processor(**kwargs)
