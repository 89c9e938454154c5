"""Bad input end to end, in a subprocess as a user runs `pytest cases`: exit code 4 (usage error) with the first error
line naming file, key, value and expectation, for what the study and its files tell at configure or collection;
a cell ERROR whose one line names the cell, the file and what was expected, with no traceback, for what only a cell
can find. The catalogue of classes is tests/unit/test_bad_input.py (fast, no subprocess); these few runs prove the
two paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file


def _first_error(result: pytest.RunResult) -> str:
    lines = [ln for ln in result.stderr.lines if ln.strip()]
    assert lines, result.stdout.str()
    return lines[0]


def test_toml_syntax_error_is_exit_4(pytester: pytest.Pytester, make_study: Callable[..., Path],
                                     run_args: Callable[..., list[str]]) -> None:
    study = make_study(extra="[steering\nlayers = [3]\n")
    result = pytester.runpytest(*run_args(study, "-q"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert _first_error(result).startswith(f"ERROR: {study}: <toml> = ") and "expected valid TOML" in \
        _first_error(result)


def test_a_bad_dataset_is_exit_4_before_any_model_loads(pytester: pytest.Pytester, make_study: Callable[..., Path],
                                                       run_args: Callable[..., list[str]], tmp_path: Path) -> None:
    bad = tmp_path / "answers.json"
    bad.write_text(json.dumps([{"question": "Q?", "answer_matching_behavior": "yes",
                                "answer_not_matching_behavior": "(B)"}]))
    study = make_study(traits=f'[[traits]]\nmethodology = "caa"\nname = "x"\ndataset = "{bad}"\nlayers = [3]\n')
    result = pytester.runpytest(*run_args(study, "-q", cache=tmp_path / "cache"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    first = _first_error(result)
    assert first.startswith(f"ERROR: {study}: traits[0].dataset = '{bad}': expected a usable caa dataset"), first
    assert "record 0: answers 'yes'/'(B)'; expected \"(A)\"-style letters" in first
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("meta.json"))


def test_a_cache_folder_that_cannot_be_written_is_exit_4(pytester: pytest.Pytester, make_study: Callable[..., Path],
                                                        run_args: Callable[..., list[str]], tmp_path: Path) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")   # root ignores chmod: a file blocks it for all
    result = pytester.runpytest(*run_args(make_study(), "-q", cache=blocked / "sub"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    first = _first_error(result)
    assert first.startswith(f"ERROR: {blocked / 'sub'}: --quant-cache-dir = ") and "expected a writable folder" in first


def test_a_missing_held_out_file_is_exit_4_at_collection_for_the_cells_that_read_it(
        pytester: pytest.Pytester, make_study: Callable[..., Path], run_args: Callable[..., list[str]],
        tmp_path: Path) -> None:
    study = make_study(extra=f'[steering]\nab_dir = "{tmp_path / "no-ab"}"\n')
    result = pytester.runpytest(*run_args(study, "-q", "--collect-only", "-k", "test_logit_diff"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    first = _first_error(result)
    assert first.startswith(f"ERROR: {study}: steering.ab_dir = '{tmp_path / 'no-ab'}': expected a folder holding "
                            "caa_sycophancy_test.json"), first
    result = pytester.runpytest(*run_args(study, "-q", "--collect-only", "-k", "test_vector_fidelity"))
    assert result.ret == pytest.ExitCode.OK, "a selection that reads no held-out file needs none"


def test_nan_in_an_sae_bundle_is_a_one_line_cell_error(pytester: pytest.Pytester, make_study: Callable[..., Path],
                                                       run_args: Callable[..., list[str]], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the summary line in full
    rng = np.random.default_rng(0)
    w_dec = rng.standard_normal((16, 576)).astype(np.float32)
    w_dec[0, 0] = np.nan
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    save_file({"W_enc": rng.standard_normal((16, 576)).astype(np.float32), "b_enc": np.zeros(16, np.float32),
               "W_dec": w_dec, "b_dec": np.zeros(576, np.float32)}, str(bundle / "layer_3.safetensors"))
    study = make_study(extra=f'[sae]\nlayers = [3]\n[sae.dictionaries.ext]\npath = "{bundle}"\n')
    result = pytester.runpytest(*run_args(study, "-q", "-rE", "-k", "test_sae", cache=tmp_path / "cache"))
    result.assert_outcomes(errors=1)
    cell = "smollm2-135m-nf4-sae_3-ext"
    want = (f"CellError: cell {cell}: {bundle / 'layer_3.safetensors'}: tensor W_dec contains NaN or inf")
    out = result.stdout.str()
    assert f"test_sae.py::test_sae_feature_fidelity[{cell}] - {want}" in out, out
    section = [ln for ln in out.split(" ERRORS ", 1)[1].split("short test summary", 1)[0].splitlines()
               if ln.strip("=_ ")]
    assert section[0].strip("_ ") == f"ERROR at setup of test_sae_feature_fidelity[{cell}]", section
    assert section[1] == want.split(": ", 1)[1], "the first line read names the cell, the file and the tensor"
    assert "Traceback" not in out and "direct cause" not in out
    assert not any((tmp_path / "cache").rglob("meta.json")), "no model ran: the bundle is read first"
