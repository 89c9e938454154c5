"""SAE feature fidelity: does a quantized model light up the same dictionary features as the reference?"""

from __future__ import annotations

import pytest

from quant_harness.records import CellResult


@pytest.mark.quant_cells("sae")
def test_sae_feature_fidelity(cell, cell_result: CellResult, record_cell) -> None:
    outcome = record_cell(cell_result)
    assert outcome.allowed, outcome.explain()
