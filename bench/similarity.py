"""Benchmark of the caption reward's semantic-similarity part: all-MiniLM-L6-v2 embeddings as the reward path uses them.

A reward worker (``rewards/scoring.py``, ``RewardScorer.score_batch``) scores a step's caption samples (VS,
RC) with ONE call ``SentenceSimilarity.similarity(references, generated texts)`` (``rewards/similarity.py``); that
call embeds the distinct texts it has not seen before in one ``SentenceTransformer.encode`` and keeps every
embedding in a per-worker LRU cache. This benchmark times that call on realistic steps.

Data: the caption references (vs, rc) of the synthetic MedVidBench (``data.synthetic.generate``, train + eval) and
the real MedVidBench examples (``/work/shared/data/medvidbench_examples.json``, else
``tests/fixtures/medvidbench_examples.json``), shuffled; ``G = 8`` predictions per reference (``variants``): the
reference itself, its first half, its first sentence, another row's reference, an empty string, the reference in
prose, the first half again and the reference with every fifth word dropped -- so a step holds realistic
duplicates (within a group, and a prediction equal to a cached reference) and an empty prediction (scored 0
without the model). A step of ``n`` captions is the first ``n / G`` groups.

Candidates, timed interleaved (``bench.common.compare``), each call scoring one whole step:

* ``step``: ``SentenceSimilarity.similarity`` as the reward worker calls it, in a later epoch: before each call the
  cache holds every reference's embedding and nothing else (the prompts were seen before; the sampled captions are
  new). Checked once, untimed, to be the call ``RewardScorer.score_batch`` makes (``path check``);
* ``one_by_one``: the same cache state, one ``similarity([ref], [pred])`` per pair (the naive baseline);
* ``cold``: ``step`` with the cache cleared before each call (what the first epoch sees);
* ``cold_split``: ``cold`` done as ``similarity`` did it before references and predictions shared one ``embed``
  call (references embedded, then predictions, in two ``encode`` calls);
* ``floor``: the raw model, one ``SentenceTransformer.encode`` call on exactly the distinct texts ``step`` must
  encode (at the path's batch size; no cache, no cosine); ``floor_cold``: the same for everything ``cold`` encodes.

Ratios are medians of per-round time ratios: ``one_by_one / step`` (> 1: batching wins), ``step / floor`` and
``cold / floor_cold`` (what the reward path adds to the model), ``cold / step`` (what the cache saves). The scores
of every candidate (and of the real ``RewardScorer.score_batch``) are compared with ``step``'s: the model's
output depends on the batch a text is padded in by ~1e-7, so ``same scores`` means max |diff| <= 1e-6 and
``bit-identical`` is reported beside it.

Two more tables: ``encode`` of a cold step's distinct texts at several batch sizes, 'all' being the whole call in
one batch (the model sorts a call's texts by length and pads each batch to its longest, so on CPU the batch size
sets the padded tokens, which the table counts with the model's tokenizer); and, counted without the model, how
many texts a step encodes when a pool deals it per sample round-robin over several workers (before this benchmark),
against whole prompt groups per worker (what ``RewardWorkerPool`` does now, ``deal_by_prompt``), each worker with
its own cache.

Run: ``python -m bench.similarity [--quick] [--json PATH] [--seed N] [--threads N]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from bench.common import Report, compare, examples_path, fmt_num, parser, ratio
from rewards.tasks import answer_caption_pairs, specs

G = 8  # predictions per reference (the MedGRPO recipe's group size)
VARIANTS = ("reference", "first_half", "first_sentence", "other_row", "empty", "in_prose", "first_half_again",
            "words_dropped")
# the free-text captions: the whole answer is the one caption the reward judges (DVC judges per matched segment)
CAPTION_FAMILIES = tuple(s.name for s in specs() if s.judged_in_reward and s.caption_pairs is answer_caption_pairs)
SAME_ATOL = 1e-6  # scores closer than this are "the same" (batch composition moves the model's output ~1e-7)
TAGGED_THINK = "I look at the instruments and how they move before I describe the clip."


# -- data ----------------------------------------------------------------------------------------------------------
def variants(reference: str, other: str) -> list[tuple[str, str]]:
    """The ``G`` predictions of one group as (kind, text), in ``VARIANTS`` order (module docstring)."""
    words = reference.split()
    half = " ".join(words[: max(1, len(words) // 2)])
    first_sentence = re.split(r"(?<=[.!?])\s+", reference.strip(), maxsplit=1)[0]
    in_prose = f"In this clip, {reference[:1].lower()}{reference[1:]}" if reference else ""
    dropped = " ".join(w for k, w in enumerate(words) if k % 5 != 4)
    texts = (reference, half, first_sentence, other, "", in_prose, half, dropped)
    return list(zip(VARIANTS, texts))


@dataclass(frozen=True)
class Group:
    """One prompt of a step: its instance and its ``G`` predictions (kind, text)."""

    instance: Any  # data.schema.Instance
    predictions: tuple[tuple[str, str], ...]


def make_groups(instances: Sequence[Any]) -> list[Group]:
    """One group per instance; ``other_row`` is the next instance's reference of the same family with another text
    (any other text when the family has only one; the reference itself when all are equal)."""
    out = []
    for i, inst in enumerate(instances):
        ref = inst.answer
        others = instances[i + 1:] + instances[:i]
        same = [o.answer for o in others if o.family == inst.family and o.answer != ref]
        other = (same or [o.answer for o in others if o.answer != ref] or [ref])[0]
        out.append(Group(inst, tuple(variants(ref, other))))
    return out


def step_pairs(groups: Sequence[Group], n_captions: int) -> tuple[list[Any], list[str], list[str]]:
    """(instances, references, predictions) of a step of ``n_captions`` = the first ``n_captions / G`` groups."""
    if n_captions % G or n_captions <= 0:
        raise ValueError(f"a step holds whole groups: {n_captions} captions is not a positive multiple of G={G}")
    if n_captions // G > len(groups):
        raise ValueError(f"a step of {n_captions} captions needs {n_captions // G} references; only "
                         f"{len(groups)} available (raise n_per_task)")
    insts, refs, preds = [], [], []
    for g in groups[: n_captions // G]:
        for _, text in g.predictions:
            insts.append(g.instance)
            refs.append(g.instance.answer)
            preds.append(text)
    return insts, refs, preds


def example_instances(path: Path) -> list[Any]:
    """Caption instances (vs, rc) of the examples file (``{qa_type: {question, answer}}``)."""
    from data.schema import Instance, task_family

    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected an object of qa_type -> example, got {type(doc).__name__}")
    out = []
    for qa_type, ex in sorted(doc.items()):
        try:
            fam = task_family(qa_type)
        except KeyError:
            continue
        if fam in CAPTION_FAMILIES and isinstance(ex, dict) and isinstance(ex.get("answer"), str):
            out.append(Instance(id=f"example/{qa_type}", qa_type=qa_type, data_source="MedVidBench-example",
                                question=str(ex.get("question", "")), answer=ex["answer"]))
    return out


def caption_instances(n_per_task: int, seed: int) -> tuple[list[Any], dict[str, Any]]:
    """Caption instances with a non-empty reference from the synthetic MedVidBench and the real examples,
    shuffled with ``seed``; and what was read/skipped."""
    from data.reader import read_instances
    from data.synthetic import generate

    insts: list[Any] = []
    skipped: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-similarity-") as tmp:
        files = generate(tmp, n_per_task=n_per_task, seed=seed)
        for key in ("train", "eval"):
            res = read_instances(files[key])
            skipped["unreadable_rows"] = skipped.get("unreadable_rows", 0) + len(res.skipped)
            insts += [i for i in res.instances if i.family in CAPTION_FAMILIES]
    n_synth = len(insts)
    ex = examples_path()
    if ex is not None:
        insts += example_instances(ex)
    no_ref = [i for i in insts if not (i.answer or "").strip()]
    skipped["no_reference"] = len(no_ref)
    insts = [i for i in insts if (i.answer or "").strip()]
    order = np.random.default_rng(seed).permutation(len(insts))
    meta = {"synthetic": n_synth, "examples": len(insts) + len(no_ref) - n_synth,
            "examples_file": str(ex) if ex else None, "skipped": skipped,
            "distinct_references": len({i.answer.strip() for i in insts})}
    return [insts[k] for k in order], meta


# -- what a call encodes (mirrors SentenceSimilarity.embed; tests/test_bench_similarity.py checks it against it) ----
def valid_pairs(refs: Sequence[str], preds: Sequence[str]) -> list[int]:
    """Indices of the pairs the model sees: both texts non-blank (a blank one scores 0 without the model)."""
    return [i for i, (r, p) in enumerate(zip(refs, preds)) if r.strip() and p.strip()]


def texts_to_encode(refs: Sequence[str], preds: Sequence[str], cached: Iterable[str] = ()) -> list[str]:
    """The distinct stripped texts one ``similarity(refs, preds)`` call encodes, first-seen order, given the texts
    already ``cached`` (stripped): references first, then predictions, of the valid pairs only."""
    idx = valid_pairs(refs, preds)
    known = set(cached)
    todo = [t.strip() for t in [refs[i] for i in idx] + [preds[i] for i in idx]]
    return [t for t in dict.fromkeys(todo) if t not in known]


def hit_rate(before: dict[str, int], after: dict[str, int]) -> float:
    """Cache hits / embedding rows between two ``cache_info()`` snapshots (NaN when no row was embedded)."""
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    return hits / (hits + misses) if hits + misses else float("nan")


def shard_encodes(refs: Sequence[str], preds: Sequence[str], workers: int, dealing: str,
                  cached: Iterable[str] = ()) -> int:
    """Texts encoded by a step over ``workers`` workers, each with its own cache holding ``cached``.

    ``dealing``: ``round_robin`` (item i to worker i % workers: the pool's former dealing) or ``by_group`` (whole
    groups of ``G`` consecutive items per worker, groups dealt round-robin: ``RewardWorkerPool.score`` now)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = len(refs)
    if dealing == "round_robin":
        shards = [list(range(w, n, workers)) for w in range(workers)]
    elif dealing == "by_group":
        shards = [[i for i in range(n) if (i // G) % workers == w] for w in range(workers)]
    else:
        raise ValueError(f"dealing must be 'round_robin' or 'by_group', got {dealing!r}")
    cached = list(cached)
    return sum(len(texts_to_encode([refs[i] for i in s], [preds[i] for i in s], cached)) for s in shards)


def padded_tokens(texts: Sequence[str], token_counts: Sequence[int], batch_size: int) -> int:
    """Tokens a ``SentenceTransformer.encode`` call pushes through the model, padding included: it sorts the texts
    by character length (longest first) and pads each batch of ``batch_size`` to its longest member."""
    if len(texts) != len(token_counts):
        raise ValueError(f"{len(texts)} texts but {len(token_counts)} token counts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    counts = [token_counts[i] for i in order]
    return sum(max(counts[s:s + batch_size]) * len(counts[s:s + batch_size]) for s in range(0, len(counts), batch_size))


def compare_scores(reference: np.ndarray, others: dict[str, np.ndarray]) -> dict[str, Any]:
    """Max |diff| of each candidate's scores to ``reference``; same (<= SAME_ATOL) and bit-identical over all."""
    diffs = {}
    for name, v in others.items():
        v = np.asarray(v, dtype=np.float64)
        if v.shape != reference.shape:
            raise ValueError(f"{name}: {v.shape[0] if v.ndim else 0} scores for {reference.shape[0]} pairs")
        diffs[name] = float(np.max(np.abs(v - reference))) if v.size else 0.0
    worst = max(diffs.values(), default=0.0)
    return {"max_abs_diff": worst, "same_scores": bool(worst <= SAME_ATOL), "bit_identical": worst == 0.0,
            "diffs": diffs}


# -- the model side ------------------------------------------------------------------------------------------------
class _CountingEncoder:
    """Wraps the model for one untimed pass: counts ``encode`` calls and the texts they carry."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls, self.texts = model, 0, 0

    def encode(self, texts: Sequence[str], **kw: Any) -> Any:
        self.calls += 1
        self.texts += len(texts)
        return self.model.encode(texts, **kw)


class _PathSpy:
    """Stands in for the similarity object a ``RewardScorer`` holds; records the calls, delegates to the real one."""

    def __init__(self, sim: Any) -> None:
        self.sim, self.calls = sim, []

    def similarity(self, refs: Sequence[str], cands: Sequence[str]) -> np.ndarray:
        self.calls.append((list(refs), list(cands)))
        return self.sim.similarity(refs, cands)


def path_check(sim: Any, insts: Sequence[Any], refs: list[str], preds: list[str], set_state: Callable[[], None]
               ) -> tuple[Optional[np.ndarray], str]:
    """Score the step through the real ``RewardScorer.score_batch`` (no judge) and check that it made exactly the
    call ``step`` times. Returns (its similarity components, verdict)."""
    from rewards.scoring import RewardItem, RewardScorer
    from rewards.config import RewardConfig

    spy = _PathSpy(sim)
    scorer = RewardScorer(RewardConfig(), None, similarity=spy)
    set_state()
    out = scorer.score_batch([RewardItem(inst, p) for inst, p in zip(insts, preds)])
    comps = np.array([s.components.get("similarity", np.nan) for s in out], dtype=np.float64)
    if len(spy.calls) != 1:
        return comps, f"differs: score_batch made {len(spy.calls)} similarity calls for one step"
    if spy.calls[0] != (refs, preds):
        return comps, "differs: score_batch passed other texts than (references, answers)"
    return comps, "ok: one similarity(references, answers) call per batch"


def measure(sim: Any, groups: Sequence[Group], n: int, ref_cache: dict[str, np.ndarray], rounds: int,
            warmup: int, split: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time the candidates on a step of ``n`` captions; (per-candidate rows, the row of ratios and checks)."""
    from rewards.similarity import cosine_to_unit

    insts, refs, preds = step_pairs(groups, n)
    model = sim._model()  # noqa: SLF001 - the floor calls the same model object the path uses
    cache = sim._cache  # noqa: SLF001 - the benchmark sets the cache state before each call

    def later_epoch() -> None:
        cache.clear()
        cache.update(ref_cache)

    def encode(texts: list[str]) -> Any:
        return model.encode(texts, batch_size=sim.batch_size, convert_to_numpy=True, normalize_embeddings=True,
                            show_progress_bar=False)

    misses = texts_to_encode(refs, preds, ref_cache)
    misses_cold = texts_to_encode(refs, preds)
    idx = valid_pairs(refs, preds)

    def step() -> np.ndarray:
        later_epoch()
        return sim.similarity(refs, preds)

    def one_by_one() -> np.ndarray:
        later_epoch()
        return np.array([sim.similarity([r], [p])[0] for r, p in zip(refs, preds)])

    def cold() -> np.ndarray:
        cache.clear()
        return sim.similarity(refs, preds)

    def cold_split() -> np.ndarray:
        cache.clear()
        out = np.zeros(len(refs))
        if idx:
            a = sim.embed([refs[i] for i in idx]).astype(np.float64)
            b = sim.embed([preds[i] for i in idx]).astype(np.float64)
            out[idx] = cosine_to_unit(np.einsum("ij,ij->i", a, b), sim.mapping)
        return out

    cands: dict[str, Callable[[], Any]] = {"step": step, "one_by_one": one_by_one, "cold": cold}
    if split:
        cands["cold_split"] = cold_split
    cands["floor"] = lambda: encode(misses)
    cands["floor_cold"] = lambda: encode(misses_cold)

    # untimed pass over the reward-path candidates: scores, cache hit rate, model calls and texts per call
    # (the floors are one encode call of a known list by construction)
    real = sim._encoder  # noqa: SLF001
    scores: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {
        "floor": {"model_calls": 1, "texts_encoded": len(misses), "hit_rate": None},
        "floor_cold": {"model_calls": 1, "texts_encoded": len(misses_cold), "hit_rate": None}}
    for name, fn in cands.items():
        if name in info:
            continue
        counter = _CountingEncoder(real)
        sim._encoder = counter  # noqa: SLF001
        before = sim.cache_info()
        try:
            scores[name] = np.asarray(fn(), dtype=np.float64)
        finally:
            sim._encoder = real  # noqa: SLF001
        info[name] = {"model_calls": counter.calls, "texts_encoded": counter.texts,
                      "hit_rate": hit_rate(before, sim.cache_info())}
    path_scores, verdict = path_check(sim, insts, refs, preds, later_epoch)
    check = compare_scores(scores["step"], {**{k: v for k, v in scores.items() if k != "step"},
                                            "reward_scorer": path_scores})

    t = compare(cands, rounds=rounds, min_time=0.0, warmup=warmup)
    rows = []
    for name, tm in t.items():
        rows.append({"captions": n, "candidate": name, "ms_per_step": tm.median * 1e3, "pairs_s": n / tm.median,
                     "texts_encoded": info[name]["texts_encoded"], "model_calls": info[name]["model_calls"],
                     "hit_rate": info[name]["hit_rate"], "noise": tm.spread})
    summary = {"captions": n, "references": n // G, "valid_pairs": len(idx), "distinct_texts": len(misses_cold),
               "encoded_step": len(misses), "encoded_cold": len(misses_cold),
               "hit_rate_step": info["step"]["hit_rate"], "hit_rate_cold": info["cold"]["hit_rate"],
               "obo_over_step": ratio(t["one_by_one"], t["step"]), "step_over_floor": ratio(t["step"], t["floor"]),
               "cold_over_floor_cold": ratio(t["cold"], t["floor_cold"]), "cold_over_step": ratio(t["cold"], t["step"]),
               "split_over_cold": ratio(t["cold_split"], t["cold"]) if split else None,
               "same_scores": check["same_scores"], "bit_identical": check["bit_identical"],
               "max_abs_diff": check["max_abs_diff"], "path": verdict,
               "noise": max(x.spread for x in t.values())}
    return rows, summary


def batch_sizes_table(sim: Any, texts: list[str], batch_sizes: Sequence[int], rounds: int,
                      warmup: int) -> list[dict[str, Any]]:
    """``encode`` of ``texts`` (one call) at each batch size (``len(texts)`` = everything in one batch), timed
    interleaved; padded tokens counted with the model's tokenizer. ``vs_path`` = time / time at the path's size."""
    model = sim._model()  # noqa: SLF001
    limit = int(getattr(model, "max_seq_length", 0) or 0) or None
    counts = [len(ids) for ids in model.tokenizer(texts, truncation=limit is not None, max_length=limit)["input_ids"]]
    sizes = sorted({*(bs for bs in batch_sizes if bs < len(texts)), min(sim.batch_size, len(texts)), len(texts)})
    cands = {bs: (lambda bs=bs: model.encode(texts, batch_size=bs, convert_to_numpy=True, normalize_embeddings=True,
                                              show_progress_bar=False)) for bs in sizes}
    t = compare({str(bs): fn for bs, fn in cands.items()}, rounds=rounds, min_time=0.0, warmup=warmup)
    path = t[str(min(sim.batch_size, len(texts)))]
    rows = []
    for bs in sizes:
        tm = t[str(bs)]
        rows.append({"batch_size": bs, "label": "all" if bs >= len(texts) else str(bs), "texts": len(texts),
                     "tokens": sum(counts), "padded_tokens": padded_tokens(texts, counts, bs),
                     "ms": tm.median * 1e3, "texts_s": len(texts) / tm.median, "vs_path": ratio(tm, path),
                     "path": bs == min(sim.batch_size, len(texts)), "noise": tm.spread})
    return rows


def tagged_similarity(sim: Any, inst: Any) -> tuple[float, float]:
    """Similarity of ``inst``'s reference to itself inside ``<think>…</think><answer>…</answer>``: of the whole
    text (what the reward worker embedded before it took the answer part) and through the real
    ``RewardScorer.score_batch`` (the answer part, ``rewards.parsing.answer_text``, as the leaderboard)."""
    from rewards.scoring import RewardItem, RewardScorer
    from rewards.config import RewardConfig

    tagged = f"<think>{TAGGED_THINK}</think><answer>{inst.answer}</answer>"
    raw = float(sim.similarity([inst.answer], [tagged])[0])
    scored = RewardScorer(RewardConfig(), None, similarity=sim).score_batch([RewardItem(inst, tagged)])[0]
    return raw, float(scored.components["similarity"])


# -- driver --------------------------------------------------------------------------------------------------------
def _f(digits: int = 3) -> Callable[[Any], str]:
    return lambda x: fmt_num(x, digits)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("similarity", __doc__.split("\n")[0])
    args: argparse.Namespace = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is bundled; never reach for a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    rep = Report("similarity", args, uses_torch=True)
    if args.quick:  # no cold_split; the batch-size sweep runs on the smallest step's texts, in full the largest's
        sizes, rounds, warmup, n_per_task, sweep = (64, 256), 2, 0, 8, (1, 8)
    else:
        sizes, rounds, warmup, n_per_task, sweep = (16, 64, 256), 5, 1, 8, (1, 4, 8, 16, 32, 64)

    from rewards.config import RewardConfig
    from rewards.similarity import SentenceSimilarity

    insts, meta = caption_instances(n_per_task, args.seed)
    groups = make_groups(insts)
    cfg = RewardConfig()
    sim = SentenceSimilarity(cfg.similarity_model, mapping=cfg.similarity_mapping)  # as RewardScorer builds it
    t0 = time.perf_counter()
    sim.embed([g.instance.answer for g in groups])  # loads the model; every reference's embedding, for `step`
    load_s = time.perf_counter() - t0
    ref_cache = dict(sim._cache)  # noqa: SLF001

    rows, summaries = [], []
    for n in sizes:
        r, s = measure(sim, groups, n, ref_cache, rounds, warmup, split=not args.quick)
        rows += r
        summaries.append(s)
    rep.table("candidates", f"similarity of one step (G = {G} predictions per reference; {rounds} interleaved "
              "rounds, median)", rows, [
                  ("captions", "captions", fmt_num), ("candidate", "candidate", str),
                  ("ms_per_step", "ms/step", _f()), ("pairs_s", "pairs/s", _f()),
                  ("texts_encoded", "texts encoded", fmt_num), ("model_calls", "encode calls", fmt_num),
                  ("hit_rate", "cache hit rate", _f(2)), ("noise", "noise", _f(2))])
    rep.table("ratios", "time ratios (median of per-round ratios) and score checks", summaries, [
        ("captions", "captions", fmt_num), ("distinct_texts", "distinct texts", fmt_num),
        ("encoded_step", "encoded (step)", fmt_num), ("obo_over_step", "one_by_one/step", _f()),
        ("step_over_floor", "step/floor", _f()), ("cold_over_floor_cold", "cold/floor_cold", _f()),
        ("cold_over_step", "cold/step", _f()), ("split_over_cold", "cold_split/cold", _f()),
        ("hit_rate_step", "hits step", _f(2)), ("hit_rate_cold", "hits cold", _f(2)),
        ("same_scores", "same scores", fmt_num), ("bit_identical", "bit-identical", fmt_num),
        ("max_abs_diff", "max |diff|", _f(2)), ("noise", "noise", _f(2))])

    sweep_n = min(sizes) if args.quick else max(sizes)
    sweep_texts = texts_to_encode(*step_pairs(groups, sweep_n)[1:])
    bs_rows = batch_sizes_table(sim, sweep_texts, [*sweep, len(sweep_texts)], rounds, warmup)
    rep.table("batch_size", f"encode of the {len(sweep_texts)} distinct texts of a cold step of {sweep_n} captions "
              f"at each batch size (one call; 'all' = one batch; the path uses {sim.batch_size})", bs_rows, [
                  ("label", "batch size", str), ("tokens", "tokens", fmt_num),
                  ("padded_tokens", "padded tokens", fmt_num), ("ms", "ms", _f()), ("texts_s", "texts/s", _f()),
                  ("vs_path", "time / path's", _f()), ("noise", "noise", _f(2))])

    _, refs, preds = step_pairs(groups, max(sizes))
    shard_rows = []
    for k in (1, 2, 4, 8):
        row: dict[str, Any] = {"workers": k}
        for dealing in ("round_robin", "by_group"):
            row[f"cold_{dealing}"] = shard_encodes(refs, preds, k, dealing)
            row[f"later_{dealing}"] = shard_encodes(refs, preds, k, dealing, ref_cache)
        shard_rows.append(row)
    rep.table("sharding", f"texts encoded by a step of {max(sizes)} captions over k reward workers (counted, "
              "no model): round-robin = per sample (the pool's former dealing); by group = whole groups per worker "
              "(RewardWorkerPool now)", shard_rows, [
                  ("workers", "workers", fmt_num), ("cold_round_robin", "cold, round-robin", fmt_num),
                  ("cold_by_group", "cold, by group", fmt_num), ("later_round_robin", "later epoch, round-robin",
                                                                  fmt_num),
                  ("later_by_group", "later epoch, by group", fmt_num)])

    raw, extracted = tagged_similarity(sim, groups[0].instance)
    by_n = {s["captions"]: s for s in summaries}
    for n in sizes:
        rep.summary[f"pairs_s_step@{n}"] = next(r["pairs_s"] for r in rows
                                                if r["captions"] == n and r["candidate"] == "step")
        rep.summary[f"ms_per_step@{n}"] = next(r["ms_per_step"] for r in rows
                                               if r["captions"] == n and r["candidate"] == "step")
    big = by_n[max(sizes)]
    for key in ("obo_over_step", "step_over_floor", "cold_over_floor_cold", "cold_over_step", "split_over_cold",
                "hit_rate_step", "hit_rate_cold"):
        if big[key] is not None:
            rep.summary[f"{key}@{max(sizes)}"] = big[key]
    rep.summary["same_scores"] = all(s["same_scores"] for s in summaries)
    rep.summary["bit_identical"] = all(s["bit_identical"] for s in summaries)
    rep.summary["max_abs_diff"] = max(s["max_abs_diff"] for s in summaries)
    rep.summary["path_check"] = summaries[0]["path"]
    rep.summary["tagged_reference_similarity_raw"] = raw
    rep.summary["tagged_reference_similarity_extracted"] = extracted
    rep.summary["path_batch_size"] = sim.batch_size
    for r in bs_rows:
        if not r["path"]:
            rep.summary[f"encode_time_bs{r['label']}_over_path"] = r["vs_path"]
    rep.summary["rounds"] = rounds
    rep.note(f"data: {meta}; model load + {len(groups)} reference embeddings: {load_s:.2f} s")
    rep.note("step / one_by_one share the cache state of a later epoch (every reference cached, no prediction); "
             "cold and cold_split (full runs only) start from an empty cache; floor/floor_cold encode the same "
             f"distinct texts in one encode call (batch_size {sim.batch_size}); the cache reset is inside the timed "
             "call (microseconds)")
    rep.note("same scores: max |diff| <= 1e-6 against step (a text's embedding moves ~1e-7 with the batch it is "
             "padded in); reward_scorer = the similarity components of RewardScorer.score_batch on the same step")
    rep.note(f"a reference inside <think>...</think><answer>...</answer>: similarity {raw:.3f} of the whole text "
             f"(the reward worker's former input), {extracted:.3f} through RewardScorer now (the answer part, as the "
             "leaderboard)")
    return rep.finish()


if __name__ == "__main__":
    main()
