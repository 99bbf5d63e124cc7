"""Inverse CDFs for the W&B distributions Optuna has no twin of (normal, log-normal, beta).

Optuna samples the quantile u in (0, 1) uniformly and these turn it into the value: a random
sampler then draws exactly the W&B distribution, and TPE models the quantile. Pure Python, so
the spec stays importable without scipy.
"""

from __future__ import annotations

import math
from statistics import NormalDist

# The quantile range Optuna samples: the tails beyond it (about 3.7 sigma for a normal) are cut.
QUANTILE_LOW, QUANTILE_HIGH = 1e-4, 1 - 1e-4


def normal_ppf(u: float, mu: float, sigma: float) -> float:
    return NormalDist(mu, sigma).inv_cdf(u)


def beta_ppf(u: float, a: float, b: float) -> float:
    """x with I_x(a, b) = u, by bisection on the regularized incomplete beta function."""
    low, high = 0.0, 1.0
    for _ in range(60):  # 2**-60: far below any step a sweep could care about
        mid = (low + high) / 2
        if beta_cdf(mid, a, b) < u:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):  # the fraction converges fast on this side; use symmetry on the other
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1 - math.exp(log_front) * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-14:
            break
    return result
