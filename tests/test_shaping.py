"""Reward shaping (SPEC §4–5): length rewards, multi-grade ordinal reward, BLEU and the recitation term."""
from __future__ import annotations

import math

import pytest

from rewards.shaping import (graded_reward, length_reward, recitation_reward, recitation_score, sentence_bleu,
                             tokenize)


def test_length_reward_modes():
    assert length_reward(64, 256, correct=False, mode="ecr") == 0.25
    assert length_reward(512, 256, correct=False, mode="ecr") == 1.0
    assert length_reward(64, 256, correct=False, mode="cwr") == 0.0
    assert length_reward(192, 256, correct=True, mode="cwr") == 0.75
    assert length_reward(0, 256, correct=True, mode="cwr") == 0.0
    assert length_reward(999, 256, correct=True, mode="none") == 0.0
    for bad in (dict(n_tokens=-1, target=10), dict(n_tokens=5, target=0), dict(n_tokens=2.5, target=10)):
        with pytest.raises(ValueError):
            length_reward(mode="ecr", **bad)
    with pytest.raises(ValueError, match="mode"):
        length_reward(5, 10, mode="always")


def test_graded_reward_hand_values():
    assert graded_reward(3, 3) == 1.0
    assert graded_reward(2, 3) == 0.5
    assert graded_reward(5, 3) == 0.2
    assert graded_reward(0, 3) == 0.1
    assert graded_reward(2.5, 3) == 0.8
    assert graded_reward(None, 3) == 0.0 and graded_reward(float("nan"), 3) == 0.0
    with pytest.raises(ValueError):
        graded_reward(1, float("inf"))


def test_bleu_hand_values():
    assert tokenize("The cat, sat.") == ["the", "cat", ",", "sat", "."]
    assert sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # precisions 5/6, 3/5, 2/4, 1/3 -> (1/12) ** (1/4); same length, no brevity penalty
    assert sentence_bleu("the cat sat on a mat", "the cat sat on the mat") == pytest.approx((1 / 12) ** 0.25)
    # 3/4, 1/3, then no trigram / 4-gram match: smoothed eps/2, eps/1 with eps 0.1
    assert sentence_bleu("the cat sat on", "the cat ran on") == pytest.approx((0.75 / 3 * 0.05 * 0.1) ** 0.25)
    # brevity: c=3 vs r=6 -> exp(1 - 2); effective order 3, all precisions 1
    assert sentence_bleu("the cat sat", "the cat sat on the mat") == pytest.approx(math.exp(-1.0))
    # clipping: "the the the the" against "the cat": 1/4 unigram, no higher orders match
    assert sentence_bleu("the the the the", "the cat") == pytest.approx((0.25 * (0.1 / 3) * (0.1 / 2) * 0.1) ** 0.25)
    assert sentence_bleu("dog", "the cat") == 0.0
    assert sentence_bleu("", "the cat") == 0.0


def test_recitation_score_and_penalty():
    knowledge = ("Cholecystectomy removes the gallbladder. The cystic duct and cystic artery are clipped "
                 "and divided before the gallbladder is dissected from the liver bed.")
    copied = "The cystic duct and cystic artery are clipped and divided before the gallbladder is dissected from the liver bed."
    own = "I see a grasper retracting tissue near the liver, so the answer is B."
    assert recitation_score(copied, knowledge) == pytest.approx(1.0)  # one sentence verbatim: no brevity excuse
    low = recitation_score(own, knowledge)
    assert 0.0 <= low < 0.1
    assert recitation_reward(copied, knowledge, -0.5) == pytest.approx(-0.5)
    assert recitation_reward(copied, knowledge, 0.0) == 0.0
    assert recitation_score("", knowledge) == 0.0 and recitation_score(copied, "") == 0.0
    assert recitation_score(copied, ["unrelated text.", knowledge]) == pytest.approx(1.0)
