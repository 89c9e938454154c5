"""The fixtures a case module uses: the study, the per-process runner, a cell's result and its recorder."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, NamedTuple

import pytest
from _pytest._code.code import ExceptionChainRepr, ReprEntryNative  # xdist serializes both

from quant_harness.errors import PrecisionUnavailable, QuantHarnessError
from quant_harness.metrics.verdicts import is_allowed
from quant_harness.plugin.keys import OUTCOME, RECORD, REPORTS, SELECTED, STATE, STUDY
from quant_harness.plugin.options import cache_dir, model_dir
from quant_harness.records import CellResult
from quant_harness.report import gates
from quant_harness.study.kinds import KINDS
from quant_harness.study.spec import Cell, Study

if TYPE_CHECKING:
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
def cell_result(request: pytest.FixtureRequest, cell: Cell, quant_runner: StudyRunner) -> CellResult:
    """The cell's measured result. Errors here (NaN, zero vector, bad data) make the cell an ERROR, not a verdict.

    The first cell of a model in this process first runs the model's reference phase (StudyRunner.prepare)."""
    try:
        selected: list[Cell] = request.config.stash.get(SELECTED, [cell])
        quant_runner.prepare(cell, selected)
        stop = quant_runner.study.gates.early_stop_cosine
        if cell.kind == "transfer" and stop is not None:
            reason = gates.early_stop(quant_runner.cosines(cell.model, cell.precision), stop)
            if reason:
                pytest.skip(reason)
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
        self.verdict_allowed = allowed
        self.allowed = allowed and not self.regressions

    def explain(self) -> str:
        return "\n".join([f"cell {self.result.cell_id}: {self.result.explanation}",
                          *(f"cell {self.result.cell_id}: {r}" for r in self.regressions)])

    def block(self) -> str:
        """The short block a failed cell is reported as: a first line that stands alone (the short summary shows
        only it) with the cell, its verdict and its headline figure with the interval, then the band and the
        reasons, one line each. The explanation's notes (what was resampled, the noise floor's figures) stay in the
        reports: at ~800 cells with hundreds failing, a person reads this block per cell and nothing else."""
        r, v = self.result, verdict_parts(self.result.explanation)
        reasons = [x for x in (v.gate, v.reason) if x]
        if not self.verdict_allowed:
            reasons.append(f"{r.verdict} is not allowed ({v.limit})" if v.limit else f"{r.verdict} is not allowed")
        reasons += [f"baseline: {x}" for x in self.regressions]
        return "\n".join([f"cell {r.cell_id}: {r.verdict.upper()}, {headline(r)}",
                          f"  band:   {v.band or 'none assigned (see the reason)'}",
                          *(f"  reason: {x}" for x in reasons or [r.explanation])])


class VerdictText(NamedTuple):
    """The parts of ``Judgement.explain()`` in a cell's explanation, and what a gate put before it."""

    band: str
    """``robust > 0.95, broken < 0.8``; empty when no band was assigned (an inconclusive with its reason)."""
    reason: str
    """Why no band was assigned; empty when one was."""
    limit: str
    """``fail_on=degraded`` / ``fail_on=broken, inconclusive fails`` / ``never fails``."""
    gate: str = ""
    """What quant_harness.report.gates wrote before the judgement (a withheld verdict's reason)."""


_EXPLAINED = re.compile(r"\S+ -?[\d.]+(?: \([^()]*CI [^()]*\))?: (?:ROBUST|DEGRADED|BROKEN|INCONCLUSIVE) "
                        r"\((?P<why>.*?); (?P<limit>fail_on=[a-z]+(?:, inconclusive (?:fails|passes))?|never fails)\)")
_BAND = re.compile(r"robust [<>] \S+, broken [<>] \S+")


def verdict_parts(explanation: str) -> VerdictText:
    """Band, reason and limit from a cell's explanation, which holds ``Judgement.explain()``: ``<figure>:
    <VERDICT> (<band or reason>; <limit>)``. An explanation without one (a case's own record) is all reason."""
    m = _EXPLAINED.search(explanation)
    if m is None:
        return VerdictText("", explanation, "")
    why, gate = m.group("why"), explanation[:m.start()].strip("; ")
    if _BAND.fullmatch(why):
        return VerdictText(why, "", m.group("limit"), gate)
    return VerdictText("", why, m.group("limit"), gate)


def headline(result: CellResult) -> str:
    """``<metric> <value> (<level> CI <low>..<high>)`` from the record's figures, or ``(no interval)``."""
    f = result.figures
    low, high = f.get(f"{result.metric}_ci_low"), f.get(f"{result.metric}_ci_high")
    ci = "(no interval)" if low is None or high is None else \
        f"({float(f.get('ci_level', 0.95)):.0%} CI {low:.4f}..{high:.4f})"
    return f"{result.metric} {result.value:.4f} {ci}"


class CellFailed(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """A cell whose verdict the study does not allow: reported as ``Outcome.block()``, with no traceback (the
    assertion's source line and the reprs of CellResult and the fixtures say nothing the block does not)."""

    __module__ = "builtins"  # so pytest prints "CellFailed: ..." as it prints "Failed: ..."


def failed_verdict(item: pytest.Item, error: BaseException) -> CellFailed | None:
    """The block to report instead of ``error`` when a case's verdict assertion failed: only for an
    ``AssertionError`` raised after ``record_cell`` found the verdict not allowed (any other failure keeps its
    traceback, since it is a bug in the case or the harness)."""
    outcome = item.stash.get(OUTCOME, None)
    if not isinstance(error, AssertionError) or outcome is None or outcome.allowed:
        return None
    return CellFailed(outcome.block(), pytrace=False)


def lead_with_cell(item: pytest.Item, report: pytest.TestReport, error: BaseException | None) -> None:
    """Make the first line a person reads of a failed or errored cell name the cell and what went wrong.

    A CellError or CellFailed already starts so; their short-summary message is cut to that first line (on CI,
    pytest prints the whole message). Any other exception inside a cell (a bug, a library's own error) keeps its
    traceback below one line ``cell <id>: <Type>: <message>``, and the summary carries that line.
    """
    cell = getattr(getattr(item, "callspec", None), "params", {}).get("cell")
    longrepr = report.longrepr
    if not isinstance(cell, Cell) or error is None or not report.failed or \
            not isinstance(longrepr, ExceptionChainRepr):
        return
    crash = longrepr.reprcrash
    if isinstance(error, (CellError, CellFailed)):
        if crash is not None:
            crash.message = crash.message.split("\n", 1)[0]
        return
    text = str(error).strip()
    first = f"cell {cell.id}: {type(error).__name__}" + (f": {text.splitlines()[0]}" if text else "")
    innermost = longrepr.chain[0][0]      # printed first: the cause's traceback, or the error's own
    innermost.reprentries = [ReprEntryNative([first + "\n"]), *innermost.reprentries]
    if crash is not None:
        crash.message = first


@pytest.fixture
def record_cell(request: pytest.FixtureRequest, quant_study: Study, cell: Cell,
                quant_runner: StudyRunner) -> Callable[[CellResult], Outcome]:
    """Record a cell's result (JUnit properties, JSON matrices) before its verdict is asserted, once the plan's
    gates have been applied to it (quant_harness.report.gates: the one place they are)."""

    def record(result: CellResult) -> Outcome:
        quantized = cell.precision != quant_study.reference
        # a reference probe cell hands its AUROC to the runner, so the quantized cells after it do not refit it
        auroc = quant_runner.reference_auroc(cell, result) if quantized or cell.kind == "probes" else None
        result = gates.apply(result, quant_study.gates, quantized=quantized, reference_auroc=auroc)
        request.node.stash[RECORD] = result
        request.node.user_properties.extend(result.properties())
        regressions = request.config.stash[REPORTS].check(result, request.node)
        outcome = Outcome(result, is_allowed(result.verdict, quant_study.fail_on, quant_study.fail_on_inconclusive),
                          regressions)
        request.node.stash[OUTCOME] = outcome
        return outcome

    return record
