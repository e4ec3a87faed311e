"""Hand-computed values for the GRPO advantages, the dynamic-sampling filter, the PPO-clip loss and the SFT loss."""
from __future__ import annotations

import math

import pytest
import torch

from learner.losses import (compute_advantages, entropy_from_logits, filter_zero_variance, policy_loss, sft_loss,
                            token_logprobs)

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 4.0]])


def test_grpo_uses_sample_std():
    adv = compute_advantages(REWARDS, "grpo")
    # group 0: mean .5, sample std sqrt(4 * .25 / 3) = 1/sqrt(3) -> ±.5 * sqrt(3)
    a = 0.5 * math.sqrt(3.0)
    expected = torch.tensor([[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0], [-0.5, -0.5, -0.5, 1.5]])
    assert torch.allclose(adv, expected, atol=1e-5)


def test_drgrpo_and_rloo():
    assert torch.allclose(compute_advantages(REWARDS, "drgrpo"),
                          torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [-1.0, -1.0, -1.0, 3.0]]))
    t = 2.0 / 3.0
    assert torch.allclose(compute_advantages(REWARDS, "rloo"),
                          torch.tensor([[t, -t, -t, t], [0.0] * 4, [-4 / 3, -4 / 3, -4 / 3, 4.0]]), atol=1e-6)


def test_advantage_input_errors():
    with pytest.raises(ValueError, match="unknown advantage"):
        compute_advantages(REWARDS, "ppo")
    with pytest.raises(ValueError, match="G must be >= 2"):
        compute_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"non-finite values in group\(s\) \[1\]"):
        compute_advantages(torch.tensor([[0.0, 1.0], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="num_groups, G"):
        compute_advantages(torch.ones(4))


def test_filter_zero_variance():
    r = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.2, 0.2, 0.2 + 1e-9], [0.0, 0.0, 1e-3]])
    assert filter_zero_variance(r).tolist() == [True, False, False, True]


def _pl_inputs():
    ratios = torch.tensor([[1.0, 1.5, 0.5], [1.0, 0.5, 1.0]])
    logp = torch.log(ratios).requires_grad_(True)
    old = torch.zeros(2, 3)
    old[1, 2] = float("nan")  # garbage on a masked position must be ignored
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    adv = torch.tensor([1.0, -2.0])
    return logp, old, adv, mask


@pytest.mark.parametrize("agg,kw,expected", [
    # token losses: seq0 max(-1.5, -1.3) = -1.3 (clipped), max(-.5, -.8) = -.5; seq1 max(1.0, 1.6) = 1.6 (clipped)
    ("token-mean", {}, -0.2 / 3),
    ("seq-mean-token-mean", {}, (-1.8 / 2 + 1.6) / 2),
    ("seq-sum-max-len", {"max_len": 4}, (-1.8 / 4 + 1.6 / 4) / 2),
])
def test_policy_loss_aggregations(agg, kw, expected):
    logp, old, adv, mask = _pl_inputs()
    loss, m = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.3, agg=agg, **kw)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["clip_frac"].item() == pytest.approx(2 / 3)
    assert m["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 0.5) / 3)
    assert m["ratio_max"].item() == pytest.approx(1.5)
    kl = (0.5 - math.log(1.5)) + 2 * (-0.5 - math.log(0.5))
    assert m["approx_kl"].item() == pytest.approx(kl / 3, abs=1e-6)
    assert m["kl_ref"].item() == 0.0 and m["tokens"].item() == 3 and m["seqs"].item() == 2


def test_policy_loss_gradient_only_through_unclipped_tokens():
    logp, old, adv, mask = _pl_inputs()
    loss, _ = policy_loss(logp, old, adv, mask, agg="token-mean")
    loss.backward()
    expected = torch.zeros(2, 3)
    expected[0, 2] = -1.0 * 0.5 / 3  # d(-A r)/d logp = -A r, only the unclipped token carries gradient
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_policy_loss_k3_kl_to_reference():
    logp, old, adv, mask = _pl_inputs()
    ref = torch.zeros(2, 3)  # d = ref - logp = -log r -> k3 = 1/r + log r - 1
    k3 = [1 / 1.5 + math.log(1.5) - 1, 2 - math.log(2) - 1, 2 - math.log(2) - 1]
    loss, m = policy_loss(logp, old, adv, mask, agg="token-mean", ref_logprobs=ref, kl_coef=0.1)
    assert m["kl_ref"].item() == pytest.approx(sum(k3) / 3, abs=1e-6)
    assert loss.item() == pytest.approx((-0.2 + 0.1 * sum(k3)) / 3, abs=1e-6)


def test_policy_loss_global_denominators_split_exactly():
    logp, old, adv, mask = _pl_inputs()
    for agg, kw in (("token-mean", {}), ("seq-mean-token-mean", {}), ("seq-sum-max-len", {"max_len": 4})):
        full, _ = policy_loss(logp, old, adv, mask, agg=agg, **kw)
        parts = sum(policy_loss(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], agg=agg,
                                num_tokens=3, num_seqs=2, **kw)[0] for i in range(2))
        assert parts.item() == pytest.approx(full.item(), abs=1e-6)


def test_policy_loss_input_errors():
    logp, old, adv, mask = _pl_inputs()
    with pytest.raises(ValueError, match="max_len"):
        policy_loss(logp, old, adv, mask, agg="seq-sum-max-len")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        policy_loss(logp, old, adv, mask, agg="sum")
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, old, adv, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logp, old, adv[:1], mask)
    with pytest.raises(ValueError, match="mask shape"):
        policy_loss(logp, old, adv, mask[:, :2])


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    labels = torch.tensor([[1, -100]])
    lp = token_logprobs(logits, labels, chunk_size=1)
    assert lp[0, 0].item() == pytest.approx(math.log(0.75)) and lp[0, 1].item() == 0.0
    ent = entropy_from_logits(torch.zeros(1, 2, 4))
    assert torch.allclose(ent, torch.full((1, 2), math.log(4.0)))


def test_sft_loss_masks_prompt_and_shifts():
    l3 = math.log(3.0)
    logits = torch.tensor([[[0.0, l3], [5.0, -5.0], [l3, 0.0], [9.0, 9.0]]])
    labels = torch.tensor([[-100, 1, -100, 0]])  # predicted from logits[0] and logits[2]; both have p = .75
    assert sft_loss(logits, labels).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert sft_loss(logits, labels, num_tokens=4).item() == pytest.approx(-2 * math.log(0.75) / 4, abs=1e-6)
