"""Seeded bootstrap confidence intervals, and verdicts that are given only when the interval sits in one band.

A mean over three layers or a handful of prompts can land on either side of a threshold by chance; a verdict
from the point estimate alone would flip between runs of a slightly different study. Every kind computes its
headline figure, calls ``bootstrap_ci`` on the values it averaged (or with a resampling function when the
statistic is not a mean), or ``from_replicates`` on replicates it drew itself (quant_harness.metrics.resample:
paired resamples of contrast examples, validation examples, texts), and ``judge_interval`` turns the interval into
a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from quant_harness.errors import CellError
from quant_harness.metrics.verdicts import Band, Judgement, Verdict

Resample = Callable[[np.random.Generator], float]
"""Draws one bootstrap replicate of a statistic, using only the generator it is given for randomness."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval and what reproduces it."""

    point: float
    low: float
    high: float
    level: float
    """Coverage, e.g. 0.95."""
    n: int
    """Bootstrap replicates drawn."""
    seed: int

    def figures(self, name: str) -> dict[str, float]:
        """The interval as scalar figures (``<name>_ci_low``, ``<name>_ci_high``) for records and JUnit."""
        return {f"{name}_ci_low": self.low, f"{name}_ci_high": self.high}


def _check(value: float, what: str) -> float:
    if value is None or not math.isfinite(value):
        raise CellError(f"{what} is {value}; refusing to bootstrap it")
    return float(value)


def bootstrap_ci(data: Sequence[float] | Resample, *, seed: int, n: int = 1000, level: float = 0.95,
                 point: float | None = None, what: str = "figure") -> Interval:
    """Percentile bootstrap interval of a mean (``data`` = values) or of any statistic (``data`` = resampler).

    Args:
        data: the values whose mean is the figure (layers' cosines, prompts' deltas, 0/1 correctness), or a
            function that draws one replicate from a ``numpy.random.Generator`` (e.g. resample question indices
            and recompute a correlation or an AUROC).
        seed: the same seed gives the same interval.
        point: the statistic on the full data; required with a resampler, the mean of ``data`` otherwise.
    """
    if n < 1:
        raise CellError(f"{what}: bootstrap needs n >= 1 replicates, got {n}")
    if not 0.0 < level < 1.0:
        raise CellError(f"{what}: confidence level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    if callable(data):
        if point is None:
            raise CellError(f"{what}: a resampling function needs the full-data point estimate (point=...)")
        reps = np.array([_check(data(rng), f"{what} (bootstrap replicate)") for _ in range(n)])
        centre = _check(point, what)
    else:
        values = np.asarray([_check(v, f"{what} value") for v in data], dtype=np.float64)
        if values.size == 0:
            raise CellError(f"{what}: no values to bootstrap")
        reps = values[rng.integers(0, values.size, size=(n, values.size))].mean(axis=1)
        centre = float(values.mean()) if point is None else _check(point, what)
    return from_replicates(centre, reps, level=level, seed=seed, what=what)


def from_replicates(point: float, replicates: Sequence[float] | np.ndarray, *, level: float, seed: int,
                    what: str = "figure") -> Interval:
    """The percentile interval of bootstrap ``replicates`` around ``point`` (widened to contain it), for statistics
    whose replicates are computed elsewhere (quant_harness.metrics.resample)."""
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.size == 0:
        raise CellError(f"{what}: no bootstrap replicates")
    if not np.isfinite(reps).all():
        raise CellError(f"{what}: a bootstrap replicate is not finite; refusing to bootstrap it")
    if not 0.0 < level < 1.0:
        raise CellError(f"{what}: confidence level must be in (0, 1), got {level}")
    centre = _check(point, what)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [tail, 1.0 - tail])
    return Interval(centre, float(min(low, centre)), float(max(high, centre)), level, int(reps.size), seed)


def classify_interval(interval: Interval, band: Band, *, what: str = "figure") -> Verdict:
    """The band holding the whole interval, or INCONCLUSIVE when the interval straddles a boundary."""
    low = band.classify(interval.low, what=f"{what} (CI low)")
    high = band.classify(interval.high, what=f"{what} (CI high)")
    return low if low is high else Verdict.INCONCLUSIVE


def judge_interval(metric: str, interval: Interval, band: Band, fail_on: Verdict | None,
                   fail_on_inconclusive: bool = False) -> Judgement:
    """A Judgement whose verdict comes from the interval (see ``classify_interval``), for records and asserts."""
    return Judgement(metric, interval.point, classify_interval(interval, band, what=metric), band, fail_on,
                     interval=(interval.low, interval.high), level=interval.level,
                     fail_on_inconclusive=fail_on_inconclusive)
