"""``actors.actor_pool`` on a real local Ray with toy actors: results in order, a dead actor's call retried on its
restart or on the next actor, a hung call killed at its timeout, faults counted under their names, retries
bounded, a gang failing fast."""
from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from actors.actor_pool import ActorLost, ActorPool, FaultNames, Lost, RetryPolicy

pytestmark = pytest.mark.ray
NAMES = FaultNames(timeout="t", died="d", retried="r", lost="l")


def _toys(ray, n: int, max_restarts: int = 1) -> list:
    class Toy:
        def ping(self) -> bool:
            return True

        def echo(self, x: str, sleep_s: float = 0.0, die_once: str = "") -> str:
            if die_once and not os.path.exists(die_once):  # the first call dies with its process, later ones answer
                open(die_once, "w").close()
                os._exit(1)
            time.sleep(sleep_s)
            return x

    cls = ray.remote(num_cpus=0)(Toy).options(max_restarts=max_restarts, max_task_retries=0)
    actors = [cls.remote() for _ in range(n)]
    ray.get([a.ping.remote() for a in actors], timeout=120)
    return actors


def test_results_in_order_and_a_dead_actor_retried_after_its_restart(ray_local, tmp_path):
    faults: Counter = Counter()
    pool = ActorPool(_toys(ray_local, 2), "toy", RetryPolicy(max_retries=1), names=NAMES, faults=faults)
    revived = []

    def revive(i: int) -> bool:
        pool.wait_restarted(i, 120)
        revived.append(i)
        return True

    try:
        calls = [pool.submit(0, "echo", "a", die_once=str(tmp_path / "once"), size=3),
                 pool.submit(1, "echo", "b", sleep_s=0.5)]
        assert pool.gather(calls, timeout=120, revive=revive) == ["a", "b"]
        assert revived == [0] and faults == Counter({"d": 1, "r": 3})
    finally:
        pool.kill()


def test_retries_are_bounded_and_the_lost_call_is_counted(ray_local, tmp_path):
    faults: Counter = Counter()
    pool = ActorPool(_toys(ray_local, 1), "toy", RetryPolicy(max_retries=0), names=NAMES, faults=faults)
    try:
        out = pool.gather([pool.submit(0, "echo", "a", die_once=str(tmp_path / "once"), size=4)], timeout=120)
        assert isinstance(out[0], Lost) and out[0].reason == "d" and out[0].actor == 0
        assert faults == Counter({"d": 1, "l": 4})
    finally:
        pool.kill()


def test_a_hung_call_times_out_and_its_actor_is_restarted(ray_local):
    faults: Counter = Counter()
    pool = ActorPool(_toys(ray_local, 1), "toy", RetryPolicy(max_retries=0), names=NAMES, faults=faults)
    try:
        t0 = time.monotonic()
        out = pool.gather([pool.submit(0, "echo", "a", sleep_s=300)], timeout=2)
        assert isinstance(out[0], Lost) and out[0].reason == "t" and time.monotonic() - t0 < 60
        assert faults == Counter({"t": 1, "l": 1})
        pool.wait_restarted(0, 120)  # killed so that Ray restarts it: it answers again
        assert pool.gather([pool.submit(0, "echo", "b")], timeout=120) == ["b"]
    finally:
        pool.kill()


def test_calls_are_waited_on_together_each_from_the_start_of_the_wait(ray_local):
    """Two hung calls with a 10 s timeout both end about 10 s after the wait starts (not 10 s each, one after the
    other: a batch of shares is bounded by one timeout, as the driver's rollout collection relies on)."""
    faults: Counter = Counter()
    pool = ActorPool(_toys(ray_local, 2), "toy", RetryPolicy(max_retries=0), names=NAMES, faults=faults)
    try:
        calls = [pool.submit(i, "echo", "x", sleep_s=300) for i in range(2)]
        t0 = time.monotonic()
        out = pool.gather(calls, timeout=10)
        elapsed = time.monotonic() - t0
        assert [type(x) for x in out] == [Lost, Lost] and faults == Counter({"t": 2, "l": 2})
        assert 10 <= elapsed < 19, elapsed  # one shared bound; in turn they would take >= 20 s
    finally:
        pool.kill()


def test_a_rejected_result_is_retried_on_the_next_actor_after_a_backoff(ray_local):
    faults: Counter = Counter()
    names = FaultNames(timeout="t", died="d", retried="r", lost="l", retried_per_call=True)
    pool = ActorPool(_toys(ray_local, 2), "toy", RetryPolicy(max_retries=1, next_actor=True, backoff_s=0.3),
                     names=names, faults=faults)
    seen = []

    def check(value: str):
        seen.append(value)
        return "stale" if len(seen) == 1 else None

    try:
        call = pool.submit(0, "echo", "x", size=5)
        t0 = time.monotonic()
        assert pool.gather([call], timeout=120, check=check) == ["x"]
        assert time.monotonic() - t0 >= 0.3 and call.actor == 1 and call.retries == 1
        assert faults == Counter({"d": 1, "r": 1})
    finally:
        pool.kill()


def test_a_gang_fails_fast_on_its_first_dead_member(ray_local, tmp_path):
    pool = ActorPool(_toys(ray_local, 2, max_restarts=0), "rank", RetryPolicy(kill_hung=False), gang=True)
    try:
        t0 = time.monotonic()
        with pytest.raises(ActorLost) as e:
            pool.gather([pool.submit(0, "echo", "a", die_once=str(tmp_path / "once")),
                         pool.submit(1, "echo", "b", sleep_s=300)], timeout=600)
        assert e.value.lost.actor == 0 and e.value.lost.reason == "died" and time.monotonic() - t0 < 60
    finally:
        pool.kill()
