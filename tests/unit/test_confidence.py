"""Bootstrap intervals: reproducible by seed, checked against numpy directly; verdicts only inside one band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quant_harness.errors import CellError
from quant_harness.metrics.confidence import Interval, bootstrap_ci, classify_interval, judge_interval
from quant_harness.metrics.verdicts import Band, Verdict, is_allowed

COS = [0.91, 0.85, 0.97, 0.88, 0.93, 0.79, 0.95]


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    a, b = bootstrap_ci(COS, seed=7, n=500), bootstrap_ci(COS, seed=7, n=500)
    assert a == b
    assert bootstrap_ci(COS, seed=8, n=500) != a
    assert a.point == pytest.approx(np.mean(COS)) and a.low <= a.point <= a.high


def test_interval_matches_a_direct_numpy_bootstrap() -> None:
    rng = np.random.default_rng(3)
    values = np.asarray(COS)
    reps = values[rng.integers(0, len(COS), size=(2000, len(COS)))].mean(axis=1)
    ci = bootstrap_ci(COS, seed=3, n=2000, level=0.9)
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(reps, [0.05, 0.95])))


def test_resampling_function_for_statistics_that_are_not_means() -> None:
    x = np.linspace(0, 1, 20)
    y = x + np.random.default_rng(0).normal(0, 0.1, 20)

    def corr(rng: np.random.Generator) -> float:
        idx = rng.integers(0, 20, 20)
        return float(np.corrcoef(x[idx], y[idx])[0, 1])

    point = float(np.corrcoef(x, y)[0, 1])
    a = bootstrap_ci(corr, seed=1, n=300, point=point)
    assert a == bootstrap_ci(corr, seed=1, n=300, point=point) and a.low < point < a.high <= 1.0
    with pytest.raises(CellError, match="point"):
        bootstrap_ci(corr, seed=1)


def test_nan_and_empty_are_errors() -> None:
    with pytest.raises(CellError, match="nan"):
        bootstrap_ci([0.9, float("nan")], seed=0, what="cosine")
    with pytest.raises(CellError, match="no values"):
        bootstrap_ci([], seed=0)


def test_band_only_when_the_interval_lies_inside_it() -> None:
    band = Band(0.95, 0.80)
    assert classify_interval(Interval(0.97, 0.96, 0.99, 0.95, 100, 0), band) is Verdict.ROBUST
    assert classify_interval(Interval(0.85, 0.82, 0.90, 0.95, 100, 0), band) is Verdict.DEGRADED
    assert classify_interval(Interval(0.81, 0.75, 0.86, 0.95, 100, 0), band) is Verdict.INCONCLUSIVE
    j = judge_interval("cosine", Interval(0.81, 0.75, 0.86, 0.95, 100, 0), band, Verdict.BROKEN)
    assert j.allowed and "INCONCLUSIVE" in j.explain() and "CI 0.7500..0.8600" in j.explain()
    strict = judge_interval("cosine", Interval(0.81, 0.75, 0.86, 0.95, 100, 0), band, Verdict.BROKEN, True)
    assert not strict.allowed and "inconclusive fails" in strict.explain()


def test_inconclusive_keeps_band_order_and_is_gated_by_the_study_key() -> None:
    assert Verdict.ROBUST < Verdict.DEGRADED < Verdict.BROKEN
    assert [v for v in Verdict if v.is_band] == [Verdict.ROBUST, Verdict.DEGRADED, Verdict.BROKEN]
    assert is_allowed("inconclusive", Verdict.BROKEN) and not is_allowed("inconclusive", Verdict.BROKEN, True)
    assert is_allowed("inconclusive", None, True)


def test_study_keys_for_intervals(tmp_path: Path) -> None:
    import importlib.util

    from quant_harness import study

    # tests/conftest.py by path: the name "conftest" may already be tests/conformance/conftest.py in a full run
    spec = importlib.util.spec_from_file_location("tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    study_toml = helpers.study_toml
    from quant_harness.errors import StudyError

    head = 'fail_on = "never"'
    good = tmp_path / "good.toml"
    good.write_text(study_toml().replace(head, f"{head}\nfail_on_inconclusive = true\nbootstrap_n = 200"))
    s = study.load(good)
    assert (s.fail_on_inconclusive, s.bootstrap_n, s.ci_level) == (True, 200, 0.95)
    bad = tmp_path / "bad.toml"
    bad.write_text(study_toml().replace(head, f"{head}\nci_level = 95"))
    with pytest.raises(StudyError, match=r"bad\.toml: study\.ci_level = 95: expected a confidence level"):
        study.load(bad)
