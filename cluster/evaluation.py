"""``medgrpo eval``: score a predictions file against MedVidBench references and print the leaderboard table.

Role: the file and command-line side of evaluation. ``data.reader`` reads the references (JSON list, JSONL,
Parquet), ``data.predictions`` the predictions (JSONL, the leaderboard's ``[{id, qa_type, prediction}]`` list, the
authors' ``{"0": {"answer": ...}}`` index dict), an optional LLM judge (``rewards.judge.JudgeCore``, run in this
process without Ray, told each pair's task) fills the ``*_llm`` columns, the sentence-similarity model
(``--similarity-model``, default the bundled all-MiniLM-L6-v2; ``none`` skips) fills the ``*_sim`` columns, and
``rewards.leaderboard`` does the scoring.

Evaluation never opens media, so references are read with ``require_media=False`` (paths neither confined nor
required) unless ``--data-root`` is given, which confines them as training does.

Exit codes of ``run_eval``: 0 done; 1 a judge was requested but returned no judgement at all (the table is still
printed and the JSON still written, with the LLM columns empty); 2 a bad input (an unreadable or empty
references file, a predictions file from which nothing usable could be read, references without any ground
truth, a judge that cannot be built, an output path that cannot be written): one line on stderr, no traceback.
The judge's API key is only ever read from the environment variable named by ``--judge-api-key-env``; it never
appears in the output.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO, Union
from urllib.parse import urlsplit, urlunsplit

from common.files import write_text
from data.predictions import PredictionSet, read_predictions
from data.reader import PATH_OUTSIDE_ROOTS, DataFileError, ReadResult, read_instances
from data.schema import Instance
from rewards.baselines import baseline_table
from rewards.config import JudgeConfig
from rewards.judge import JudgeCore
from rewards.leaderboard import JudgeFn, SimilarityFn, evaluate, format_table
from rewards.similarity import DEFAULT_MODEL as SIMILARITY_MODEL

PathLike = Union[str, "os.PathLike[str]"]
JUDGE_CHUNK = 256  # pairs per judge round trip of the evaluator (progress is reported between chunks)
MAX_EXAMPLES = 5  # skipped rows quoted in the JSON report, per input file


class EvalInputError(Exception):
    """An input that makes evaluation meaningless or impossible; the message is one line meant for the user."""


# ------------------------------------------------------------------------------------------------- inputs

def load_references(path: PathLike, data_roots: Optional[Sequence[PathLike]] = None) -> ReadResult:
    """References with their ground truth. Without ``data_roots`` media are not required (evaluation never opens
    them); with them, media paths must lie under those roots. Raises ``EvalInputError`` when the file cannot be
    read or yields no usable row."""
    try:
        res = read_instances(path, data_roots=data_roots or None, require_media=bool(data_roots))
    except DataFileError as e:
        raise EvalInputError(f"references: {e}") from None
    if not res.instances:
        if not res.rows_seen:
            raise EvalInputError(f"references: {path}: the file holds no rows")
        hint = ""
        if PATH_OUTSIDE_ROOTS in res.counts_by_reason:
            hint = "; media paths lie outside --data-root (evaluation needs no media: leave --data-root out)"
        raise EvalInputError(f"references: {path}: no usable row among {res.rows_seen} "
                             f"({_reasons(res.counts_by_reason)}){hint}")
    return res


def load_predictions(path: PathLike, references: Sequence[Instance]) -> PredictionSet:
    """Predictions in any supported form, matched against ``references`` (which resolve index-keyed dicts).

    An empty file or an empty list/dict is valid (every reference then counts as missing). Raises
    ``EvalInputError`` when the file cannot be read, or when it has entries but not one of them is usable
    (not JSON/JSONL, or made for other references), which would otherwise score as a silent all-zero table."""
    try:
        pset = read_predictions(path, references)
    except OSError as e:
        raise EvalInputError(f"predictions: {path}: {e.strerror or e}") from None
    if not pset.predictions and pset.skipped:
        raise EvalInputError(
            f"predictions: {path}: no usable prediction among {len(pset.skipped)} entries "
            f"({_reasons(pset.counts_by_reason)}); expected JSONL lines or a JSON list of "
            '{"id", "qa_type", "prediction"}, or an index dict {"0": {"answer": ...}} in reference order')
    return pset


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# -------------------------------------------------------------------------------------------------- judge

def _public_url(url: str) -> str:
    """``url`` without user info, query or fragment (they may carry credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


@dataclass
class EvalJudge:
    """A ``JudgeFn`` for ``rewards.leaderboard.evaluate`` over an in-process ``JudgeCore``.

    Returns each pair's rubric score (1–5), or None for a failed judgement, whose reason is counted in
    ``failures``. ``progress(done, total)`` is called after every chunk of ``chunk`` pairs.
    """

    cfg: JudgeConfig
    progress: Optional[Callable[[int, int], None]] = None
    chunk: int = JUDGE_CHUNK
    failures: Counter[str] = field(default_factory=Counter)
    asked: int = 0
    ok: int = 0
    core: JudgeCore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.core = JudgeCore(self.cfg)

    def __call__(self, pairs: list[tuple[str, str]],
                 hints: Optional[Sequence[Optional[str]]] = None) -> list[Optional[float]]:
        """Rubric scores of ``pairs``; ``hints``: one task hint per pair (``dvc``, ``vs``, ``rc``) or None."""
        out: list[Optional[float]] = []
        for start in range(0, len(pairs), self.chunk):
            chunk_hints = list(hints[start:start + self.chunk]) if hints is not None else None
            for o in self.core.score(pairs[start:start + self.chunk], chunk_hints):
                if o.ok:
                    out.append(o.score)
                    self.ok += 1
                else:
                    out.append(None)
                    self.failures[o.reason or "unknown"] += 1
            self.asked = len(out)
            if self.progress is not None and len(pairs) > self.chunk:
                self.progress(len(out), len(pairs))
        return out

    def summary(self) -> dict[str, Any]:
        """What the report says about the judge: settings (no secret), outcome counts, the core's metrics."""
        return {"backend": self.cfg.backend, "model": self.cfg.model, "base_url": _public_url(self.cfg.base_url),
                "api_key_env": self.cfg.api_key_env, "asked": self.asked, "ok": self.ok,
                "failures_by_reason": dict(self.failures), "metrics": self.core.metrics()}

    def close(self) -> None:
        self.core.close()


def make_judge(backend: str, model: str = "", base_url: str = "http://127.0.0.1:8000/v1",
               api_key_env: str = "OPENAI_API_KEY", *,
               progress: Optional[Callable[[int, int], None]] = None) -> EvalJudge:
    """An ``EvalJudge`` for ``backend`` (``openai``, ``hf``, ``vllm``); the API key is read by the backend from
    the environment variable ``api_key_env``. Raises ``EvalInputError`` when the backend cannot be built."""
    from rewards.judge_backends import JudgeBackendUnavailable

    if not model:
        raise EvalInputError(f"judge: --judge {backend} needs --judge-model (the served model name, or a local "
                             "checkpoint folder for hf/vllm)")
    cfg = JudgeConfig(backend=backend, model=model, base_url=base_url, api_key_env=api_key_env)
    try:
        return EvalJudge(cfg, progress=progress)
    except (JudgeBackendUnavailable, ImportError) as e:
        raise EvalInputError(f"judge: backend {backend!r} unavailable: {e}") from None


def make_similarity(model: str) -> Optional[SimilarityFn]:
    """A ``SimilarityFn`` (raw cosine per pair) over ``rewards.similarity.SentenceSimilarity`` of ``model`` (loaded
    offline, on first use); None for ``none``. Raises ``EvalInputError`` when the model cannot be found."""
    if model == "none":
        return None
    from rewards.similarity import DEFAULT_MODEL, SentenceSimilarity, default_similarity, resolve_model_path

    try:
        resolve_model_path(model)
    except FileNotFoundError as e:
        raise EvalInputError(f"similarity: {e} (--similarity-model none skips the *_sim columns)") from None
    sim = default_similarity() if model == DEFAULT_MODEL else SentenceSimilarity(model)  # the default: loaded once

    def similarity_fn(pairs: list[tuple[str, str]]) -> list[Optional[float]]:
        return [float(v) for v in sim.cosine([r for r, _ in pairs], [c for _, c in pairs])]

    return similarity_fn


# ------------------------------------------------------------------------------------------------ scoring

def evaluate_files(references: PathLike, predictions: PathLike, *,
                   data_roots: Optional[Sequence[PathLike]] = None, judge_fn: Optional[JudgeFn] = None,
                   similarity_fn: Optional[SimilarityFn] = None,
                   baseline_from: Optional[PathLike] = None) -> dict[str, Any]:
    """Read both files and score them: ``evaluate``'s result (``table``, ``by_source``, ``source_mean``,
    ``counts``, ``skipped``, ``columns``), ``baseline`` (``rewards.baselines.baseline_table`` fitted on the
    training references ``baseline_from``, else on the references themselves, as its ``note`` says) and
    ``inputs`` (what was read and skipped from each file). Raises ``EvalInputError``."""
    refs = load_references(references, data_roots)
    preds = load_predictions(predictions, refs.instances)
    result = evaluate(refs.instances, preds.predictions, judge_fn=judge_fn, similarity_fn=similarity_fn)
    if baseline_from is not None:
        train = load_references(baseline_from, data_roots).instances
        note = f"constant predictions fitted on {baseline_from} (majority answer; mean segment/box)"
    else:
        train = refs.instances
        note = ("constant predictions fitted on the references themselves (majority answer; mean segment/box); "
                "--baseline-from TRAIN fits them on training data")
    result["baseline"] = baseline_table(train, refs.instances)
    result["baseline"]["note"] = note
    counts = result["counts"]
    if sum(counts["reference_errors"].values()) + counts["unknown_qa_type"] >= len(refs.instances):
        raise EvalInputError(f"references: {references}: no reference has a usable ground truth "
                             f"({_reasons(counts['reference_errors'])}); is this a test file without answers?")
    result["inputs"] = {
        "references": {
            "path": str(references), "rows": refs.rows_seen, "read": len(refs.instances),
            "skipped": len(refs.skipped), "skipped_by_reason": refs.counts_by_reason,
            "skipped_examples": [{"where": w, "reason": r, "detail": d}
                                 for (w, r), d in list(zip(refs.skipped, refs.details))[:MAX_EXAMPLES]],
        },
        "predictions": {
            "path": str(predictions), "form": preds.form, "read": len(preds.predictions),
            "skipped": len(preds.skipped), "skipped_by_reason": preds.counts_by_reason,
            "skipped_examples": [{"where": s.where, "reason": s.reason} for s in preds.skipped[:MAX_EXAMPLES]],
        },
    }
    return result


def format_report(report: dict[str, Any]) -> str:
    """The inputs summary, ``format_table``'s table and counts, and the judge summary when there is one."""
    inp = report.get("inputs", {})
    lines = []
    r, p = inp.get("references"), inp.get("predictions")
    if r:
        lines.append(f"references: {r['path']}: {r['read']} of {r['rows']} rows read, skipped rows {r['skipped']}"
                     + (f" ({_reasons(r['skipped_by_reason'])})" if r["skipped"] else ""))
    if p:
        lines.append(f"predictions: {p['path']} ({p['form']}): {p['read']} read, skipped entries {p['skipped']}"
                     + (f" ({_reasons(p['skipped_by_reason'])})" if p["skipped"] else ""))
    if lines:
        lines.append("")
    lines.append(format_table(report, report.get("baseline")))
    judge = report.get("judge")
    if judge:
        lines.append(f"judge {judge['backend']} ({judge['model']}): {judge['ok']} of {judge['asked']} judgements"
                     + (f", failed: {_reasons(judge['failures_by_reason'])}" if judge["failures_by_reason"] else ""))
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: PathLike) -> Path:
    """Write ``report`` as strict JSON to ``path`` atomically (``common.files``)."""
    return write_text(path, json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")


def run_eval(args: argparse.Namespace, *, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """The ``medgrpo eval`` command (arguments as ``cluster.cli`` defines them); see the module docstring."""
    out_f = stdout if stdout is not None else sys.stdout
    err_f = stderr if stderr is not None else sys.stderr

    def fail(msg: str) -> int:
        print(f"medgrpo eval: error: {' '.join(str(msg).split())}", file=err_f)
        return 2

    judge: Optional[EvalJudge] = None
    backend = getattr(args, "judge", "none") or "none"
    try:
        if backend != "none":
            judge = make_judge(
                backend, getattr(args, "judge_model", "") or "",
                getattr(args, "judge_base_url", "http://127.0.0.1:8000/v1"),
                getattr(args, "judge_api_key_env", "OPENAI_API_KEY"),
                progress=lambda done, total: print(f"judge: {done}/{total} pairs", file=err_f, flush=True))
        similarity_fn = make_similarity(getattr(args, "similarity_model", SIMILARITY_MODEL) or "none")
        report = evaluate_files(args.references, args.predictions, data_roots=getattr(args, "data_root", None),
                                judge_fn=judge, similarity_fn=similarity_fn,
                                baseline_from=getattr(args, "baseline_from", None))
        if judge is not None:
            report["judge"] = judge.summary()
    except EvalInputError as e:
        return fail(str(e))
    finally:
        if judge is not None:
            judge.close()

    print(format_report(report), file=out_f)
    if getattr(args, "out", None):
        try:
            written = write_report(report, args.out)
        except OSError as e:
            return fail(f"--out {args.out}: cannot write ({e.strerror or e})")
        print(f"metrics written to {written}", file=out_f)
    if judge is not None and judge.asked and not judge.ok:
        print(f"medgrpo eval: judge returned no judgement for {judge.asked} pairs "
              f"({_reasons(dict(judge.failures))}); LLM columns are empty", file=err_f)
        return 1
    return 0
