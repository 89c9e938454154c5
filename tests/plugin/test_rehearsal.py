"""The CPU rehearsal as users run it: ``pytest cases --quant-study quant-sensitivity.toml --quant-rehearse``.

A CI-sized slice of the plan's grid (one model at its bf16 reference and NF4, one trait of each methodology that
makes every cell kind but PV's rollouts, HellaSwag; GPTQ skipped with the rehearsal's reason) runs end to end on
the model's twin with the loopback judge, and its findings page carries the plan's gate sections. The full
rehearsal (all seven models x four precisions) is the documented command in README ("Rehearse on CPU first").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from quant_harness.report.matrices import read_matrix

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("QUANT_HARNESS_DATA") or REPO.parent / "shared" / "data")
STUDY = REPO / "cases" / "studies" / "quant-sensitivity.toml"
SLICE = "mistral-7b and not int8 and (caa_sycophancy or arditi_refusal or hellaswag)"
"""Mistral's twin has the smallest vocabulary (32k) of the seven; CAA sycophancy makes vector, probe, steering,
logit_diff and transfer cells, Arditi refusal the refusal cell, HellaSwag the benchmark cell."""


@pytest.mark.skipif(not (DATA / "model_twins" / "mistral-7b" / "config.json").is_file(),
                    reason=f"no twin data at {DATA / 'model_twins'} (set QUANT_HARNESS_DATA)")
def test_rehearsal_slice_runs_every_kind_on_a_twin(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("QUANT_HARNESS_DATA", str(DATA))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        str(REPO / "cases"), "-p", "quant_harness.plugin", "--quant-study", str(STUDY), "--quant-rehearse",
        "-k", SLICE, "--quant-cache-dir", str(tmp_path / "cache"),
        "--quant-model-dir", str(REPO / ".quant_cache" / "models"),
        "--quant-report-dir", str(reports), "--rootdir", str(REPO), "-p", "no:cacheprovider", "-p", "no:randomly",
        "-rs", "-W", "ignore", timeout=175)
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, out[-4000:]
    outcomes = result.parseoutcomes()
    assert "error" not in outcomes and "failed" not in outcomes, out[-4000:]
    assert "rehearsal: GPTQ is not rehearsed" in out
    done = reports / "rehearsal"
    kinds: dict[str, set[str]] = {}
    for matrix in (done / "results").glob("*_comparison.json"):
        for cell_id, record in read_matrix(matrix).items():
            kinds.setdefault(record["kind"], set()).add(cell_id)
    assert set(kinds) == {"vectors", "probes", "steering", "logit_diff", "transfer", "refusal", "benchmarks"}, kinds
    # the steering matrix keys its other kinds' records as "<kind>:<cell id>"
    assert all(i.split(":")[-1].startswith("mistral-7b-") for ids in kinds.values() for i in ids), kinds
    run = json.loads((done / "results" / "run.json").read_text())
    # one load per group: the nf4 group found the reference's side cached (no reference load beside or after it)
    assert run["loads_by_group"] == {"mistral-7b-bf16": 1, "mistral-7b-nf4": 1}, run["loads_by_group"]
    findings = (done / "findings.md").read_text()
    for section in ("## Plan gates", "### Checkpoint 1: reference baselines", "### INVESTIGATE", "### DISCARD",
                    "## Success criteria (the plan's)"):
        assert section in findings, section
    assert "Not checked: these records were written before the gates existed" not in findings
