"""Hooks that exist only when pytest-xdist is installed: our scheduler, GPU slots per worker, workers' counters, and
the controller's progress lines."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from quant_harness.plugin.keys import STATE, STUDY
from quant_harness.plugin.scale import configure_node
from quant_harness.study.ids import group_of_nodeid

PROGRESS_EVERY_S = 10.0
"""At most one progress line per group this often, besides its first and last cell: a group of 100 cells that
each take a second gives ~10 lines, not 100, so the failures and the summary stay in reach of a scroll."""


class GroupProgress:
    """Cells done / total per model x precision group, on the controller, as workers' reports arrive.

    Under ``-n`` the workers' progress bars go to ``reports/progress/gw*.log`` and the terminal shows only dots;
    these lines say which group each worker is in, how far it is and how long it has taken.
    """

    def __init__(self, every_s: float = PROGRESS_EVERY_S) -> None:
        self.every_s = every_s
        self.total: Counter[str] = Counter()
        self.done: Counter[str] = Counter()
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}

    def collected(self, ids: Sequence[str]) -> None:
        """The selected node ids (every worker collects the same; the first to report sets the totals)."""
        if not self.total:
            self.total.update(g for g in map(group_of_nodeid, ids) if g is not None)

    def line(self, report: pytest.TestReport) -> str | None:
        """The progress line for ``report``, or None (not a cell, not its last phase, or too soon). Times are the
        reports' own (the worker's clock, on this machine): the group's time includes its first cell's setup, where
        the model loads."""
        group = group_of_nodeid(report.nodeid)
        if group is None:
            return None
        self.started.setdefault(group, float(getattr(report, "start", 0.0) or time.time()))
        now = float(getattr(report, "stop", 0.0) or time.time())
        if report.when != "teardown":
            return None
        self.done[group] += 1
        done, total = self.done[group], self.total.get(group, 0)
        first, last = done == 1, done >= total
        if not (first or last or now - self.last_line.get(group, now) >= self.every_s):
            return None
        self.last_line[group] = now
        node = getattr(report, "node", None)
        worker = getattr(getattr(node, "gateway", None), "id", None) or "?"
        of = f"/{total}" if total else ""
        return f"quant_harness: {group} {done}{of} cells ({worker}, {now - self.started[group]:.1f}s)"


class XdistHooks:
    """Registered by the plugin when xdist is present (syrupy's DeferXDist pattern)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.progress = GroupProgress()

    def _controller(self) -> bool:
        """Whether this process is the xdist controller of a distributed run (not a worker, not ``-n 0``)."""
        return not hasattr(self.config, "workerinput") and bool(getattr(self.config.option, "numprocesses", None))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        self.progress.collected(ids)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Controller only: a progress line per group as its cells' reports arrive from the workers."""
        if not self._controller():
            return
        line = self.progress.line(report)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if line is not None and reporter is not None:
            reporter.write_line(line)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        raw = getattr(node, "workeroutput", {}).get("quant_counters")
        if raw:
            self.config.stash[STATE].worker_counters.append(json.loads(raw))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """Give each worker its GPU slot before it starts (it pins CUDA_VISIBLE_DEVICES first thing)."""
        configure_node(self.config, node)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """Group cells by model x precision parsed from our cell ids (xdist's own loadgroup relies on a
        nodeid rewrite that pytest 9.2 no longer honours: xdist #1386), on workers with enough GPUs."""
        if config.getoption("dist") != "loadgroup":
            return None
        from quant_harness.scale.xdist_scheduler import CellGroupScheduling

        study = config.stash.get(STUDY, None)
        gpus = {name: card.gpus for name, card in study.cards.items()} if study is not None else {}
        return CellGroupScheduling(config, log, model_gpus=gpus, reference=study.reference if study else "")
