"""Interrupted runs: a run SIGKILLed in the middle of extraction, and one SIGKILLed in the middle of writing its
reports, are re-run; the re-runs finish with the results of an uninterrupted run and recompute only what was
unfinished (reports/results/run.json's counters say so).

The kill is deterministic: a small plugin given with ``-p`` SIGKILLs the pytest process itself (no cleanup, no
atexit, no lock release but the kernel's) at the chosen point: after the second activation entry's tensors are
written into its hidden temporary folder but before its ``meta.json`` and rename; or halfway through writing the
first result file at session end.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

KILLER = textwrap.dedent("""
    import os, signal
    import pytest

    MODE = os.environ.get("QH_KILL", "")

    def pytest_configure(config):
        if MODE != "extraction":
            return
        from quant_harness.store import codecs
        real = codecs.TensorCodec.write
        done = []

        def write(self, value, folder):
            out = real(self, value, folder)
            done.append(folder)
            if len(done) == 2:          # the second entry's tensors are on disk, its meta.json is not
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        codecs.TensorCodec.write = write

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(session):
        if MODE != "report":
            return
        from quant_harness._util import files

        def write_text(path, text):     # half a file, then the kill
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_name(f".{path.name}.{os.getpid()}.tmp").write_text(text[: len(text) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        files.write_text = write_text
""")
CELLS = "test_vector_fidelity and nf4 and mean_diff"


def _records(reports: Path) -> dict[str, Any]:
    data = json.loads((reports / "results" / "vector_comparison.json").read_text())["records"]
    return {k: (r["verdict"], r["value"], r["per_layer"], r["figures"]) for k, r in data.items()}


def _run_json(reports: Path) -> dict[str, Any]:
    return dict(json.loads((reports / "results" / "run.json").read_text()))


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_results(
        pytester: pytest.Pytester, make_study: Callable[..., Path], run_args: Callable[..., list[str]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(killer=KILLER)
    study = make_study(precisions=("fp32", "nf4"), methods=("mean_diff",), layers="[3, 12]", limit=8)
    clean = tmp_path / "clean"
    result = pytester.runpytest(*run_args(study, "-q", "-k", CELLS, cache=clean / "cache"),
                                "--quant-report-dir", str(clean / "reports"))
    result.assert_outcomes(passed=1)
    want = _records(clean / "reports")

    cache, reports = tmp_path / "cache", pytester.path / "reports"
    monkeypatch.setenv("QH_KILL", "extraction")
    killed = pytester.runpytest(*run_args(study, "-q", "-p", "killer", "-k", CELLS, cache=cache))
    assert killed.ret == -9, killed.stdout.str()
    assert not (reports / "results").exists(), "killed before any report"
    assert [p.name.startswith(".") for p in (cache / "activations" / "smollm2-135m" / "nf4").iterdir()
            if p.is_dir()] == [True], "the half-built entry is a hidden temporary folder, never an entry"

    monkeypatch.setenv("QH_KILL", "")
    pytester.runpytest(*run_args(study, "-q", "-k", CELLS, cache=cache)).assert_outcomes(passed=1)
    run = _run_json(reports)
    assert run["loads_by_group"] == {"smollm2-135m-nf4": 1}, "only the unfinished precision loads again"
    assert run["cache_by_kind"]["activations"] == {"hits": 1, "misses": 1}
    assert _records(reports) == want

    monkeypatch.setenv("QH_KILL", "report")
    (reports / "results" / "vector_comparison.json").unlink()
    killed = pytester.runpytest(*run_args(study, "-q", "-p", "killer", "-k", CELLS, cache=cache))
    assert killed.ret == -9
    assert not (reports / "results" / "vector_comparison.json").exists(), "half a file is never in its place"

    monkeypatch.setenv("QH_KILL", "")
    pytester.runpytest(*run_args(study, "-q", "-k", CELLS, cache=cache)).assert_outcomes(passed=1)
    run = _run_json(reports)
    assert (run["model_loads"], run["forward_passes"], run["cache_misses"]) == (0, 0, 0), run
    assert _records(reports) == want
