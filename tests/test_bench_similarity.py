"""bench/similarity.py: its pure pieces (hand-computed), and one pass of its candidates on a stand-in encoder (no
model, no timed assertions)."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from bench.similarity import (G, VARIANTS, compare_scores, example_instances, hit_rate, make_groups,
                              measure, padded_tokens, shard_encodes, step_pairs, texts_to_encode, valid_pairs,
                              variants)
from data.schema import Instance
from rewards.similarity import SentenceSimilarity


def _inst(i: int, answer: str, qa_type: str = "video_summary_gpt") -> Instance:
    return Instance(id=f"v{i}", qa_type=qa_type, data_source="S", question="q", answer=answer)


class _HashEncoder:
    """Stands in for the model: a fixed unit vector per text (independent of the batch), counts what it encodes."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts, **kw):
        self.calls.append(list(texts))
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=16) for t in texts]
        out = np.array(rows, dtype=np.float32).reshape(len(texts), 16)
        return out / np.linalg.norm(out, axis=1, keepdims=True) if len(texts) else out


def test_variants_are_g_predictions_with_the_intended_duplicates():
    ref = "The grasper holds the duct. The hook dissects the tissue in short careful strokes."
    out = variants(ref, "Another caption.")
    assert [k for k, _ in out] == list(VARIANTS) and len(out) == G == 8
    texts = dict(out)
    assert texts["reference"] == ref
    assert texts["first_half"] == "The grasper holds the duct. The hook" == texts["first_half_again"]  # 7 of 14
    assert texts["first_sentence"] == "The grasper holds the duct."
    assert texts["other_row"] == "Another caption." and texts["empty"] == ""
    assert texts["in_prose"] == "In this clip, the grasper holds the duct. The hook dissects the tissue in short " \
                                "careful strokes."
    # every fifth word dropped (k % 5 == 4, 0-based): "duct." and "tissue"
    assert texts["words_dropped"] == "The grasper holds the The hook dissects the in short careful strokes."
    one = dict(variants("A clip is applied.", "x"))
    assert one["first_sentence"] == "A clip is applied." and one["first_half"] == "A clip"


def test_make_groups_picks_another_reference_of_the_same_family():
    insts = [_inst(0, "summary A"), _inst(1, "region A", "region_caption_gpt"), _inst(2, "summary A"),
             _inst(3, "summary B"), _inst(4, "region only", "region_caption_gemini")]
    other = [dict(g.predictions)["other_row"] for g in make_groups(insts)]
    # same family with a different text first; a family with one distinct text falls back to any other text
    assert other == ["summary B", "region only", "summary B", "summary A", "region A"]
    lone = make_groups([_inst(0, "s"), _inst(1, "r", "region_caption_gpt")])
    assert [dict(g.predictions)["other_row"] for g in lone] == ["r", "s"]  # no other text in the family
    assert dict(make_groups([_inst(0, "only")])[0].predictions)["other_row"] == "only"


def test_step_pairs_takes_whole_groups_in_order():
    groups = make_groups([_inst(i, f"caption number {i}") for i in range(3)])
    insts, refs, preds = step_pairs(groups, 16)
    assert refs == ["caption number 0"] * 8 + ["caption number 1"] * 8
    assert [i.id for i in insts] == ["v0"] * 8 + ["v1"] * 8
    assert preds[:8] == [t for _, t in groups[0].predictions]
    for bad in (12, 0):
        with pytest.raises(ValueError, match="multiple of G"):
            step_pairs(groups, bad)
    with pytest.raises(ValueError, match="needs 4 references; only 3"):
        step_pairs(groups, 32)


def _two_groups() -> tuple[list[str], list[str]]:
    a = ["a", "x", "x", "y", "", "z", "z", "w"]
    b = ["b", "a", "v", "v", " ", "u", "u", "t"]
    return ["a"] * 8 + ["b"] * 8, a + b


def test_texts_to_encode_and_valid_pairs_by_hand():
    refs, preds = _two_groups()
    assert valid_pairs(refs, preds) == [i for i in range(16) if i not in (4, 12)]
    assert texts_to_encode(refs, preds) == ["a", "b", "x", "y", "z", "w", "v", "u", "t"]
    assert texts_to_encode(refs, preds, cached={"a", "b"}) == ["x", "y", "z", "w", "v", "u", "t"]
    assert texts_to_encode([" r "], ["r"]) == ["r"]  # stripped like the cache keys
    assert texts_to_encode(["r"], [""]) == []


def test_texts_to_encode_matches_what_sentence_similarity_encodes():
    refs, preds = _two_groups()
    enc = _HashEncoder()
    sim = SentenceSimilarity(encoder=enc)
    sim.embed(["a", "b"])  # a later epoch: the references are cached
    enc.calls.clear()
    sim.similarity(refs, preds)
    assert enc.calls == [texts_to_encode(refs, preds, cached={"a", "b"})]
    cold = SentenceSimilarity(encoder=_HashEncoder())
    cold.similarity(refs, preds)
    assert cold._encoder.calls == [texts_to_encode(refs, preds)]  # noqa: SLF001


def test_shard_encodes_by_hand():
    refs, preds = _two_groups()
    assert shard_encodes(refs, preds, 1, "round_robin") == 9
    # round-robin over 2: worker 0 gets items 0,2,4,6 of each group (a x _ z | b v _ u): {a,b,x,z,v,u} = 6;
    # worker 1 gets x y z w | a v u t with references a, b: 9
    assert shard_encodes(refs, preds, 2, "round_robin") == 6 + 9
    assert shard_encodes(refs, preds, 2, "by_group") == 5 + 5
    assert shard_encodes(refs, preds, 1, "by_group", cached=["a", "b"]) == 7
    assert shard_encodes(refs, preds, 2, "round_robin", cached=["a", "b"]) == 4 + 7
    assert shard_encodes(refs, preds, 2, "by_group", cached=["a", "b"]) == 4 + 3
    with pytest.raises(ValueError, match="workers"):
        shard_encodes(refs, preds, 0, "round_robin")
    with pytest.raises(ValueError, match="dealing"):
        shard_encodes(refs, preds, 2, "random")


def test_padded_tokens_by_hand():
    texts, counts = ["aaaa", "a", "aa", "aaa"], [4, 1, 2, 3]
    assert padded_tokens(texts, counts, 1) == 10
    assert padded_tokens(texts, counts, 2) == 2 * 4 + 2 * 2  # (aaaa, aaa) padded to 4, (aa, a) to 2
    assert padded_tokens(texts, counts, 3) == 3 * 4 + 1
    assert padded_tokens(texts, counts, 64) == 16
    assert padded_tokens([], [], 8) == 0
    with pytest.raises(ValueError):
        padded_tokens(texts, counts[:2], 2)
    with pytest.raises(ValueError):
        padded_tokens(texts, counts, 0)


def test_hit_rate_and_compare_scores():
    assert hit_rate({"hits": 2, "misses": 1}, {"hits": 8, "misses": 3}) == 6 / 8
    assert np.isnan(hit_rate({"hits": 1, "misses": 1}, {"hits": 1, "misses": 1}))
    ref = np.array([0.5, 0.25, 0.0])
    out = compare_scores(ref, {"x": ref.copy(), "y": ref + np.array([0, 4e-7, 0])})
    assert out["same_scores"] and not out["bit_identical"]
    assert out["max_abs_diff"] == pytest.approx(4e-7) and out["diffs"]["x"] == 0.0
    assert compare_scores(ref, {"x": ref})["bit_identical"]
    assert not compare_scores(ref, {"z": ref + 1e-5})["same_scores"]
    with pytest.raises(ValueError, match="2 scores for 3 pairs"):
        compare_scores(ref, {"short": ref[:2]})


def test_example_instances_reads_the_caption_examples(examples, tmp_path):
    import json

    p = tmp_path / "ex.json"
    p.write_text(json.dumps(examples))
    got = example_instances(p)
    assert [i.qa_type for i in got] == ["region_caption_gemini", "region_caption_gpt", "video_summary_gemini",
                                        "video_summary_gpt"]
    assert got[1].answer == examples["region_caption_gpt"]["answer"] and got[1].family == "rc"
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="qa_type"):
        example_instances(p)


def test_measure_runs_every_candidate_on_a_stand_in_encoder():
    insts = [_inst(i, f"the instrument number {i} moves toward the duct") for i in range(3)]
    groups = make_groups(insts)
    sim = SentenceSimilarity(encoder=_HashEncoder())
    sim.embed([g.instance.answer for g in groups])
    ref_cache = dict(sim._cache)  # noqa: SLF001
    rows, s = measure(sim, groups, 16, ref_cache, rounds=1, warmup=0, split=True)
    _, refs, preds = step_pairs(groups, 16)
    by = {r["candidate"]: r for r in rows}
    assert set(by) == {"step", "one_by_one", "cold", "cold_split", "floor", "floor_cold"}
    n_new, n_all = len(texts_to_encode(refs, preds, ref_cache)), len(texts_to_encode(refs, preds))
    # per group (one-sentence references): reference, first_sentence and other_row are cached references, the
    # empty one is skipped, first_half comes twice: 3 new texts; cold adds the 3 references (group 1's other_row
    # is reference 2, outside the step)
    assert n_new == 2 * 3 and n_all == n_new + 3
    assert (by["step"]["texts_encoded"], by["step"]["model_calls"]) == (n_new, 1)
    assert (by["one_by_one"]["texts_encoded"], by["one_by_one"]["model_calls"]) == (n_new, n_new)
    assert (by["cold"]["texts_encoded"], by["cold"]["model_calls"]) == (n_all, 1)
    assert (by["cold_split"]["texts_encoded"], by["cold_split"]["model_calls"]) == (n_all, 2)
    # 14 valid pairs -> 28 embedding rows per call; step misses only the 6 new texts, cold 9
    assert by["step"]["hit_rate"] == pytest.approx(22 / 28) and by["cold"]["hit_rate"] == pytest.approx(19 / 28)
    assert s["same_scores"] and s["bit_identical"]  # the stand-in's vectors do not depend on the batch
    assert s["path"].startswith("ok") and s["encoded_step"] == n_new and s["valid_pairs"] == 14
