"""GRPO advantages, dynamic-sampling filter, PPO-clip policy loss, SFT loss and log-prob helpers (pure torch).

Shapes used throughout: ``N`` sequences, ``T`` token positions, ``V`` vocabulary entries.

* ``compute_advantages``: rewards ``[num_groups, G]`` -> advantages of the same shape (SPEC §6).
* ``filter_zero_variance``: keep-mask over groups for DAPO dynamic sampling.
* ``policy_loss``: per-token log-probs ``[N, T]`` (current policy, behaviour policy, optional frozen reference),
  advantages ``[N]``, response mask ``[N, T]`` -> scalar loss and detached metrics.
* ``sft_loss``: HF-style causal-LM cross-entropy with ``-100`` labels masked.
* ``token_logprobs`` / ``entropy_from_logits``: memory-aware helpers over ``[N, T, V]`` logits.

``policy_loss`` and ``sft_loss`` accept optional global denominators (``num_tokens``, ``num_seqs``) so that a loss
split over micro-batches and data-parallel ranks sums to exactly the loss of the whole batch; without them the
denominators are taken from the tensors given.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from learner.config import ADVANTAGE_ESTIMATORS, LOSS_AGGREGATIONS

IGNORE_INDEX = -100


def _check_rewards(rewards: torch.Tensor) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_groups, G], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"group size G must be >= 2 for group-relative advantages, got G={rewards.shape[1]}")
    rewards = rewards.to(torch.float64 if rewards.dtype == torch.float64 else torch.float32)
    bad = ~torch.isfinite(rewards)
    if bad.any():
        rows = torch.nonzero(bad.any(dim=1)).flatten().tolist()
        raise ValueError(f"rewards contain non-finite values in group(s) {rows[:10]}"
                         f"{' ...' if len(rows) > 10 else ''}; drop or score those samples before computing advantages")
    return rewards


def compute_advantages(rewards: torch.Tensor, estimator: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage per sample from its group's rewards ``[num_groups, G]``.

    * ``grpo``:   ``(r - mean) / (std + eps)``. ``std`` is the **sample** standard deviation (Bessel's ``G - 1``
      denominator), as in the DeepSeekMath GRPO reference and the TRL / verl implementations, so that published
      hyper-parameters (learning rate, clip range) transfer unchanged. With G = 8 it is ``sqrt(8/7) ≈ 1.07`` times
      the population std, i.e. advantages are ≈ 7 % smaller than with the population std.
    * ``drgrpo``: ``r - mean`` (Dr. GRPO: no division by the std).
    * ``rloo``:   ``r - mean(others)`` = ``G / (G - 1) * (r - mean)``.

    A group whose rewards are all equal gets advantage 0 for every estimator.
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; allowed: {', '.join(ADVANTAGE_ESTIMATORS)}")
    r = _check_rewards(rewards)
    g = r.shape[1]
    mean = r.mean(dim=1, keepdim=True)
    if estimator == "grpo":
        std = r.std(dim=1, keepdim=True, unbiased=True)
        return (r - mean) / (std + eps)
    if estimator == "drgrpo":
        return r - mean
    others_mean = (r.sum(dim=1, keepdim=True) - r) / (g - 1)
    return r - others_mean


def filter_zero_variance(rewards: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """DAPO dynamic sampling: boolean keep-mask ``[num_groups]``, False for groups whose rewards are all equal.

    Equality is ``max - min <= atol`` so that rewards equal up to float noise also count as "no signal".
    """
    r = _check_rewards(rewards)
    spread = r.max(dim=1).values - r.min(dim=1).values
    return spread > atol


def _check_token_tensors(logprobs: torch.Tensor, mask: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, T], got shape {tuple(logprobs.shape)}")
    if mask.shape != logprobs.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != logprobs shape {tuple(logprobs.shape)}")
    for name, t in others.items():
        if t is not None and t.shape != logprobs.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != logprobs shape {tuple(logprobs.shape)}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    agg: str = "token-mean",
    max_len: Optional[int] = None,
    ref_logprobs: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
    num_tokens: Optional[float] = None,
    num_seqs: Optional[float] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip (clip-higher) loss on the token ratio ``π_θ / π_behaviour``, plus an optional k3 KL to a reference.

    Per response token: ``ρ = exp(logprobs - old_logprobs)``,
    ``l = max(-A ρ, -A clip(ρ, 1 - clip_low, 1 + clip_high)) + kl_coef * k3``, with
    ``k3 = exp(ref - logp) - (ref - logp) - 1`` (an unbiased, non-negative estimator of KL(π_θ || π_ref)).

    Aggregation over the response tokens (``mask == 1``):

    * ``token-mean``:          ``Σ l / num_tokens`` (``num_tokens`` defaults to ``mask.sum()``).
    * ``seq-mean-token-mean``: ``Σ_i (Σ_t l_it / len_i) / num_seqs`` (``num_seqs`` defaults to the number of
      sequences with at least one response token; empty sequences contribute nothing).
    * ``seq-sum-max-len``:     ``Σ_i (Σ_t l_it / max_len) / num_seqs`` (Dr. GRPO: a constant normaliser).

    Pass ``num_tokens`` / ``num_seqs`` (counts over the whole global batch) when the batch is split into micro-batches
    or across ranks, so the parts sum to the whole-batch loss.

    Metrics (detached 0-dim tensors, means over response tokens unless noted): ``clip_frac`` (fraction of tokens whose
    clipped branch is active), ``approx_kl`` (k3 estimate of KL(π_behaviour || π_θ) from behaviour samples),
    ``kl_ref`` (mean k3 to the reference, 0 without one), ``ratio_mean``, ``ratio_max`` (max over tokens),
    ``tokens`` (response tokens counted here), ``seqs``.
    """
    if agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {agg!r}; allowed: {', '.join(LOSS_AGGREGATIONS)}")
    if agg == "seq-sum-max-len" and (max_len is None or max_len <= 0):
        raise ValueError("agg='seq-sum-max-len' needs max_len > 0 (the maximum generation length)")
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    _check_token_tensors(logprobs, mask, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)
    if advantages.dim() != 1 or advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(f"advantages must be [N={logprobs.shape[0]}], got shape {tuple(advantages.shape)}")
    if ref_logprobs is None and kl_coef != 0.0:
        raise ValueError("kl_coef != 0 needs ref_logprobs (log-probs of the frozen reference policy)")

    m = mask.to(logprobs.dtype)
    # Work on masked positions only: padding may hold garbage (even inf) that must not reach the graph.
    valid = m > 0
    old = torch.where(valid, old_logprobs.to(logprobs.dtype), logprobs.detach())
    log_ratio = torch.where(valid, logprobs - old, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    token_loss = torch.maximum(pg_unclipped, pg_clipped)

    if ref_logprobs is not None:
        ref = torch.where(valid, ref_logprobs.to(logprobs.dtype), logprobs.detach())
        d = torch.where(valid, ref - logprobs, torch.zeros_like(logprobs))
        kl_tok = torch.exp(d) - d - 1.0
        if kl_coef != 0.0:
            token_loss = token_loss + kl_coef * kl_tok
    else:
        kl_tok = None

    token_loss = token_loss * m
    seq_len = m.sum(dim=1)
    local_tokens = seq_len.sum()
    local_seqs = (seq_len > 0).sum().to(logprobs.dtype)
    if agg == "token-mean":
        denom = torch.as_tensor(num_tokens if num_tokens is not None else local_tokens, dtype=logprobs.dtype)
        loss = token_loss.sum() / denom.clamp(min=1.0)
    else:
        if agg == "seq-mean-token-mean":
            per_seq = token_loss.sum(dim=1) / seq_len.clamp(min=1.0)
        else:
            per_seq = token_loss.sum(dim=1) / float(max_len)  # type: ignore[arg-type]
        denom = torch.as_tensor(num_seqs if num_seqs is not None else local_seqs, dtype=logprobs.dtype)
        loss = per_seq.sum() / denom.clamp(min=1.0)

    with torch.no_grad():
        n = local_tokens.clamp(min=1.0)
        clipped = (pg_clipped > pg_unclipped).to(logprobs.dtype) * m
        metrics = {
            "clip_frac": clipped.sum() / n,
            "approx_kl": ((ratio - 1.0 - log_ratio) * m).sum() / n,
            "kl_ref": (kl_tok * m).sum() / n if kl_tok is not None else torch.zeros((), dtype=logprobs.dtype),
            "ratio_mean": (ratio * m).sum() / n,
            "ratio_max": torch.where(valid, ratio, torch.zeros_like(ratio)).max(),
            "tokens": local_tokens.detach(),
            "seqs": local_seqs.detach(),
        }
        metrics = {k: v.detach() for k, v in metrics.items()}
    return loss, metrics


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """``log softmax(logits)[..., labels]`` for aligned ``logits [N, T, V]`` and ``labels [N, T]`` -> ``[N, T]``.

    No shift is applied: ``logits[:, t]`` must be the distribution that scored ``labels[:, t]`` (for a causal LM
    pass ``logits[:, :-1]`` and ``input_ids[:, 1:]``). Computed as ``gather - logsumexp`` in row chunks so the full
    ``[N, T, V]`` log-softmax is never materialised (a 152k vocabulary makes that tensor the largest in the step).
    Labels equal to ``-100`` give 0.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} are not aligned")
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    ignore = flat_labels == IGNORE_INDEX
    safe_labels = flat_labels.masked_fill(ignore, 0)
    out = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        lg = flat_logits[start:start + chunk_size].float()
        lb = safe_labels[start:start + chunk_size]
        out.append(lg.gather(-1, lb.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    res = torch.cat(out) if out else flat_logits.new_zeros(0, dtype=torch.float32)
    res = res.masked_fill(ignore, 0.0)
    return res.reshape(labels.shape)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per position, ``[N, T, V] -> [N, T]`` (a metric: computed without grad)."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for start in range(0, flat.shape[0], chunk_size):
        lg = flat[start:start + chunk_size].float()
        logp = torch.log_softmax(lg, dim=-1)
        out.append(-(logp.exp() * logp).sum(dim=-1))
    res = torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)
    return res.reshape(logits.shape[:-1])


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, num_tokens: Optional[float] = None) -> torch.Tensor:
    """Causal-LM cross-entropy. ``labels`` are aligned with the inputs (HF convention: the shift happens here),
    with prompt and padding positions set to ``-100``. Mean over supervised tokens, or ``sum / num_tokens`` when a
    global token count is given (micro-batching / data parallelism)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [N, T, V] and labels [N, T]; got {tuple(logits.shape)}, {tuple(labels.shape)}")
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    n = num_tokens if num_tokens is not None else (shift_labels != IGNORE_INDEX).sum().item()
    return total / max(float(n), 1.0)
