"""Robust / Degraded / Broken bands and the rule that turns a figure into a verdict."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from quant_harness.errors import CellError


class Verdict(enum.IntEnum):
    """Bands ordered so that ``verdict > fail_on`` reads as "worse than allowed".

    INCONCLUSIVE (a confidence interval that straddles a band boundary) is not a band: it sorts after the bands so
    that band comparisons keep their meaning, and whether it passes is the study's ``fail_on_inconclusive``, never a
    ``<`` comparison (use ``is_allowed``).
    """

    ROBUST = 0
    DEGRADED = 1
    BROKEN = 2
    INCONCLUSIVE = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def is_band(self) -> bool:
        return self is not Verdict.INCONCLUSIVE


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
    # The probe cells' drop in validation AUROC from the reference (reference - quantized). The reference must clear
    # AUROC 0.6 (lower end of its interval) to be judged at all, and the plan flags AUROC < 0.55 for investigation:
    # a drop above 0.15 takes a reference near that gate to chance, so it is broken; below 0.05 (under two of 36
    # pos-neg comparisons flipped on a 6-vs-6 validation split) the trait reads as well as at the reference.
    "auroc_drop": Band(0.05, 0.15, higher_is_better=False),
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
    interval: tuple[float, float] | None = None
    """Confidence interval of ``value`` when the verdict was assigned from one (quant_harness.confidence)."""
    level: float = 0.95
    fail_on_inconclusive: bool = False
    reason: str = ""
    """Why no band was assigned (``inconclusive``), e.g. the reference shows no effect to degrade."""

    @property
    def allowed(self) -> bool:
        return _allowed(self.verdict, self.fail_on, self.fail_on_inconclusive)

    def explain(self) -> str:
        limit = "never fails" if self.fail_on is None else f"fail_on={self.fail_on.label}"
        if self.verdict is Verdict.INCONCLUSIVE:
            limit += ", inconclusive fails" if self.fail_on_inconclusive else ", inconclusive passes"
        ci = "" if self.interval is None else \
            f" ({self.level:.0%} CI {self.interval[0]:.4f}..{self.interval[1]:.4f})"
        if self.reason:
            return f"{self.metric} {self.value:.4f}{ci}: {self.verdict.label.upper()} ({self.reason}; {limit})"
        return f"{self.metric} {self.value:.4f}{ci}: {self.verdict.label.upper()} ({self.band.describe()}; {limit})"


def judge(metric: str, value: float, band: Band, fail_on: Verdict | None) -> Judgement:
    """Classify ``value`` against ``band`` and keep everything a report needs to explain it."""
    return Judgement(metric, float(value), band.classify(value, what=metric), band, fail_on)


def undefined(metric: str, value: float, band: Band, fail_on: Verdict | None, fail_on_inconclusive: bool,
              reason: str) -> Judgement:
    """INCONCLUSIVE when the comparison has nothing to stand on (the reference shows no effect): the cell keeps its
    figures and the reason instead of an error, and ``fail_on_inconclusive`` decides whether that fails."""
    if math.isnan(value):
        raise CellError(f"{metric} is NaN; refusing to score it")
    return Judgement(metric, float(value), Verdict.INCONCLUSIVE, band, fail_on,
                     fail_on_inconclusive=fail_on_inconclusive, reason=reason)


def _allowed(verdict: Verdict, fail_on: Verdict | None, fail_on_inconclusive: bool) -> bool:
    if fail_on is None:
        return True
    if verdict is Verdict.INCONCLUSIVE:
        return not fail_on_inconclusive
    return verdict < fail_on


def is_allowed(verdict_label: str, fail_on: Verdict | None, fail_on_inconclusive: bool = False) -> bool:
    """Whether a recorded verdict passes under the study's ``fail_on`` (and ``fail_on_inconclusive``)."""
    return _allowed(Verdict[verdict_label.upper()], fail_on, fail_on_inconclusive)
