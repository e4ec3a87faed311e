"""Reference answers that do not fit the generation budget: a policy capped at ``rollout.max_new_tokens`` can never
write them whole, so their reward is a parse failure or a cut caption whatever it learns. The driver reports the
share per task at start-up (a warning and ``data/answers_over_budget/<qa_type>``)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

from data.schema import Instance


def answers_over_budget(instances: Sequence[Instance], count_tokens: Callable[[list[str]], list[int]],
                        max_new_tokens: int) -> dict[str, dict[str, int]]:
    """Per qa_type with at least one reference answer longer than ``max_new_tokens`` tokens: ``n`` answers,
    ``over`` of them too long, ``longest`` in tokens. ``count_tokens`` maps texts to their token counts."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for inst in instances:
        if inst.answer:
            by_type[inst.qa_type].append(inst.answer)
    out: dict[str, dict[str, int]] = {}
    for qa_type, answers in sorted(by_type.items()):
        counts = count_tokens(answers)
        over = sum(c > max_new_tokens for c in counts)
        if over:
            out[qa_type] = {"n": len(counts), "over": over, "longest": max(counts)}
    return out


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts of texts under a model's own (Hugging Face) tokenizer, no special tokens: the answer as
    generated. The driver asks a rollout actor, which holds the tokenizer already (``RolloutWorker.count_tokens``)."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
