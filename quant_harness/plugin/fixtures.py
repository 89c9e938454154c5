"""The fixtures a case module uses: the study, the per-process runner, a cell's result and its recorder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Generator

import pytest

from quant_harness.errors import PrecisionUnavailable, QuantHarnessError
from quant_harness.metrics.verdicts import is_allowed
from quant_harness.plugin.keys import RECORD, REPORTS, STATE, STUDY
from quant_harness.plugin.options import cache_dir, model_dir
from quant_harness.records import CellResult
from quant_harness.study.kinds import KINDS
from quant_harness.study.spec import Cell, Study

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner
    from quant_harness.runner import StudyRunner


@pytest.fixture(scope="session")
def quant_study(pytestconfig: pytest.Config) -> Study:
    """The study this run executes."""
    s = pytestconfig.stash.get(STUDY, None)
    if s is None:
        raise pytest.UsageError("no study: pass --quant-study PATH or set ini quant_study")
    return s


@pytest.fixture(scope="session")
def quant_runner(pytestconfig: pytest.Config, quant_study: Study) -> Generator[StudyRunner, None, None]:
    """The per-process StudyRunner: resident models and the activation cache."""
    from quant_harness.runner import StudyRunner

    runner = StudyRunner(quant_study, cache_dir(pytestconfig), model_dir(pytestconfig))
    pytestconfig.stash[STATE].runner_started = True
    yield runner
    runner.pool.close()


@pytest.fixture
def cell_result(cell: Cell, quant_runner: CellRunner) -> CellResult:
    """The cell's measured result. Errors here (NaN, zero vector, bad data) make the cell an ERROR, not a verdict."""
    try:
        return KINDS[cell.kind].run(quant_runner, cell)
    except PrecisionUnavailable as e:
        pytest.skip(str(e))
    except QuantHarnessError as e:
        # every error the library raises on purpose already names the file or endpoint, the field and what was
        # expected: the cell's ERROR says that in one line, the cell first, without a traceback to read past
        raise CellError(f"cell {cell.id}: {e}", pytrace=False) from None  # the one line holds the cause's text


class CellError(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """A cell that cannot be scored (bad data, a NaN, a damaged bundle, an unreachable judge, a full cache): an
    ERROR of the cell whose report is the one line ``CellError: cell <id>: <file or endpoint>: <what> ...``."""

    __module__ = "builtins"  # so pytest prints "CellError: ..." as it prints "Failed: ..."


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
