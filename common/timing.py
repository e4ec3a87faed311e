"""One timer for the named phases of a step: ``with timer.phase("train"): ...`` adds the block's wall time to
that phase; ``metrics()`` gives ``time/<phase>_s`` for every phase that ran (or was added)."""
from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterable, Iterator


class PhaseTimer:
    """Seconds per named phase, summed over every time the phase ran in this step."""

    def __init__(self) -> None:
        self.seconds: Counter = Counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block (also when it raises) and add it to ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        """Add seconds measured elsewhere (e.g. an actor's own share of a phase)."""
        self.seconds[name] += seconds

    def total(self, names: Iterable[str]) -> float:
        """The seconds of ``names`` together (a phase that never ran counts 0)."""
        return sum(self.seconds.get(n, 0.0) for n in names)

    def metrics(self, prefix: str = "time/") -> dict[str, float]:
        return {f"{prefix}{k}_s": float(v) for k, v in self.seconds.items()}
