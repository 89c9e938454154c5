"""The pytest plugin (entry point ``quant_harness.plugin``): hook functions only; the work is in the library.

The top of the import graph: nothing imports this module. Its parts sit below it: ``keys`` (every StashKey),
``options`` (options, ini keys, folders), ``state`` (per-process records and counters), ``fixtures`` (re-exported
here, which is how pytest finds them), ``reports`` (baselines, pytest-html, derived reports), ``scale`` (GPU slots,
shards, the plan) and ``xdist`` (hooks that exist only with pytest-xdist). This package is the only place that
imports pytest, with the xdist scheduler it registers (quant_harness.scale.xdist_scheduler). May import: every
other package; nothing imports it.

Nothing here imports bitsandbytes, gptqmodel or transformers at import time, so a worker can pin its GPUs first.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from quant_harness._util import progress
from quant_harness.errors import StudyError
from quant_harness.plugin import scale
from quant_harness.plugin.fixtures import (
    Outcome,
    cell_result,
    failed_verdict,
    lead_with_cell,
    quant_runner,
    quant_study,
    record_cell,
)
from quant_harness.plugin.keys import RECORD, REPORTS, SELECTED, STATE, STUDY
from quant_harness.plugin.options import (
    add_options,
    cache_dir,
    check_writable,
    model_dir,
    planning,
    rehearsing,
    report_dir,
    setting,
)
from quant_harness.plugin.state import RunState, TerminalSink
from quant_harness.scale.rehearsal import skip_reason as rehearsal_skip
from quant_harness.scale.scheduling import by_group
from quant_harness.study.kinds import cells
from quant_harness.study.spec import Cell, Study

__all__ = ["Outcome", "cell_result", "quant_runner", "quant_study", "record_cell"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Load the study once per process; a bad study file is a usage error."""
    config.addinivalue_line("markers", "quant_cells(kind): parametrize the test's `cell` argument with the "
                            "study's cells of that kind")
    config.stash[STATE] = RunState(config)
    config.pluginmanager.register(config.stash[STATE], "quant_harness.state")
    study_file = setting(config, "quant_study")
    config.stash[STUDY] = None
    if study_file:
        from quant_harness.study import load

        path = Path(study_file)
        try:
            study = load(path if path.is_absolute() else config.rootpath / path,
                         check_data=not config.getoption("quant_plan"))
            if rehearsing(config):
                from quant_harness.models.twins import data_dir
                from quant_harness.scale.rehearsal import rehearse

                study = rehearse(study, model_dir(config), cache_dir(config), data_dir(config.rootpath))
            config.stash[STUDY] = study
        except StudyError as e:
            raise pytest.UsageError(str(e)) from e
        check_writable(config)
    from quant_harness.plugin.reports import ReportHooks

    config.stash[REPORTS] = ReportHooks(config, config.stash[STUDY])
    config.pluginmanager.register(config.stash[REPORTS], "quant_harness.reports")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        log_dir = report_dir(config) / "progress"
        log_dir.mkdir(parents=True, exist_ok=True)
        progress.set_sink(open(log_dir / f"{worker}.log", "a", buffering=1))  # noqa: SIM115
    else:
        progress.set_sink(TerminalSink(config))
    if config.pluginmanager.hasplugin("xdist"):
        from quant_harness.plugin.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(config), "quant_harness.xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Detach the progress sink: it points at this run's terminal or log file."""
    previous = progress.set_sink(None)
    if previous is not None and not isinstance(previous, TerminalSink):
        previous.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash.get(STUDY, None)
    if s is None:
        return []
    return [f"quant_harness: study {s.name} ({s.path}), reference {s.reference}, cache {cache_dir(config)}"]


def _skip_reason(study: Study, cell: Cell) -> str | None:
    from quant_harness.judge.settings import missing_key
    from quant_harness.models.base_model import skip_reason as base_model_skip
    from quant_harness.models.precision import unavailable_reason
    from quant_harness.study.kinds import KINDS

    card = study.cards[cell.model]
    if cell.precision == "gptq" and not card.has_gptq:
        return f"{card.name} has no GPTQ checkpoint (plan: none exists); gptq cell skipped"
    traits = {t.key: t for t in study.traits}
    base = base_model_skip(card, cell.kind, traits[cell.trait].methodology if cell.trait in traits else "")
    if base:
        return base
    judged = KINDS[cell.kind].judged or (cell.trait in traits and traits[cell.trait].judge_filter is not None)
    return (missing_key(study.judge) if judged else None) or unavailable_reason(cell.precision)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `cell` from the study, in the same order on every xdist worker."""
    if "cell" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("quant_cells")
    s = metafunc.config.stash.get(STUDY, None)
    if marker is None or s is None:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: a `cell` test needs @pytest.mark.quant_cells(kind) "
                                "and a study (--quant-study or ini quant_study)")
    params = []
    try:
        grid = cells(s, marker.args[0])
    except StudyError as e:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: {e}") from e
    for c in grid:
        marks: list[Any] = [pytest.mark.xdist_group(c.group)]
        reason = (rehearsal_skip(c) if rehearsing(metafunc.config) else None) or _skip_reason(s, c) \
            or scale.placement_skip(metafunc.config, c.model, s.cards[c.model].gpus)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(c, id=c.id, marks=marks))
    metafunc.parametrize("cell", params)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Pin a worker's GPUs before anything touches CUDA; default to --dist loadgroup under -n; plan mode."""
    scale.cmdline_main(config)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` with --quant-gpus: one worker per GPU slot."""
    return scale.auto_num_workers(config)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run each model x precision group's cells together (one load per group per process), reference groups
    first; note every shard's selected cells (a reference phase prepares them); --quant-shard I/N: keep this shard's
    groups. Last, so that ``-k``/``-m`` deselection has happened."""
    groups = [m.args[0] if (m := item.get_closest_marker("xdist_group")) and "cell" in getattr(item, "fixturenames", ())
              else None for item in items]
    study = config.stash[STUDY]
    lead = [f"{model}-{study.reference}" for model in sorted(study.cards)] if study is not None else []
    items[:] = [items[i] for i in by_group(groups, lead)]
    config.stash[SELECTED] = scale.selected_cells(items)
    scale.select_shard(config, items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The files the selected cells read (held-out A/B questions, judge and refusal prompts): a missing or bad one is
    a usage error now, before any model loads. Not on xdist workers (each would stop alone): there the cell errors."""
    config = session.config
    study = config.stash.get(STUDY, None)
    if study is None or planning(config) or hasattr(config, "workerinput"):
        return
    from quant_harness.study.files import check_cell_files

    params = [getattr(getattr(item, "callspec", None), "params", {}) for item in session.items]
    selected = [p["cell"] for p in params if isinstance(p.get("cell"), Cell)]   # an empty grid's item holds NOTSET
    try:
        check_cell_files(study, selected)
    except StudyError as e:
        raise pytest.UsageError(str(e)) from e


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """--quant-plan: print the plan instead of running."""
    return scale.run_plan(session, cache_dir(session.config))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A case's failed verdict assertion becomes the cell's short block (fixtures.failed_verdict)."""
    try:
        return (yield)
    except AssertionError as e:
        block = failed_verdict(item, e)
        if block is None:
            raise
        raise block from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the cell's record to its call report; reports cross xdist as plain dicts. A failed or errored cell's
    report leads with one line naming the cell (fixtures.lead_with_cell)."""
    report = yield
    lead_with_cell(item, report, call.excinfo.value if call.excinfo is not None else None)
    if call.when == "call" and RECORD in item.stash:
        report.quant_record = item.stash[RECORD].to_dict()
        report.quant_record["worker"] = os.environ.get("PYTEST_XDIST_WORKER", "master")
        report.extras = [*getattr(report, "extras", []), *item.config.stash[REPORTS].extras(report.quant_record)]
    return report
