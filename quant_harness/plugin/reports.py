"""The report side of the plugin: baselines per cell, pytest-html extras and summary, files derived at session end.

Registered by the plugin in every process; each hook is a line or two into baselines, html_report and reporting.
pytest-html's hooks are optional (``optionalhook=True``), so the plugin works without pytest-html.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from quant_harness.plugin.keys import STATE
from quant_harness.plugin.options import cache_dir, report_dir
from quant_harness.records import CellResult, Record
from quant_harness.report import baselines
from quant_harness.study.kinds import all_cells
from quant_harness.study.spec import Study


class ReportHooks:
    """Per-process report state: the study's baselines and, on the controller, the lines for the summary."""

    def __init__(self, config: pytest.Config, study: Study | None) -> None:
        self.config, self.study = config, study
        self.lines: list[str] = []
        self.baselines: baselines.Baselines | None = None
        if study is not None:
            folder = str(config.getini("quant_baselines_dir") or "cases/baselines")
            root = config.rootpath / folder
            self.baselines = baselines.Baselines(root / study.name, study.baselines,
                                                 bool(config.getoption("quant_update_baselines")),
                                                 bands=study.bands)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Name the study and its reference in pytest-html's Environment table (pytest-metadata)."""
        try:
            from pytest_metadata.plugin import metadata_key
        except ImportError:
            return
        if self.study is not None and metadata_key in self.config.stash:
            self.config.stash[metadata_key]["quant_harness study"] = (
                f"{self.study.name} ({self.study.path}); reference {self.study.reference}")

    def check(self, result: CellResult, item: pytest.Item) -> list[str]:
        """Compare a cell with its baseline; the status becomes a JUnit property, regressions fail the cell."""
        if self.baselines is None:
            return []
        check = self.baselines.check(result.to_dict())
        item.user_properties.append(("baseline", check.status))
        if check.status != "missing":
            for note in check.notes:
                item.add_report_section("call", "baseline", note)
        return check.regressions

    def extras(self, record: Record) -> list[dict[str, Any]]:
        """The cell's HTML block for pytest-html, built on the worker that ran the cell (plots in parallel), its
        plots published as files beside report.html."""
        page = self.config.getoption("htmlpath", None)
        if not page or page == os.devnull:
            return []
        from quant_harness.report import html as html_report

        return html_report.extras(record, cache_dir(self.config), Path(page).parent)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: pytest.Session) -> None:
        """The verdict table (model x precision x trait, coloured by verdict) at the top of report.html."""
        from quant_harness.report import html as html_report

        records = self.config.stash[STATE].records
        page = self.config.getoption("htmlpath", None)
        links = html_report.plot_links(records, Path(page).parent) if page and page != os.devnull else None
        prefix.append(html_report.summary_table(records, links=links))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Controller: flush baselines (or report unused ones), then rebuild ranking, findings and summary.html."""
        if hasattr(self.config, "workerinput") or self.study is None:
            return
        records = self.config.stash[STATE].records
        dry = self.config.getoption("collectonly") or self.config.getoption("quant_plan", False)
        if self.baselines is not None and not dry:
            cells = [(c.kind, c.id) for c in all_cells(self.study)]
            self.lines, failed = self.baselines.finish(records, cells)
            if failed and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if records:
            from quant_harness.report.derive import derive

            paths = derive(report_dir(self.config))
            self.lines.append("reports: " + ", ".join(str(p) for p in paths))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Baseline counts and hints (syrupy style), and where the derived reports went."""
        if self.lines:
            terminalreporter.section("quant_harness")
            for line in self.lines:
                terminalreporter.write_line(line)
