"""Transfer: does the reference precision's vector steer the quantized model as well as its own vector does?"""

from __future__ import annotations

import pytest

from quant_harness.records import CellResult


@pytest.mark.quant_cells("transfer")
def test_reference_vectors_transfer(cell, cell_result: CellResult, record_cell) -> None:
    outcome = record_cell(cell_result)
    assert outcome.allowed, outcome.explain()
