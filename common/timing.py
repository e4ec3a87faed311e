"""One timer for the named phases of a step: ``with timer.phase("train"): ...`` adds the block's wall time to
that phase, and the CPU time the calling thread itself spent in it (``time.thread_time``: its own work, e.g. the
driver building a batch or (de)serializing Ray arguments and results, not the time it sat waiting on actors);
``metrics()`` gives ``time/<phase>_s`` and ``time/cpu/<phase>_s`` for every phase that ran (or was added)."""
from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterable, Iterator


class PhaseTimer:
    """Seconds per named phase (wall, and the timing thread's own CPU), summed over every time the phase ran."""

    def __init__(self) -> None:
        self.seconds: Counter = Counter()
        self.cpu_seconds: Counter = Counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block (also when it raises) and add it to ``name``."""
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self.cpu_seconds[name] += time.thread_time() - c0

    def add(self, name: str, seconds: float) -> None:
        """Add seconds measured elsewhere (e.g. an actor's own share of a phase; no CPU time of this thread)."""
        self.seconds[name] += seconds

    def total(self, names: Iterable[str]) -> float:
        """The seconds of ``names`` together (a phase that never ran counts 0)."""
        return sum(self.seconds.get(n, 0.0) for n in names)

    def cpu_total(self, names: Iterable[str]) -> float:
        """This thread's CPU seconds inside ``names`` together."""
        return sum(self.cpu_seconds.get(n, 0.0) for n in names)

    def metrics(self, prefix: str = "time/") -> dict[str, float]:
        out = {f"{prefix}{k}_s": float(v) for k, v in self.seconds.items()}
        out.update({f"{prefix}cpu/{k}_s": float(v) for k, v in self.cpu_seconds.items()})
        return out
