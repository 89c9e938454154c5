"""The plan's study (cases/studies/quant-sensitivity.toml) as a researcher previews it: every kind of cell, the
benchmarks in the plan's per-model scope, and the judged cells skipped with the reason when the judge's key is unset."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "cases" / "studies" / "quant-sensitivity.toml"


def _plan(pytester: pytest.Pytester) -> pytest.RunResult:
    return pytester.runpytest(str(REPO / "cases"), "-p", "quant_harness.plugin", "--quant-study", str(STUDY),
                              "--quant-cache-dir", str(pytester.path / "cache"), "--quant-plan",
                              "--quant-gpus", "0;1;2;3;4,5;6,7", "--quant-gpu-mem", "80",
                              "--rootdir", str(pytester.path), "-p", "no:cacheprovider")


def test_plan_lists_benchmark_and_judged_cells_and_skips_judged_ones_without_the_key(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """857 cells of every kind (HellaSwag 7 x 4, MMLU and TruthfulQA 3 x 4); without $OPENAI_API_KEY the 95 judged
    steering cells of groups that run are skipped with the reason (72 more are the two models without GPTQ)."""
    monkeypatch.setenv("QUANT_HARNESS_DATA", str(pytester.path / "no-data-here"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = _plan(pytester)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        ("cells: 857 (benchmarks 52, logit_diff 42, probes 336, refusal 28, steering 105, transfer 42, vectors 252); "
         "to run 690, skipped 167*"),
        "skipped cells in groups that run:",
        ("  steering (95 cells): judge gpt-4.1-mini at https://api.openai.com/v1: environment variable "
         "OPENAI_API_KEY is not set*"),
    ])
