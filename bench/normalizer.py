"""Benchmark of reward normalization and rule-based reward scoring (pure code, no Ray).

1. Throughput of ``rewards.normalizer.RewardNormalizer`` (streaming mode, one KLL sketch per key) for batch sizes
   1..4096 and 1..200 keys, steady state (every key already holds ``WARM_SAMPLES`` scores), side by side with a
   bounded-window baseline of the same memory (the last ``sketch_size`` scores per key, exact ``np.quantile`` on
   them: the other design SPEC §1 allows). Three candidates per cell: ``process`` (the step API the normalizer
   actor serves, including per-key metrics), ``core`` (``update`` + ``normalize`` per key, the caller groups) and
   ``window`` (the baseline, same grouping and same logistic formula).
2. Memory per key: retained items, their bytes, and the checkpoint (``state_dict`` as JSON) after 10k and 100k
   scores, against keeping every score (8 bytes each) and against the window.
3. Rank error of the p25/p50/p75 the normalizer applies, against the exact quantiles of everything it saw
   (numpy), on several distributions and stream orders; also for the window baseline and for ``np.quantile``
   itself (a check of the metric: ~0). Target (SPEC §1): rank error <= 0.01 after 10k samples.
4. Rule-based reward scoring (``rewards.task_scores.score``) samples/s per task family on the synthetic
   MedVidBench (``data.synthetic.generate`` into a temporary folder), for the reference answer, the reference
   wrapped in prose, and another row's answer. Caption families (vs, rc) score only their rule part here (format
   and parse); their judge and similarity parts are not included.

Rank error of an estimate ``v`` for probability ``q`` over the exact sample: the distance from ``q`` to the interval
``[F(v-), F(v)]`` (fractions of samples < v and <= v), so ties count as exact.

Run: ``python -m bench.normalizer [--quick] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bench.common import Report, compare, fmt_bytes, fmt_num, parser, ratio, time_per_call
from rewards.normalizer import RewardNormalizer, logistic_normalize

QS = (0.25, 0.5, 0.75)
WARM_SAMPLES = 5000  # per key before throughput is timed (the sketch is past its first compactions)
FEED_BATCH = 64  # scores per update when filling a stream (a step's worth of one key)
N_BATCHES = 16  # distinct pre-built batches cycled through by the throughput loop


# -- baseline ----------------------------------------------------------------------------------------------------
class WindowNormalizer:
    """Baseline: exact quantiles of the last ``size`` scores per key (ring buffer), same step semantics as
    ``RewardNormalizer.process`` with ``update_first`` (update, then normalize with the updated quantiles)."""

    def __init__(self, size: int = 2048, k: float = 3.0, eps: float = 1e-3, min_samples: int = 32) -> None:
        self.size, self.k, self.eps, self.min_samples = size, k, eps, min_samples
        self.buf: dict[str, np.ndarray] = {}
        self.pos: dict[str, int] = {}
        self.n: dict[str, int] = {}

    def update(self, key: str, scores: np.ndarray) -> None:
        buf = self.buf.get(key)
        if buf is None:
            buf = self.buf[key] = np.empty(self.size)
            self.pos[key], self.n[key] = 0, 0
        s = scores[-self.size:]
        p = self.pos[key]
        first = min(len(s), self.size - p)
        buf[p:p + first] = s[:first]
        buf[: len(s) - first] = s[first:]
        self.pos[key] = (p + len(s)) % self.size
        self.n[key] += len(scores)

    def window(self, key: str) -> np.ndarray:
        return self.buf[key][: min(self.n[key], self.size)]

    def normalize(self, key: str, scores: np.ndarray) -> np.ndarray:
        if self.n.get(key, 0) < self.min_samples:
            return scores.copy()
        q = tuple(float(v) for v in np.quantile(self.window(key), QS))
        return logistic_normalize(scores, q, self.k, self.eps)  # type: ignore[arg-type]


# -- 1. throughput ------------------------------------------------------------------------------------------------
def _batches(rng: np.random.Generator, b: int, names: list[str]) -> list[tuple[list[str], np.ndarray, dict]]:
    """``N_BATCHES`` steps of ``b`` (key, score) pairs; keys round-robin from a rotating offset so that, with fewer
    samples than keys, successive steps touch different keys."""
    out = []
    for j in range(N_BATCHES):
        keys = [names[(j * b + i) % len(names)] for i in range(b)]
        scores = rng.beta(2.0, 3.0, size=b)
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for i, k in enumerate(keys):
            groups[k].append(i)
        out.append((keys, scores, {k: np.asarray(v) for k, v in groups.items()}))
    return out


def throughput(batch_sizes: Sequence[int], key_counts: Sequence[int], rounds: int, min_time: float,
               seed: int) -> list[dict[str, Any]]:
    rows = []
    for nk in key_counts:
        names = [f"Src{i:03d}/tal" for i in range(nk)]
        rng = np.random.default_rng(seed)
        warm = {name: rng.beta(2.0, 3.0, size=WARM_SAMPLES) for name in names}
        for b in batch_sizes:
            norm = RewardNormalizer(mode="streaming", seed=seed)
            base = WindowNormalizer(size=norm.sketch_size)
            for name, w in warm.items():
                for s in range(0, WARM_SAMPLES, FEED_BATCH):
                    norm.update(name, w[s:s + FEED_BATCH])
                base.update(name, w)
            batches = _batches(rng, b, names)
            counter = [0, 0, 0]

            def run_process() -> None:
                keys, scores, _ = batches[counter[0] % N_BATCHES]
                counter[0] += 1
                norm.process(keys, scores)

            def update_then_normalize(obj: Any, slot: int) -> Callable[[], None]:
                """One step of per-key ``update`` then ``normalize`` calls on ``obj`` (the sketch or the window)."""

                def run() -> None:
                    _, scores, groups = batches[counter[slot] % N_BATCHES]
                    counter[slot] += 1
                    out = np.empty_like(scores)
                    for name, idx in groups.items():
                        obj.update(name, scores[idx])
                    for name, idx in groups.items():
                        out[idx] = obj.normalize(name, scores[idx])

                return run

            t = compare({"process": run_process, "core": update_then_normalize(norm, 1),
                         "window": update_then_normalize(base, 2)}, rounds=rounds, min_time=min_time)
            rows.append({
                "batch": b, "keys": nk, "keys_per_step": min(b, nk),
                "process_steps_s": 1.0 / t["process"].median, "process_samples_s": b / t["process"].median,
                "core_samples_s": b / t["core"].median, "window_samples_s": b / t["window"].median,
                "core_vs_window": ratio(t["window"], t["core"]),
                "process_overhead": ratio(t["process"], t["core"]),
                "noise": max(x.spread for x in t.values()),
            })
    return rows


# -- 2. memory ----------------------------------------------------------------------------------------------------
def memory(sizes: Sequence[int], sketch_sizes: Sequence[int], seed: int) -> list[dict[str, Any]]:
    rows = []
    for sk in sketch_sizes:
        for n in sizes:
            rng = np.random.default_rng(seed)
            norm = RewardNormalizer(mode="streaming", sketch_size=sk, seed=seed)
            data = rng.beta(2.0, 3.0, size=n)
            for s in range(0, n, FEED_BATCH):
                norm.update("AVOS/tal", data[s:s + FEED_BATCH])
            sketch = norm._keys["AVOS/tal"].sketch  # noqa: SLF001 - the benchmark inspects the retained levels
            levels = sketch._levels  # noqa: SLF001
            data_bytes = sum(int(b.nbytes) for b in levels)
            state_json = len(json.dumps(norm.state_dict()["keys"]["AVOS/tal"]).encode())
            rows.append({"sketch_size": sk, "samples": n, "items": sketch.size, "levels": len(levels),
                         "data_bytes": data_bytes, "state_json_bytes": state_json, "all_scores_bytes": 8 * n,
                         "window_bytes": 8 * min(n, sk), "vs_all_scores": data_bytes / (8 * n)})
    return rows


# -- 3. rank error ------------------------------------------------------------------------------------------------
def _dist(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if name == "uniform":
        return rng.random(n)
    if name == "normal":
        return rng.normal(0.5, 0.15, n)
    if name == "beta(0.5,0.5)":
        return rng.beta(0.5, 0.5, n)
    if name == "lognormal":
        return rng.lognormal(0.0, 1.5, n)
    if name == "5 levels":  # accuracy-like scores with heavy ties (SA/CVS-style)
        return rng.integers(0, 5, n) / 4.0
    if name == "40% zeros":  # format-gated IoU: many exact zeros, the rest continuous
        return np.where(rng.random(n) < 0.4, 0.0, rng.beta(2.0, 5.0, n))
    if name == "drift":  # the policy improves over the run: the mean rises linearly
        return 0.5 * rng.random(n) + 0.5 * np.arange(n) / n
    if name == "sorted":  # adversarial order
        return np.sort(rng.random(n))
    raise ValueError(name)


DISTRIBUTIONS = ("uniform", "normal", "beta(0.5,0.5)", "lognormal", "5 levels", "40% zeros", "drift", "sorted")


def rank_errors(sorted_all: np.ndarray, estimates: Sequence[float], qs: Sequence[float] = QS) -> list[float]:
    """Rank error of each estimate (module docstring): distance from q to [F(v-), F(v)] of the exact sample."""
    n = sorted_all.size
    out = []
    for v, q in zip(estimates, qs):
        lo = np.searchsorted(sorted_all, v, side="left") / n
        hi = np.searchsorted(sorted_all, v, side="right") / n
        out.append(float(max(0.0, lo - q, q - hi)))
    return out


def accuracy(sizes: Sequence[int], sketch_sizes: Sequence[int], seeds: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for dist in DISTRIBUTIONS:
        for n in sizes:
            worst: dict[str, float] = collections.defaultdict(float)
            for s in range(seeds):
                rng = np.random.default_rng(seed * 1000 + s)
                data = _dist(dist, rng, n)
                exact = np.sort(data)
                worst["numpy"] = max(worst["numpy"], *rank_errors(exact, np.quantile(data, QS)))
                worst["window"] = max(worst["window"], *rank_errors(exact, np.quantile(data[-2048:], QS)))
                for sk in sketch_sizes:
                    norm = RewardNormalizer(mode="streaming", sketch_size=sk, seed=seed * 1000 + s)
                    for i in range(0, n, FEED_BATCH):
                        norm.update("k/tal", data[i:i + FEED_BATCH])
                    worst[f"sketch{sk}"] = max(worst[f"sketch{sk}"], *rank_errors(exact, norm.quantiles("k/tal")))
            row: dict[str, Any] = {"distribution": dist, "samples": n, "seeds": seeds}
            row.update({f"err_{k}": v for k, v in worst.items()})
            rows.append(row)
    return rows


# -- 4. reward scoring --------------------------------------------------------------------------------------------
def _predictions(instances: list[Any]) -> list[tuple[Any, str, str]]:
    """(instance, prediction, kind) for kinds ``reference``, ``wrapped`` (prose around it) and ``other`` (the
    answer of the next row of the same qa_type: a plausible wrong answer)."""
    by_type: dict[str, list[Any]] = collections.defaultdict(list)
    for inst in instances:
        if inst.answer:
            by_type[inst.qa_type].append(inst)
    out = []
    for rows in by_type.values():
        for i, inst in enumerate(rows):
            other = rows[(i + 1) % len(rows)].answer
            out += [(inst, inst.answer, "reference"),
                    (inst, f"Looking at the video carefully: {inst.answer} I am fairly confident.", "wrapped"),
                    (inst, other, "other")]
    return out


def scoring(n_per_task: int, rounds: int, min_time: float, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from data.reader import read_instances
    from data.synthetic import generate
    from rewards.task_scores import score

    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        t0 = time.perf_counter()
        files = generate(tmp, n_per_task=n_per_task, seed=seed)
        gen_s = time.perf_counter() - t0
        instances, skipped = [], 0
        for key in ("train", "images_train"):
            res = read_instances(files[key])
            instances += res.instances
            skipped += len(res.skipped)
        preds = _predictions(instances)
        by_family: dict[str, list[tuple[Any, str, str]]] = collections.defaultdict(list)
        for inst, pred, kind in preds:
            by_family[inst.family].append((inst, pred, kind))
        rows = []
        for fam in sorted(by_family):
            items = by_family[fam]
            results = [(kind, score(inst, pred)) for inst, pred, kind in items]
            ref = [r for kind, r in results if kind == "reference"]
            wrapped = [r for kind, r in results if kind == "wrapped"]

            def run(items: list[tuple[Any, str, str]] = items) -> None:
                for inst, pred, _ in items:
                    score(inst, pred)

            timings = [time_per_call(run, min_time)[0] for _ in range(rounds)]
            sec = float(np.median(timings)) / len(items)
            def mean(xs: list[float]) -> float:
                return float(np.mean(xs)) if xs else math.nan

            rows.append({"family": fam, "samples": len(items), "samples_s": 1.0 / sec, "us_per_sample": sec * 1e6,
                         "needs_judge": bool(ref[0].needs_judge) if ref else None,
                         "ref_score": mean([r.score for r in ref]),
                         "ref_parsed": mean([float(r.reason is None) for r in ref]),
                         "wrapped_score": mean([r.score for r in wrapped]),
                         "wrapped_parsed": mean([float(r.reason is None) for r in wrapped])})
    meta = {"n_per_task": n_per_task, "instances": len(instances), "rows_skipped": skipped,
            "generate_s": round(gen_s, 2)}
    return rows, meta


# -- driver -------------------------------------------------------------------------------------------------------
def _f(digits: int = 3) -> Callable[[Any], str]:
    return lambda x: fmt_num(x, digits)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("normalizer", __doc__.split("\n")[0])
    args: argparse.Namespace = ap.parse_args(argv)
    rep = Report("normalizer", args)
    if args.quick:
        batch_sizes, key_counts, rounds, min_time = (1, 64, 4096), (1, 20, 200), 3, 0.05
        mem_sizes, acc_sizes, seeds, sketch_sizes, n_per_task = (10_000, 100_000), (10_000, 100_000), 2, (2048,), 3
    else:
        batch_sizes, key_counts, rounds, min_time = (1, 8, 64, 512, 4096), (1, 8, 50, 200), 5, 0.2
        mem_sizes, acc_sizes, seeds, sketch_sizes, n_per_task = (10_000, 100_000), (10_000, 100_000), 5, (2048, 400), 12

    rows = throughput(batch_sizes, key_counts, rounds, min_time, args.seed)
    rep.table("throughput", "RewardNormalizer throughput, steady state (samples/s; ratio = window time / core time, "
              "> 1: the sketch is faster)", rows, [
                  ("batch", "batch", fmt_num), ("keys", "keys", fmt_num), ("process_steps_s", "process steps/s", _f()),
                  ("process_samples_s", "process samples/s", _f()), ("core_samples_s", "core samples/s", _f()),
                  ("window_samples_s", "window samples/s", _f()), ("core_vs_window", "core vs window", _f()),
                  ("process_overhead", "process/core time", _f()), ("noise", "noise", _f(2))])
    mem = memory(mem_sizes, sketch_sizes, args.seed)
    rep.table("memory", "Memory per key (one key, scores fed 64 at a time)", mem, [
        ("sketch_size", "sketch_size", fmt_num), ("samples", "samples", fmt_num), ("items", "items kept", fmt_num),
        ("levels", "levels", fmt_num), ("data_bytes", "sketch data", fmt_bytes),
        ("state_json_bytes", "checkpoint (JSON)", fmt_bytes), ("window_bytes", "window data", fmt_bytes),
        ("all_scores_bytes", "all scores", fmt_bytes), ("vs_all_scores", "sketch / all", _f())])
    acc = accuracy(acc_sizes, sketch_sizes, seeds, args.seed)
    cols = [("distribution", "distribution", str), ("samples", "samples", fmt_num), ("seeds", "seeds", fmt_num)]
    cols += [(f"err_sketch{sk}", f"sketch {sk}", _f(2)) for sk in sketch_sizes]
    cols += [("err_window", "window 2048", _f(2)), ("err_numpy", "np.quantile", _f(2))]
    rep.table("rank_error", "Worst rank error of p25/p50/p75 over seeds (vs exact quantiles of the whole stream)",
              acc, cols)
    sc, meta = scoring(n_per_task, rounds, min_time, args.seed)
    rep.table("scoring", f"rewards.task_scores.score on synthetic MedVidBench ({meta['instances']} instances, "
              "3 predictions each: reference, wrapped in prose, another row's answer)", sc, [
                  ("family", "family", str), ("samples", "samples", fmt_num), ("samples_s", "samples/s", _f()),
                  ("us_per_sample", "us/sample", _f()), ("needs_judge", "judge part", fmt_num),
                  ("ref_score", "ref score", _f()), ("ref_parsed", "ref parsed", _f()),
                  ("wrapped_score", "wrapped score", _f()), ("wrapped_parsed", "wrapped parsed", _f())])

    big = [r for r in rows if r["batch"] == max(batch_sizes)]
    rep.summary["process_samples_s@batch%d_keys%d" % (max(batch_sizes), max(key_counts))] = \
        next(r["process_samples_s"] for r in big if r["keys"] == max(key_counts))
    rep.summary["core_vs_window_min"] = min(r["core_vs_window"] for r in rows)
    rep.summary["core_vs_window_max"] = max(r["core_vs_window"] for r in rows)
    default = [r for r in mem if r["sketch_size"] == 2048]
    rep.summary["bytes_per_key@100k"] = max(r["data_bytes"] for r in default)
    rep.summary["checkpoint_bytes_per_key@100k"] = max(r["state_json_bytes"] for r in default)
    err10k = max(r["err_sketch2048"] for r in acc if r["samples"] == 10_000)
    rep.summary["rank_error_max@10k"] = err10k
    rep.summary["rank_error_max@100k"] = max(r["err_sketch2048"] for r in acc if r["samples"] == 100_000)
    rep.targets["rank_error_max@10k"] = "<= 0.01 (SPEC §1)"
    rep.summary["rank_error_target_met"] = bool(err10k <= 0.01)
    rep.summary["scoring_samples_s_min_family"] = min(r["samples_s"] for r in sc)
    rep.note(f"synthetic data: {meta}")
    rep.note("'wrapped score' is after the strict format gate (MedGRPO: prose around the answer scores 0); "
             "'wrapped parsed' shows whether the lenient parser still read the answer")
    rep.note("scoring of vs/rc covers the rule part only (format gate, parse); the judge and similarity parts are "
             "benchmarked elsewhere (not yet)")
    return rep.finish()


if __name__ == "__main__":
    main()
