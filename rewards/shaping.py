"""Reward shaping terms added to (or replacing) a task reward: length rewards (Zhu et al., SPEC §4), the VRFT-Aug
multi-grade ordinal reward and the recitation term (SPEC §5), with a small sentence-level BLEU-4.

Ranges: ``length_reward`` in [0, 1]; ``graded_reward`` in [0, 1] (1 exactly when the grades agree);
``sentence_bleu`` and ``recitation_score`` in [0, 1]; ``recitation_reward`` in [min(coef, 0), max(coef, 0)].
Work is bounded: ``recitation_score`` reads the first ``MAX_REASONING_CHARS`` characters of the reasoning, and
``reasoning_text`` finds the ``<think>`` block in linear time.
Dr. GRPO needs nothing here (it lives in the advantage and the loss aggregation).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Optional, Sequence, Union

from rewards.config import LENGTH_MODES
from rewards.parsing import MAX_CHARS

MAX_REASONING_CHARS = MAX_CHARS  # a degenerate generation is judged on its prefix, as its answer is
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")
_THINK_OPEN = re.compile(r"<think>", re.I)
_THINK_CLOSE = re.compile(r"</think>", re.I)


def length_reward(n_tokens: int, target: int, correct: bool = False, mode: str = "none") -> float:
    """Length reward ``min(n_tokens / target, 1)``: ``ecr`` always, ``cwr`` only when ``correct``, ``none`` 0.

    (Zhu et al. found the ungated ECR hurts accuracy; CWR gates it on correctness.)
    """
    if mode not in LENGTH_MODES:
        raise ValueError(f"length mode {mode!r}; allowed: {', '.join(LENGTH_MODES)}")
    if mode == "none":
        return 0.0
    if not _whole(target) or target < 1:
        raise ValueError(f"length target must be an int >= 1, got {target!r}")
    if not _whole(n_tokens) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an int >= 0, got {n_tokens!r}")
    if mode == "cwr" and not correct:
        return 0.0
    return min(float(n_tokens) / float(target), 1.0)


def _whole(x: Any) -> bool:
    """A finite whole number (``3``, ``3.0``, a numpy int); bools, NaN, inf and non-numbers are not."""
    try:
        return not isinstance(x, bool) and math.isfinite(x) and int(x) == x
    except (TypeError, ValueError, OverflowError):
        return False


def graded_reward(pred_grade: Optional[float], gt_grade: float) -> float:
    """VRFT-Aug multi-grade fuzzy reward ``1 / (1 + d²)`` with ``d = |pred − gt|`` (grades on an ordinal scale).

    A missing (``None``) or non-finite prediction earns 0; a non-finite ground truth is a ValueError.
    """
    gt = float(gt_grade)
    if not math.isfinite(gt):
        raise ValueError(f"ground-truth grade must be finite, got {gt_grade!r}")
    if pred_grade is None:
        return 0.0
    pred = float(pred_grade)
    if not math.isfinite(pred):
        return 0.0
    d = pred - gt
    return 1.0 / (1.0 + d * d)


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (the BLEU tokenization)."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(hypothesis: Union[str, Sequence[str]], references: Union[str, Sequence[str]],
                  max_n: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU (Papineni et al. 2002) with uniform weights over n = 1..max_n.

    * Modified precision: each hypothesis n-gram count is clipped by its largest count in any reference.
    * Smoothing (Chen & Cherry 2014, method 1): an order with no match uses ``epsilon / total`` instead of 0.
      If not even one unigram matches, BLEU is 0.
    * Orders longer than the hypothesis are left out and the weights renormalized (effective order), so a
      3-token exact copy scores 1.
    * Brevity penalty ``exp(1 − r/c)`` when the hypothesis length ``c`` is at most the reference length ``r``
      closest to it (ties: the shorter reference).

    ``hypothesis`` is a text or a token list; ``references`` one text or a list of texts. Returns [0, 1].
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    if not (0.0 < epsilon < 1.0):
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}")
    hyp = tokenize(hypothesis) if isinstance(hypothesis, str) else list(hypothesis)
    refs_text = [references] if isinstance(references, str) else list(references)
    refs = [tokenize(r) for r in refs_text]
    refs = [r for r in refs if r]
    if not hyp or not refs:
        return 0.0
    log_sum = 0.0
    orders = min(max_n, len(hyp))
    for n in range(1, orders + 1):
        counts = _ngrams(hyp, n)
        max_ref: Counter = Counter()
        for r in refs:
            for g, c in _ngrams(r, n).items():
                if c > max_ref[g]:
                    max_ref[g] = c
        matches = sum(min(c, max_ref[g]) for g, c in counts.items())
        total = sum(counts.values())
        if matches == 0:
            if n == 1:
                return 0.0
            log_sum += math.log(epsilon / total)
        else:
            log_sum += math.log(matches / total)
    c = len(hyp)
    r = min((len(ref) for ref in refs), key=lambda x: (abs(x - c), x))
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return min(1.0, bp * math.exp(log_sum / orders))


def reasoning_text(text: str) -> str:
    """The content of the first complete ``<think>…</think>`` block (case-insensitive), else ``text`` itself.

    The same result as ``re.search(r"<think>(.*?)</think>", text, re.S | re.I)``, which takes quadratic time on a
    generation of many unclosed ``<think>`` tags; this takes two linear scans.
    """
    m = _THINK_OPEN.search(text)
    if m is None:
        return text
    end = _THINK_CLOSE.search(text, m.end())
    return text if end is None else text[m.end():end.start()]


def recitation_score(reasoning: str, knowledge: Union[str, Sequence[str]]) -> float:
    """BLEU of the model's reasoning against the injected knowledge text(s), in [0, 1] (1 = verbatim recitation).

    n-grams are clipped against each knowledge text (the union is what was shown to the model); for the brevity
    penalty each knowledge sentence also counts as a reference length, so copying one sentence of a long
    knowledge paragraph verbatim scores ~1 instead of being excused by brevity. Empty reasoning or knowledge: 0.
    """
    texts = [knowledge] if isinstance(knowledge, str) else list(knowledge)
    texts = [t for t in texts if t and t.strip()]
    reasoning = reasoning[:MAX_REASONING_CHARS]
    if not reasoning or not reasoning.strip() or not texts:
        return 0.0
    sentences = [s for t in texts for s in _SENTENCE.split(t) if s.strip()]
    # Sentences add no n-gram beyond their text (clipping takes the max per reference), only reference lengths.
    return sentence_bleu(reasoning, texts + sentences)


def recitation_reward(reasoning: str, knowledge: Union[str, Sequence[str]], coef: float) -> float:
    """``coef × recitation_score``: with ``coef < 0`` (VRFT-Aug's better setting) a penalty for recitation."""
    if not math.isfinite(coef):
        raise ValueError(f"recitation coef must be finite, got {coef!r}")
    if coef == 0.0:
        return 0.0
    return float(coef) * recitation_score(reasoning, knowledge)
