"""`pytest cases` as a user meets it: ids, -k selection, skips with reasons, usage errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from quant_harness.models import precision


def test_ids_follow_the_contract(pytester: pytest.Pytester, make_study: Callable[..., Path],
                                 run_args: Callable[..., list[str]]) -> None:
    study = make_study(precisions=("fp32", "nf4", "int8"))
    result = pytester.runpytest(*run_args(study, "--collect-only", "-q", "-k", "test_vector_fidelity"))
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        "*test_vector_fidelity[[]smollm2-135m-nf4-caa_sycophancy-mean_diff[]]",
        "*test_vector_fidelity[[]smollm2-135m-nf4-caa_sycophancy-probe[]]",
        "*test_vector_fidelity[[]smollm2-135m-int8-caa_sycophancy-mean_diff[]]",
        "*test_vector_fidelity[[]smollm2-135m-int8-caa_sycophancy-probe[]]",
    ])
    assert "fp32-caa" not in result.stdout.str()


def test_k_selects_by_any_part_of_the_id(pytester: pytest.Pytester, make_study: Callable[..., Path],
                                         run_args: Callable[..., list[str]]) -> None:
    study = make_study(precisions=("fp32", "nf4", "int8"))
    result = pytester.runpytest(*run_args(study, "--collect-only", "-q", "-k",
                                          "test_vector_fidelity and int8 and probe"))
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*[[]smollm2-135m-int8-caa_sycophancy-probe[]]", "1/* tests collected*"])


def test_bad_study_is_a_usage_error_naming_file_key_and_expectation(
        pytester: pytest.Pytester, run_args: Callable[..., list[str]], repo: Path) -> None:
    bad = pytester.makefile(".toml", bad=f'[study]\nroot = "{repo}"\nprecisions = ["fp32", "fp8"]\n'
                                         '[models.smollm2-135m]\ncard = "smollm2-135m"\n')
    result = pytester.runpytest(*run_args(bad, "--collect-only"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *bad.toml: study.precisions[[]1[]] = 'fp8': expected one of fp32*"])


def test_gptq_without_checkpoint_is_skipped_with_reason_not_dropped(
        pytester: pytest.Pytester, run_args: Callable[..., list[str]], repo: Path, tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    cards.mkdir()
    text = (repo / "quant_harness/data/model_cards/smollm2-135m.toml").read_text().replace('gptq = "quantize"', 'gptq = "none"')
    (cards / "smollm2-135m.toml").write_text(text)
    study = tmp_path / "s.toml"
    study.write_text(f'[study]\nroot = "{repo}"\ncards_dir = "{cards}"\nreference = "fp32"\n'
                     'precisions = ["fp32", "gptq"]\nmethods = ["mean_diff"]\n'
                     '[models.smollm2-135m]\ncard = "smollm2-135m"\n[[traits]]\nmethodology = "caa"\n'
                     f'name = "sycophancy"\ndataset = "{repo}/fixtures/traits/caa_sycophancy.json"\n')
    result = pytester.runpytest(*run_args(study, "-rs", "-k", "test_vector_fidelity"))
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*smollm2-135m has no GPTQ checkpoint*"])


def test_unavailable_precision_reason_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision.importlib.util, "find_spec", lambda name: None)
    assert "pip install 'bitsandbytes" in str(precision.unavailable_reason("nf4"))
    assert "gptqmodel" in str(precision.unavailable_reason("gptq"))
    assert precision.unavailable_reason("fp32") is None
