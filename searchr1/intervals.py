"""Confidence intervals for exact-match rates: how far a score on n held-out questions can be trusted.

EM on one benchmark is a proportion of n questions: the Wilson score interval (well-behaved at 0 and
1, where the normal interval collapses). The average over benchmarks is a mean of independent
proportions. With the same n on every benchmark that mean is the pooled proportion of all questions,
and the Wilson interval of the pooled proportion is used (slightly conservative: stratifying by
benchmark can only lower the variance); with unequal n, a normal interval on the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95%


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion `p` observed on `n` trials."""
    if n <= 0:
        raise ValueError(f"wilson: n must be positive, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"wilson: p must be in [0, 1], got {p}")
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_of_proportions(ps: Sequence[float], ns: Sequence[int], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high) of the plain mean of proportions `ps` measured on `ns` independent questions each."""
    if not ps or len(ps) != len(ns):
        raise ValueError(f"mean_of_proportions: need as many counts as proportions, got {len(ps)} and {len(ns)}")
    k = len(ps)
    mean = sum(ps) / k
    if len(set(ns)) == 1:
        return (mean, *wilson(mean, sum(ns), z))
    se = math.sqrt(sum(p * (1 - p) / n for p, n in zip(ps, ns, strict=True))) / k
    return mean, max(0.0, mean - z * se), min(1.0, mean + z * se)
