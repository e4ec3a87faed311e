"""Reference answers longer than the generation budget are found per task, with the model's own tokenizer."""
from __future__ import annotations

from data.answer_budget import answers_over_budget, count_tokens
from data.schema import Instance


def _inst(qa_type: str, answer: str) -> Instance:
    return Instance(id=f"{qa_type}/{answer[:8]}", qa_type=qa_type, data_source="s", question="q", answer=answer)


def test_counts_the_answers_over_the_budget_per_task():
    words = lambda texts: [len(t.split()) for t in texts]  # noqa: E731
    rows = [_inst("next_action", "irrigating"), _inst("skill_assessment", "a b c d e"),
            _inst("skill_assessment", "a b"), _inst("stg", "")]  # no reference answer: nothing to cut
    assert answers_over_budget(rows, words, 3) == {"skill_assessment": {"n": 2, "over": 1, "longest": 5}}
    assert answers_over_budget(rows, words, 5) == {}


def test_the_tiny_models_tokenizer_counts_the_demos_answers(synth_dir, tiny_model_dir):
    from data.reader import read_instances

    rows = read_instances(synth_dir / "train.jsonl").instances
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    count = lambda texts: count_tokens(tok, texts)  # noqa: E731
    skill = [i for i in rows if i.qa_type == "skill_assessment"]
    n_tokens = count([skill[0].answer])[0]
    assert n_tokens > 40  # six aspects: the old demo budget of 40 tokens cut every one
    over = answers_over_budget(skill, count, n_tokens - 1)["skill_assessment"]
    assert over["over"] >= 1 and over["longest"] >= n_tokens
    assert "skill_assessment" not in answers_over_budget(skill, count, max(count([i.answer for i in skill])))
