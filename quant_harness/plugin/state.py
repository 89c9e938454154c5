"""Per-process state of a run, registered as a plugin object: the records seen here, workers' counters, and the
progress sink that writes past pytest's capture."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from quant_harness._util import counters
from quant_harness.plugin.keys import STUDY
from quant_harness.plugin.options import report_dir
from quant_harness.records import Record
from quant_harness.report import matrices as reporting


class RunState:
    """Per-process state of a run, registered as a plugin: records seen here, counters from workers."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: list[Record] = []
        self.worker_counters: list[dict[str, Any]] = []
        self.runner_started = False

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect records on the process that writes reports (the controller under xdist)."""
        record = getattr(report, "quant_record", None)
        if record is not None and not hasattr(self.config, "workerinput"):
            self.records.append(record)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Workers hand their counters to the controller; the controller (or a plain run) writes result files."""
        config = self.config
        if hasattr(config, "workerinput"):
            config.workeroutput["quant_counters"] = json.dumps(counters.snapshot())  # type: ignore[attr-defined]
            return
        study = config.stash.get(STUDY, None)
        if study is None or not (self.records or self.runner_started or self.worker_counters):
            return
        results = report_dir(config) / "results"
        reporting.merge_records(results, self.records)
        totals = counters.merge([counters.snapshot(), *self.worker_counters])
        reporting.write_run(results, totals, study=study.name, cells_recorded=len(self.records),
                            workers=len(self.worker_counters) or 1)


class TerminalSink(io.TextIOBase):
    """Progress text written straight to the terminal, past pytest's output capture."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def write(self, s: str) -> int:
        capman = self.config.pluginmanager.getplugin("capturemanager")
        tw = self.config.get_terminal_writer()
        if capman is None:
            tw.write(s)
        else:
            with capman.global_and_fixture_disabled():
                tw.write(s, flush=True)
        return len(s)
