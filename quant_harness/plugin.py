"""pytest plugin: options, cell parametrization, fixtures and report hooks. Glue only; the work is in the library.

Nothing here imports bitsandbytes, gptqmodel or transformers at import time, so a worker can pin its GPUs first.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Generator

import pytest

from quant_harness import counters, progress
from quant_harness.errors import CellError, DatasetError, PrecisionUnavailable, StudyError
from quant_harness.records import CellResult
from quant_harness import scale
from quant_harness.scheduling import by_group, gpu_slots_arg, parse_shard
from quant_harness.study import Cell, Study
from quant_harness.verdicts import is_allowed

STUDY = pytest.StashKey["Study | None"]()
STATE = pytest.StashKey["_State"]()
RECORD = pytest.StashKey[CellResult]()
REPORTS = pytest.StashKey["ReportHooks"]()


class _State:
    """Per-process state of a run, registered as a plugin: records seen here, counters from workers."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []
        self.worker_counters: list[dict[str, Any]] = []
        self.runner: Any = None

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
        if study is None or not (self.records or self.runner or self.worker_counters):
            return
        from quant_harness import reporting

        results = report_dir(config) / "results"
        reporting.merge_records(results, self.records)
        totals = counters.merge([counters.snapshot(), *self.worker_counters])
        reporting.write_run(results, totals, study=study.name, cells_recorded=len(self.records),
                            workers=len(self.worker_counters) or 1)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quant_harness", "quantization sensitivity of trait vectors")
    group.addoption("--quant-study", dest="quant_study", default=None, metavar="PATH",
                    help="Study file to run (TOML). Default: ini quant_study")
    group.addoption("--quant-cache-dir", dest="quant_cache_dir", default=None, metavar="DIR",
                    help="Activation cache folder. Default: ini quant_cache_dir, else .quant_cache")
    group.addoption("--quant-model-dir", dest="quant_model_dir", default=None, metavar="DIR",
                    help="Folder for local checkpoints (embedded model, GPTQ quantized on load). "
                         "Default: ini quant_model_dir, else <cache dir>/models")
    group.addoption("--quant-report-dir", dest="quant_report_dir", default=None, metavar="DIR",
                    help="Where results/*.json and run.json are written. Default: ini quant_report_dir, else reports")
    parser.addini("quant_study", "Study file run when --quant-study is not given", default="")
    parser.addini("quant_cache_dir", "Activation cache folder", default=".quant_cache")
    parser.addini("quant_model_dir", "Folder for local checkpoints", default="")
    parser.addini("quant_report_dir", "Folder for result files", default="reports")
    group.addoption("--quant-update-baselines", dest="quant_update_baselines", action="store_true", default=False,
                    help="Record the selected cells' figures as baselines (and delete unused ones) instead of "
                         "comparing with them. Default: compare")
    parser.addini("quant_baselines_dir", "Folder of per-study baselines, relative to rootdir", default="cases/baselines")
    group.addoption("--quant-gpus", dest="quant_gpus", default=None, metavar="SLOTS", type=gpu_slots_arg,
                    help="GPU slots, one per xdist worker: ';' between slots, ',' within, indices into your "
                         "CUDA_VISIBLE_DEVICES, e.g. '0;1;2;3;4,5;6,7', or 'auto'. Default: ini quant_gpus, else no pinning")
    group.addoption("--quant-gpu-mem", dest="quant_gpu_mem", default=None, type=float, metavar="GB",
                    help="Memory of one GPU, for the plan's fit check. Default: ini quant_gpu_mem, else unchecked")
    group.addoption("--quant-shard", dest="quant_shard", default=None, type=parse_shard, metavar="I/N",
                    help="Run shard I of N (whole model x precision groups, stable hash); results go to "
                         "<report dir>/shards/shard-I-of-N. Default: everything")
    group.addoption("--quant-plan", dest="quant_plan", action="store_true", default=False,
                    help="Print cells, groups, workers, memory estimates and warm cache entries; load and run nothing")
    parser.addini("quant_gpus", "GPU slots per worker (see --quant-gpus)", default="")
    parser.addini("quant_gpu_mem", "Memory of one GPU in GB (see --quant-gpu-mem)", default="")


def _setting(config: pytest.Config, name: str) -> str:
    return str(config.getoption(name) or config.getini(name) or "")


def _path(config: pytest.Config, name: str) -> Path:
    p = Path(os.path.expandvars(_setting(config, name))).expanduser()
    return p if p.is_absolute() else config.rootpath / p


def cache_dir(config: pytest.Config) -> Path:
    return _path(config, "quant_cache_dir")


def model_dir(config: pytest.Config) -> Path:
    return _path(config, "quant_model_dir") if _setting(config, "quant_model_dir") else cache_dir(config) / "models"


def report_dir(config: pytest.Config) -> Path:
    return scale.shard_report_dir(config, _path(config, "quant_report_dir"))


class _TerminalSink(io.TextIOBase):
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


def pytest_configure(config: pytest.Config) -> None:
    """Load the study once per process; a bad study file is a usage error."""
    config.addinivalue_line("markers", "quant_cells(kind): parametrize the test's `cell` argument with the "
                            "study's cells of that kind")
    config.stash[STATE] = _State(config)
    config.pluginmanager.register(config.stash[STATE], "quant_harness.state")
    study_file = _setting(config, "quant_study")
    config.stash[STUDY] = None
    if study_file:
        from quant_harness import study

        path = Path(study_file)
        try:
            config.stash[STUDY] = study.load(path if path.is_absolute() else config.rootpath / path,
                                             check_data=not config.getoption("quant_plan"))
        except StudyError as e:
            raise pytest.UsageError(str(e)) from e
    from quant_harness.report_hooks import ReportHooks

    config.stash[REPORTS] = ReportHooks(config, config.stash[STUDY])
    config.pluginmanager.register(config.stash[REPORTS], "quant_harness.reports")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        log_dir = report_dir(config) / "progress"
        log_dir.mkdir(parents=True, exist_ok=True)
        progress.set_sink(open(log_dir / f"{worker}.log", "a", buffering=1))  # noqa: SIM115
    else:
        progress.set_sink(_TerminalSink(config))
    if config.pluginmanager.hasplugin("xdist"):
        from quant_harness.xdist_support import XdistHooks

        config.pluginmanager.register(XdistHooks(config), "quant_harness.xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Detach the progress sink: it points at this run's terminal or log file."""
    previous = progress.set_sink(None)
    if previous is not None and not isinstance(previous, _TerminalSink):
        previous.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash.get(STUDY, None)
    if s is None:
        return []
    return [f"quant_harness: study {s.name} ({s.path}), reference {s.reference}, cache {cache_dir(config)}"]


def _skip_reason(study: Study, cell: Cell) -> str | None:
    from quant_harness.precision import unavailable_reason

    card = study.cards[cell.model]
    if cell.precision == "gptq" and not card.has_gptq:
        return f"{card.name} has no GPTQ checkpoint (plan: none exists); gptq cell skipped"
    return unavailable_reason(cell.precision)


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
    for c in s.cells(marker.args[0]):
        marks: list[Any] = [pytest.mark.xdist_group(c.group)]
        reason = _skip_reason(s, c) or scale.placement_skip(metafunc.config, c.model, s.cards[c.model].gpus)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(c, id=c.id, marks=marks))
    metafunc.parametrize("cell", params)


@pytest.fixture(scope="session")
def quant_study(pytestconfig: pytest.Config) -> Study:
    """The study this run executes."""
    s = pytestconfig.stash.get(STUDY, None)
    if s is None:
        raise pytest.UsageError("no study: pass --quant-study PATH or set ini quant_study")
    return s


@pytest.fixture(scope="session")
def quant_runner(pytestconfig: pytest.Config, quant_study: Study) -> Generator[Any, None, None]:
    """The per-process StudyRunner: resident models and the activation cache."""
    from quant_harness.runner import StudyRunner

    runner = StudyRunner(quant_study, cache_dir(pytestconfig), model_dir(pytestconfig))
    pytestconfig.stash[STATE].runner = runner
    yield runner
    runner.pool.close()


@pytest.fixture
def cell_result(cell: Cell, quant_runner: Any) -> CellResult:
    """The cell's measured result. Errors here (NaN, zero vector, bad data) make the cell an ERROR, not a verdict."""
    from quant_harness.kinds import compute

    try:
        return compute(quant_runner, cell)
    except PrecisionUnavailable as e:
        pytest.skip(str(e))
    except (CellError, DatasetError) as e:
        raise CellError(f"cell {cell.id}: {e}") from e


class Outcome:
    """What a case asserts: whether the verdict is allowed, and the sentence that explains it."""

    def __init__(self, result: CellResult, allowed: bool, regressions: list[str] | None = None) -> None:
        self.result, self.regressions = result, regressions or []
        self.allowed = allowed and not self.regressions

    def explain(self) -> str:
        return "\n".join([f"cell {self.result.cell_id}: {self.result.explanation}",
                          *(f"cell {self.result.cell_id}: {r}" for r in self.regressions)])


@pytest.fixture
def record_cell(request: pytest.FixtureRequest, quant_study: Study) -> Callable[[CellResult], Outcome]:
    """Record a cell's result (JUnit properties, JSON matrices) before its verdict is asserted."""

    def record(result: CellResult) -> Outcome:
        request.node.stash[RECORD] = result
        request.node.user_properties.extend(result.properties())
        regressions = request.config.stash[REPORTS].check(result, request.node)
        return Outcome(result, is_allowed(result.verdict, quant_study.fail_on, quant_study.fail_on_inconclusive),
                       regressions)

    return record


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Pin a worker's GPUs before anything touches CUDA; default to --dist loadgroup under -n; plan mode."""
    scale.cmdline_main(config)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` with --quant-gpus: one worker per GPU slot."""
    return scale.auto_num_workers(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run each model x precision group's cells together (one load per group per process); --quant-shard I/N: keep
    this shard's groups."""
    groups = [m.args[0] if (m := item.get_closest_marker("xdist_group")) and "cell" in getattr(item, "fixturenames", ())
              else None for item in items]
    study = config.stash[STUDY]
    lead = [f"{model}-{study.reference}" for model in sorted(study.cards)] if study is not None else []
    items[:] = [items[i] for i in by_group(groups, lead)]
    scale.select_shard(config, items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """--quant-plan: print the plan instead of running."""
    return scale.run_plan(session, cache_dir(session.config))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the cell's record to its call report; reports cross xdist as plain dicts."""
    report = yield
    if call.when == "call" and RECORD in item.stash:
        report.quant_record = item.stash[RECORD].to_dict()
        report.quant_record["worker"] = os.environ.get("PYTEST_XDIST_WORKER", "master")
        report.extras = [*getattr(report, "extras", []), *item.config.stash[REPORTS].extras(report.quant_record)]
    return report
