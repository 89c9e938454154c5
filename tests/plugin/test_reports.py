"""Reports as users meet them: JUnit properties, JSON matrices, baselines and the HTML page in a real browser.

Every run uses one tiny study (fp32 reference + nf4, CAA sycophancy, 3 layers, 8 examples) and the session's
shared activation cache, so only the first run loads models. Runs go through a subprocess: `-n 2` needs one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

VECTORS = ("-k", "test_vector_fidelity")
MEAN_DIFF = "smollm2-135m-nf4-caa_sycophancy-mean_diff"
PROBE = "smollm2-135m-nf4-caa_sycophancy-probe"


def _run(pytester: pytest.Pytester, args: list[str], *more: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, *more, "-p", "no:randomly", timeout=600)


def _junit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Cell id -> its properties, from reports/junit.xml (names may carry an xdist @group suffix)."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        m = re.search(r"\[(.+?)\]", case.get("name", ""))
        if m:
            out[m.group(1)] = [(p.get("name", ""), p.get("value", "")) for p in case.iter("property")]
    return out


def _records(report_dir: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((report_dir / "results" / "vector_comparison.json").read_text())
    return {k: {f: v for f, v in r.items() if f != "worker"} for k, r in data["records"].items()}


@pytest.fixture
def tiny(pytester: pytest.Pytester, make_study: Callable[..., Path], run_args: Callable[..., list[str]]) -> list[str]:
    """Run arguments for the tiny study, resolved after pytester has moved into its own folder."""
    study = make_study(precisions=("fp32", "nf4"), limit=8, layers="[3, 10, 20]")
    return [*run_args(study), *VECTORS]


def test_junit_and_matrices_are_the_same_with_and_without_xdist(pytester: pytest.Pytester, tiny: list[str]) -> None:
    plain = _run(pytester, tiny, "-n0")
    assert plain.ret == pytest.ExitCode.OK, plain.stdout.str()
    reports = pytester.path / "reports"
    junit_plain, records_plain = _junit(reports / "junit.xml"), _records(reports)
    shutil.rmtree(reports)
    spread = _run(pytester, tiny, "-n", "2")
    assert spread.ret == pytest.ExitCode.OK, spread.stdout.str()
    junit_spread = _junit(reports / "junit.xml")

    assert set(junit_plain) == {MEAN_DIFF, PROBE}
    assert junit_plain == junit_spread
    props = dict(junit_plain[MEAN_DIFF])
    assert props["verdict"] in ("robust", "degraded", "broken", "inconclusive")
    assert {"cosine_mean", "cosine_mean_ci_low", "cosine_mean_ci_high", "cosine_min", "baseline"} <= set(props)
    assert _records(reports) == records_plain
    assert records_plain[MEAN_DIFF]["provenance"]["versions"]["torch"]
    assert any("dequantized Q4_1" in n for n in records_plain[MEAN_DIFF]["provenance"]["notes"])


def test_a_k_slice_keeps_the_other_cells(pytester: pytest.Pytester, tiny: list[str]) -> None:
    full = _run(pytester, tiny)
    assert full.ret == pytest.ExitCode.OK, full.stdout.str()
    reports = pytester.path / "reports"
    before = _records(reports)
    (reports / "findings.md").unlink()
    sliced = _run(pytester, [a if a != "test_vector_fidelity" else "test_vector_fidelity and probe" for a in tiny])
    assert sliced.ret == pytest.ExitCode.OK, sliced.stdout.str()
    after = _records(reports)
    assert set(after) == {MEAN_DIFF, PROBE}
    assert after[MEAN_DIFF] == before[MEAN_DIFF]
    assert json.loads((reports / "results" / "run.json").read_text())["cells_recorded"] == 1
    findings = (reports / "findings.md").read_text()
    assert "### H3: Probe extraction degrades less than mean_diff" in findings
    assert "H2" in findings and "not measured" in findings
    ranking = json.loads((reports / "results" / "robustness_ranking.json").read_text())
    assert {m["name"] for m in ranking["by_kind"]["vectors"]["methods"]} == {"mean_diff", "probe"}


def test_baselines_update_compare_and_report_unused(pytester: pytest.Pytester, tiny: list[str]) -> None:
    update = _run(pytester, tiny, "--quant-update-baselines")
    assert update.ret == pytest.ExitCode.OK, update.stdout.str()
    update.stdout.fnmatch_lines(["*2 baselines written to*"])
    folder = pytester.path / "cases" / "baselines" / "tiny" / "vectors"
    md, pr = folder / f"{MEAN_DIFF}.json", folder / f"{PROBE}.json"
    stored = json.loads(md.read_text())
    assert {"figures", "verdict", "versions"} <= set(stored) and stored["versions"]["torch"]

    better = stored["figures"]["cosine_mean"] + 0.1
    md.write_text(json.dumps({**stored, "figures": {**stored["figures"], "cosine_mean": better}}))
    probe = json.loads(pr.read_text())
    pr.write_text(json.dumps({**probe, "versions": {**probe["versions"], "torch": "0.0.1"}}))
    stray = folder / "smollm2-135m-int8-caa_sycophancy-mean_diff.json"
    stray.write_text(md.read_text())
    compare = _run(pytester, tiny)
    assert compare.ret == pytest.ExitCode.TESTS_FAILED
    compare.assert_outcomes(passed=1, failed=1)
    compare.stdout.fnmatch_lines([
        f"cell {MEAN_DIFF}: *",
        f"  reason: baseline: cosine_mean got worse: baseline {better:.6g}, now *, tolerance 0.02 absolute*",
        "*1 baselines unused; re-run with --quant-update-baselines to delete*",
    ])
    compare.stdout.fnmatch_lines(["*BaselineVersionWarning*torch 0.0.1 -> *"])

    edited = md.read_text()
    sliced = _run(pytester, [a if a != "test_vector_fidelity" else "test_vector_fidelity and probe" for a in tiny],
                  "--quant-update-baselines")
    assert sliced.ret == pytest.ExitCode.OK, sliced.stdout.str()
    assert md.read_text() == edited
    assert json.loads(pr.read_text())["versions"]["torch"] != "0.0.1"
    assert not stray.exists()


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium; it could not here)")
    return exe


def _browser(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_html_report_renders_in_headless_chromium(pytester: pytest.Pytester, tiny: list[str]) -> None:
    exe = _chromium()
    result = _run(pytester, tiny)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    reports = pytester.path / "reports"
    cell_page = f"plots/{MEAN_DIFF}.html"
    for page in ("report.html", "summary.html", cell_page):
        url = (reports / page).as_uri() + "?collapsed="  # pytest-html: expand every cell's details
        dom = _browser(exe, pytester.path, "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        # plots are files beside the page, loaded lazily; every summary cell links to its plots' page
        srcs = re.findall(r'<img loading="lazy"[^>]*? src="([^"]+\.png)"', dom.stdout)
        assert srcs and all((reports / page).parent.joinpath(src).is_file() for src in srcs), page
        assert "data:image/png" not in dom.stdout and "caa_sycophancy-mean_diff" in dom.stdout
        if page != cell_page:
            assert 'class="qh-table quant-summary-table"' in dom.stdout, page
            assert f'<a href="{cell_page}">plots</a>' in dom.stdout, page
        shot = pytester.path / f"{Path(page).name}.png"
        done = _browser(exe, pytester.path, "--window-size=1280,2000", f"--screenshot={shot}", url)
        assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
        from matplotlib.image import imread

        pixels = imread(str(shot))
        assert shot.stat().st_size > 20_000 and pixels.shape[0] >= 1000 and float(pixels.std()) > 0.05
