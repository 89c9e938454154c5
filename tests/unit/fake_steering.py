"""A steering cell run on given judged runs: cells.steering_delta with its search, points and record patched, so
its statistics and record are checked without a model or a judge."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from quant_harness.metrics.verdicts import DEFAULT_BANDS, Verdict
from quant_harness.steer import cells
from quant_harness.steer.settings import SteeringSettings


def run_steering_cell(monkeypatch: pytest.MonkeyPatch, search: dict[str, Any], point: Any, *,
                      bootstrap_n: int = 300, fail_on: Verdict = Verdict.BROKEN) -> dict[str, Any]:
    """Run ``cells.steering_delta`` for an nf4 cell whose reference search is ``search`` and whose quantized runs
    come from ``point(runner, cell, precision, layer, coefficient, together)``; return what it records."""
    recorded: dict[str, Any] = {}

    def record(runner: Any, cell: Any, kind: str, j: Any, figures: dict[str, Any], metric: str, value: float,
               notes: Any = ()) -> dict[str, Any]:
        recorded.update(j=j, figures=figures, metric=metric, value=value)
        return recorded

    monkeypatch.setattr(cells, "_steer_search", lambda *a: search)
    monkeypatch.setattr(cells, "_steer_point", point)
    monkeypatch.setattr(cells, "_record", record)
    monkeypatch.setattr(cells.judges, "describe", lambda *a: "fake judge")
    study = SimpleNamespace(steering=SteeringSettings(), bands=DEFAULT_BANDS, reference="fp32", seed=0,
                            bootstrap_n=bootstrap_n, ci_level=0.95, fail_on=fail_on, fail_on_inconclusive=False,
                            judge=SimpleNamespace(model="fake"))
    runner = SimpleNamespace(study=study, pool=SimpleNamespace(model_dir=None))
    cells.steering_delta(runner, SimpleNamespace(id="m-nf4-t-mean_diff", precision="nf4"))  # type: ignore[arg-type]
    return recorded
