"""MedLoc-R1 IoU-threshold scheduler (SPEC §3) and the VRFT-Aug stage curriculum: hand-derived trajectories."""
from __future__ import annotations

import json
import math

import pytest

from rewards.curriculum import IoUThresholdScheduler


def test_scripted_tau_trajectory_with_window_refresh():
    """window 4, SPEC tables. Every step: two groups with mean reward 0.9 (h 0.9, s 0).

    steps 1-3  IoU .6  window not full                                  τ .3
    step 4     full, m = .6-.3 = .3  -> raise .3+.15 = .45, keep steps 3,4
    step 5     window 3 (refresh)                                       τ .45
    step 6     full, m = .15 -> raise .45+.15 = .60 (tier 2 now), keep 5,6
    step 7     window 3
    step 8     full, m = .6-.6 = 0 < .1: margin fails                   τ .6
    step 9     IoU .9: window 6..9, mean IoU .675, m .075 fails
    step 10    IoU .9: window 7..10, mean IoU .75, m .15 -> raise .6+.10 = .70, keep 9,10
    step 11    window 3
    step 12    IoU .9, full, P/S .75/.35, m .2 -> raise .7+.10 = .80 (= tau_max)
    steps 13-14: window full again at 14, all conditions hold, but τ is at tau_max: no raise.
    """
    s = IoUThresholdScheduler(window=4)
    ious = [0.6] * 8 + [0.9] * 6
    traj, raised, wlen = [], [], []
    for iou in ious:
        traj.append(s.observe([0.9, 0.9], [iou, iou]))
        raised.append(s.diagnostics["raised"])
        wlen.append(s.diagnostics["window_len"])
    assert traj == [0.3, 0.3, 0.3, 0.45, 0.45, 0.6, 0.6, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8, 0.8]
    assert [i + 1 for i, r in enumerate(raised) if r] == [4, 6, 10, 12]
    # window_len is before the drop that follows a raise
    assert wlen == [1, 2, 3, 4, 3, 4, 3, 4, 4, 4, 3, 4, 3, 4]
    assert len(s._win) == 4
    d = s.diagnostics
    assert d["tau"] == 0.8 and d["full"] and d["cond_hit"] and d["cond_stable"] and d["cond_margin"]
    assert not d["raised"]
    assert s.raises == [(4, 0.3, 0.45), (6, 0.45, 0.6), (10, 0.6, 0.7), (12, 0.7, 0.8)]


def _fill(s: IoUThresholdScheduler, rewards, iou, n):
    for _ in range(n):
        s.observe(rewards, [iou])
    return s.diagnostics


def test_no_raise_when_any_one_condition_fails():
    d = _fill(IoUThresholdScheduler(window=4), [0.7, 0.7], 0.9, 4)  # h .7 < P .8
    assert (d["cond_hit"], d["cond_stable"], d["cond_margin"], d["raised"]) == (False, True, True, False)
    # h = .85, s = sqrt(((3 * .15²) + .45²) / 4) = .2598 > S .2
    d = _fill(IoUThresholdScheduler(window=4), [1.0, 1.0, 1.0, 0.4], 0.9, 4)
    assert d["h"] == pytest.approx(0.85) and d["s"] == pytest.approx(math.sqrt(0.0675))
    assert (d["cond_hit"], d["cond_stable"], d["cond_margin"], d["raised"]) == (True, False, True, False)
    d = _fill(IoUThresholdScheduler(window=4), [0.9, 0.9], 0.35, 4)  # m .05 < .1
    assert d["m"] == pytest.approx(0.05)
    assert (d["cond_hit"], d["cond_stable"], d["cond_margin"], d["raised"]) == (True, True, False, False)
    s = IoUThresholdScheduler(window=4)
    d = _fill(s, [0.9, 0.9], 0.9, 3)  # every condition holds, window not full
    assert (d["full"], d["cond_hit"], d["cond_stable"], d["cond_margin"]) == (False, True, True, True)
    assert s.threshold == 0.3 and not d["raised"]


def test_window_statistics_pool_groups_and_use_population_std():
    s = IoUThresholdScheduler(window=5)
    s.observe([1.0], [0.5])
    s.observe([0.0, 0.0, 0.0], [0.2, 0.4])  # step mean IoU .3
    d = s.diagnostics
    assert d["h"] == 0.25  # every group counts once (not the mean of step means, .5)
    assert d["s"] == pytest.approx(math.sqrt(0.1875))  # ddof 0 over [1, 0, 0, 0]
    assert d["m"] == pytest.approx((0.5 + 0.3) / 2 - 0.3)


def test_tables_and_delta_schedules():
    s = IoUThresholdScheduler()
    assert s.thresholds_at(0.3) == (0.80, 0.20)
    assert s.thresholds_at(0.6) == (0.75, 0.35)
    assert s.thresholds_at(0.75) == (0.55, 0.40)
    assert (s.delta(0.5499), s.delta(0.55), s.delta(0.7499), s.delta(0.75)) == (0.15, 0.10, 0.10, 0.05)
    lin = IoUThresholdScheduler(schedule="linear")
    cos = IoUThresholdScheduler(schedule="cosine")
    assert lin.delta(0.3) == pytest.approx(0.15) and lin.delta(0.8) == pytest.approx(0.05)
    assert lin.delta(0.425) == pytest.approx(0.125)  # u = .25
    assert cos.delta(0.425) == pytest.approx(0.05 + 0.1 * (1 + math.cos(math.pi / 4)) / 2)
    assert cos.delta(0.55) == pytest.approx(0.10) and cos.delta(0.8) == pytest.approx(0.05)
    _fill(lin, [1.0, 1.0], 1.0, 30)
    assert lin.threshold == pytest.approx(0.45)
    with pytest.raises(ValueError, match="schedule"):
        IoUThresholdScheduler(schedule="exp")
    with pytest.raises(ValueError, match="tau0"):
        IoUThresholdScheduler(tau0=0.9, tau_max=0.8)


def test_skipped_steps_and_dropped_values():
    s = IoUThresholdScheduler(window=4)
    assert s.observe([], [0.5]) == 0.3
    assert s.diagnostics["skipped"] == "no finite group reward" and s.skipped_steps == 1
    s.observe([0.5, float("nan")], [float("nan")])
    assert s.diagnostics["skipped"] == "no finite IoU" and s.skipped_steps == 2
    s.observe([0.5, float("nan")], 0.7)
    assert s.dropped_values == 3 and len(s._win) == 1 and s.diagnostics["h"] == 0.5
    m = s.metrics()
    assert m["curriculum/tau"] == 0.3 and m["curriculum/window_len"] == 1.0


def test_state_round_trip_then_identical_continuation():
    a = IoUThresholdScheduler(window=6, schedule="cosine")
    seq = [([0.9, 0.8, 1.0], 0.7), ([0.85, 0.95], 0.65), ([1.0, 1.0], 0.8)] * 5
    for r, iou in seq[:8]:
        a.observe(r, iou)
    b = IoUThresholdScheduler()  # settings come from the state
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict() and b.threshold == a.threshold
    for r, iou in seq[8:]:
        assert a.observe(r, iou) == b.observe(r, iou)
        assert a.diagnostics == b.diagnostics
    assert a.state_dict() == b.state_dict() and len(a.raises) >= 1
    with pytest.raises(ValueError):
        b.load_state_dict({"version": 1, "settings": {}, "tau": 0.1})
