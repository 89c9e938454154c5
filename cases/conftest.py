"""The study suite's own settings: JUnit goes to the report folder unless the user names another file."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    from quant_harness.plugin import report_dir

    if not config.option.xmlpath:
        config.option.xmlpath = str(report_dir(config) / "junit.xml")
