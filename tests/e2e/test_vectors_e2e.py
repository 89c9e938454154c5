"""A vector cell end to end on the embedded model: nf4 against fp32, its JSON record and JUnit properties."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from registry_check import unregistered_figures


@pytest.mark.slow
def test_nf4_vector_cell_writes_record_and_junit(pytester: pytest.Pytester, make_study: Callable[..., Path],
                                                 run_args: Callable[..., list[str]]) -> None:
    study = make_study(precisions=("fp32", "nf4"), methods=("mean_diff",), layers="[2, 12, 28]")
    result = pytester.runpytest_subprocess(*run_args(study, "-k", "test_vector_fidelity and nf4",
                                          "--junitxml", "reports/junit.xml"))
    result.assert_outcomes(passed=1)
    record = json.loads((pytester.path / "reports/results/vector_comparison.json").read_text())["records"][
        "smollm2-135m-nf4-caa_sycophancy-mean_diff"]
    assert record["layers"] == [2, 12, 28]
    assert unregistered_figures(pytester.path / "reports/results") == []
    cos = record["per_layer"]["cosine"]
    assert len(cos) == 3 and all(-1.0 <= c <= 1.0 for c in cos)
    assert record["value"] == pytest.approx(sum(cos) / 3)
    assert record["verdict"] in ("robust", "degraded", "broken", "inconclusive")
    assert record["provenance"]["reference"] == "fp32"
    assert "hidden_states[L+1]" in record["provenance"]["layer_convention"]
    assert any("Q4_1" in n for n in record["provenance"]["notes"])
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "reports/junit.xml").iter("property")}
    assert props["verdict"] == record["verdict"]
    assert float(props["cosine_mean"]) == pytest.approx(record["value"], abs=1e-6)
    run = json.loads((pytester.path / "reports/results/run.json").read_text())
    assert run["loads_by_group"].get("smollm2-135m-nf4", 0) <= 1
