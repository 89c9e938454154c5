"""The ``[baselines]`` table of a study: how far a cell's figures may move from its stored baseline.

Parsed by ``study.load`` (it imports nothing of the study package, so the study can), while the checker that uses it
(quant_harness.report.baselines) reads the kind registry for each figure's direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quant_harness._util.validate import SectionContext
from quant_harness.errors import StudyError


@dataclass(frozen=True)
class Tolerance:
    """How far a figure may move the wrong way: absolute, or relative to the baseline (``"5%"``)."""

    value: float
    relative: bool = False

    def allows(self, baseline: float, now: float) -> bool:
        limit = abs(baseline) * self.value if self.relative else self.value
        return abs(now - baseline) <= limit + 1e-12

    def describe(self) -> str:
        return f"{self.value:.0%} relative" if self.relative else f"{self.value:g} absolute"


@dataclass(frozen=True)
class BaselineSettings:
    """The study's ``[baselines]`` table: ``tolerance`` (default 0.02 absolute) and per-figure overrides."""

    tolerance: Tolerance = Tolerance(0.02)
    figures: dict[str, Tolerance] = field(default_factory=dict)

    def for_figure(self, name: str) -> Tolerance:
        return self.figures.get(name, self.tolerance)


def _tolerance(path: Path, key: str, value: object) -> Tolerance:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return Tolerance(float(value))
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = float(value[:-1])
        except ValueError:
            pct = -1.0
        if pct >= 0:
            return Tolerance(pct / 100.0, relative=True)
    raise StudyError(path, key, value, 'a non-negative number (absolute) or a percentage string like "5%"')


def parse(ctx: SectionContext, table: object) -> BaselineSettings:
    """Validate a study's ``[baselines]`` table; a bad key is a StudyError naming file, key and expectation."""
    study_path = ctx.path
    if table is None:
        return BaselineSettings()
    if not isinstance(table, dict):
        raise StudyError(study_path, "baselines", table, "a table")
    for key in table:
        if key not in ("tolerance", "figures"):
            raise StudyError(study_path, f"baselines.{key}", table[key], "one of tolerance, figures")
    per = table.get("figures", {})
    if not isinstance(per, dict):
        raise StudyError(study_path, "baselines.figures", per, "a table of figure = tolerance")
    return BaselineSettings(_tolerance(study_path, "baselines.tolerance", table.get("tolerance", 0.02)),
                    {k: _tolerance(study_path, f"baselines.figures.{k}", v) for k, v in per.items()})
