"""Verdict bands: boundaries, direction, NaN."""

from __future__ import annotations

import pytest

from quant_harness.errors import CellError
from quant_harness.metrics.verdicts import DEFAULT_BANDS, Band, Verdict, is_allowed, judge


@pytest.mark.parametrize(("value", "verdict"), [(0.99, Verdict.ROBUST), (0.95, Verdict.DEGRADED),
                                                (0.80, Verdict.DEGRADED), (0.79, Verdict.BROKEN)])
def test_higher_is_better(value: float, verdict: Verdict) -> None:
    assert Band(0.95, 0.80).classify(value) is verdict


@pytest.mark.parametrize(("value", "verdict"), [(0.05, Verdict.ROBUST), (0.2, Verdict.DEGRADED),
                                                (0.31, Verdict.BROKEN)])
def test_lower_is_better(value: float, verdict: Verdict) -> None:
    assert Band(0.10, 0.30, higher_is_better=False).classify(value) is verdict


def test_nan_is_an_error() -> None:
    with pytest.raises(CellError, match="NaN"):
        Band(0.95, 0.8).classify(float("nan"), what="cosine_mean")


def test_fail_on() -> None:
    j = judge("cosine", 0.5, Band(0.95, 0.8), Verdict.BROKEN)
    assert not j.allowed and "BROKEN" in j.explain() and "fail_on=broken" in j.explain()
    assert judge("cosine", 0.9, Band(0.95, 0.8), Verdict.BROKEN).allowed
    assert not judge("cosine", 0.9, Band(0.95, 0.8), Verdict.DEGRADED).allowed
    assert is_allowed("broken", None) and not is_allowed("broken", Verdict.BROKEN)


def test_an_undefined_comparison_is_inconclusive_with_its_reason_and_never_a_nan() -> None:
    from quant_harness.metrics.verdicts import undefined

    band = DEFAULT_BANDS["steering_degradation"]
    j = undefined("effect", 0.0, band, Verdict.BROKEN, False, "the reference never refuses")
    assert j.verdict is Verdict.INCONCLUSIVE and j.allowed
    assert j.explain() == "effect 0.0000: INCONCLUSIVE (the reference never refuses; fail_on=broken, inconclusive passes)"
    assert not undefined("effect", 0.0, band, Verdict.BROKEN, True, "x").allowed
    with pytest.raises(CellError, match="NaN"):
        undefined("effect", float("nan"), band, Verdict.BROKEN, False, "x")
