"""The study suite's own settings: JUnit and the HTML report go to the report folder unless the user names others."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    from quant_harness.plugin.options import report_dir

    if not config.option.xmlpath:
        config.option.xmlpath = str(report_dir(config) / "junit.xml")
    if config.pluginmanager.hasplugin("html") and not getattr(config.option, "htmlpath", None):
        config.option.htmlpath = str(report_dir(config) / "report.html")
        config.option.self_contained_html = True
