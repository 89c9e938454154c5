"""Which function computes the result of each kind of cell: kind -> "module:function(runner, cell)".

Imported lazily so that a kind's heavy dependencies (lm-eval, openai, ...) load only when its cells run.
"""

from __future__ import annotations

import importlib
from typing import Any

from quant_harness.records import CellResult
from quant_harness.study import Cell

COMPUTE: dict[str, str] = {
    "vectors": "quant_harness.runner:vector_comparison",
    "probes": "quant_harness.probes:probe_comparison",
    "steering": "quant_harness.steering_cells:steering_delta",
    "logit_diff": "quant_harness.steering_cells:logit_diff",
    "transfer": "quant_harness.steering_cells:transfer",
    "refusal": "quant_harness.steering_cells:refusal",
    "benchmarks": "quant_harness.benchmarks:benchmark_comparison",
    "sae": "quant_harness.sae.cells:sae_comparison",
}


def compute(runner: Any, cell: Cell) -> CellResult:
    module, _, name = COMPUTE[cell.kind].partition(":")
    fn = getattr(importlib.import_module(module), name)
    result: CellResult = fn(runner, cell)
    return result
