"""data/knowledge.py: VRFT-Aug prior-knowledge injection (per data_source, per candidate class, no label leak)."""
from __future__ import annotations

import json

import pytest

from data.knowledge import KnowledgeBase, KnowledgeError, apply_knowledge, load_knowledge
from data.schema import Instance


def test_source_and_candidate_class_knowledge(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"APTOS": "Fundus photographs of the retina.", "0": "no lesions",
                                "2": "hard exudates", "polyp": "unused"}))
    kb = KnowledgeBase.from_file(path)
    cls = Instance(id="c", qa_type="image_cls", data_source="APTOS", question="Grade?", image="/x.png",
                   struc_info={"label": "2", "classes": ["0", "1", "2"]})
    out = kb.apply(cls)
    text = "Fundus photographs of the retina.\n0: no lesions\n2: hard exudates"
    assert out.question == f"Prior knowledge:\n{text}\n\nGrade?"
    assert out.extra == {"knowledge": text} and cls.question == "Grade?" and cls.extra == {}
    # the label alone (no candidate list) must not pull in its class text: that would leak the answer
    leak = Instance(id="d", qa_type="image_cls", data_source="Other", question="Grade?", struc_info={"label": "2"})
    assert kb.text_for(leak) is None and kb.apply(leak) is leak


def test_task_and_choice_knowledge_as_a_plain_dict(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"vqa_mc": "Instruments: grasper = blue rectangle.", "hook": "  cyan triangle ",
                                "empty": "   "}))
    entries = load_knowledge(path)
    assert entries == {"vqa_mc": "Instruments: grasper = blue rectangle.", "hook": "cyan triangle"}
    vqa = Instance(id="v", qa_type="vqa_mc", data_source="SynthEasy", question="Which?", image="/x.png",
                   struc_info={"choices": ["grasper", "hook"], "answer": "B"})
    out = apply_knowledge(vqa, entries, template="[{knowledge}] {question}")
    assert out.question == "[Instruments: grasper = blue rectangle.\nhook: cyan triangle] Which?"


def test_bad_knowledge_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(KnowledgeError, match="JSON object"):
        KnowledgeBase.from_file(bad)
    with pytest.raises(KnowledgeError, match="cannot read"):
        KnowledgeBase.from_file(tmp_path / "missing.json")
    with pytest.raises(KnowledgeError, match="strings"):
        KnowledgeBase({"AVOS": 3})  # type: ignore[dict-item]
    with pytest.raises(KnowledgeError, match="template"):
        KnowledgeBase({}, template="{question}")
