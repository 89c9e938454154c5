"""A CAA logit-difference cell end to end on nf4, through pytest as a user runs it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from registry_check import unregistered_figures

pytest.importorskip("bitsandbytes", reason="nf4 needs bitsandbytes")

STEERING = """
[steering]
layers = [12]
ab_coefficients = [-2.0, 0.0, 2.0]
ab_questions = 6
"""
CELL = "smollm2-135m-nf4-caa_sycophancy-mean_diff"


def test_caa_logit_diff_cell_on_nf4(pytester: pytest.Pytester, make_study: Callable[..., Path],
                                    run_args: Callable[..., list[str]]) -> None:
    study = make_study(precisions=("fp32", "nf4"), methods=("mean_diff",), limit=8, layers="[12]", extra=STEERING)
    args = run_args(study, "-v")
    args[0] = str(Path(args[0]) / "test_logit_diff.py")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1)
    matrix = json.loads((pytester.path / "reports" / "results" / "steering_comparison.json").read_text())
    rec = matrix["records"][f"logit_diff:{CELL}"]
    assert unregistered_figures(pytester.path / "reports" / "results") == []
    assert rec["kind"] == "logit_diff" and rec["metric"] == "logit_corr"
    assert -1.0 <= rec["value"] <= 1.0 and "A/B questions" in rec["figures"]["resampled"]
    if rec["verdict"] != "inconclusive":   # a band comes from the interval over questions, which holds the point
        assert rec["figures"]["logit_corr_ci_low"] <= rec["value"] <= rec["figures"]["logit_corr_ci_high"]
    assert set(rec["figures"]["by_coefficient"]) == {"-2", "0", "2"}
    assert all(math.isfinite(rec["figures"][k]) for k in ("steerability", "steerability_reference", "p_match_slope"))
    assert rec["figures"]["n_questions"] == 6
