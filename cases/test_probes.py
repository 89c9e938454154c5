"""Probe validation: does a held-out split still separate the trait at this precision (AUROC per layer)?"""

from __future__ import annotations

import pytest

from quant_harness.records import CellResult


@pytest.mark.quant_cells("probes")
def test_probe_auroc(cell, cell_result: CellResult, record_cell) -> None:
    outcome = record_cell(cell_result)
    assert outcome.allowed, outcome.explain()
