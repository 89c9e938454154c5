"""Robust / Degraded / Broken bands and the rule that turns a figure into a verdict."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from quant_harness.errors import CellError


class Verdict(enum.IntEnum):
    """Ordered so that ``verdict > fail_on`` reads as "worse than allowed"."""

    ROBUST = 0
    DEGRADED = 1
    BROKEN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


FAIL_ON = {"degraded": Verdict.DEGRADED, "broken": Verdict.BROKEN, "never": None}


@dataclass(frozen=True)
class Band:
    """Thresholds of one metric. ``higher_is_better`` says which side of ``robust`` is good."""

    robust: float
    broken: float
    higher_is_better: bool = True

    def classify(self, value: float, *, what: str = "figure") -> Verdict:
        """Place ``value`` in a band; a NaN is an error, never a pass."""
        if value is None or math.isnan(value):
            raise CellError(f"{what} is NaN; refusing to score it")
        if self.higher_is_better:
            return Verdict.ROBUST if value > self.robust else Verdict.BROKEN if value < self.broken \
                else Verdict.DEGRADED
        return Verdict.ROBUST if value < self.robust else Verdict.BROKEN if value > self.broken \
            else Verdict.DEGRADED

    def describe(self) -> str:
        if self.higher_is_better:
            return f"robust > {self.robust:g}, broken < {self.broken:g}"
        return f"robust < {self.robust:g}, broken > {self.broken:g}"


#: The plan's thresholds (DESIGN.md "Metrics and verdicts"); a study may override any of them.
DEFAULT_BANDS: dict[str, Band] = {
    "cosine": Band(0.95, 0.80),
    "steering_degradation": Band(0.10, 0.30, higher_is_better=False),
    "accuracy_drop": Band(0.01, 0.03, higher_is_better=False),
    "logit_corr": Band(0.90, 0.70),
    "auroc": Band(0.90, 0.60),
    "sae_overlap": Band(0.90, 0.70),
}


@dataclass(frozen=True)
class Judgement:
    """A verdict with the figure that earned it and whether the study allows it."""

    metric: str
    value: float
    verdict: Verdict
    band: Band
    fail_on: Verdict | None

    @property
    def allowed(self) -> bool:
        return self.fail_on is None or self.verdict < self.fail_on

    def explain(self) -> str:
        limit = "never fails" if self.fail_on is None else f"fail_on={self.fail_on.label}"
        return f"{self.metric} {self.value:.4f}: {self.verdict.label.upper()} ({self.band.describe()}; {limit})"


def judge(metric: str, value: float, band: Band, fail_on: Verdict | None) -> Judgement:
    """Classify ``value`` against ``band`` and keep everything a report needs to explain it."""
    return Judgement(metric, float(value), band.classify(value, what=metric), band, fail_on)


def is_allowed(verdict_label: str, fail_on: Verdict | None) -> bool:
    """Whether a recorded verdict passes under the study's ``fail_on``."""
    return fail_on is None or Verdict[verdict_label.upper()] < fail_on
