"""Capability: does a quantized model keep its lm-eval benchmark accuracy (HellaSwag, MMLU, TruthfulQA, sanity)?

One cell per model x precision x benchmark; the reference precision's cell records the baseline accuracy and the
quantized cells the drop from it (quant_harness.benchmarks explains the verdict and its stderr rule).
"""

from __future__ import annotations

import pytest

from quant_harness.records import CellResult


@pytest.mark.quant_cells("benchmarks")
def test_benchmark_accuracy(cell, cell_result: CellResult, record_cell) -> None:
    outcome = record_cell(cell_result)
    assert outcome.allowed, outcome.explain()
