"""Statistics for comparing versions, with the engine run as the unit of replication.

Pauses measured on one engine share its warm-up, memory layout and host state: they are
not independent samples of a vLLM version, and treating them as such (a test on pauses)
turns run-to-run drift into "significant" regressions. So every test here takes one value
per engine run (the run's median over its repeats, robust to a stall inside the run) and
compares the runs of two versions with Welch's t-test: unequal variances, exact for
normal run medians, and with few runs it is honest about how little it knows (its degrees
of freedom shrink). Effects are additive, in seconds: a regression a trainer pays is
milliseconds added to every pause, and metrics such as a quiesce of nothing (0 s) or a gap
beyond the hold (can be negative) have no ratio scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

POWER = 0.8


@dataclass(frozen=True)
class Welch:
    """Difference of means new - base with its standard error and Welch's degrees of freedom."""

    n_base: int
    n_new: int
    base_mean: float
    new_mean: float
    se: float
    df: float
    # Run-to-run variance of each side: what planning more runs needs.
    var_base: float = math.nan
    var_new: float = math.nan

    @property
    def delta(self) -> float:
        return self.new_mean - self.base_mean

    @property
    def testable(self) -> bool:
        return self.n_base >= 2 and self.n_new >= 2

    def p_value(self) -> float:
        """Two-sided; NaN with fewer than two runs on a side. Two sides without any spread
        are equal (p = 1) or certainly different (p = 0)."""
        if not self.testable:
            return math.nan
        if self.se == 0:
            return 1.0 if self.delta == 0 else 0.0
        return float(2 * sps.t.sf(abs(self.delta) / self.se, self.df))

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        if not self.testable:
            return (-math.inf, math.inf)
        half = float(sps.t.ppf(0.5 + level / 2, self.df)) * self.se
        return (self.delta - half, self.delta + half)

    def detectable(self, alpha: float, power: float = POWER) -> float:
        """The smallest true difference this test finds with probability ``power`` at
        two-sided level ``alpha`` (its spread taken as known): the yardstick for
        "underpowered"."""
        if not self.testable:
            return math.inf
        return _detectable(self.se, self.df, alpha, power)


def _detectable(se: float, df: float, alpha: float, power: float) -> float:
    """The smallest true difference a t-test with standard error ``se`` and ``df`` degrees of
    freedom finds with probability ``power`` at two-sided level ``alpha``."""
    return float((sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df)) * se)


def welch(base: np.ndarray, new: np.ndarray) -> Welch:
    base, new = np.asarray(base, float), np.asarray(new, float)
    vb = base.var(ddof=1) / len(base) if len(base) >= 2 else math.nan
    vn = new.var(ddof=1) / len(new) if len(new) >= 2 else math.nan
    se = math.sqrt(vb + vn) if len(base) >= 2 and len(new) >= 2 else math.nan
    if se and se > 0:
        df = (vb + vn) ** 2 / (vb ** 2 / (len(base) - 1) + vn ** 2 / (len(new) - 1))
    else:
        df = float(len(base) + len(new) - 2)
    return Welch(len(base), len(new), float(base.mean()) if len(base) else math.nan,
                 float(new.mean()) if len(new) else math.nan, se, df,
                 float(base.var(ddof=1)) if len(base) >= 2 else math.nan,
                 float(new.var(ddof=1)) if len(new) >= 2 else math.nan)


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean of per-run values and the half-width of its t confidence interval (NaN with
    fewer than two runs: one engine run says nothing about the next)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else math.nan, math.nan)
    return float(v.mean()), float(sps.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def runs_needed(var_base: float, var_new: float, effect: float, alpha: float, power: float = POWER,
                most: int = 100) -> float:
    """Runs per side for Welch's test at two-sided level ``alpha`` to find a true difference
    ``effect`` with probability ``power``, given each side's run-to-run variance: how many
    engine runs a comparison must buy. ``Welch.detectable`` at n runs a side, Welch's degrees
    of freedom included: a pooled-variance plan promises too much when
    one side spreads more (its degrees of freedom, and so its power, are those of the noisier
    side). ``inf`` beyond ``most``."""
    if math.isnan(var_base) or math.isnan(var_new):
        return math.nan
    total = var_base + var_new
    for n in range(2, most + 1):
        df = total ** 2 * (n - 1) / (var_base ** 2 + var_new ** 2) if total > 0 else 2 * n - 2
        if _detectable(math.sqrt(total / n), df, alpha, power) <= effect:
            return float(n)
    return math.inf


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values: rejecting where the adjusted value is below
    ``alpha`` keeps the family-wise error rate at most ``alpha``. NaN (untestable) stays
    NaN and does not count in the family."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, adjusted, running = len(order), [math.nan] * len(p_values), 0.0
    for k, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[i] = running
    return adjusted
