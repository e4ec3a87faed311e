"""VRFT-Aug prior-knowledge injection: a per-data_source, per-task or per-class text prepended to the prompt.

The knowledge file (``data.knowledge_file``) is a JSON object mapping a name to a text. A name is matched against
the instance's ``data_source``, its ``qa_type``, and its *candidate* answers: ``struc_info["classes"]`` of a
classification instance or ``struc_info["choices"]`` of a multiple-choice one. Candidates, never the ground-truth
label alone: injecting only the label's text would leak the answer. The injected text is kept in
``extra["knowledge"]`` so the recitation term can compare the model's reasoning with it.

The entries are a plain ``dict[str, str]`` (``load_knowledge``) so they travel to Ray actors as is;
``KnowledgeBase`` bundles them with a template.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from data.schema import Instance

DEFAULT_TEMPLATE = "Prior knowledge:\n{knowledge}\n\n{question}"


class KnowledgeError(ValueError):
    """A knowledge file that cannot be used (missing, not JSON, not an object of strings, bad template)."""


def check_entries(entries: Mapping[str, Any]) -> dict[str, str]:
    """The entries as ``{name: stripped text}`` (empty texts dropped); raises KnowledgeError on non-strings."""
    bad = [k for k, v in entries.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise KnowledgeError(f"knowledge entries must map names to strings; bad keys: {bad[:5]}")
    return {k: v.strip() for k, v in entries.items() if v.strip()}


def load_knowledge(path: Union[str, "os.PathLike[str]"]) -> dict[str, str]:
    """Read a knowledge file: a JSON object ``{data_source | qa_type | class name: text}``."""
    p = Path(os.fspath(path))
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise KnowledgeError(f"{p}: cannot read knowledge file ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KnowledgeError(f"{p}: not a JSON file ({e})") from None
    if not isinstance(doc, dict):
        raise KnowledgeError(f"{p}: must hold a JSON object {{name: text}}, got {type(doc).__name__}")
    return check_entries(doc)


def candidate_answers(struc_info: Any) -> list[str]:
    """The names of an instance's candidate answers (classes or choices); empty when it lists none."""
    if isinstance(struc_info, dict):
        for key in ("classes", "choices"):
            values = struc_info.get(key)
            if isinstance(values, list):
                return [c for c in values if isinstance(c, str)]
    return []


def knowledge_text(instance: Instance, entries: Mapping[str, str]) -> Optional[str]:
    """The knowledge for this instance (source, task, then one line per known candidate), or None."""
    parts: list[str] = []
    for name in (instance.data_source, instance.qa_type):
        text = entries.get(name)
        if text and text not in parts:
            parts.append(text)
    for name in candidate_answers(instance.struc_info):
        if entries.get(name):
            parts.append(f"{name}: {entries[name]}")
    return "\n".join(parts) if parts else None


def apply_knowledge(instance: Instance, entries: Mapping[str, str], template: str = DEFAULT_TEMPLATE) -> Instance:
    """A copy of ``instance`` whose question carries its knowledge; the instance itself when none applies."""
    text = knowledge_text(instance, entries)
    if text is None:
        return instance
    question = template.format(knowledge=text, question=instance.question)
    return dataclasses.replace(instance, question=question, extra={**instance.extra, "knowledge": text})


class KnowledgeBase:
    """Knowledge entries with their template; ``apply`` returns the instance with its question prefixed."""

    def __init__(self, entries: Mapping[str, str], template: str = DEFAULT_TEMPLATE) -> None:
        if "{knowledge}" not in template or "{question}" not in template:
            raise KnowledgeError("template must contain {knowledge} and {question}")
        self.entries = check_entries(entries)
        self.template = template

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"], template: str = DEFAULT_TEMPLATE) -> "KnowledgeBase":
        return cls(load_knowledge(path), template)

    def text_for(self, instance: Instance) -> Optional[str]:
        return knowledge_text(instance, self.entries)

    def apply(self, instance: Instance) -> Instance:
        return apply_knowledge(instance, self.entries, self.template)

    def __len__(self) -> int:
        return len(self.entries)
