"""data/sampler.py: determinism, the bucket-weight rule, epochs without replacement, exact resume, stages."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from data.sampler import TaskBalancedSampler
from data.schema import Instance


def _make(spec: dict[tuple[str, str], int]) -> list[Instance]:
    out = []
    for (qa, src), n in spec.items():
        out += [Instance(id=f"{qa}-{src}-{i}", qa_type=qa, data_source=src, question="q") for i in range(n)]
    return out


SPEC = {("tal", "AVOS"): 100, ("stg", "AVOS"): 5, ("tal", "NurViD"): 20, ("region_caption_gpt", "EgoSurgery"): 7}


def _ids(batch):
    return [i.id for i in batch]


def test_deterministic_under_seed():
    insts = _make(SPEC)
    a = TaskBalancedSampler(insts, seed=3)
    b = TaskBalancedSampler(insts, seed=3)
    c = TaskBalancedSampler(insts, seed=4)
    seq_a = _ids(a.next_batch(64))
    assert seq_a == _ids(b.next_batch(64))
    assert seq_a != _ids(c.next_batch(64))
    # how a sequence is cut into batches does not change it
    d = TaskBalancedSampler(insts, seed=3)
    assert _ids(d.next_batch(10) + d.next_batch(54)) == seq_a


def test_bucket_probabilities_follow_the_rule():
    s = TaskBalancedSampler(_make(SPEC), task_weights={"tal": 1.0, "stg": 2.0, "rc": 0.5},
                            source_weights={"NurViD": 0.5})
    # bucket weight = task weight x source weight, whatever the bucket's size; "rc" names the family
    expected = {("region_caption_gpt", "EgoSurgery"): 0.5, ("stg", "AVOS"): 2.0, ("tal", "AVOS"): 1.0,
                ("tal", "NurViD"): 0.5}
    probs = s.probabilities()
    assert set(probs) == set(expected)
    for key, w in expected.items():
        assert probs[key] == pytest.approx(w / 4.0)
    n = 8000
    counts = Counter((i.qa_type, i.data_source) for i in s.next_batch(n))
    for key, w in expected.items():
        p = w / 4.0
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(counts[key] - n * p) < 4 * sigma, (key, counts[key], n * p)


def test_zero_weight_excludes_and_family_keys():
    s = TaskBalancedSampler(_make(SPEC), task_weights={"tag": 0.0})  # family of "tal"
    assert {i.qa_type for i in s.next_batch(200)} == {"stg", "region_caption_gpt"}
    s = TaskBalancedSampler(_make(SPEC), task_weights={"tag": 0.0, "tal": 2.0})  # the qa_type key wins
    assert s.probabilities()[("tal", "AVOS")] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="weight 0"):
        TaskBalancedSampler(_make(SPEC), source_weights={"AVOS": 0, "NurViD": 0, "EgoSurgery": 0})
    with pytest.raises(ValueError, match=">= 0"):
        TaskBalancedSampler(_make(SPEC), task_weights={"tal": -1})


def test_epochs_without_replacement_inside_a_bucket():
    s = TaskBalancedSampler(_make({("tal", "AVOS"): 10}), seed=1)
    first, second = _ids(s.next_batch(10)), _ids(s.next_batch(10))
    everything = sorted(f"tal-AVOS-{i}" for i in range(10))
    assert sorted(first) == everything and sorted(second) == everything
    assert first != second  # a new shuffle per epoch
    # in a mixed sampler, each bucket still cycles through all its members before repeating
    m = TaskBalancedSampler(_make(SPEC), seed=2)
    stg = [i.id for i in m.next_batch(400) if i.qa_type == "stg"]
    assert len(stg) >= 10
    assert len(set(stg[:5])) == 5 and len(set(stg[5:10])) == 5


def test_resume_continues_the_same_sequence():
    insts = _make(SPEC)
    uninterrupted = TaskBalancedSampler(insts, task_weights={"stg": 3.0}, seed=11)
    full = _ids(uninterrupted.next_batch(150))
    first = TaskBalancedSampler(insts, task_weights={"stg": 3.0}, seed=11)
    head = _ids(first.next_batch(37))
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = TaskBalancedSampler(insts, task_weights={"stg": 3.0}, seed=999)  # the state's seed wins
    resumed.load_state_dict(state)
    assert head + _ids(resumed.next_batch(113)) == full


def test_set_tasks_stage_curriculum_is_deterministic_and_resumable():
    insts = _make(SPEC)

    def run(split_at=None):
        s = TaskBalancedSampler(insts, seed=5, tasks=["stg"])
        out = _ids(s.next_batch(8))
        s.set_tasks(["tal", "rc"])
        out += _ids(s.next_batch(20))
        if split_at is not None:
            state = s.state_dict()
            s = TaskBalancedSampler(insts, seed=5)
            s.load_state_dict(state)
            assert s.tasks == ["tal", "rc"]
        out += _ids(s.next_batch(20))
        s.set_tasks(None)
        return out + _ids(s.next_batch(20))

    seq = run()
    assert {x.split("-")[0] for x in seq[:8]} == {"stg"}
    assert {x.split("-")[0] for x in seq[8:48]} == {"tal", "region_caption_gpt"}
    assert seq == run() == run(split_at=28)
    # positions survive a stage switch: stg continues its epoch (5 members, 8 drawn -> the 9th and 10th
    # complete the second epoch's permutation without repeating its first 3)
    s = TaskBalancedSampler(insts, seed=5, tasks=["stg"])
    ids = _ids(s.next_batch(8))
    s.set_tasks(["tal"])
    s.next_batch(3)
    s.set_tasks(["stg"])
    ids += _ids(s.next_batch(2))
    assert len(set(ids[5:10])) == 5


def test_state_mismatch_and_bad_tasks():
    s = TaskBalancedSampler(_make(SPEC), seed=0)
    s.next_batch(5)
    state = s.state_dict()
    other = TaskBalancedSampler(_make({**SPEC, ("tal", "AVOS"): 99}), seed=0)
    with pytest.raises(ValueError, match="different instance list"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="match no instance"):
        s.set_tasks(["tga"])
    with pytest.raises(ValueError, match="at least one"):
        TaskBalancedSampler([])
    assert len(s) == 132
