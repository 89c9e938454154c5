"""A/B logit difference: do quantized and reference models rank the matching answer alike under steering?"""

from __future__ import annotations

import pytest

from quant_harness.records import CellResult


@pytest.mark.quant_cells("logit_diff")
def test_logit_diff_correlation(cell, cell_result: CellResult, record_cell) -> None:
    outcome = record_cell(cell_result)
    assert outcome.allowed, outcome.explain()
