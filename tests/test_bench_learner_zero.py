"""bench/learner_zero.py: the pure pieces (how the global batch splits over ranks, the first-step check, the table
rows, the rank probe). No timing, no Ray: the benchmark itself starts 9 rank processes (~2 min on 2 cores), too
slow for the suite; run ``python -m bench.learner_zero --quick`` for the end-to-end path."""
from __future__ import annotations

import math
import os
from types import SimpleNamespace as NS

import pytest
import torch

from bench.common import Timing
from bench.learner_zero import LEARNERS, _counting, candidate_rows, first_step_check, rank_probe, split_summary
from learner.deepspeed_learner import build_policy_batch
from learner.weight_sync import weights_checksum


def _group(prompt_len: int, response_lens: list[int], media: bool) -> NS:
    mm = {"pixel_values": torch.zeros(4, 6), "image_grid_thw": torch.tensor([[1, 2, 2]])} if media else None
    comps = [NS(response_ids=list(range(10, 10 + n)), logprobs=[-1.0] * n) for n in response_lens]
    return NS(prompt_ids=list(range(1, 1 + prompt_len)), mm_inputs=mm, completions=comps, temperature=1.0)


def test_split_summary_counts_each_ranks_share():
    # 5 samples: an image prompt with responses of 2, 3, 4 tokens, then a text prompt with 1 and 5
    batch = build_policy_batch([_group(3, [2, 3, 4], True), _group(2, [1, 5], False)],
                               [[1.0, -1.0, 0.5], [0.2, -0.2]])
    assert split_summary(batch, 1) == [{"rank": 0, "rows": 5, "tokens": 15, "sequences": 5, "media": 1}]
    assert split_summary(batch, 2) == [{"rank": 0, "rows": 3, "tokens": 9, "sequences": 3, "media": 1},
                                       {"rank": 1, "rows": 2, "tokens": 6, "sequences": 2, "media": 0}]
    # 2 samples over 3 ranks: the last rank trains on a masked copy of row 0 (it only takes part in collectives)
    small = build_policy_batch([_group(3, [2, 4], True)], [[1.0, -1.0]])
    assert split_summary(small, 3) == [{"rank": 0, "rows": 1, "tokens": 2, "sequences": 1, "media": 1},
                                       {"rank": 1, "rows": 1, "tokens": 4, "sequences": 1, "media": 1},
                                       {"rank": 2, "rows": 1, "tokens": 0, "sequences": 0, "media": 1}]


def test_the_bench_batch_splits_evenly_over_two_ranks():
    """The benchmark's shape (2 video prompts x G = 8, different response lengths): 8 + 8 samples, one video each,
    and the ranks' tokens add up to the global count (the same work as on one rank)."""
    lens = [[3, 5, 2, 7, 4, 4, 6, 1], [2, 2, 8, 3, 5, 1, 4, 6]]
    batch = build_policy_batch([_group(10, lens[0], True), _group(10, lens[1], True)], [[0.5] * 8, [-0.5] * 8])
    parts = split_summary(batch, 2)
    assert [(p["rows"], p["tokens"], p["media"]) for p in parts] == [(8, 32, 1), (8, 31, 1)]
    assert sum(p["tokens"] for p in parts) == split_summary(batch, 1)[0]["tokens"] == 63


def test_first_step_check_tolerances():
    ref = {"loss": 0.5, "grad_norm": 2.0, "tokens": 255.0, "sequences": 16.0}
    assert first_step_check(ref, dict(ref))["same"]
    near = first_step_check(ref, {**ref, "loss": 0.5 + 5e-6, "grad_norm": 2.0 * (1 + 5e-5)})
    assert near["same"] and near["loss_diff"] == pytest.approx(5e-6)
    assert near["grad_norm_rel_diff"] == pytest.approx(5e-5)
    assert not first_step_check(ref, {**ref, "loss": 0.5 + 2e-5})["same"]  # 1e-5 absolute below |loss| = 1
    big = {**ref, "loss": 4.0}
    assert first_step_check(big, {**big, "loss": 4.0 + 3e-5})["same"]  # 1e-5 x 4 = 4e-5 allowed
    assert not first_step_check(ref, {**ref, "grad_norm": 2.0 * (1 + 2e-4)})["same"]
    assert not first_step_check(ref, {**ref, "grad_norm": 2.0 * math.sqrt(2)})["same"]  # e.g. a missing all-reduce
    counts = first_step_check(ref, {**ref, "tokens": 254.0})
    assert not counts["same"] and not counts["counts_ok"]
    assert not first_step_check(ref, {**ref, "sequences": 15.0})["same"]
    # no grad norm on one side (clipping off): judged on loss and counts; a NaN loss never passes
    no_norm = first_step_check({**ref, "grad_norm": math.nan}, ref)
    assert no_norm["same"] and math.isnan(no_norm["grad_norm_rel_diff"])
    assert not first_step_check(ref, {**ref, "loss": math.nan})["same"]


def test_candidate_rows_ratios_rates_and_noise():
    t = {"plain": Timing(per_round=[0.1, 0.2, 0.1]), "zero0": Timing(per_round=[0.2, 0.2, 0.3]),
         "zero0x2": Timing(per_round=[0.1, 0.1, 0.1])}
    rows = candidate_rows(t, 16, {"zero0": {"stage": "0", "ranks": 1}, "zero0x2": {"stage": "0", "ranks": 2}})
    by = {r["candidate"]: r for r in rows}
    assert [r["candidate"] for r in rows] == ["plain", "zero0", "zero0x2"]
    # zero0: median time 0.2 s -> 80 samples/s; per-round ratios vs plain 2, 1, 3 -> 2; spreads: plain 1.0, zero0 0.5
    assert by["zero0"]["samples_s"] == pytest.approx(80.0) and by["zero0"]["step_ms"] == pytest.approx(200.0)
    assert by["zero0"]["vs_plain"] == pytest.approx(2.0) and by["zero0"]["vs_zero0"] == pytest.approx(1.0)
    assert by["zero0"]["noise"] == pytest.approx(1.0) and by["zero0"]["ranks"] == 1
    # zero0x2: ratios vs plain 1, 0.5, 1 -> 1; vs zero0 0.5, 0.5, 1/3 -> 0.5
    assert by["zero0x2"]["samples_s"] == pytest.approx(160.0)
    assert by["zero0x2"]["vs_plain"] == pytest.approx(1.0) and by["zero0x2"]["vs_zero0"] == pytest.approx(0.5)
    assert by["zero0x2"]["ranks"] == 2 and by["plain"]["vs_plain"] == pytest.approx(1.0)
    assert "stage" not in by["plain"]
    lone = candidate_rows({"zero2": Timing(per_round=[0.5, 0.5])}, 8, {})
    assert math.isnan(lone[0]["vs_plain"]) and math.isnan(lone[0]["vs_zero0"]) and lone[0]["noise"] == 0.0


def test_candidate_list_covers_every_stage_on_one_and_two_ranks():
    assert {(stage, ranks) for _, stage, ranks in LEARNERS if ranks > 0} == {(s, r) for s in (0, 2, 3) for r in (1, 2)}
    assert len({name for name, _, _ in LEARNERS}) == len(LEARNERS)


def test_counting_records_steps_not_applied():
    bad: dict[str, int] = {}
    replies = iter([{"optimizer_steps": 1.0, "skipped_nonfinite": 0.0},
                    {"optimizer_steps": 0.0, "skipped_nonfinite": 1.0},
                    {"optimizer_steps": 1.0, "skipped_nonfinite": 0.0}])
    step = _counting(lambda: next(replies), bad, "zero2")
    for _ in range(3):
        step()
    assert bad == {"zero2": 1}


def test_rank_probe_checksums_the_learners_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    actor = NS(learner=NS(model=model, version=7))
    p = rank_probe(actor)
    assert p["checksum"] == weights_checksum(model, mode="full") and p["checksum"].startswith("full:")
    assert p["version"] == 7 and p["pid"] == os.getpid() and p["peak_rss"] > 0
    assert p["torch_threads"] == torch.get_num_threads()
    with torch.no_grad():
        model[1].bias[0] += 1e-6  # one element, one ulp-scale change: a different digest
    assert rank_probe(actor)["checksum"] != p["checksum"]


def test_registered_in_run_all():
    from bench import run_all

    assert "learner_zero" in run_all.BENCHMARKS
