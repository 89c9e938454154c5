"""Refusal (Arditi): does ablating / adding the refusal direction change refusal rates as it does at reference?"""

from __future__ import annotations

import pytest

from quant_harness.records import CellResult


@pytest.mark.quant_cells("refusal")
def test_refusal_direction(cell, cell_result: CellResult, record_cell) -> None:
    outcome = record_cell(cell_result)
    assert outcome.allowed, outcome.explain()
