"""The medical LLM judge's Ray-free core (``JudgeCore``); ``actors/judge.py`` is its Ray actor shell.

``JudgeCore`` takes (reference, candidate) caption pairs, builds the rubric prompt (rewards/judge_rubric.py), asks
a backend (rewards/judge_backends.py: OpenAI-compatible HTTP, vLLM, transformers) in batches, parses the replies,
and returns one ``JudgeOutcome`` per pair: a score, or ``None`` with a stable reason code. Around the backend:

* an LRU cache keyed by a hash of (kind, task hint, reference, candidate); duplicates within a batch are asked once;
* retries with exponential backoff (plus up to 25 % jitter) for retryable call failures (timeouts, 5xx, 429) and
  for unparseable replies, except on deterministic (greedy, in-process) backends where re-asking gives the same
  reply;
* a circuit breaker: after ``breaker_failures`` consecutive call failures no call is made for
  ``breaker_cooldown_s``; requests get reason ``circuit_open``. After the cooldown one probe call decides;
* counters: requests, calls, retries, cache hits, failures by reason, call latency (``metrics()``).

A failed or unparseable judgement is counted and returned as missing (``score=None``), never as a silent 0. An
empty candidate is the one case scored without a call: the lowest rubric score (1, reward 0), counted separately.
"""
from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from rewards.config import JudgeConfig
from rewards.judge_backends import JudgeBackend, JudgeCallError, make_backend
from rewards.judge_rubric import (DIMENSION_KEYS, SCORE_MIN, build_alignment_messages, build_judge_messages,
                                  parse_alignment_reply, parse_judge_reply)

log = logging.getLogger(__name__)

BACKOFF_JITTER = 0.25


@dataclass
class JudgeOutcome:
    """One judgement. Rubric: ``score`` = mean of the five dimensions (1-5), ``reward`` = (score - 1) / 4.
    Alignment: ``score`` = ``reward`` = 1.0 or 0.0. Missing: both None and ``reason`` says why."""

    score: Optional[float] = None
    reward: Optional[float] = None
    reason: Optional[str] = None
    detail: str = ""
    dimensions: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None and self.score is not None


def as_judge_config(cfg: Union[JudgeConfig, Mapping[str, Any], Any]) -> JudgeConfig:
    """A ``JudgeConfig`` from itself, a plain mapping, or an OmegaConf node."""
    if isinstance(cfg, JudgeConfig):
        return cfg
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a hard dependency
        pass
    if isinstance(cfg, Mapping):
        return JudgeConfig(**dict(cfg))
    raise TypeError(f"judge config must be a JudgeConfig or a mapping, got {type(cfg).__name__}")


class CircuitBreaker:
    """Closed -> (``failures`` consecutive failures) -> open for ``cooldown_s`` -> one probe -> closed or open.

    Not thread-safe by itself; ``JudgeCore`` calls it under its lock.
    """

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = "closed"
        self.consecutive = 0
        self.opened_at = 0.0
        self.trips = 0

    def acquire(self) -> str:
        """``closed``: call freely; ``probe``: make exactly one call, then ``record`` it; ``open``: do not call."""
        if self.state == "open" and self.clock() - self.opened_at >= self.cooldown_s:
            self.state = "half_open"
            return "probe"
        return "closed" if self.state == "closed" else "open"

    def record(self, ok: bool) -> None:
        if ok:
            if self.state != "closed":
                log.warning("judge circuit closed again: probe call succeeded")
            self.state, self.consecutive = "closed", 0
            return
        self.consecutive += 1
        if self.state == "half_open" or (self.state == "closed" and self.consecutive >= self.failures):
            self.state, self.opened_at = "open", self.clock()
            self.trips += 1
            log.warning("judge circuit open after %d consecutive failed calls; no calls for %.1fs",
                        self.consecutive, self.cooldown_s)

    def retry_in(self) -> float:
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at)) if self.state == "open" else 0.0


@dataclass
class _Request:
    key: str
    messages: list[dict[str, str]]
    parse: Callable[[str], JudgeOutcome]
    attempts: int = 0


def _parse_rubric(text: str) -> JudgeOutcome:
    v = parse_judge_reply(text)
    if v.ok:
        return JudgeOutcome(score=v.score, reward=v.reward, dimensions=dict(v.scores))
    return JudgeOutcome(reason=f"parse_{v.reason}", detail=v.detail)


def _parse_alignment(text: str) -> JudgeOutcome:
    v = parse_alignment_reply(text)
    if v.ok and v.aligned is not None:
        return JudgeOutcome(score=float(v.aligned), reward=float(v.aligned))
    return JudgeOutcome(reason=f"parse_{v.reason}", detail=v.detail)


class JudgeCore:
    """Batching, cache, retries and circuit breaker around one judge backend. Thread-safe; Ray-free.

    ``backend`` overrides the one ``cfg.backend`` names; ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(self, cfg: JudgeConfig, backend: Optional[JudgeBackend] = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 seed: Optional[int] = None) -> None:
        self.cfg = as_judge_config(cfg)
        self.backend = backend if backend is not None else make_backend(self.cfg)
        self._clock, self._sleep = clock, sleep
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # cache, counters, breaker
        self._backend_lock = None if self.backend.thread_safe else threading.Lock()
        self._cache: OrderedDict[str, JudgeOutcome] = OrderedDict()
        self.breaker = CircuitBreaker(self.cfg.breaker_failures, self.cfg.breaker_cooldown_s, clock)
        self._counts: dict[str, float] = {}
        self._latencies: deque[float] = deque(maxlen=1024)
        self._latency_sum = 0.0
        self._latency_n = 0
        self._latency_max = 0.0

    def __repr__(self) -> str:
        return f"JudgeCore(backend={self.backend!r})"

    # ------------------------------------------------------------------------------------------- public API

    def score(self, pairs: Sequence[tuple[str, str]],
              hints: Union[None, str, Sequence[Optional[str]]] = None) -> list[JudgeOutcome]:
        """Rubric judgements of (reference, candidate) pairs, in order. ``hints``: one task hint for all pairs
        (``"rc"``, ``"vs"``, ``"dvc"`` or free text) or one per pair."""
        pairs = list(pairs)
        hint_list = self._hints(hints, len(pairs))

        def prepare(item: Any, hint: Optional[str]) -> Union[JudgeOutcome, tuple[str, list[dict[str, str]]]]:
            if not (isinstance(item, (tuple, list)) and len(item) == 2
                    and all(isinstance(x, str) for x in item)):
                return JudgeOutcome(reason="bad_input", detail=f"expected (reference, candidate) strings, got "
                                                               f"{type(item).__name__}")
            ref, cand = item
            if not ref.strip():
                return JudgeOutcome(reason="no_reference", detail="empty reference caption")
            if not cand.strip():
                self._count("empty_candidates")
                return JudgeOutcome(score=SCORE_MIN, reward=0.0, dimensions={k: SCORE_MIN for k in DIMENSION_KEYS},
                                    detail="empty candidate: lowest score without a call")
            return self._key("rubric", hint, ref, cand), build_judge_messages(ref, cand, hint)

        return self._run([prepare(p, h) for p, h in zip(pairs, hint_list)], _parse_rubric)

    def align(self, items: Sequence[tuple[str, str, Optional[str]]]) -> list[JudgeOutcome]:
        """Semantic-alignment verdicts (1/0) of (question, response, reference answer or None) triples."""

        def prepare(item: Any) -> Union[JudgeOutcome, tuple[str, list[dict[str, str]]]]:
            if not (isinstance(item, (tuple, list)) and len(item) in (2, 3)
                    and isinstance(item[0], str) and isinstance(item[1], str)
                    and (len(item) == 2 or item[2] is None or isinstance(item[2], str))):
                return JudgeOutcome(reason="bad_input", detail=f"expected (question, response[, reference]), got "
                                                               f"{type(item).__name__}")
            question, response = item[0], item[1]
            ref = item[2] if len(item) == 3 else None
            if not response.strip():
                self._count("empty_candidates")
                return JudgeOutcome(score=0.0, reward=0.0, detail="empty response: not aligned, without a call")
            return self._key("align", None, question, response, ref or ""), \
                build_alignment_messages(question, response, ref)

        return self._run([prepare(x) for x in items], _parse_alignment)

    def metrics(self) -> dict[str, float]:
        """Cumulative counters and call latency, flat ``judge/...`` names (MLflow-safe). Holds no secret."""
        with self._lock:
            out = {f"judge/{k}": float(v) for k, v in sorted(self._counts.items())}
            out["judge/breaker_open"] = float(self.breaker.state != "closed")
            out["judge/breaker_trips"] = float(self.breaker.trips)
            out["judge/cache_size"] = float(len(self._cache))
            if self._latency_n:
                lat = sorted(self._latencies)
                out["judge/latency_mean_s"] = self._latency_sum / self._latency_n
                out["judge/latency_p50_s"] = lat[len(lat) // 2]
                out["judge/latency_p95_s"] = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
                out["judge/latency_max_s"] = self._latency_max
        return out

    def close(self) -> None:
        self.backend.close()

    # ------------------------------------------------------------------------------------------- internals

    @staticmethod
    def _hints(hints: Union[None, str, Sequence[Optional[str]]], n: int) -> list[Optional[str]]:
        if hints is None or isinstance(hints, str):
            return [hints] * n
        hint_list = list(hints)
        if len(hint_list) != n:
            raise ValueError(f"{len(hint_list)} hints for {n} pairs")
        bad = [h for h in hint_list if h is not None and not isinstance(h, str)]
        if bad:
            raise ValueError(f"task hints must be str or None, got {type(bad[0]).__name__}")
        return hint_list

    @staticmethod
    def _key(kind: str, hint: Optional[str], *texts: str) -> str:
        h = hashlib.sha256()
        for part in (kind, hint or "", *texts):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\x00\x1f")
        return h.hexdigest()

    def _count(self, name: str, n: float = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def _run(self, prepared: list[Union[JudgeOutcome, tuple[str, list[dict[str, str]]]]],
             parse: Callable[[str], JudgeOutcome]) -> list[JudgeOutcome]:
        out: list[Optional[JudgeOutcome]] = [None] * len(prepared)
        todo: dict[str, _Request] = {}
        where: dict[str, list[int]] = {}
        with self._lock:
            self._counts["requests"] = self._counts.get("requests", 0) + len(prepared)
            for i, p in enumerate(prepared):
                if isinstance(p, JudgeOutcome):
                    out[i] = p
                    continue
                key, messages = p
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    self._counts["cache_hits"] = self._counts.get("cache_hits", 0) + 1
                    out[i] = replace(hit, cached=True, attempts=0, dimensions=dict(hit.dimensions))
                elif key in todo:
                    self._counts["dedup_hits"] = self._counts.get("dedup_hits", 0) + 1
                    where[key].append(i)
                else:
                    todo[key] = _Request(key, messages, parse)
                    where[key] = [i]
        reqs = list(todo.values())
        results: dict[str, JudgeOutcome] = {}
        for start in range(0, len(reqs), self.cfg.batch_size):
            results.update(self._run_batch(reqs[start:start + self.cfg.batch_size]))
        with self._lock:
            for key, res in results.items():
                if res.ok and self.cfg.cache_size > 0:
                    self._cache[key] = res
                    self._cache.move_to_end(key)
                    while len(self._cache) > self.cfg.cache_size:
                        self._cache.popitem(last=False)
                for n, i in enumerate(where[key]):
                    out[i] = res if n == 0 else replace(res, dimensions=dict(res.dimensions))
        final = [o if o is not None else JudgeOutcome(reason="internal_error", detail="no outcome") for o in out]
        with self._lock:
            for o in final:
                name = "ok" if o.ok else f"failures/{o.reason}"
                self._counts[name] = self._counts.get(name, 0) + 1
            self._counts["missing"] = self._counts.get("missing", 0) + sum(1 for o in final if not o.ok)
        return final

    def _call_backend(self, conversations: list[list[dict[str, str]]]) -> list[Any]:
        try:
            if self._backend_lock is None:
                replies = self.backend.complete(conversations)
            else:
                with self._backend_lock:
                    replies = self.backend.complete(conversations)
        except Exception as e:  # a backend must not raise; if one does, every request of the call failed
            log.warning("judge backend %s raised %s: %s", self.backend.name, type(e).__name__, e)
            err = JudgeCallError("backend_error", f"{type(e).__name__}: {e}"[:200])
            return [err] * len(conversations)
        if not isinstance(replies, list) or len(replies) != len(conversations):
            n = len(replies) if isinstance(replies, list) else type(replies).__name__
            err = JudgeCallError("backend_error", f"backend returned {n} replies for {len(conversations)} requests")
            return [err] * len(conversations)
        return replies

    def _run_batch(self, batch: list[_Request]) -> dict[str, JudgeOutcome]:
        results: dict[str, JudgeOutcome] = {}
        last: dict[str, tuple[str, str]] = {}
        pending = list(batch)
        while pending:
            with self._lock:
                state = self.breaker.acquire()
                retry_in = self.breaker.retry_in()
            if state == "open":
                for r in pending:
                    why = f"; last error {last[r.key][0]}" if r.key in last else ""
                    results[r.key] = JudgeOutcome(reason="circuit_open", attempts=r.attempts,
                                                  detail=f"judge circuit open, calls resume in {retry_in:.1f}s{why}")
                break
            send = pending[:1] if state == "probe" else pending
            deferred = pending[1:] if state == "probe" else []
            t0 = self._clock()
            replies = self._call_backend([r.messages for r in send])
            dt = self._clock() - t0
            retry: list[_Request] = []
            with self._lock:
                self._counts["calls"] = self._counts.get("calls", 0) + len(send)
                self._counts["retries"] = self._counts.get("retries", 0) + sum(1 for r in send if r.attempts > 0)
                self._latencies.append(dt)
                self._latency_sum += dt
                self._latency_n += 1
                self._latency_max = max(self._latency_max, dt)
                for r, reply in zip(send, replies):
                    r.attempts += 1
                    if isinstance(reply, JudgeCallError):
                        self.breaker.record(not reply.breaker)
                        reason, detail, retryable = reply.reason, reply.detail, reply.retryable
                    elif isinstance(reply, str):
                        self.breaker.record(True)
                        res = r.parse(reply)
                        if res.ok:
                            res.attempts = r.attempts
                            results[r.key] = res
                            continue
                        reason, detail = res.reason or "parse_failure", res.detail
                        retryable = not self.backend.deterministic
                    else:
                        self.breaker.record(False)
                        reason, detail, retryable = "backend_error", f"reply of type {type(reply).__name__}", False
                    key = f"call_errors/{reason}"
                    self._counts[key] = self._counts.get(key, 0) + 1
                    last[r.key] = (reason, detail)
                    if retryable and r.attempts <= self.cfg.max_retries:
                        retry.append(r)
                    else:
                        results[r.key] = JudgeOutcome(reason=reason, detail=detail, attempts=r.attempts)
                breaker_open = self.breaker.state == "open"
            if retry and not breaker_open and self.cfg.backoff_s > 0:
                worst = max(r.attempts for r in retry)
                self._sleep(self.cfg.backoff_s * 2 ** (worst - 1) * (1 + BACKOFF_JITTER * self._rng.random()))
            pending = retry + deferred
        return results
