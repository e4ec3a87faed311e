"""LLM-judge throughput: batched vs one-by-one calls through ``rewards.judge.JudgeCore``, and the cache-hit path.

A hosted judge costs a fixed latency per call (network, queueing, prefill) plus a smaller cost per item. Three
measurements, each timed side by side in interleaved rounds (``bench.common.compare``):

1. **Batch size, fixed-latency backend.** ``JudgeCore`` (the real batching, cache, retries and parsing) over
   ``FakeBackend``: each ``complete`` call sleeps ``latency + per_item × items`` and returns a valid rubric reply
   per conversation (like a batch endpoint or an offline vLLM engine). One call of ``score`` over ``N`` distinct
   caption pairs with ``judge.batch_size`` b = 1..64, against ``one by one`` (``score`` called once per pair, as a
   caller without batching would). Items/s, the speed-up over one by one, and the efficiency against the ideal
   ``N / (ceil(N / b) × latency + N × per_item)`` (the rest is ``JudgeCore``'s own cost).
2. **Batch size, real HTTP.** The ``openai`` backend (httpx, one request per item, ``max_concurrency`` = b
   threads) against the local OpenAI-compatible stub of ``tests/judge_http_stub.py`` answering each request
   after ``--http-delay`` s: the same sweep, where a batch means b requests in flight at once.
3. **Cache.** ``score`` over ``N`` pairs already cached (every item a hit, no backend call) against the same pairs
   uncached, with a zero-latency backend (``JudgeCore``'s own cost per item: prompt building, hashing, parsing)
   and with the fixed-latency one.

Caption pairs: the real MedVidBench ``video_summary_gpt`` / ``region_caption_gpt`` answers
(``tests/fixtures/medvidbench_examples.json``), each candidate made distinct by a numbered suffix.

Run: ``python -m bench.judge [--quick] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import statistics
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from rewards.judge_backends import JudgeBackend
from bench.common import (FIXTURE_EXAMPLES, SHARED_EXAMPLES, Report, compare, examples_path, fmt_num,
                          load_judge_stub, parser, ratio)

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
_REPLY = json.dumps({"terminology": 4, "instrument_anatomy": 5, "specificity": 3, "procedure_context": 4,
                     "action_state": 2, "rationale": "close"})


class FakeBackend(JudgeBackend):
    """A judge backend with a hosted API's cost model: each ``complete`` call sleeps ``latency_s`` plus
    ``per_item_s`` per conversation, then returns one valid rubric reply per conversation. Counts its calls."""

    name = "fake"
    deterministic = False
    thread_safe = True

    def __init__(self, latency_s: float, per_item_s: float, sleep: Callable[[float], None] = time.sleep) -> None:
        if latency_s < 0 or per_item_s < 0:
            raise ValueError(f"latency_s={latency_s} and per_item_s={per_item_s} must be >= 0")
        self.latency_s = latency_s
        self.per_item_s = per_item_s
        self._sleep = sleep
        self.calls = 0
        self.items = 0

    def complete(self, conversations: Sequence[Any]) -> list[str]:
        self.calls += 1
        self.items += len(conversations)
        cost = self.latency_s + self.per_item_s * len(conversations)
        if cost > 0:
            self._sleep(cost)
        return [_REPLY] * len(conversations)

    def close(self) -> None:
        pass


def ideal_items_per_s(n_items: int, batch: int, latency_s: float, per_item_s: float) -> float:
    """Items/s of ``n_items`` judged in ``ceil(n_items / batch)`` sequential calls of the fake backend's cost."""
    if n_items < 1 or batch < 1:
        raise ValueError(f"n_items={n_items} and batch={batch} must be >= 1")
    secs = math.ceil(n_items / batch) * latency_s + n_items * per_item_s
    return n_items / secs if secs > 0 else math.inf


def caption_pairs(n: int, tag: str = "") -> list[tuple[str, str]]:
    """``n`` distinct (reference, candidate) caption pairs built from the real MedVidBench caption answers."""
    path = examples_path()
    if path is None:
        raise FileNotFoundError(f"no MedVidBench examples file: neither {SHARED_EXAMPLES} nor {FIXTURE_EXAMPLES}")
    examples = json.loads(path.read_text(encoding="utf-8"))
    refs = [examples[k]["answer"] for k in ("video_summary_gpt", "region_caption_gpt") if k in examples]
    if not refs:
        raise RuntimeError(f"{path} has no caption answers (video_summary_gpt, region_caption_gpt)")
    out = []
    for i in range(n):
        ref = refs[i % len(refs)]
        words = ref.split()
        # a plausible candidate: the reference with its second half reordered, numbered so every pair is distinct
        half = len(words) // 2
        out.append((ref, " ".join(words[:half] + words[half:][::-1]) + f" [{tag}{i}]"))
    return out


def _core(batch: int, backend: Any, cache_size: int = 0) -> Any:
    from rewards.judge import JudgeCore
    from rewards.config import JudgeConfig

    return JudgeCore(JudgeConfig(batch_size=batch, max_concurrency=batch, cache_size=cache_size, max_retries=0),
                     backend=backend)


def _check(outcomes: list[Any], n: int) -> None:
    bad = [o for o in outcomes if not o.ok]
    if len(outcomes) != n or bad:
        raise RuntimeError(f"judge bench: {len(bad)} of {len(outcomes)} judgements failed: {bad[:2]}")


def batch_sweep(n_items: int, batches: Sequence[int], make_backend: Callable[[int], Any], rounds: int
                ) -> tuple[dict[str, Any], list[Any]]:
    """Time ``score`` over ``n_items`` pairs for each batch size (and one call per pair); returns the timings and
    the backends (to close). Caching is off, so every item reaches the backend."""
    pairs = caption_pairs(n_items)
    cands: dict[str, Callable[[], Any]] = {}
    backends = []
    for b in batches:
        be = make_backend(b)
        backends.append(be)
        core = _core(b, be)
        cands[f"b{b}"] = lambda core=core: _check(core.score(pairs, "vs"), n_items)
    be = make_backend(1)
    backends.append(be)
    single = _core(1, be)
    cands["one_by_one"] = lambda: [_check(single.score([p], "vs"), 1) for p in pairs]
    return compare(cands, rounds=rounds, min_time=0.0, warmup=1), backends


def sweep_rows(t: dict[str, Any], n_items: int, batches: Sequence[int],
               ideal: Optional[Callable[[int], float]] = None) -> list[dict[str, Any]]:
    """One row per batch size, then the one-by-one baseline (batch 1), each with its speed-up over the baseline
    and, given ``ideal`` (batch -> items/s), the ideal rate and measured / ideal."""
    base = t["one_by_one"]
    rows = []
    for label, size, tb in [(b, b, t[f"b{b}"]) for b in batches] + [("one by one", 1, base)]:
        row = {"batch": label, "items_s": n_items / tb.median,
               "vs_one_by_one": 1.0 if tb is base else ratio(base, tb), "noise": tb.spread}
        if ideal is not None:
            row["ideal_items_s"] = ideal(size)
            row["efficiency"] = row["items_s"] / row["ideal_items_s"]
        rows.append(row)
    return rows


def cache_rates(n_items: int, backend: Any, rounds: int, min_time: float) -> dict[str, Any]:
    """Items/s of ``score`` when every pair is a cache hit vs when every pair is new (cache on in both)."""
    hot_pairs = caption_pairs(n_items, "hot")
    core = _core(8, backend, cache_size=10 * n_items)
    _check(core.score(hot_pairs, "vs"), n_items)  # fill the cache
    fresh = {"k": 0}

    def miss() -> None:
        fresh["k"] += 1
        _check(core.score(caption_pairs(n_items, f"cold{fresh['k']}-"), "vs"), n_items)

    def build_only() -> None:  # what the miss candidate spends building its pairs, to subtract
        caption_pairs(n_items, "x")

    calls0 = backend.calls
    t = compare({"hit": lambda: _check(core.score(hot_pairs, "vs"), n_items), "miss": miss, "pairs": build_only},
                rounds=rounds, min_time=min_time, warmup=1)
    miss_s = t["miss"].median - t["pairs"].median
    m = core.metrics()
    return {"items_s_hit": n_items / t["hit"].median, "items_s_miss": n_items / miss_s,
            "hit_speedup": statistics.median((m_ - p) / h for m_, p, h in zip(t["miss"].per_round,
                                                                                t["pairs"].per_round,
                                                                                t["hit"].per_round)),
            "us_per_hit": 1e6 * t["hit"].median / n_items, "backend_calls": backend.calls - calls0,
            "cache_hits": m.get("judge/cache_hits", 0.0), "noise": max(x.spread for x in t.values())}


def _serve_stub(delay_s: float, backlog: int, urls: Any, stop: Any) -> None:
    """Child process: the HTTP stub until ``stop`` is set (its own interpreter, so its threads do not share the
    client's GIL: a hosted endpoint is not in the caller's process either)."""
    server = load_judge_stub().JudgeServer(backlog=backlog, delay_s=delay_s)
    urls.put(server.url)
    try:
        stop.wait()
    finally:
        server.close()


@contextlib.contextmanager
def stub_server(delay_s: float, backlog: int) -> Iterator[str]:
    """The judge HTTP stub in a child process; yields its base URL."""
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve_stub, args=(delay_s, backlog, urls, stop), daemon=True)
    proc.start()
    try:
        url = urls.get(timeout=60)
        yield url
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)


SWEEP_COLUMNS = [("batch", "batch size", str), ("items_s", "items/s", fmt_num),
                 ("ideal_items_s", "ideal items/s", fmt_num), ("efficiency", "measured / ideal", fmt_num), ("vs_one_by_one", "speed-up vs one by one", fmt_num),
                 ("noise", "noise", lambda x: fmt_num(x, 2))]


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("judge", __doc__.split("\n")[0])
    ap.add_argument("--latency", type=float, default=0.0,
                    help="fake backend: seconds per call (default 0.02 quick, 0.1 full)")
    ap.add_argument("--per-item", type=float, default=0.0,
                    help="fake backend: seconds per item (default 0.001 quick, 0.004 full)")
    ap.add_argument("--http-delay", type=float, default=0.0,
                    help="HTTP stub: seconds before each reply (default 0.02 quick, 0.1 full)")
    args: argparse.Namespace = ap.parse_args(argv)
    rep = Report("judge", args)
    quick = args.quick
    n_items = 64
    latency = args.latency or (0.02 if quick else 0.1)
    per_item = args.per_item or (0.001 if quick else 0.004)
    http_delay = args.http_delay or (0.02 if quick else 0.1)
    rounds = 3 if quick else 5

    import logging

    logging.getLogger("rewards.judge_backends").setLevel(logging.ERROR)  # no API key: the stub needs none

    # 1. fixed-latency backend
    t, _ = batch_sweep(n_items, BATCH_SIZES, lambda b: FakeBackend(latency, per_item), rounds)
    rows = sweep_rows(t, n_items, BATCH_SIZES, lambda b: ideal_items_per_s(n_items, b, latency, per_item))
    rep.table("fake_backend", f"JudgeCore.score over {n_items} distinct caption pairs, backend with {latency * 1e3:g} "
              f"ms per call + {per_item * 1e3:g} ms per item (cache off)", rows, SWEEP_COLUMNS)
    by_b = {r["batch"]: r for r in rows}

    # 2. real HTTP, one request per item, b in flight
    from rewards.judge_backends import OpenAIBackend
    from rewards.config import JudgeConfig

    with stub_server(http_delay, backlog=4 * max(BATCH_SIZES)) as url:
        def http_backend(b: int) -> Any:
            return OpenAIBackend(JudgeConfig(backend="openai", base_url=url, model="stub", max_concurrency=b,
                                             batch_size=b, api_key_env="MEDGRPO_BENCH_NO_KEY"))

        t_http, backends = batch_sweep(n_items, BATCH_SIZES, http_backend, rounds)
        for be in backends:
            be.close()
    http_rows = sweep_rows(t_http, n_items, BATCH_SIZES, lambda b: ideal_items_per_s(n_items, b, http_delay, 0.0))
    rep.table("http", f"openai backend against the local HTTP stub ({http_delay * 1e3:g} ms per request), "
              f"{n_items} pairs, batch b = b requests in flight (stub in its own process)", http_rows, SWEEP_COLUMNS)
    http_b = {r["batch"]: r for r in http_rows}

    # 3. cache
    cache_rows = []
    for label, be in (("zero-latency backend", FakeBackend(0.0, 0.0)),
                      (f"{latency * 1e3:g} ms + {per_item * 1e3:g} ms/item backend", FakeBackend(latency, per_item))):
        row = cache_rates(n_items, be, rounds, min_time=0.2 if quick else 0.5)
        row["backend"] = label
        cache_rows.append(row)
    rep.table("cache", f"Cache: {n_items} pairs all hits vs all new (batch size 8, cache on)", cache_rows, [
        ("backend", "backend", str), ("items_s_hit", "hit items/s", fmt_num),
        ("items_s_miss", "miss items/s", fmt_num), ("hit_speedup", "hit speed-up", fmt_num),
        ("us_per_hit", "µs per hit", fmt_num), ("noise", "noise", lambda x: fmt_num(x, 2))])

    rep.summary["fake_b8_vs_one_by_one"] = by_b[8]["vs_one_by_one"]
    rep.summary["fake_b64_vs_one_by_one"] = by_b[64]["vs_one_by_one"]
    rep.summary["fake_b64_efficiency"] = by_b[64]["efficiency"]
    rep.summary["http_b8_vs_one_by_one"] = http_b[8]["vs_one_by_one"]
    rep.summary["http_b64_vs_one_by_one"] = http_b[64]["vs_one_by_one"]
    rep.summary["http_b64_efficiency"] = http_b[64]["efficiency"]
    rep.summary["cache_hit_us"] = cache_rows[0]["us_per_hit"]
    rep.summary["cache_hit_speedup_zero_latency"] = cache_rows[0]["hit_speedup"]
    rep.targets["fake_b64_efficiency"] = "close to 1 (JudgeCore adds little to the backend's cost)"
    rep.note("ideal = the backend's own cost alone; 'measured / ideal' < 1 is JudgeCore's cost (prompt building, "
             "hashing, parsing) or, over HTTP, the client, JSON and the stub server sharing the CPU")
    return rep.finish()


if __name__ == "__main__":
    main()
