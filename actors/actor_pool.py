"""A pool of Ray actors and the one way the driver side waits on them: calls submitted to actors of the pool are
gathered in order, each wait bounded by a timeout; a call whose actor died or hung is a fault, counted, and
retried by the pool's ``RetryPolicy`` (on the actor Ray restarted, or on the next one) until its retries are used
up, when it comes back as a ``Lost`` (or, for a gang of ranks that only work together, ends the wait with
``ActorLost``).

Rollout actors (``cluster.actor_set``), reward workers (``actors.reward_worker``) and learner ranks
(``actors.learner_actor``) are pools.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import ray

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How a pool treats a failed call.

    ``retry_on``: the errors of a call that are its actor's fault (a call past its timeout is one too); any other
    error (the method raised) propagates. ``max_retries``: resubmissions after the first try. ``next_actor``:
    resubmit on the next actor of the pool instead of on the same one (which Ray restarts). ``backoff_s``: wait
    before retry k (0-based) ``backoff_s * 2**k``. ``kill_hung``: an actor past its timeout is killed (its call
    cancelled) so that Ray restarts it."""

    max_retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (ray.exceptions.RayActorError,)
    next_actor: bool = False
    backoff_s: float = 0.0
    kill_hung: bool = True


@dataclass(frozen=True)
class FaultNames:
    """The counters a pool adds to on a fault: ``timeout`` / ``died`` (+1 per failed try; also the ``reason`` of a
    ``Lost``), ``retried`` (+ the call's size, or +1 with ``retried_per_call``), ``lost`` (+ the call's size)."""

    timeout: str
    died: str
    retried: str
    lost: str
    retried_per_call: bool = False


@dataclass
class Call:
    """One method call on actor ``actor`` of a pool; ``size``: the items it carries (prompts, samples)."""

    actor: int
    ref: Any
    method: str = ""
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 1
    retries: int = 0
    deadline: float = math.inf


@dataclass
class Lost:
    """A call's place in the results once its retries are used up. ``reason``: the fault counter's name (in a pool
    without names, the kind: ``timeout`` or ``died``); ``error``: the actor error, if one ended the last try."""

    actor: int
    reason: str
    detail: str
    error: Optional[BaseException] = None


class ActorLost(RuntimeError):
    """A gang's call failed (its ``Lost`` is ``lost``): the wait ends at once, the other calls are not waited on."""

    def __init__(self, lost: Lost) -> None:
        super().__init__(f"actor {lost.actor}: {lost.reason} ({lost.detail})")
        self.lost = lost


class ActorPool:
    """``actors`` (handles) under one ``RetryPolicy``. ``name`` labels the log lines (``<name>-<index>``); faults are
    counted in ``faults`` under ``names`` (no counting without names). ``gang``: the actors work together
    (collectives): the first failed call raises ``ActorLost`` instead of waiting on the others."""

    def __init__(self, actors: Sequence[Any], name: str, policy: RetryPolicy = RetryPolicy(), *,
                 names: Optional[FaultNames] = None, faults: Optional[Counter] = None, gang: bool = False) -> None:
        self.actors = list(actors)
        self.name = name
        self.policy = policy
        self.names = names
        self.faults = faults if faults is not None else Counter()
        self.gang = gang

    def submit(self, actor: int, method: str, *args: Any, size: int = 1, **kwargs: Any) -> Call:
        """Start ``method(*args, **kwargs)`` on actor ``actor``."""
        ref = getattr(self.actors[actor], method).remote(*args, **kwargs)
        return Call(actor, ref, method, args, kwargs, size)

    def submit_all(self, method: str, *args: Any, **kwargs: Any) -> list[Call]:
        """The same call on every actor, in actor order."""
        return [self.submit(i, method, *args, **kwargs) for i in range(len(self.actors))]

    def gather(self, calls: Sequence[Call], timeout: float, *, deadline: Optional[float] = None,
               check: Optional[Callable[[Any], Optional[str]]] = None,
               revive: Optional[Callable[[int], bool]] = None) -> list[Any]:
        """Every call's result, in the calls' order, waiting on whichever finishes first.

        A try may take ``timeout`` seconds from now (a retry: from its resubmission), never past ``deadline``
        (``time.monotonic()``; a retry still gets 1 s). A fault (an error in ``policy.retry_on``, the timeout, or
        ``check(result)`` naming what is wrong with a result) is counted and logged; ``revive(actor)``, when
        given, runs after each fault (False: the actor is gone, no retry); then the call is retried while
        ``policy.max_retries`` allows, else its result is a ``Lost`` (a gang raises ``ActorLost``)."""
        now = time.monotonic()
        for c in calls:
            c.deadline = min(now + timeout, deadline if deadline is not None else math.inf)
        pending = dict(enumerate(calls))
        results: dict[int, Any] = {}
        while pending:
            first = min(pending, key=lambda p: pending[p].deadline)
            by_ref = {c.ref: p for p, c in pending.items()}
            ready, _ = ray.wait(list(by_ref), num_returns=1,
                                timeout=max(pending[first].deadline - time.monotonic(), 0.0))
            error: Optional[BaseException] = None
            if ready:
                pos = by_ref[ready[0]]
                try:
                    value = ray.get(ready[0], timeout=timeout)  # ready: no wait (raises if the call failed)
                except self.policy.retry_on as e:
                    error = e
                    kind, detail = "died", f"{type(e).__name__}: {str(e)[:200]}"
                else:
                    problem = check(value) if check is not None else None
                    if problem is None:
                        results[pos] = value
                        del pending[pos]
                        continue
                    kind, detail = "died", problem
            else:
                pos = first
                kind, detail = "timeout", f"no answer within {timeout:.0f} s"
                if self.policy.kill_hung:
                    self._kill_hung(pending[pos])
            lost = self._fault(pending[pos], kind, detail, error, timeout, deadline, revive)
            if lost is not None:
                results[pos] = lost
                del pending[pos]
        return [results[p] for p in range(len(calls))]

    def _fault(self, call: Call, kind: str, detail: str, error: Optional[BaseException], timeout: float,
               deadline: Optional[float], revive: Optional[Callable[[int], bool]]) -> Optional[Lost]:
        """Count and log one failed try; resubmit the call (None) or give it up (its ``Lost``)."""
        n = self.names
        reason = (n.timeout if kind == "timeout" else n.died) if n is not None else kind
        lost = Lost(call.actor, reason, detail, error)
        if self.gang:
            raise ActorLost(lost)
        if n is not None:
            self.faults[reason] += 1
        log.warning("%s-%d: %s on a call of %d items (%s)", self.name, call.actor, reason, call.size, detail[:120])
        if (revive is not None and not revive(call.actor)) or call.retries >= self.policy.max_retries:
            if n is not None:
                self.faults[n.lost] += call.size
            return lost
        if self.policy.backoff_s > 0:
            time.sleep(self.policy.backoff_s * 2 ** call.retries)
        call.retries += 1
        if n is not None:
            self.faults[n.retried] += 1 if n.retried_per_call else call.size
        if self.policy.next_actor:
            call.actor = (call.actor + 1) % len(self.actors)
        call.ref = getattr(self.actors[call.actor], call.method).remote(*call.args, **call.kwargs)
        now = time.monotonic()
        call.deadline = max(min(now + timeout, deadline if deadline is not None else math.inf), now + 1.0)
        return None

    def _kill_hung(self, call: Call) -> None:
        """Cancel the call and kill its actor so that Ray restarts it (best effort)."""
        try:
            ray.cancel(call.ref)
            ray.kill(self.actors[call.actor], no_restart=False)
        except Exception:  # noqa: BLE001 - best effort: a dead actor cannot be killed again
            pass

    def wait_restarted(self, actor: int, timeout: float) -> None:
        """Block until actor ``actor`` answers a ping. While Ray restarts it, calls fail with
        ``ActorUnavailableError``: poll; ``ActorDiedError`` (restarts used up) and the timeout are raised."""
        handle = self.actors[actor]
        deadline = time.monotonic() + timeout
        while True:
            try:
                ray.get(handle.ping.remote(), timeout=max(deadline - time.monotonic(), 1.0))
                return
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def kill(self) -> None:
        """Kill every actor of the pool now and forget them."""
        for a in self.actors:
            ray.kill(a)
        self.actors = []
