"""Summary statistics over seeds and the significance test against a baseline method.

Kept to plain floats so a test can recompute every number in the table from known inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator); 0.0 for a single value."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class WelchResult:
    t: float
    df: float
    p: float  # two-sided


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> Optional[WelchResult]:
    """Welch's unequal-variance t-test, two-sided; None where it is undefined.

    Undefined means fewer than two values on a side, or no variance on either side (then the
    t statistic is 0/0 or infinite and a p-value would claim more than three seeds can show).
    """
    from scipy.stats import t as student_t

    if len(a) < 2 or len(b) < 2 or not all(map(math.isfinite, (*a, *b))):  # an undefined score tests nothing
        return None
    va, vb = std(a) ** 2 / len(a), std(b) ** 2 / len(b)
    if va + vb == 0:
        return None
    t = (mean(a) - mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return WelchResult(t=t, df=df, p=float(2 * student_t.sf(abs(t), df)))
