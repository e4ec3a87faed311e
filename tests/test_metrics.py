"""Task metrics (rewards/metrics.py), against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import metrics as M
from rewards.parsing import CvsScores

SQ = (0.0, 0.0, 2.0, 2.0)
SHIFTED = (1.0, 1.0, 3.0, 3.0)  # overlaps SQ in a 1x1 square: IoU = 1 / (4 + 4 - 1) = 1/7


def test_temporal_iou_hand_values():
    assert M.temporal_iou([(0, 10)], [(5, 15)]) == pytest.approx(5 / 15)
    # union of predictions [0,2] ∪ [4,6] against [1,5]: overlap 1 + 1, union 4 + 4 - 2
    assert M.temporal_iou([(0, 2), (4, 6)], [(1, 5)]) == pytest.approx(2 / 6)
    assert M.temporal_iou([(0, 4), (2, 6)], [(0, 6)]) == 1.0  # overlapping predictions merge
    assert M.temporal_iou([(0, 1)], [(2, 3)]) == 0.0
    assert M.temporal_iou([], [(0, 1)]) == 0.0
    assert M.temporal_iou([(1, 1)], [(1, 1)]) == 1.0 and M.temporal_iou([(1, 1)], [(2, 2)]) == 0.0
    assert M.merge_segments([(5, 6), (0, 2), (2, 3), (4, 4.5)]) == [(0, 3), (4, 4.5), (5, 6)]


def test_miou_at_counts_below_threshold_as_zero():
    assert M.miou_at([0.2, 0.4, 0.6], 0.3) == pytest.approx(1.0 / 3)
    assert M.miou_at([0.2, 0.4, 0.6], 0.5) == pytest.approx(0.2)
    assert M.miou_at([0.3], 0.3) == pytest.approx(0.3)  # at the threshold counts
    assert M.miou_at([], 0.3) == 0.0
    assert M.thresholded_iou(float("nan"), 0.0) == 0.0


def test_box_iou_hand_values():
    assert M.box_iou(SQ, SHIFTED) == pytest.approx(1 / 7)
    assert M.box_iou(SQ, SQ) == 1.0
    assert M.box_iou(SQ, (2.0, 0.0, 4.0, 2.0)) == 0.0  # touching edges
    assert M.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert M.box_iou((0, 0, 4, 1), (1, 0, 2, 1)) == pytest.approx(1 / 4)


def test_st_mean_iou_carry_forward():
    gt = {1.0: SQ, 2.0: SQ, 3.0: SQ}
    assert M.st_mean_iou({1.0: SQ}, gt) == 1.0  # 2.0 and 3.0 take the 1.0 box
    assert M.st_mean_iou({2.0: SQ}, gt) == pytest.approx(2 / 3)  # nothing before 2.0: 1.0 scores 0
    assert M.st_mean_iou({1.0: SQ, 3.0: SHIFTED}, gt) == pytest.approx((1 + 1 + 1 / 7) / 3)
    assert M.st_mean_iou({1.04: SQ}, {1.0: SQ}) == 1.0  # within the 0.05 s key tolerance
    assert M.st_mean_iou({1.2: SQ}, {1.0: SQ, 2.0: SQ}) == pytest.approx(0.5)
    assert M.st_mean_iou({}, gt) == 0.0 and M.st_mean_iou({1.0: SQ}, {}) == 0.0


def test_dvc_f1_hand_values():
    # one of two references found exactly: P = 1, R = 1/2 at every threshold
    assert M.dvc_f1([(0, 10)], [(0, 10), (20, 30)]) == pytest.approx(2 / 3)
    # one-to-one: the second prediction (IoU 8/12 with the same reference) cannot match again
    assert M.dvc_f1([(0, 10), (2, 12)], [(0, 10)]) == pytest.approx(2 / 3)
    # IoU 10/16 = 0.625 matches at 0.3 and 0.5, not at 0.7
    assert M.dvc_f1([(0, 10)], [(0, 16)]) == pytest.approx(2 / 3)
    # greedy by IoU, not maximum matching: (0, 9) takes (0, 10) first (IoU 0.9); then (-2, 6) finds (0, 10)
    # used and (5, 14) below 0.25 (1/16), though (0, 9)-(5, 14) (4/14) and (-2, 6)-(0, 10) (0.5) would both match
    assert M.dvc_f1([(0, 9), (-2, 6)], [(0, 10), (5, 14)], thresholds=[0.25]) == pytest.approx(0.5)
    assert M.dvc_f1([], [(0, 1)]) == 0.0
    assert M.dvc_f1([], []) == 1.0 and M.dvc_f1([(0, 1)], []) == 0.0
    assert M.dvc_f1([(0, 10), (20, 30)], [(20, 30), (0, 10)]) == 1.0


@pytest.mark.parametrize("total, cls", [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 3)])
def test_cvs_class_boundaries(total, cls):
    assert M.cvs_class(total) == cls


def test_cvs_accuracy_compares_classes_not_scores():
    assert M.cvs_accuracy(CvsScores(2, 1, 0), CvsScores(0, 1, 2)) == 1.0  # both sum to 3
    assert M.cvs_accuracy(CvsScores(2, 1, 1), CvsScores(2, 1, 0)) == 0.0  # 4 vs 3


@pytest.mark.parametrize("mean, level", [(1.0, "novice"), (2.0, "novice"), (2.01, "intermediate"),
                                         (3.5, "intermediate"), (3.51, "expert"), (5.0, "expert")])
def test_skill_level_boundaries(mean, level):
    assert M.skill_level(mean) == level


def test_skill_accuracy():
    a = {"x": 2.0, "y": 2.0, "z": 2.0}  # mean 2 -> novice
    b = {"x": 1.0, "y": 2.0, "z": 3.0}  # mean 2 -> novice
    c = {"x": 2.0, "y": 2.0, "z": 3.0}  # mean 2.33 -> intermediate
    assert M.skill_accuracy(a, b) == 1.0 and M.skill_accuracy(a, c) == 0.0 and M.skill_accuracy({}, a) == 0.0


def test_label_and_choice_accuracy():
    assert M.label_match("Tying.", "tying") == 1.0
    assert M.label_match("Suture/Needle_handling", "suture needle handling") == 1.0
    assert M.label_match("cutting", "tying") == 0.0 and M.label_match("", "") == 0.0
    assert M.choice_accuracy("b", "B") == 1.0 and M.choice_accuracy("A", "B") == 0.0
    assert M.choice_accuracy(None, "B") == 0.0
    assert M.grade_distance("grade 3", "Grade 1", ["grade 0", "grade 1", "grade 2", "grade 3"]) == 2
    assert M.grade_distance("grade 9", "grade 1", ["grade 1"]) is None


def _char_embed(texts):
    """A deterministic bag-of-letters embedding (26 dims)."""
    out = np.zeros((len(texts), 26))
    for i, t in enumerate(texts):
        for ch in t.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out


def test_nearest_label_uses_the_given_embedding():
    labels = ["cutting", "tying", "suturing"]
    assert M.nearest_label("tyinng", labels, _char_embed) == "tying"
    assert M.nearest_label("sutures", labels, _char_embed) == "suturing"
    assert M.nearest_label("", labels, _char_embed) is None
    assert M.nearest_label("x", [], _char_embed) is None
    assert M.nearest_label("123", labels, _char_embed) is None  # zero vector
    assert M.nearest_label("tying", labels, lambda t: np.full((len(t), 3), np.nan)) is None
    assert M.nearest_label("tying", labels, lambda t: np.ones((2, 3))) is None  # wrong row count


segs = st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(0, 1e3)).map(lambda t: (t[0], t[0] + t[1])), max_size=6)
boxes = st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.floats(0, 1e4), st.floats(0, 1e4)).map(
    lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


@settings(max_examples=100, deadline=None)
@given(segs, segs, boxes, boxes)
def test_metrics_stay_in_unit_interval(p, g, a, b):
    for v in (M.temporal_iou(p, g), M.dvc_f1(p, g), M.box_iou(a, b), M.st_mean_iou({1.0: a}, {1.0: b, 2.0: a})):
        assert 0.0 <= v <= 1.0 and not math.isnan(v)
    assert M.temporal_iou(p, g) == pytest.approx(M.temporal_iou(g, p))
