"""Equivalence of two cases over seeds: paired two one-sided t-tests (TOST) at the gate threshold.

``|mean delta| <= threshold`` (``gate_pass``) cannot tell "no difference was shown" from "no difference could be
seen": with a few seeds and GSM8K scores that swing by points between seeds, it passes by luck. TOST asks the
question the other way round: it rejects "the cases differ by at least the threshold" only when the paired deltas
are tight enough, i.e. when the 90 % confidence interval of the mean delta lies inside [-threshold, +threshold].

Verdicts (Lakens' scheme; "both" counts as equivalent, since a shown but sub-threshold difference is parity):

* ``equivalent``: TOST p <= alpha.
* ``different``: not equivalent, and a paired t-test finds a nonzero mean delta (two-sided p <= alpha).
* ``inconclusive``: neither, including fewer than two seeds (no noise estimate).

The Student t distribution is computed here (exact series for integer degrees of freedom, Abramowitz & Stegun
26.7.3-4), so the workflow environment needs no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 100_000
_NORMAL_DF = 1000
"""Beyond this many degrees of freedom the t quantile is the normal one (they differ by < 0.1 %)."""


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df`` >= 1."""
    if df < 1:
        raise ValueError(f"t_cdf: df must be >= 1, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan2(abs(t), math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) * (theta + sin * (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ...))
        series, term = 0.0, math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= cos2 * 2 * k / (2 * k + 1)
        within = 2 / math.pi * (theta + math.sin(theta) * series)
    else:  # even: sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        series, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            series += term
            term *= cos2 * (2 * k - 1) / (2 * k)
        within = math.sin(theta) * series
    return 0.5 + math.copysign(0.5 * within, t)


def t_ppf(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t (bisection on ``t_cdf``; normal beyond ``_NORMAL_DF``)."""
    if not 0 < q < 1:
        raise ValueError(f"t_ppf: q must be in (0, 1), got {q}")
    if df > _NORMAL_DF:
        return NormalDist().inv_cdf(q)
    low, high = -1.0, 1.0
    while t_cdf(low, df) > q:
        low *= 2
    while t_cdf(high, df) < q:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, abs(mid)):
            break
    return (low + high) / 2


@dataclass(frozen=True)
class Equivalence:
    """TOST of paired deltas against [-threshold, +threshold]; NaN where fewer than two deltas allow no test."""

    n: int
    mean: float
    sd: float
    ci90_low: float
    ci90_high: float
    p_value: float
    """TOST p-value: the larger of the two one-sided p-values."""
    p_difference: float
    """Two-sided paired t-test p-value against a zero mean delta."""
    verdict: str


def tost(deltas: Sequence[float] | np.ndarray, threshold: float, alpha: float = ALPHA) -> Equivalence:
    """Paired TOST at ``threshold``; NaN deltas (a run that logged no score) are left out."""
    if threshold < 0:
        raise ValueError(f"tost: threshold must be >= 0, got {threshold}")
    values = np.asarray(deltas, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return Equivalence(n, mean, math.nan, math.nan, math.nan, math.nan, math.nan, "inconclusive")
    sd = float(values.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:  # identical deltas (deterministic runs): the mean is known exactly
        p_value = 0.0 if abs(mean) < threshold else 1.0
        p_difference = 0.0 if mean != 0 else 1.0
        half_width = 0.0
    else:
        p_value = max(1 - t_cdf((mean + threshold) / se, n - 1), t_cdf((mean - threshold) / se, n - 1))
        p_difference = 2 * (1 - t_cdf(abs(mean) / se, n - 1))
        half_width = t_ppf(1 - alpha, n - 1) * se
    if p_value <= alpha:
        verdict = "equivalent"
    elif p_difference <= alpha:
        verdict = "different"
    else:
        verdict = "inconclusive"
    return Equivalence(n, mean, sd, mean - half_width, mean + half_width, p_value, p_difference, verdict)


def seeds_needed(seed_sd: float, threshold: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Paired seeds for TOST to show equivalence with probability ``power`` when the cases truly agree.

    The deltas' noise is taken as sqrt(2) * ``seed_sd``: candidate and baseline each vary across seeds as much as
    the baseline does, independently (pairing by seed can only make it smaller). Smallest n >= 2 with
    n >= ((t[1-alpha, n-1] + t[1-(1-power)/2, n-1]) * sd / threshold) ** 2; NaN without a noise estimate, inf
    beyond ``MAX_SEEDS`` or at a zero threshold.
    """
    if math.isnan(seed_sd):
        return math.nan
    if threshold <= 0:
        return math.inf
    scale = (math.sqrt(2) * seed_sd / threshold) ** 2
    z = NormalDist().inv_cdf
    n = max(2, math.ceil((z(1 - alpha) + z(1 - (1 - power) / 2)) ** 2 * scale))
    while n <= MAX_SEEDS:
        if n >= (t_ppf(1 - alpha, n - 1) + t_ppf(1 - (1 - power) / 2, n - 1)) ** 2 * scale:
            return float(n)
        n += 1
    return math.inf


def pooled_sd(values: Sequence[float] | np.ndarray, groups: Sequence[object]) -> float:
    """Standard deviation within groups (e.g. across seeds within each algorithm), pooled over the groups."""
    frame = np.asarray(values, dtype=float)
    squares, dof = 0.0, 0
    for group in dict.fromkeys(groups):
        member = frame[[g == group for g in groups]]
        member = member[~np.isnan(member)]
        if len(member) >= 2:
            squares += float(((member - member.mean()) ** 2).sum())
            dof += len(member) - 1
    return math.sqrt(squares / dof) if dof else math.nan
