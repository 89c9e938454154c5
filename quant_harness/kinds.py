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
}


def compute(runner: Any, cell: Cell) -> CellResult:
    module, _, name = COMPUTE[cell.kind].partition(":")
    fn = getattr(importlib.import_module(module), name)
    result: CellResult = fn(runner, cell)
    return result
