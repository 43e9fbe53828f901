"""Student's t: the mean over seeds with its 95% interval, and a paired test of one variant against another.

Written here rather than taken from SciPy, which nextword does not otherwise need (it arrives only with the
downstream extra, through scikit-learn): the t distribution's CDF is the regularized incomplete beta function,
evaluated by its continued fraction (Numerical Recipes, 3rd ed., section 6.4, `betacf`, with the modified Lentz
method of section 5.2), and a quantile is the CDF inverted by bisection.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

TINY = 1e-300  # keeps Lentz's method off a division by zero
EPSILON = 3e-16
MAX_TERMS = 300


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for 0 <= x <= 1 and a, b > 0."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x = {x} must be in [0, 1]")
    if x in (0.0, 1.0):
        return x
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); otherwise use I_x(a, b) = 1 - I_1-x(b, a).
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > TINY else TINY)
    fraction = d
    for m in range(1, MAX_TERMS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # the even step, then the odd one
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > TINY else TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > TINY else TINY
            fraction *= c * d
        if abs(c * d - 1.0) < EPSILON:
            return fraction
    return fraction


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df = {df} must be above 0")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2, 0.5)  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p = {p} must be in (0, 1)")
    low, high = -1.0, 1.0
    while t_cdf(low, df) > p:
        low *= 2
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):  # halving a bracket of width at most ~1e6 reaches double precision long before this
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


@dataclass(frozen=True)
class Summary:
    mean: float
    ci95: tuple[float, float]  # Student's t interval for the mean


def summarize(values: list[float]) -> Summary:
    """The mean of `values` (one per seed, two or more) and its 95% t interval."""
    mean = statistics.fmean(values)
    half = t_quantile(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Summary(mean, (mean - half, mean + half))


def paired_t_test(values: list[float], baseline: list[float]) -> float:
    """The two-sided p-value of Student's t test that the mean of values[s] - baseline[s] over seeds s is zero."""
    if len(values) != len(baseline) or len(values) < 2:
        raise ValueError("a paired t test needs two or more pairs")
    differences = [v - b for v, b in zip(values, baseline)]
    spread = statistics.stdev(differences)
    mean = statistics.fmean(differences)
    if spread == 0.0:  # every seed moved by the same amount: certain if it moved at all
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (spread / math.sqrt(len(differences)))
    return 2.0 * t_cdf(-abs(t), len(differences) - 1)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979) of p-values from several tests made together, in their order: the
    k-th smallest is multiplied by (m - k + 1) and the adjusted values are kept non-decreasing, so that rejecting
    every adjusted p below alpha keeps the chance of any false finding at most alpha."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
