"""Steering: does a quantized model's own vector still move its judged trait as far as the reference's does?"""

from __future__ import annotations

import pytest

from quant_harness.records import CellResult


@pytest.mark.quant_cells("steering")
def test_steering_delta(cell, cell_result: CellResult, record_cell) -> None:
    outcome = record_cell(cell_result)
    assert outcome.allowed, outcome.explain()
