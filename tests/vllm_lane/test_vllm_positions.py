"""The learner's Qwen2.5-VL RoPE positions (``learner.model_io.qwen2_5_vl_rope_index``, installed on every loaded
model) equal vLLM's own (``Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions``) for the prompts the
learner's processor builds: text-only, image and videos over a range of frame counts, fps and sizes. Transformers'
own rule (5.3 - 5.23) differs for most of those videos: the text after a video starts ``max(h, w)`` past the
video's first position even when its time positions reach further. No engine is started."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
from transformers import AutoConfig, AutoProcessor  # noqa: E402
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration as VllmQwen  # noqa: E402
from vllm.multimodal.inputs import PlaceholderRange  # noqa: E402

from learner import model_io  # noqa: E402

VIDEOS = [  # (frames, fps, height, width)
    (4, 1.0, 112, 112), (4, 2.0, 84, 112), (8, 0.5, 56, 56), (6, 3.0, 112, 84), (2, 1.0, 224, 224),
    (16, 1.0, 56, 84), (7, 2.0, 84, 112), (3, 0.25, 112, 112),
]


def _vllm_positions(cfg, inputs) -> torch.Tensor:
    """vLLM's positions for one processed prompt, from the same ids, grid and second_per_grid_ts."""
    ids = inputs["input_ids"][0].tolist()
    feats = []
    for modality, token, grid_key in (("image", cfg.image_token_id, "image_grid_thw"),
                                      ("video", cfg.video_token_id, "video_grid_thw")):
        if grid_key not in inputs:
            continue
        data = {grid_key: SimpleNamespace(data=inputs[grid_key][0])}
        if modality == "video":
            data["second_per_grid_ts"] = SimpleNamespace(data=inputs["second_per_grid_ts"][0])
        offset = ids.index(token)
        feats.append(SimpleNamespace(modality=modality, data=data,
                                     mm_position=PlaceholderRange(offset=offset, length=ids.count(token))))
    this = SimpleNamespace(config=cfg)
    this.iter_mm_grid_thw = lambda f: VllmQwen.iter_mm_grid_thw(this, f)
    pos, _ = VllmQwen.get_mrope_input_positions(this, ids, feats)
    return pos


def test_learner_positions_equal_vllms(vllm_model_dir):
    cfg = AutoConfig.from_pretrained(vllm_model_dir)
    proc = AutoProcessor.from_pretrained(vllm_model_dir)
    rng = np.random.default_rng(0)
    model = SimpleNamespace(config=cfg)
    prompts = [model_io.build_inputs(proc, "Q?"),
               model_io.build_inputs(proc, "What is shown?", image=rng.integers(0, 255, (84, 112, 3), np.uint8))]
    prompts += [model_io.build_inputs(proc, "When does the grasper appear?", fps=fps,
                                      frames=rng.integers(0, 255, (t, h, w, 3), np.uint8)) for t, fps, h, w in VIDEOS]
    differs = 0
    for inputs in prompts:
        ours, _ = model_io.qwen2_5_vl_rope_index(model, inputs["input_ids"], inputs.get("mm_token_type_ids"),
                                                 inputs.get("image_grid_thw"), inputs.get("video_grid_thw"),
                                                 inputs.get("second_per_grid_ts"), inputs["attention_mask"])
        if "image_grid_thw" not in inputs and "video_grid_thw" not in inputs:
            assert torch.equal(ours[:, 0], torch.arange(ours.shape[-1]).expand(3, -1))
            continue
        assert torch.equal(ours[:, 0], _vllm_positions(cfg, inputs)), inputs.get("video_grid_thw")
        if "video_grid_thw" in inputs:
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

            this = SimpleNamespace(config=cfg)
            this.get_vision_position_ids = lambda *a, **k: Qwen2_5_VLModel.get_vision_position_ids(this, *a, **k)
            theirs, _ = Qwen2_5_VLModel.get_rope_index(this, inputs["input_ids"], inputs["mm_token_type_ids"],
                                                       None, inputs["video_grid_thw"], inputs["second_per_grid_ts"],
                                                       inputs["attention_mask"])
            differs += not torch.equal(theirs, ours)
    print(f"transformers' own rule differs from vLLM's for {differs} of {len(VIDEOS)} videos")
    assert differs >= len(VIDEOS) // 2  # the reason for the reference rule: transformers' disagrees with vLLM
