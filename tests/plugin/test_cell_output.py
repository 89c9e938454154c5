"""What a person reads first when cells fail, as users meet it: a pytest run's terminal text and exit code.

A cell whose verdict the study does not allow is one short block (the cell, its verdict and headline figure with
the interval, the band, the reason) and one line in the ``-rf`` summary, with no traceback and no reprs; at ~800
cells with 200 failing, the summary is one line per cell. An exception inside a cell leads with one line naming the
cell and the error. Under ``-n`` the controller prints each model x precision group's progress as reports arrive.

The real runs use the tiny study of tests/plugin/test_reports.py (fp32 + nf4, 8 CAA pairs, 3 layers) on the
session's shared cache, so its activations are extracted once per session; the 800-cell run records hand-built
results through the plugin's own ``record_cell`` with a stub runner, since no model work can make 200 cells fail
on demand.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from quant_harness.metrics.verdicts import DEFAULT_BANDS, Judgement, Verdict
from quant_harness.plugin.fixtures import Outcome, verdict_parts
from quant_harness.records import CellResult

BLOCK_HEAD = re.compile(r"^cell (?P<cell>\S+): (?P<verdict>ROBUST|DEGRADED|BROKEN|INCONCLUSIVE), cosine_mean "
                        r"-?\d\.\d{4} \(95% CI -?\d\.\d{4}\.\.-?\d\.\d{4}\)$")


def _section(out: str, title: str) -> list[str]:
    """The lines of pytest's ``==== title ====`` section, up to the next ``====`` section line."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.fullmatch(rf"=+ {title} =+", ln))
    end = next((i for i in range(start + 1, len(lines)) if re.fullmatch(r"=+ .* =+", lines[i])), len(lines))
    return lines[start + 1:end]


def _summary(out: str) -> list[str]:
    """The ``short test summary info`` lines, without ``-q``'s closing tally line."""
    return [ln for ln in _section(out, "short test summary info")
            if not re.fullmatch(r"\d+ (failed|passed|errors?)\b.* in [\d.]+s.*", ln)]


def _blocks(section: list[str]) -> dict[str, list[str]]:
    """Test name -> the lines under its ``____ name ____`` header, up to pytest's own ``---- ... ----`` lines
    (captured output, the junit file); xdist's ``[gw0] linux -- ...`` line left out."""
    out: dict[str, list[str]] = {}
    name = ""
    for ln in section:
        m = re.fullmatch(r"_+ (.+?) _+", ln)
        if m:
            name = m.group(1)
            out[name] = []
        elif re.fullmatch(r"-{3,} .+ -{3,}", ln):
            name = ""
        elif name and not re.match(r"\[gw\d+\] ", ln):
            out[name].append(ln)
    return out


def test_the_block_reads_its_parts_from_a_real_judgement() -> None:
    """``verdict_parts`` parses what ``Judgement.explain()`` writes (a change of that format breaks this test, not a
    run): band, limit, and a gate's withheld-verdict reason in front."""
    band = DEFAULT_BANDS["cosine"]
    j = Judgement("cosine_mean", 0.61, Verdict.BROKEN, band, Verdict.DEGRADED, interval=(0.55, 0.66))
    result = CellResult("m-nf4-caa_x-mean_diff", "vectors", "broken", "cosine_mean", 0.61,
                        {"cosine_mean_ci_low": 0.55, "cosine_mean_ci_high": 0.66, "ci_level": 0.95},
                        explanation=f"{j.explain()}; resampled: 1000 bootstrap resamples of 24 pairs")
    assert Outcome(result, allowed=False).block().splitlines() == [
        "cell m-nf4-caa_x-mean_diff: BROKEN, cosine_mean 0.6100 (95% CI 0.5500..0.6600)",
        "  band:   robust > 0.95, broken < 0.8",
        "  reason: broken is not allowed (fail_on=degraded)"]
    undecided = Judgement("cosine_mean", 0.9, Verdict.INCONCLUSIVE, band, Verdict.BROKEN, fail_on_inconclusive=True,
                          reason="the reference's own self-cosine reaches 0.6")
    gated = f"reference baseline failed: AUROC 0.5 (verdict from the figures alone: broken); {undecided.explain()}"
    assert verdict_parts(gated) == ("", "the reference's own self-cosine reaches 0.6",
                                    "fail_on=broken, inconclusive fails",
                                    "reference baseline failed: AUROC 0.5 (verdict from the figures alone: broken)")
    assert verdict_parts("a case's own words") == ("", "a case's own words", "", "")


def test_a_failing_cell_is_a_short_block_and_xdist_prints_group_progress(
        pytester: pytest.Pytester, make_study: Callable[..., Path], run_args: Callable[..., list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real cells under ``-n 2`` (the blocks cross xdist as serialized reports): nothing but the block under each
    failure header, the summary's one line per cell, and one progress line per group's first and last cell."""
    monkeypatch.setenv("COLUMNS", "400")  # the summary line in full
    study = make_study(precisions=("fp32", "nf4"), limit=8, layers="[3, 10, 20]", fail_on="degraded")
    study.write_text(study.read_text().replace('fail_on = "degraded"', 'fail_on = "degraded"\n'
                                               "fail_on_inconclusive = true"))   # only robust passes
    result = pytester.runpytest_subprocess(*run_args(study, "-rf", "-n", "2", "-k",
                                                     "test_vector_fidelity or test_probe_auroc"), timeout=600)
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "CellResult(" not in out and "Traceback" not in out and "assert outcome.allowed" not in out, out
    blocks = {name: [ln for ln in lines if ln.strip()] for name, lines in _blocks(_section(out, "FAILURES")).items()}
    vectors = {n: b for n, b in blocks.items() if n.startswith("test_vector_fidelity[")}
    assert set(vectors) == {"test_vector_fidelity[smollm2-135m-nf4-caa_sycophancy-mean_diff]",
                            "test_vector_fidelity[smollm2-135m-nf4-caa_sycophancy-probe]"}, list(blocks)
    for name, block in vectors.items():
        head = BLOCK_HEAD.match(block[0])
        assert head is not None and f"[{head['cell']}]" in name, block
        assert block[1] == "  band:   robust > 0.95, broken < 0.8", block
        assert block[2:] and all(ln.startswith("  reason: ") for ln in block[2:]) and len(block) <= 5, block
        assert block[-1] == f"  reason: {head['verdict'].lower()} is not allowed (fail_on=degraded, inconclusive " \
                            "fails)", block
    summary = _summary(out)
    assert len(summary) == len(blocks) and all(ln.startswith("FAILED ") for ln in summary), summary
    for line in summary:
        name = line.split("::", 1)[1].split(" - ", 1)[0]
        assert line.endswith(f" - CellFailed: {blocks[name][0]}"), (line, blocks[name][0])

    progress = re.findall(r"quant_harness: (smollm2-135m-(?:fp32|nf4)) (\d+)/(\d+) cells \((gw[01]), \d+\.\ds\)", out)
    assert {(g, d, t) for g, d, t, _ in progress} == {("smollm2-135m-fp32", "1", "2"), ("smollm2-135m-fp32", "2", "2"),
                                                     ("smollm2-135m-nf4", "1", "4"), ("smollm2-135m-nf4", "4", "4")}, out
    assert len({w for g, _, _, w in progress if g.endswith("nf4")}) == 1, "a group runs on one worker"
    plain = pytester.runpytest_subprocess(*run_args(study, "-n", "0", "-k", "test_vector_fidelity"), timeout=600)
    assert "cells (" not in plain.stdout.str(), "without workers the progress bars are on the terminal already"


FAKE_CONFTEST = '''
import pytest


class Runner:
    """What record_cell and cell_result ask of the runner, without a model: a cell's compute is an accelerator
    fault (an exception no library code raised on purpose)."""

    def reference_auroc(self, cell, result):
        return None

    def prepare(self, cell, selected):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\\nCUDA kernel errors might be "
                           "asynchronously reported")


@pytest.fixture(scope="session")
def quant_runner():
    return Runner()
'''

FAKE_CASES = '''
import pytest

from quant_harness.metrics.verdicts import DEFAULT_BANDS, Judgement, Verdict
from quant_harness.records import CellResult


@pytest.mark.quant_cells("vectors")
@pytest.mark.parametrize("i", range({repeat}))
def test_cell(cell, i, record_cell) -> None:
    broken = i % 4 == 0
    value = 0.61 if broken else 0.99
    low, high = value - 0.03, min(value + 0.005, 1.0)
    j = Judgement("cosine_mean", value, Verdict.BROKEN if broken else Verdict.ROBUST, DEFAULT_BANDS["cosine"],
                  Verdict.DEGRADED, interval=(low, high))
    result = CellResult(cell.id, "vectors", j.verdict.label, "cosine_mean", value,
                        {{"cosine_mean_ci_low": low, "cosine_mean_ci_high": high, "ci_level": 0.95}},
                        explanation=j.explain() + "; resampled: 1000 bootstrap resamples of 24 contrast pairs")
    outcome = record_cell(result)
    assert outcome.allowed, outcome.explain()


@pytest.mark.quant_cells("vectors")
def test_crash(cell, cell_result) -> None:
    pass
'''


def test_800_cells_with_200_failing_keep_one_summary_line_each_and_errors_lead_with_the_cell(
        pytester: pytest.Pytester, make_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The study's 2 vector cells x 400 = 800 cells through the plugin's record_cell, a quarter broken under
    ``fail_on = "degraded"``, in a CI environment (where pytest prints the whole failure message in the summary);
    and a cell whose compute raises a CUDA-style RuntimeError: its ERROR names the cell first, then the traceback."""
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("CI", "true")
    study = make_study(precisions=("fp32", "nf4"), limit=8, fail_on="degraded")
    pytester.makeconftest(FAKE_CONFTEST)
    cases = pytester.makepyfile(test_cells=FAKE_CASES.format(repeat=400))
    here = pytester.path
    result = pytester.runpytest_subprocess(
        str(cases), "-p", "quant_harness.plugin", "--quant-study", str(study), "--quant-cache-dir",
        str(here / "cache"), "--quant-report-dir", str(here / "reports"), "--rootdir", str(here),
        "-p", "no:cacheprovider", "-p", "no:randomly", "-q", "-rfE", timeout=300)
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert re.search(r"\b200 failed, 600 passed, 2 errors\b", out), out[-2000:]
    failures = _blocks(_section(out, "FAILURES"))
    assert len(failures) == 200 and all(len(b) == 3 for b in failures.values()), "header + 3 lines per cell"
    assert "CellResult(" not in "\n".join(_section(out, "FAILURES"))
    summary = _summary(out)
    failed = [ln for ln in summary if ln.startswith("FAILED ")]
    errors = [ln for ln in summary if ln.startswith("ERROR ")]
    assert len(failed) == 200 and len(errors) == 2 and len(summary) == 202, summary[:5]
    assert all(re.search(r"\[smollm2-135m-nf4-caa_sycophancy-(mean_diff|probe)-\d+\] - CellFailed: cell "
                         r"smollm2-135m-nf4-caa_sycophancy-\S+: BROKEN, cosine_mean 0\.6100 \(95% CI "
                         r"0\.5800\.\.0\.6150\)$", ln) for ln in failed), failed[:3]

    crash = "RuntimeError: CUDA error: an illegal memory access was encountered"
    for cell in ("smollm2-135m-nf4-caa_sycophancy-mean_diff", "smollm2-135m-nf4-caa_sycophancy-probe"):
        assert f"ERROR test_cells.py::test_crash[{cell}] - cell {cell}: {crash}" in errors, errors
        body = [ln for ln in _blocks(_section(out, "ERRORS"))[f"ERROR at setup of test_crash[{cell}]"] if ln.strip()]
        assert body[0] == f"cell {cell}: {crash}", body[:3]
        assert any("raise RuntimeError(" in ln for ln in body[1:]), "the traceback follows: a fault needs it"

