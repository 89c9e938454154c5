"""Every ``pytest.StashKey`` of the plugin, below the hook modules so that none of them imports back up."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from quant_harness.records import CellResult
from quant_harness.study.spec import Cell, Study  # noqa: F401  (named in a StashKey's string type)

if TYPE_CHECKING:
    from quant_harness.plugin.fixtures import Outcome  # noqa: F401
    from quant_harness.plugin.reports import ReportHooks  # noqa: F401
    from quant_harness.plugin.state import RunState  # noqa: F401
    from quant_harness.scale.scheduling import Slot  # noqa: F401

STUDY = pytest.StashKey["Study | None"]()
"""The study this process runs (None: no study configured)."""
STATE = pytest.StashKey["RunState"]()
RECORD = pytest.StashKey[CellResult]()
"""On an item: the cell's result, attached to its call report."""
OUTCOME = pytest.StashKey["Outcome"]()
"""On an item: what ``record_cell`` concluded, so a failed verdict assertion can be reported as the cell's block."""
REPORTS = pytest.StashKey["ReportHooks"]()
SLOTS = pytest.StashKey["list[Slot]"]()
"""GPU slots of ``--quant-gpus``, resolved once."""
PLAN_WORKERS = pytest.StashKey[int]()
"""``--quant-plan``: how many workers the plan is for."""
SELECTED = pytest.StashKey["list[Cell]"]()
"""The cells this run will compute (selected, not skipped), of every shard: what a reference phase prepares."""
