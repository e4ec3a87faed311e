"""Build a tiny, randomly initialised Qwen2.5-VL checkpoint offline (no model hub), for CPU tests and the demo.

The checkpoint is an ordinary Hugging Face folder with the official classes and files a real
``Qwen/Qwen2.5-VL-7B-Instruct`` checkpoint has, so ``learner.model_io.load_model_and_processor`` loads both the
same way: ``Qwen2_5_VLForConditionalGeneration`` (``config.json``, ``model.safetensors``,
``generation_config.json``), ``Qwen2_5_VLProcessor`` with ``Qwen2VLImageProcessor`` and ``Qwen2VLVideoProcessor``
(``processor_config.json``), and the fast byte-level BPE ``Qwen2Tokenizer`` (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``).

The tokenizer is trained here with the ``tokenizers`` library on a small corpus (by default the synthetic
MedVidBench prompts and answers of ``data.synthetic``), with Qwen2's pre-tokenizer (its split regex + byte-level
mapping) and NFC normaliser, then the Qwen special tokens are appended in Qwen's order: ``<|endoftext|>``,
``<|im_start|>``, ``<|im_end|>``, ..., ``<|vision_start|>``, ``<|vision_end|>``, ``<|vision_pad|>``,
``<|image_pad|>``, ``<|video_pad|>`` (special), then ``<tool_call>`` ... ``<|file_sep|>`` (added, not special).
The model config's ``image_token_id``/``video_token_id``/``vision_start_token_id``/``vision_end_token_id`` and the
text config's bos/eos/pad ids are taken from that tokenizer. The chat template is Qwen2.5-VL's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
QWEN_ADDED_TOKENS: tuple[str, ...] = (  # added after the special ones, not special (as in Qwen2.5)
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)

# The chat template of Qwen2.5-VL-*-Instruct: a default system turn, <|vision_start|><|image_pad|>/<|video_pad|>
# <|vision_end|> per media item, optional "Picture n: "/"Video n: " labels (add_vision_id).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INFO_FILE = "medgrpo_tiny.json"


@dataclass(frozen=True)
class TinySizes:
    """Sizes of the tiny model (keyword arguments of ``build_tiny_model``)."""

    vocab_size: int = 1024  # BPE target including the 256 byte symbols; the Qwen tokens come on top
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_hidden_size: int = 32
    vision_depth: int = 2
    vision_num_heads: int = 2
    vision_intermediate_size: int = 64
    max_position_embeddings: int = 4096
    tokens_per_second: int = 2  # Qwen2.5-VL's temporal position rate (the 7B uses 2)
    min_pixels: int = 4 * 28 * 28  # the saved processors' default pixel budget per image / frame
    max_pixels: int = 48 * 28 * 28

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{f.name} must be a positive integer, got {v!r}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 300 (256 byte symbols + merges)")
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError(f"hidden_size={self.hidden_size} must split into num_attention_heads="
                             f"{self.num_attention_heads} heads of a size divisible by 4 (multimodal RoPE)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.vision_hidden_size % self.vision_num_heads or (self.vision_hidden_size // self.vision_num_heads) % 4:
            raise ValueError(f"vision_hidden_size={self.vision_hidden_size} must split into vision_num_heads="
                             f"{self.vision_num_heads} heads of a size divisible by 4 (2-D RoPE)")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels={self.min_pixels} must be <= max_pixels={self.max_pixels}")


def _sizes(overrides: dict[str, Any]) -> TinySizes:
    known = {f.name for f in dataclasses.fields(TinySizes)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown size argument(s) {unknown}; allowed: {', '.join(sorted(known))}")
    sizes = TinySizes(**overrides)
    sizes.validate()
    return sizes


def _corpus(corpus_texts: Optional[Iterable[str]], seed: int) -> list[str]:
    if corpus_texts is None:
        from data.synthetic import corpus_texts as synthetic_corpus

        return synthetic_corpus(seed=seed)
    if isinstance(corpus_texts, str):
        raise TypeError("corpus_texts must be an iterable of strings, not one string")
    texts = list(corpus_texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"corpus_texts must hold strings; items {bad[:5]} are not")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("corpus_texts holds no non-empty text to train the tokenizer on")
    return texts


def corpus_of(files: Iterable[Union[str, os.PathLike]]) -> list[str]:
    """The tokenizer's training texts from MedVidBench JSONL files: every row's question and answer, in file order."""
    from data.reader import read_instances

    corpus: list[str] = []
    for f in files:
        for inst in read_instances(f).instances:
            corpus += [inst.question] + ([inst.answer] if inst.answer else [])
    return corpus


def build_tokenizer(corpus_texts: Iterable[str], vocab_size: int = 1024, model_max_length: int = 4096) -> Any:
    """A byte-level BPE ``Qwen2Tokenizer`` trained on ``corpus_texts`` with the Qwen special tokens appended."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    texts = list(corpus_texts)
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None, errors="replace",
                         model_max_length=model_max_length)  # adds <|endoftext|> as the first added token
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED_TOKENS])
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    base = len(model["vocab"])
    ids = [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS + QWEN_ADDED_TOKENS]
    if ids != list(range(base, base + len(ids))):  # pragma: no cover - guards a transformers behaviour change
        raise RuntimeError(f"Qwen tokens did not get consecutive ids after the BPE vocabulary: {ids}")
    return tok


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """Id of every Qwen special token in ``tokenizer``."""
    return {t: int(tokenizer.convert_tokens_to_ids(t)) for t in QWEN_SPECIAL_TOKENS}


def tiny_config(tokenizer: Any, sizes: TinySizes) -> Any:
    """A ``Qwen2_5_VLConfig`` sized by ``sizes`` whose token ids match ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    ids = special_token_ids(tokenizer)
    head_dim = sizes.hidden_size // sizes.num_attention_heads
    half = head_dim // 2
    hw = half * 3 // 8  # Qwen2.5-VL splits the rotary half-dim into (t, h, w) = (1/4, 3/8, 3/8): 128 -> 16/24/24
    vocab = (len(tokenizer) + 63) // 64 * 64  # padded like Qwen's embedding tables
    text = dict(
        vocab_size=vocab, hidden_size=sizes.hidden_size, intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers, num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads, max_position_embeddings=sizes.max_position_embeddings,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                            "mrope_section": [half - 2 * hw, hw, hw]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        use_cache=True, tie_word_embeddings=False,
    )
    vision = dict(
        depth=sizes.vision_depth, hidden_size=sizes.vision_hidden_size, num_heads=sizes.vision_num_heads,
        intermediate_size=sizes.vision_intermediate_size, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        window_size=112, out_hidden_size=sizes.hidden_size, fullatt_block_indexes=[sizes.vision_depth - 1],
        tokens_per_second=sizes.tokens_per_second, in_channels=3,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def build_processor(tokenizer: Any, sizes: TinySizes) -> Any:
    """The official ``Qwen2_5_VLProcessor`` around ``tokenizer`` (torchvision image and video processors)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=sizes.min_pixels, max_pixels=sizes.max_pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=sizes.min_pixels, max_pixels=sizes.max_pixels,
                                            cap_pixels_per_frame=True)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                               chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


def build_tiny_model(out_dir: Union[str, os.PathLike], corpus_texts: Optional[Iterable[str]] = None, seed: int = 0,
                     head_size: Optional[int] = None, **sizes: int) -> Path:
    """Train the tokenizer, build the model with seeded random weights, save model + processor to ``out_dir``.

    ``corpus_texts``: texts for the tokenizer (default: ``data.synthetic.corpus_texts(seed)``); ``sizes``: any
    field of ``TinySizes``. ``head_size``: the text attention head size, i.e. ``num_attention_heads =
    hidden_size // head_size`` and, unless given, ``num_key_value_heads`` half of that (at least 1); the default
    sizes give 16, which vLLM's CPU attention refuses (it takes 32, 64, 80, ...). The global torch RNG is left
    untouched. Returns ``out_dir`` as a ``Path``.
    """
    import torch
    import transformers
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    if head_size is not None:
        hidden = sizes.get("hidden_size", TinySizes.hidden_size)
        if not isinstance(head_size, int) or head_size < 4 or hidden % head_size:
            raise ValueError(f"head_size={head_size!r} must be an integer >= 4 dividing hidden_size={hidden}")
        sizes = {"num_attention_heads": hidden // head_size,
                 "num_key_value_heads": max(1, hidden // head_size // 2), **sizes}
        if sizes["num_attention_heads"] != hidden // head_size:
            raise ValueError(f"head_size={head_size} and num_attention_heads={sizes['num_attention_heads']} "
                             f"disagree for hidden_size={hidden}")
    cfg_sizes = _sizes(sizes)
    texts = _corpus(corpus_texts, seed)
    tokenizer = build_tokenizer(texts, cfg_sizes.vocab_size, cfg_sizes.max_position_embeddings)
    config = tiny_config(tokenizer, cfg_sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    ids = special_token_ids(tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=False)
    processor = build_processor(tokenizer, cfg_sizes)

    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("pytorch_model.bin", "model.safetensors.index.json"):
        if (out / stale).exists():  # a leftover of another checkpoint would be picked up instead of ours
            (out / stale).unlink()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
    info = {"builder": "data.tiny_model.build_tiny_model", "seed": seed, "sizes": dataclasses.asdict(cfg_sizes),
            "parameters": int(sum(p.numel() for p in model.parameters())), "vocab": len(tokenizer),
            "corpus_texts": len(texts), "corpus_sha256": digest, "transformers": transformers.__version__}
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return out
