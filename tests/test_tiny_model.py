"""Tiny offline Qwen2.5-VL: build -> save -> load through learner.model_io -> generate from video and image."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from data import synthetic as syn  # noqa: E402
from data import tiny_model  # noqa: E402
from learner import model_io  # noqa: E402


@pytest.fixture(scope="module")
def corpus():
    return syn.corpus_texts(seed=0, n_per_task=3)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, corpus):
    return tiny_model.build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus_texts=corpus, seed=0)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return model_io.load_model_and_processor(ckpt)


@pytest.fixture(scope="module")
def clip():
    """Frames of a synthetic clip at its sampling fps (2 fps for SynthEasy), as the decoder would hand them over."""
    spec = syn.make_video_spec("t", syn.SOURCE_PROFILES["SynthEasy"], "train", 0, "expert")
    native = spec.render()
    idx = [spec.native_index(t) for t in spec.sampled_times()][:7]
    return native[idx], spec.sampling_fps


def test_checkpoint_files_and_official_classes(ckpt, loaded):
    names = {p.name for p in ckpt.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "chat_template.jinja"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    model, proc = loaded
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(proc).__name__ == "Qwen2_5_VLProcessor"
    assert type(proc.tokenizer).__name__ == "Qwen2Tokenizer" and proc.tokenizer.is_fast
    assert type(proc.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert type(proc.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert not model.training
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 1_000_000
    assert len(proc.tokenizer) <= 2048
    info = json.loads((ckpt / tiny_model.INFO_FILE).read_text())
    assert info["parameters"] == n_params and info["vocab"] == len(proc.tokenizer)


def test_special_token_ids_match_the_config(loaded):
    model, proc = loaded
    tok, cfg = proc.tokenizer, model.config
    ids = tiny_model.special_token_ids(tok)
    base = ids["<|endoftext|>"]
    # Qwen's order, consecutive after the BPE vocabulary (151643.. in the real tokenizer)
    assert list(ids.values()) == list(range(base, base + len(tiny_model.QWEN_SPECIAL_TOKENS)))
    assert cfg.image_token_id == ids["<|image_pad|>"] == base + 12
    assert cfg.video_token_id == ids["<|video_pad|>"] == base + 13
    assert cfg.vision_start_token_id == ids["<|vision_start|>"] == base + 9
    assert cfg.vision_end_token_id == ids["<|vision_end|>"] == base + 10
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert cfg.text_config.eos_token_id == ids["<|im_end|>"]
    assert model.generation_config.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert cfg.text_config.vocab_size >= len(tok) and cfg.text_config.vocab_size % 64 == 0
    assert proc.tokenizer.convert_tokens_to_ids("<tool_call>") == base + len(tiny_model.QWEN_SPECIAL_TOKENS)
    # specials are single tokens even inside text
    enc = tok("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>").input_ids
    assert enc[0] == ids["<|im_start|>"] and enc[-3:] == [ids["<|vision_start|>"], ids["<|video_pad|>"],
                                                          ids["<|vision_end|>"]]


def test_chat_template_renders_the_qwen_format(loaded):
    _, proc = loaded
    video_q = proc.apply_chat_template(model_io.prompt_messages("Where is the hook?", video=True), tokenize=False,
                                       add_generation_prompt=True)
    assert video_q == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                       "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Where is the hook?<|im_end|>\n"
                       "<|im_start|>assistant\n")
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which?"}]},
            {"role": "assistant", "content": "B"}]
    assert proc.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Which?<|im_end|>\n<|im_start|>assistant\nB<|im_end|>\n")


def test_tokenizer_round_trips_the_corpus(loaded, corpus):
    tok = loaded[1].tokenizer
    extra = ["Strasberg\u2019s café ✓ 12.5-30.0 seconds: [1.0, 2.0]", "  two  spaces\nand\ttabs", "ünïcödé 字"]
    total_chars = total_ids = 0
    for text in corpus + extra:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
        total_chars += len(text)
        total_ids += len(ids)
    assert total_chars / total_ids > 2.5  # merges learned on the corpus compress it (bytes alone would be ~1.0)


def test_reloaded_weights_equal_the_saved_ones_and_seed_decides_them(ckpt, loaded, corpus, tmp_path):
    from safetensors.torch import load_file

    from transformers import AutoModelForImageTextToText

    model, _ = loaded
    saved = load_file(str(ckpt / "model.safetensors"))
    # nothing missing, unexpected or re-initialised when the loader reads the file ...
    _, info = AutoModelForImageTextToText.from_pretrained(str(ckpt), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.parameters())
    assert torch.equal(model.state_dict()["lm_head.weight"], saved["lm_head.weight"])
    # ... and the loaded weights, saved again, are the saved ones (names follow the checkpoint's key mapping)
    model.save_pretrained(tmp_path / "resaved")
    resaved = load_file(str(tmp_path / "resaved" / "model.safetensors"))
    assert set(resaved) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(resaved[name], tensor), name
    same = tiny_model.build_tiny_model(tmp_path / "same", corpus_texts=corpus, seed=0)
    other = tiny_model.build_tiny_model(tmp_path / "other", corpus_texts=corpus, seed=1)
    assert (same / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()
    again, changed = load_file(str(same / "model.safetensors")), load_file(str(other / "model.safetensors"))
    assert all(torch.equal(again[k], v) for k, v in saved.items())
    assert not all(torch.equal(changed[k], v) for k, v in saved.items())


def test_generate_from_a_video_prompt(loaded, clip):
    model, proc = loaded
    frames, fps = clip
    inputs = model_io.build_inputs(proc, "What are the bounding boxes of the grasper?", frames=frames, fps=fps)
    # 7 frames of 84x112 (within 48*28*28 px): 84x112 stays, 6x8 patches, 7 -> 8 frames -> 4 temporal patches
    assert inputs["video_grid_thw"].tolist() == [[4, 6, 8]]
    assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(2 / fps)]
    n_video_tokens = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert n_video_tokens == 4 * 6 * 8 // 4
    with torch.no_grad():
        out1 = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        out2 = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert 1 <= out1.shape[1] - prompt_len <= 12
    assert torch.equal(out1, out2)  # greedy decoding is deterministic
    assert isinstance(proc.decode(out1[0, prompt_len:], skip_special_tokens=True), str)
    # a VideoFrames-like object carries its own fps; a smaller pixel budget shrinks the grid
    small = model_io.build_inputs(proc, "Q", frames=SimpleNamespace(frames=frames, fps=1.0),
                                  max_pixels=28 * 28 * 4, min_pixels=28 * 28)
    assert small["video_grid_thw"].tolist() == [[4, 2, 4]] and small["second_per_grid_ts"].tolist() == [2.0]


def test_generate_from_an_image_prompt_and_train_step(loaded, clip):
    model, proc = loaded
    frames, _ = clip
    inputs = model_io.build_inputs(proc, "Which instrument is visible?", image=frames[0])
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    # the learner's path: a forward with labels gives a finite loss and gradients reach the vision tower
    model.train()
    try:
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.visual.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_build_inputs_rejects_bad_media(loaded, clip):
    _, proc = loaded
    frames, fps = clip
    with pytest.raises(ValueError, match="fps"):
        model_io.build_inputs(proc, "Q", frames=frames)
    with pytest.raises(ValueError, match="fps"):
        model_io.build_inputs(proc, "Q", frames=frames, fps=0.0)
    with pytest.raises(ValueError, match="uint8"):
        model_io.build_inputs(proc, "Q", frames=frames.astype(np.float32), fps=fps)
    with pytest.raises(ValueError, match="shape"):
        model_io.build_inputs(proc, "Q", frames=frames[0], fps=fps)
    with pytest.raises(ValueError, match="placeholders"):  # messages without a video item but frames given
        model_io.build_inputs(proc, [{"role": "user", "content": "Q"}], frames=frames, fps=fps)
    with pytest.raises(TypeError):
        model_io.build_inputs(proc, "Q", image="not-an-image.png")
    with pytest.raises(ValueError, match="min_pixels"):
        model_io.build_inputs(proc, "Q", image=frames[0], min_pixels=5000, max_pixels=4000)


def test_loader_refuses_unsafe_or_missing_checkpoints(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError):
        model_io.load_model_and_processor(tmp_path / "missing")
    pickle_only = tmp_path / "pickle_only"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text((ckpt / "config.json").read_text())
    (pickle_only / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(model_io.CheckpointError, match="pickle"):
        model_io.load_model_and_processor(pickle_only)
    with pytest.raises(ValueError, match="dtype"):
        model_io.load_model_and_processor(ckpt, dtype="float64")
    with pytest.raises(ValueError, match="CUDA"):
        model_io.load_model_and_processor(ckpt, attn_implementation="flash_attention_2")
    model, _ = model_io.load_model_and_processor(ckpt, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_build_tiny_model_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown size"):
        tiny_model.build_tiny_model(tmp_path, corpus_texts=["a b c"], hidden_sizes=64)
    with pytest.raises(ValueError, match="hidden_size"):
        tiny_model.build_tiny_model(tmp_path, corpus_texts=["a b c"], hidden_size=66)
    with pytest.raises(TypeError, match="strings"):
        tiny_model.build_tiny_model(tmp_path, corpus_texts=["ok", 3])
    with pytest.raises(ValueError, match="no non-empty"):
        tiny_model.build_tiny_model(tmp_path, corpus_texts=["  "])
    assert not list(tmp_path.iterdir())


def test_head_size_sets_the_text_heads(tmp_path):
    """vLLM's CPU attention needs text head size 32, 64, ...: ``head_size`` picks the number of heads."""
    out = tiny_model.build_tiny_model(tmp_path, corpus_texts=["a b c", "d e f"] * 20, head_size=32)
    text = json.loads((out / "config.json").read_text())["text_config"]
    assert text["num_attention_heads"] == 2 and text["num_key_value_heads"] == 1
    assert text["hidden_size"] // text["num_attention_heads"] == 32
    with pytest.raises(ValueError, match="head_size=24"):
        tiny_model.build_tiny_model(tmp_path, corpus_texts=["a b c"], head_size=24)
    with pytest.raises(ValueError, match="disagree"):
        tiny_model.build_tiny_model(tmp_path, corpus_texts=["a b c"], head_size=32, num_attention_heads=4)


def test_reference_mrope_positions_follow_qwens_rule():
    """Qwen's documented example (3 temporal patches of 2x2 merged tokens, 50 time positions per patch): the text
    after the video starts one past the video's largest position (101 + start), not ``max(h, w)`` past its first."""
    fake = SimpleNamespace(config=SimpleNamespace(
        vision_config=SimpleNamespace(spatial_merge_size=2, tokens_per_second=25), image_token_id=8,
        video_token_id=9))
    ids = torch.tensor([[1, 2] + [9] * 12 + [3, 4, 5]])
    pos, delta = model_io.qwen2_5_vl_rope_index(fake, ids, video_grid_thw=torch.tensor([[3, 4, 4]]),
                                                second_per_grid_ts=torch.tensor([2.0]))
    assert pos[0, 0].tolist() == [0, 1] + [2] * 4 + [52] * 4 + [102] * 4 + [103, 104, 105]
    assert pos[1, 0, 2:14].tolist() == [2, 2, 3, 3] * 3 and pos[2, 0, 2:14].tolist() == [2, 3, 2, 3] * 3
    assert pos[:, 0, 14:].tolist() == [[103, 104, 105]] * 3
    assert delta.tolist() == [[106 - 17]]
    # left padding is skipped, the positions of the real tokens are unchanged
    padded, d2 = model_io.qwen2_5_vl_rope_index(fake, torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], 1),
                                                video_grid_thw=torch.tensor([[3, 4, 4]]),
                                                second_per_grid_ts=torch.tensor([2.0]),
                                                attention_mask=torch.tensor([[0, 0] + [1] * 17]))
    assert torch.equal(padded[:, :, 2:], pos) and d2.tolist() == delta.tolist()
    with pytest.raises(ValueError, match="12 video placeholder tokens but its grid"):
        model_io.qwen2_5_vl_rope_index(fake, ids, video_grid_thw=torch.tensor([[2, 4, 4]]))


def test_loaded_model_uses_the_reference_positions_everywhere(loaded, clip):
    """Images and text-only prompts get transformers' positions unchanged; a video prompt's text after the video
    starts past the video's time range, in the full forward and in ``generate`` alike: the teacher-forced log-probs
    of a generated answer equal the ones ``generate`` reported (the hf backend's behaviour log-probs)."""
    model, proc = loaded
    frames, fps = clip
    inner = model.model
    original = type(inner).get_rope_index.__get__(inner)
    image = model_io.build_inputs(proc, "Q", image=frames[0])
    args = {k: image.get(k) for k in ("input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask")}
    assert torch.equal(inner.get_rope_index(**args)[0], original(**args)[0])
    video = model_io.build_inputs(proc, "Where is the hook?", frames=frames, fps=fps)
    args = {k: video.get(k) for k in ("input_ids", "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts",
                                      "attention_mask")}
    ours, theirs = inner.get_rope_index(**args)[0], original(**args)[0]
    is_video = video["mm_token_type_ids"][0] == 2
    after = int(is_video.nonzero().max()) + 1
    assert int(ours[:, 0, after].min()) == int(ours[:, 0, is_video].max()) + 1  # grid [4, 6, 8]: time reaches 12
    assert int(theirs[0, 0, after]) < int(theirs[0, 0, is_video].max())  # transformers' rule: inside the video
    with torch.no_grad():
        out = model.generate(**video, max_new_tokens=6, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        n = len(out.logits)
        full = model(input_ids=out.sequences, attention_mask=torch.ones_like(out.sequences),
                     mm_token_type_ids=torch.nn.functional.pad(video["mm_token_type_ids"], (0, n)),
                     pixel_values_videos=video["pixel_values_videos"], video_grid_thw=video["video_grid_thw"],
                     second_per_grid_ts=video["second_per_grid_ts"]).logits
    gen = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)
    tf = torch.log_softmax(full[:, -n - 1:-1].float(), -1)
    assert (gen - tf).abs().max().item() < 1e-4
