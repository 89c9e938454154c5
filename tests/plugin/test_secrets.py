"""Secrets stay out: a run with an API key planted in the environment variable its ``[judge] api_key_env`` names
writes it nowhere: not in junit.xml, report.html, summary.html, findings.md, results/*.json, progress logs, the
cache folder, nor the run's own output (under xdist, so workers' progress logs are written too). No judge endpoint is needed: the judge the study names is unreachable, so
the steering cell that builds a client with the key errors (its answers unscored), and the vector cell runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

SECRET = "sk-planted-4c1d7e2f-do-not-write-me"


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_a_planted_api_key_reaches_no_report_log_or_cache(
        pytester: pytest.Pytester, make_study: Callable[..., Path], run_args: Callable[..., list[str]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QH_PLANTED_KEY", SECRET)
    study = make_study(precisions=("fp32", "nf4"), methods=("mean_diff",), layers="[12]", limit=6, extra="""
        [judge]
        base_url = "http://127.0.0.1:9/v1"
        model = "judge-that-is-not-there"
        api_key_env = "QH_PLANTED_KEY"
        max_retries = 0
        timeout = 2
        [steering]
        layers = [12]
        questions = 2
        max_new_tokens = 4
        search_steps = 1
        """)
    cache = tmp_path / "cache"
    result = pytester.runpytest(*run_args(study, "-q", "-rA", "-n", "1", "-k",
                                          "nf4 and (test_vector_fidelity or test_steering)", cache=cache))
    out = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1, errors=1)
    assert "judge-that-is-not-there at http://127.0.0.1:9/v1: 4 of 4 answers unscored" in out, out
    reports = pytester.path / "reports"
    written = _files(reports, cache)
    names = {p.name for p in written}
    assert {"junit.xml", "report.html", "summary.html", "findings.md", "run.json", "vector_comparison.json",
            "gw0.log"} <= names, sorted(names)
    assert any(p.name == "meta.json" for p in written), "the cache was written"
    leaks = [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    assert leaks == [] and SECRET not in out
