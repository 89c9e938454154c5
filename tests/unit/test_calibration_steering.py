"""The steering kinds' statistics (quant_harness.steer.stats) on synthetic data: checked against numpy and
scipy.stats.bootstrap, and calibrated over seeded replicates (no model).

Synthetic A/B world, per question q and coefficient c: ``logit_diff[c, q] = mu_q + s_q * c + e[c, q]``, with
``mu_q ~ N(0, 1.5)`` (the unsteered preference), ``s_q ~ N(S, tau)`` (the question's steerability) and ``e`` a
readout residual. (a) null: the quantized model is the reference plus small noise; (b) a known disagreement: the
quantized model's per-question slopes are independent of the reference's (the audit's example: every question
moves by 3 logits per unit coefficient at both precisions, so the correlation pooled over coefficients x questions
is 0.90 with no per-question agreement); (c) no signal: the reference's vector does not move its answer at all.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from fake_steering import run_steering_cell
from scipy import stats as sps

from quant_harness.metrics.verdicts import DEFAULT_BANDS, Verdict
from quant_harness.steer import stats

COEFS = np.array([-2.0, 0.0, 2.0])
LOGIT = DEFAULT_BANDS["logit_corr"]
DEGRADATION = DEFAULT_BANDS["steering_degradation"]
REPLICATES = 200


def ab_world(rng: np.random.Generator, n: int, *, S: float = 0.8, tau: float = 0.4, e: float = 0.1) -> np.ndarray:
    mu, s = rng.normal(0, 1.5, n), rng.normal(S, tau, n)
    return np.asarray(mu[None] + s[None] * COEFS[:, None] + rng.normal(0, e, (len(COEFS), n)))


def verdicts(make: Any, n: int, *, replicates: int = REPLICATES) -> Counter[str]:
    out: Counter[str] = Counter()
    for i in range(replicates):
        ref, q = make(np.random.default_rng(10_000 + i), n)
        out[stats.logit_agreement(ref, q, COEFS, LOGIT, seed=i).verdict.label] += 1
    return out


# --- against independent computations ---------------------------------------------------------------------------

def test_per_question_slopes_and_their_correlation_match_numpy() -> None:
    rng = np.random.default_rng(0)
    ref, q = ab_world(rng, 12), ab_world(rng, 12)
    fit_ref, fit_q = np.polyfit(COEFS, ref, 1)[0], np.polyfit(COEFS, q, 1)[0]
    assert stats.slopes(COEFS, ref) == pytest.approx(fit_ref)
    out = stats.logit_agreement(ref, q, COEFS, LOGIT, seed=0)
    assert out.figures["logit_corr"] == pytest.approx(np.corrcoef(fit_ref, fit_q)[0, 1])
    assert out.figures["logit_corr_pooled"] == pytest.approx(np.corrcoef(ref.ravel(), q.ravel())[0, 1])
    assert out.figures["steerability_reference"] == pytest.approx(fit_ref.mean())


def test_logit_corr_interval_matches_scipy_paired_bootstrap() -> None:
    rng = np.random.default_rng(1)
    ref = ab_world(rng, 30)
    q = ref + rng.normal(0, 0.6, ref.shape)
    s_ref, s_q = np.polyfit(COEFS, ref, 1)[0], np.polyfit(COEFS, q, 1)[0]
    ours = stats.logit_agreement(ref, q, COEFS, LOGIT, seed=3, n_boot=4000).interval
    theirs = sps.bootstrap((s_ref, s_q), lambda a, b, axis=-1: stats._rows_pearson(a, b), paired=True,
                           vectorized=True, n_resamples=4000, method="percentile", confidence_level=0.95,
                           random_state=np.random.default_rng(4)).confidence_interval
    assert ours is not None
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high), abs=0.02)


def test_steering_degradation_interval_matches_scipy_paired_bootstrap() -> None:
    rng = np.random.default_rng(2)
    rb = rng.normal(30, 10, 25)
    rs, qb = rb + rng.normal(20, 12, 25), rb + rng.normal(0, 5, 25)
    qs = qb + 0.8 * (rs - rb) + rng.normal(0, 5, 25)
    out = stats.steering_degradation(rb, rs, qb, qs, DEGRADATION, seed=5, n_boot=4000)
    d_ref, d_q = rs - rb, qs - qb
    assert out.figures["degradation"] == pytest.approx(1 - d_q.mean() / d_ref.mean())
    theirs = sps.bootstrap((d_ref, d_q), lambda a, b, axis=-1: 1 - b.mean(axis) / a.mean(axis), paired=True,
                           vectorized=True, n_resamples=4000, method="percentile",
                           random_state=np.random.default_rng(6)).confidence_interval
    assert out.interval is not None
    assert (out.interval.low, out.interval.high) == pytest.approx((theirs.low, theirs.high), abs=0.02)


def test_refusal_resamples_each_group_of_prompts_on_its_own_like_scipy() -> None:
    rng = np.random.default_rng(3)
    n_h, n_l = 20, 16

    def world(p_ab: float, p_add: float) -> dict[str, np.ndarray]:
        return {"harmful": (rng.random(n_h) < 0.9) * 1.0, "harmful_ablated": (rng.random(n_h) < p_ab) * 1.0,
                "harmless": (rng.random(n_l) < 0.05) * 1.0, "harmless_actadd": (rng.random(n_l) < p_add) * 1.0}

    ref, q = world(0.1, 0.9), world(0.4, 0.6)
    out = stats.refusal_degradation(ref, q, DEGRADATION, seed=7, n_boot=4000)

    def effect(m: dict[str, np.ndarray], ih: np.ndarray, il: np.ndarray) -> np.ndarray:
        return (m["harmful"][ih] - m["harmful_ablated"][ih]).mean(-1) + \
            (m["harmless_actadd"][il] - m["harmless"][il]).mean(-1)

    def degradation(ih: np.ndarray, il: np.ndarray, axis: int = -1) -> np.ndarray:
        return 1 - effect(q, ih, il) / effect(ref, ih, il)

    theirs = sps.bootstrap((np.arange(n_h), np.arange(n_l)), degradation, paired=False, vectorized=True,
                           n_resamples=4000, method="percentile",
                           random_state=np.random.default_rng(8)).confidence_interval
    assert out.figures["degradation"] == pytest.approx(float(degradation(np.arange(n_h), np.arange(n_l))))
    assert out.interval is not None
    assert (out.interval.low, out.interval.high) == pytest.approx((theirs.low, theirs.high), abs=0.05)


def test_transfer_ratio_is_the_ratio_of_mean_slopes_with_a_paired_interval() -> None:
    rng = np.random.default_rng(4)
    own = ab_world(rng, 20)
    moved = own * 0.5 + rng.normal(0, 0.1, own.shape)
    out = stats.transfer_ratio(own, moved, COEFS, DEGRADATION, seed=0)
    s_own, s_moved = np.polyfit(COEFS, own, 1)[0], np.polyfit(COEFS, moved, 1)[0]
    assert out.figures["transfer_ratio"] == pytest.approx(s_moved.mean() / s_own.mean())
    assert out.figures["transfer_ratio_ci_low"] < 0.5 < out.figures["transfer_ratio_ci_high"]
    assert out.verdict is Verdict.BROKEN and out.judgement.metric == "steering_degradation"
    flat = stats.transfer_ratio(own * 0 + rng.normal(0, 0.1, own.shape), moved, COEFS, DEGRADATION, seed=0)
    assert flat.verdict is Verdict.INCONCLUSIVE and "divide by noise" in flat.judgement.reason


# --- calibration: logit_diff ------------------------------------------------------------------------------------

def test_null_quantized_equals_reference_plus_small_noise_is_rarely_degraded() -> None:
    def null(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        ref = ab_world(rng, n)
        return ref, ref + rng.normal(0, 0.2, ref.shape)

    for n in (10, 40):
        got = verdicts(null, n)
        assert got["degraded"] + got["broken"] <= 0.05 * REPLICATES, (n, got)
    assert got["robust"] >= 0.95 * REPLICATES, got   # and at 40 questions it says so


def test_a_known_per_question_disagreement_is_detected() -> None:
    def disagree(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return ab_world(rng, n, S=3.0), ab_world(rng, n, S=3.0)

    got = verdicts(disagree, 40)
    assert got["degraded"] + got["broken"] >= 0.95 * REPLICATES, got
    ref, q = disagree(np.random.default_rng(0), 40)   # what the pooled correlation made of it
    assert np.corrcoef(ref.ravel(), q.ravel())[0, 1] > 0.85


@pytest.mark.parametrize("faithful", [True, False])
@pytest.mark.parametrize("noise", [0.1, 0.5])
def test_no_signal_in_the_reference_is_inconclusive_never_a_band(faithful: bool, noise: float) -> None:
    def flat(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        ref = ab_world(rng, n, S=0.0, tau=0.0, e=noise)
        return ref, (ref + rng.normal(0, 0.2, ref.shape)) if faithful else ab_world(rng, n, S=0.0, tau=0.0, e=noise)

    got = verdicts(flat, 20)
    assert got == Counter({"inconclusive": REPLICATES}), got
    one = stats.logit_agreement(*flat(np.random.default_rng(0), 20), COEFS, LOGIT, seed=0)
    assert "does not clearly move its A/B answer" in one.judgement.reason


def test_too_few_questions_is_inconclusive_with_the_reason() -> None:
    ref = ab_world(np.random.default_rng(0), 3)
    out = stats.logit_agreement(ref, ref, COEFS, LOGIT, seed=0)
    assert out.verdict is Verdict.INCONCLUSIVE and "only 3 A/B questions" in out.judgement.reason
    assert out.figures["logit_corr"] == pytest.approx(1.0)


# --- calibration: judged steering and refusal -------------------------------------------------------------------

def steering_verdicts(kind: str, n: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for i in range(REPLICATES):
        rng = np.random.default_rng(20_000 + i)
        rb = rng.normal(30, 10, n)
        rs = rb + rng.normal(20, 15, n)
        qb = rb + rng.normal(0, 5, n)
        qs = rs + rng.normal(0, 5, n) if kind == "null" else qb + 0.4 * (rs - rb) + rng.normal(0, 5, n)
        out[stats.steering_degradation(rb, rs, qb, qs, DEGRADATION, seed=i).verdict.label] += 1
    return out


def test_steering_null_is_rarely_degraded_and_a_lost_delta_is_found() -> None:
    null = steering_verdicts("null", 20)
    assert null["degraded"] + null["broken"] <= 0.05 * REPLICATES, null
    lost = steering_verdicts("lost", 20)   # the quantized model keeps 40% of each question's delta
    assert lost["broken"] >= 0.95 * REPLICATES, lost


def test_steering_gates_name_their_reason() -> None:
    few = stats.steering_degradation([1, 2, 3], [20, 30, 40], [1, 2, 3], [20, 30, 40], DEGRADATION, seed=0)
    assert few.verdict is Verdict.INCONCLUSIVE and "only 3 scored questions" in few.judgement.reason
    rng = np.random.default_rng(0)
    rb = rng.normal(30, 5, 12)
    flat = stats.steering_degradation(rb, rb + rng.normal(0, 10, 12) - 5, rb, rb, DEGRADATION, seed=0)
    assert flat.verdict is Verdict.INCONCLUSIVE and "not shown to be steered" in flat.judgement.reason
    unscored = stats.steering_degradation([None, 1, 2, 3, 4, 5], [30, 31, 32, 33, 34, 35], [1] * 6,
                                          [30] * 6, DEGRADATION, seed=0)
    assert unscored.figures["n_questions"] == 5 and unscored.figures["n_questions_unscored"] == 1


def test_refusal_without_a_reference_effect_is_inconclusive() -> None:
    ones, zeros = [1.0] * 8, [0.0] * 8
    ref = {"harmful": ones, "harmful_ablated": ones, "harmless": zeros, "harmless_actadd": zeros}
    out = stats.refusal_degradation(ref, ref, DEGRADATION, seed=0)
    assert out.verdict is Verdict.INCONCLUSIVE and "no refusal effect" in out.judgement.reason
    same = {"harmful": ones, "harmful_ablated": zeros, "harmless": zeros, "harmless_actadd": ones}
    assert stats.refusal_degradation(same, same, DEGRADATION, seed=0).verdict is Verdict.ROBUST


# --- the operating point of the judged steering cell ------------------------------------------------------------

def run(layer: int | None, coefficient: float, trait: list[float | None], coherence: list[float | None]) -> dict[
        str, Any]:
    return {"layer": layer, "coefficient": coefficient, "trait": trait, "coherence": coherence,
            "texts": [f"{layer}x{coefficient} q{i}" for i in range(len(trait))], "modes": ["logprob"]}


def test_choose_point_looks_only_at_its_questions_and_keeps_coherence() -> None:
    base = run(None, 0.0, [10, 10, 10, 10], [90] * 4)
    runs = [run(12, 4.0, [60, 60, 20, 20], [80] * 4), run(12, 8.0, [20, 20, 90, 90], [80] * 4),
            run(12, 16.0, [99, 99, 99, 99], [10] * 4)]
    assert stats.choose_point(runs, base, [0, 1], 50)["coefficient"] == 4.0
    assert stats.choose_point(runs, base, [2, 3], 50)["coefficient"] == 8.0
    assert stats.choose_point(runs, base, [0, 1], 5)["coefficient"] == 16.0
    assert stats.choose_point(runs, base, [0], 95) is None
    a, b = stats.folds(7, seed=0)
    assert sorted(a + b) == list(range(7)) and abs(len(a) - len(b)) <= 1 and stats.folds(7, seed=0) == (a, b)


def test_steering_cell_scores_each_half_at_the_point_the_other_half_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 10
    half_a, half_b = stats.folds(n, seed=0)
    good_on_a = [80.0 if q in half_a else 10.0 for q in range(n)]   # x4 looks best on half a only
    good_on_b = [80.0 if q in half_b else 10.0 for q in range(n)]
    ref_search = {"runs": [run(None, 0.0, [5.0] * n, [90.0] * n), run(12, 4.0, good_on_a, [80.0] * n),
                           run(12, 8.0, good_on_b, [80.0] * n)]}
    quant_points: list[tuple[int | None, float]] = []

    def steer_point(runner: Any, cell: Any, precision: str, layer: int | None, coefficient: float,
                    together: Any = ()) -> dict[str, Any]:
        quant_points.append((layer, coefficient))
        assert (layer, coefficient) in together   # the cell asks for its points to be generated together
        if layer is None:
            return run(None, 0.0, [5.0] * n, [90.0] * n)
        return run(layer, coefficient, [42.0] * n, [70.0] * n)

    recorded = run_steering_cell(monkeypatch, ref_search, steer_point, bootstrap_n=500, fail_on=Verdict.DEGRADED)
    f = recorded["figures"]
    # half b is scored at x4 (chosen on half a), half a at x8: the reference's delta is 5 on every question
    assert [(p["coefficient"], p["scored_on"]) for p in f["operating_points"]] == [(4.0, half_b), (8.0, half_a)]
    assert f["delta_reference"] == pytest.approx(5.0) and f["delta"] == pytest.approx(37.0)
    assert sorted(quant_points, key=str) == sorted([(None, 0.0), (12, 4.0), (12, 8.0)], key=str)
    assert recorded["metric"] == "degradation" and recorded["value"] == pytest.approx(1 - 37.0 / 5.0)
    assert recorded["j"].verdict is Verdict.ROBUST
