"""Vector fidelity: do a quantized model's trait vectors point where the reference precision's do?"""

from __future__ import annotations

import pytest

from quant_harness.records import CellResult


@pytest.mark.quant_cells("vectors")
def test_vector_fidelity(cell, cell_result: CellResult, record_cell) -> None:
    outcome = record_cell(cell_result)
    assert outcome.allowed, outcome.explain()
