"""The MedLoc-R1 performance-aware IoU-threshold scheduler (SPEC §3). (Stages — SFT, GRPO, VRFT-Aug's perception
first — are ``cluster.config.StageConfig``s, run in order by the driver.)

``IoUThresholdScheduler`` — the grounding reward is ``1[IoU >= τ]``; τ only rises. Each step the driver calls
``observe(group_mean_rewards, group_mean_ious)``; the scheduler keeps a window of the last ``window`` steps, each
holding that step's per-group mean rewards and its mean IoU, and computes

* hit rate  ``h`` = mean of all per-group mean rewards in the window (every group counts once),
* stability ``s`` = population std (ddof=0) of the same per-group mean rewards,
* margin    ``m`` = mean over the window's steps of the step mean IoU, minus τ.

When the window is full and ``h >= P(τ)``, ``s <= S(τ)`` and ``m >= margin``, τ <- min(τ + δ(τ), tau_max), and the
oldest ``window // 2`` steps are dropped (so at least that many fresh steps are needed before the next raise).
The new τ applies from the next step. τ is rounded to 1e-9 after each raise so that e.g. 0.45 + 0.15 is 0.6 and
falls in the ``τ < 0.75`` tier, not the ``τ < 0.60`` one; the three conditions are compared with a 1e-9
tolerance for the same reason (0.9 − 0.8 is 0.09999999999999998 in floating point).

Defaults (SPEC): P/S = 0.80/0.20 for τ < 0.60, 0.75/0.35 for τ < 0.75, else 0.55/0.40. δ schedules:

* ``step``   (default) δ = 0.15 for τ < 0.55, 0.10 for τ < 0.75, else 0.05;
* ``linear`` δ falls linearly from ``delta_max`` at τ = tau0 to ``delta_min`` at τ = tau_max;
* ``cosine`` δ = delta_min + (delta_max − delta_min)·(1 + cos(π·u))/2 with u = (τ − tau0)/(tau_max − tau0).

A step with no finite group reward or no finite IoU (e.g. no grounding prompt in the batch) is skipped: nothing
enters the window, ``diagnostics["skipped"]`` says why, and ``skipped_steps`` counts it. Non-finite values inside
a step are dropped and counted in ``dropped_values``.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from rewards.config import CURRICULUM_SCHEDULES, CurriculumConfig

_D = CurriculumConfig  # the defaults, written once there

STATE_VERSION = 1
# (upper bound on τ, P, S); the last row's bound is +inf.
DEFAULT_PS_TABLE: tuple[tuple[float, float, float], ...] = ((0.60, 0.80, 0.20), (0.75, 0.75, 0.35),
                                                            (math.inf, 0.55, 0.40))
# (upper bound on τ, δ) for the ``step`` schedule.
DEFAULT_DELTA_TABLE: tuple[tuple[float, float], ...] = ((0.55, 0.15), (0.75, 0.10), (math.inf, 0.05))
_TOL = 1e-9  # comparisons forgive float noise: a mean IoU of 0.9 at τ = 0.8 has margin 0.1, not 0.0999…


def _finite(values: Union[float, Iterable[float]]) -> tuple[list[float], int]:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64)).ravel()
    ok = np.isfinite(arr)
    return [float(v) for v in arr[ok]], int((~ok).sum())


class IoUThresholdScheduler:
    """MedLoc-R1 adaptive IoU threshold (module docstring). One per run: it is global state."""

    def __init__(self, tau0: float = _D.tau0, tau_max: float = _D.tau_max, window: int = _D.window,
                 margin: float = _D.margin, schedule: str = _D.schedule, *,
                 ps_table: Sequence[Sequence[float]] = DEFAULT_PS_TABLE,
                 delta_table: Sequence[Sequence[float]] = DEFAULT_DELTA_TABLE,
                 delta_max: float = _D.delta_max, delta_min: float = _D.delta_min) -> None:
        if schedule not in CURRICULUM_SCHEDULES:
            raise ValueError(f"curriculum schedule {schedule!r}; allowed: {', '.join(CURRICULUM_SCHEDULES)}")
        if not (0.0 <= tau0 <= tau_max <= 1.0):
            raise ValueError(f"need 0 <= tau0 ({tau0}) <= tau_max ({tau_max}) <= 1")
        if int(window) < 2:
            raise ValueError(f"curriculum window={window} must be >= 2")
        if not (0.0 < delta_min <= delta_max):
            raise ValueError(f"need 0 < delta_min ({delta_min}) <= delta_max ({delta_max})")
        self.ps_table = tuple((float(b), float(p), float(s)) for b, p, s in ps_table)
        self.delta_table = tuple((float(b), float(d)) for b, d in delta_table)
        if not self.ps_table or not self.delta_table:
            raise ValueError("ps_table and delta_table must not be empty")
        if any(d <= 0 for _, d in self.delta_table):
            raise ValueError(f"delta_table steps must be > 0: {self.delta_table}")
        self.tau0 = float(tau0)
        self.tau_max = float(tau_max)
        self.window = int(window)
        self.margin = float(margin)
        self.schedule = schedule
        self.delta_max = float(delta_max)
        self.delta_min = float(delta_min)
        self._tau = self.tau0
        self._win: deque[tuple[list[float], float]] = deque(maxlen=self.window)
        self.steps = 0  # observe() calls
        self.skipped_steps = 0
        self.dropped_values = 0
        self.raises: list[tuple[int, float, float]] = []  # (step, τ before, τ after)
        self.diagnostics: dict[str, Any] = {}

    # -- tables ----------------------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """τ to use for the current step's grounding rewards."""
        return self._tau

    def thresholds_at(self, tau: float) -> tuple[float, float]:
        """(P(τ), S(τ)): the hit-rate floor and stability ceiling at τ."""
        for bound, p, s in self.ps_table:
            if tau < bound:
                return p, s
        return self.ps_table[-1][1], self.ps_table[-1][2]

    def delta(self, tau: float) -> float:
        """The raise δ(τ) under the configured schedule."""
        if self.schedule == "step":
            for bound, d in self.delta_table:
                if tau < bound:
                    return d
            return self.delta_table[-1][1]
        span = self.tau_max - self.tau0
        u = min(max((tau - self.tau0) / span, 0.0), 1.0) if span > 0 else 1.0
        if self.schedule == "linear":
            return self.delta_max - (self.delta_max - self.delta_min) * u
        return self.delta_min + (self.delta_max - self.delta_min) * (1.0 + math.cos(math.pi * u)) / 2.0

    # -- the step ----------------------------------------------------------------------------------------------
    def observe(self, group_mean_rewards: Union[float, Iterable[float]],
                group_mean_ious: Union[float, Iterable[float]]) -> float:
        """Record one step (its groups' mean rewards, and its groups' mean IoUs or one mean IoU); returns τ for
        the next step. ``diagnostics`` then holds h, s, m, the three conditions, τ and whether it rose."""
        self.steps += 1
        rewards, bad_r = _finite(group_mean_rewards)
        ious, bad_i = _finite(group_mean_ious)
        self.dropped_values += bad_r + bad_i
        tau = self._tau
        if not rewards or not ious:
            self.skipped_steps += 1
            reason = "no finite group reward" if not rewards else "no finite IoU"
            self.diagnostics = self._diag(tau, raised=False, skipped=reason)
            return self._tau
        self._win.append((rewards, float(np.mean(ious))))
        d = self._diag(tau, raised=False, skipped=None)
        if d["full"] and d["cond_hit"] and d["cond_stable"] and d["cond_margin"]:
            new_tau = round(min(tau + self.delta(tau), self.tau_max), 9)
            if new_tau > tau:
                self._tau = new_tau
                for _ in range(self.window // 2):
                    self._win.popleft()
                self.raises.append((self.steps, tau, new_tau))
                d["raised"] = True
        d["tau_next"] = self._tau
        self.diagnostics = d
        return self._tau

    def window_stats(self) -> tuple[float, float, float]:
        """(h, s, m) over the current window; NaN when the window is empty."""
        if not self._win:
            return math.nan, math.nan, math.nan
        groups = np.concatenate([np.asarray(r, dtype=np.float64) for r, _ in self._win])
        h = float(groups.mean())
        s = float(groups.std())
        m = float(np.mean([iou for _, iou in self._win])) - self._tau
        return h, s, m

    def _diag(self, tau: float, *, raised: bool, skipped: Optional[str]) -> dict[str, Any]:
        h, s, m = self.window_stats()
        p, smax = self.thresholds_at(tau)
        return {
            "step": self.steps, "tau": tau, "tau_next": self._tau, "h": h, "s": s, "m": m,
            "P": p, "S": smax, "window_len": len(self._win), "full": len(self._win) == self.window,
            "cond_hit": bool(h >= p - _TOL), "cond_stable": bool(s <= smax + _TOL),
            "cond_margin": bool(m >= self.margin - _TOL),
            "raised": raised, "skipped": skipped,
        }

    def metrics(self, prefix: str = "curriculum") -> dict[str, float]:
        """Numeric diagnostics of the last step for a tracker (booleans as 0/1)."""
        out = {f"{prefix}/tau": self._tau, f"{prefix}/raises": float(len(self.raises)),
               f"{prefix}/skipped_steps": float(self.skipped_steps)}
        for k in ("h", "s", "m", "window_len", "full", "cond_hit", "cond_stable", "cond_margin", "raised"):
            if k in self.diagnostics:
                out[f"{prefix}/{k}"] = float(self.diagnostics[k])
        return out

    # -- checkpointing -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state; ``load_state_dict`` restores it exactly (settings included)."""
        return {
            "version": STATE_VERSION,
            "settings": {"tau0": self.tau0, "tau_max": self.tau_max, "window": self.window, "margin": self.margin,
                         "schedule": self.schedule, "ps_table": [list(r) for r in self.ps_table],
                         "delta_table": [list(r) for r in self.delta_table], "delta_max": self.delta_max,
                         "delta_min": self.delta_min},
            "tau": self._tau,
            "window_entries": [[list(r), iou] for r, iou in self._win],
            "steps": self.steps, "skipped_steps": self.skipped_steps, "dropped_values": self.dropped_values,
            "raises": [list(r) for r in self.raises],
            "diagnostics": dict(self.diagnostics),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output; settings come from the state. ValueError if malformed."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"curriculum state must be a dict with version {STATE_VERSION}")
        try:
            fresh = IoUThresholdScheduler(**state["settings"])
            tau = float(state["tau"])
            entries = [([float(x) for x in r], float(iou)) for r, iou in state["window_entries"]]
            if len(entries) > fresh.window:
                raise ValueError(f"{len(entries)} window entries for a window of {fresh.window}")
            if not (fresh.tau0 <= tau <= fresh.tau_max):
                raise ValueError(f"tau={tau} outside [tau0, tau_max]")
            fresh._tau = tau
            fresh._win.extend(entries)
            fresh.steps = int(state["steps"])
            fresh.skipped_steps = int(state["skipped_steps"])
            fresh.dropped_values = int(state["dropped_values"])
            fresh.raises = [(int(a), float(b), float(c)) for a, b, c in state["raises"]]
            fresh.diagnostics = dict(state.get("diagnostics") or {})
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed curriculum state: {e!r}") from None
        self.__dict__.update(fresh.__dict__)
