"""Statistics of the steering kinds: paired bootstrap intervals over the questions (judged steering, A/B logit
difference, transfer) or prompts (refusal) a figure is computed from, and the gates that make a cell inconclusive,
with the reason, when the data cannot decide.

Every function takes per-question (per-prompt) values at the reference and at the quantized precision, draws
``n_boot`` resamples of the question indices with replacement, and recomputes the figure on each resample with the
*same* indices at both precisions, so the interval is of the paired comparison. A verdict is given only when

* there are at least ``MIN_UNITS`` questions (prompts per group): a percentile bootstrap over fewer cannot cover
  (3 questions have 10 distinct resamples, and the bootstrap spread of their mean is 2/3 of the sampling spread);
* the reference itself shows the effect that quantization could degrade, decided on the same resamples (the noise
  floor of these kinds: a steering delta, refusal effect or own-vector slope whose interval does not clear 0, or a
  p(match) shift not clearly larger than ``MIN_P_SHIFT``, leaves nothing to compare);
* the banded figure's interval lies in one band (quant_harness.metrics.confidence.classify_interval).

Every Outcome's figures carry the interval of the figure its record leads with (``<figure>_ci_low``/``_ci_high``),
also when a gate decides: the interval is computed before the gates, which then only decide the verdict.

Pure functions of arrays: no model, no cache, no study. quant_harness.steer.cells calls them with cached
generations and A/B sweeps; tests/unit/test_calibration_steering.py runs them on synthetic data.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quant_harness.errors import CellError
from quant_harness.metrics.confidence import Interval, classify_interval, from_replicates
from quant_harness.metrics.verdicts import Band, Judgement, Verdict

MIN_UNITS = 5
"""Fewest questions (refusal: prompts in each group) a verdict is given from."""
MIN_P_SHIFT = 0.05
"""logit_diff: the reference's vector must move its mean p(match) by more than this across the A/B coefficients
(the whole interval beyond it) for the agreement of per-question responses to mean anything."""
UNBOUNDED = 1e6
"""A resample whose reference shows no effect (mean delta <= 0) has no finite degradation; it counts as this."""


@dataclass(frozen=True)
class Outcome:
    """A steering kind's verdict, the interval it came from (None when a gate decided first) and its figures."""

    judgement: Judgement
    interval: Interval | None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        return self.judgement.verdict


def draws(n: int, *, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` indices of ``n`` units drawn with replacement (one row per resample)."""
    if n_boot < 1:
        raise CellError(f"bootstrap needs n >= 1 replicates, got {n_boot}")
    if n < 1:
        raise CellError("no questions to resample")
    return rng.integers(0, n, size=(n_boot, n))


def folds(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Two seeded halves of ``range(n)`` (sizes differ by at most one): the cross-fitting folds of the judged
    steering cell, each choosing the operating point the other is scored at."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(perm[0::2]), sorted(perm[1::2])


def slopes(coefficients: Sequence[float] | np.ndarray,
           values: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Per-question least-squares slope of ``values [coefficients, questions]`` on the coefficient."""
    c = np.asarray(coefficients, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != c.size:
        raise CellError(f"{y.shape} A/B values for {c.size} coefficients; expected [coefficients, questions]")
    if c.size < 2 or float(np.ptp(c)) == 0.0:
        raise CellError(f"a slope needs two distinct coefficients, got {list(c)}")
    cc = c - c.mean()
    return np.asarray((cc[:, None] * (y - y.mean(axis=0))).sum(axis=0) / (cc ** 2).sum())


def _rows_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of matching rows of ``a, b [B, n]``; NaN where a row has no spread."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def pearson(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Pearson r of two vectors, NaN when either has no spread."""
    return float(_rows_pearson(np.asarray(a, dtype=np.float64)[None], np.asarray(b, dtype=np.float64)[None])[0])


def _interval(point: float, reps: np.ndarray, level: float, seed: int, what: str) -> Interval:
    return from_replicates(point, reps, level=level, seed=seed, what=what)


def _excludes_zero(i: Interval) -> bool:
    return i.low > 0 or i.high < 0


def _degradation(ref_point: float, q_point: float, ref_reps: np.ndarray, q_reps: np.ndarray) -> tuple[float,
                                                                                                     np.ndarray]:
    """``1 - quantized / reference`` of an effect, on the full data and per resample (UNBOUNDED where a resample's
    reference effect is not positive)."""
    safe = np.where(ref_reps > 0, ref_reps, 1.0)
    reps = np.where(ref_reps > 0, 1.0 - q_reps / safe, UNBOUNDED)
    return 1.0 - q_point / ref_point, reps


def _inconclusive(metric: str, value: float, band: Band, reason: str, fail_on: Verdict | None,
                  fail_on_inconclusive: bool) -> Judgement:
    """INCONCLUSIVE before any band is looked at (the reason names the interval that decided it)."""
    if not np.isfinite(value):
        raise CellError(f"{metric} is {value}; refusing to score it")
    return Judgement(metric, float(value), Verdict.INCONCLUSIVE, band, fail_on,
                     fail_on_inconclusive=fail_on_inconclusive, reason=reason)


def _banded(metric: str, interval: Interval, band: Band, fail_on: Verdict | None,
            fail_on_inconclusive: bool) -> Judgement:
    verdict = classify_interval(interval, band, what=metric)
    reason = "" if verdict.is_band else (
        f"its {interval.level:.0%} interval {interval.low:.4f}..{interval.high:.4f} straddles a band boundary "
        f"({band.describe()})")
    return Judgement(metric, interval.point, verdict, band, fail_on, interval=(interval.low, interval.high),
                     level=interval.level, fail_on_inconclusive=fail_on_inconclusive, reason=reason)


def _too_few(n: int, what: str, min_units: int) -> str:
    return (f"only {n} {what}: a bootstrap interval over fewer than {min_units} cannot tell quantization from "
            f"which {what} were drawn")


def _common(n_boot: int, level: float, resampled: str) -> dict[str, Any]:
    return {"n_boot": n_boot, "ci_level": level, "resampled": resampled}


# --- judged steering ---------------------------------------------------------------------------------------------

def steering_degradation(ref_base: Sequence[float | None], ref_steered: Sequence[float | None],
                         q_base: Sequence[float | None], q_steered: Sequence[float | None], band: Band, *, seed: int,
                         n_boot: int = 1000, level: float = 0.95, fail_on: Verdict | None = None,
                         fail_on_inconclusive: bool = False, min_units: int = MIN_UNITS) -> Outcome:
    """Degradation ``1 - delta_quantized / delta_reference`` of the judged steering delta (steered trait score minus
    the unsteered baseline's, per question), with a paired bootstrap over questions.

    The four sequences are per question (None or NaN: unscored); a question counts only where all four are scored.
    Each steered score must be taken at an operating point that was *not* chosen on that question (the cell
    cross-fits: see quant_harness.steer.cells.steering_delta). Gate: the reference's mean delta interval > 0.
    """
    arrays = [np.array([np.nan if x is None else float(x) for x in xs], dtype=np.float64)
              for xs in (ref_base, ref_steered, q_base, q_steered)]
    if len({a.size for a in arrays}) != 1:
        raise CellError(f"per-question judge scores of different lengths: {[a.size for a in arrays]}")
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    rb, rs, qb, qs = (a[keep] for a in arrays)
    n = int(keep.sum())
    d_ref, d_q = rs - rb, qs - qb
    figures: dict[str, Any] = {"n_questions": n, "n_questions_unscored": int(keep.size - n),
                               **_common(n_boot, level, f"{n_boot} bootstrap resamples of the {n} scored questions, "
                                                        "the same resample at the reference and the quantized "
                                                        "precision")}
    if n == 0:
        raise CellError("no question has judge scores at both precisions, steered and unsteered; refusing to score")
    delta_ref, delta_q = float(d_ref.mean()), float(d_q.mean())
    figures.update(delta=delta_q, delta_reference=delta_ref, baseline_trait=float(qb.mean()),
                   baseline_trait_reference=float(rb.mean()))
    # the intervals come first: a record carries its headline figure's interval even when a gate decides
    idx = draws(n, n_boot=n_boot, rng=np.random.default_rng(seed))
    R, Q = d_ref[idx].mean(axis=1), d_q[idx].mean(axis=1)
    ref_i = _interval(delta_ref, R, level, seed, "reference steering delta")
    q_i = _interval(delta_q, Q, level, seed, "steering delta")
    figures.update(ref_i.figures("delta_reference"), **q_i.figures("delta"))
    if n < min_units:
        return Outcome(_inconclusive("delta", delta_q, band, _too_few(n, "scored questions", min_units), fail_on,
                                     fail_on_inconclusive), None, figures)
    reason = (f"the reference is not shown to be steered by its own vector: its judged delta over the unsteered "
              f"baseline on the {n} scored questions is {delta_ref:.2f} with {level:.0%} interval "
              f"{ref_i.low:.2f}..{ref_i.high:.2f}, which does not clear 0, so there is no effect to degrade")
    return _degradation_outcome("delta", delta_ref, delta_q, R, Q, ref_i, reason, "steering degradation", band,
                                level, seed, fail_on, fail_on_inconclusive, figures)


def _degradation_outcome(effect: str, ref_point: float, q_point: float, R: Any, Q: Any, ref_i: Interval,
                         reason: str, what: str, band: Band, level: float, seed: int, fail_on: Verdict | None,
                         fail_on_inconclusive: bool, figures: dict[str, Any]) -> Outcome:
    """Inconclusive with ``reason`` unless the reference's effect interval clears 0; else the paired degradation
    ``1 - effect_q / effect_ref`` over the same resamples, banded as steering degradation."""
    if not ref_i.low > 0:
        return Outcome(_inconclusive(effect, q_point, band, reason, fail_on, fail_on_inconclusive), None, figures)
    point, reps = _degradation(ref_point, q_point, R, Q)
    deg = _interval(point, reps, level, seed, what)
    figures.update({"degradation": point, **deg.figures("degradation")})
    return Outcome(_banded("steering_degradation", deg, band, fail_on, fail_on_inconclusive), deg, figures)


def best_mean_interval(runs: Sequence[Sequence[float | None]], *, seed: int, n_boot: int = 1000,
                       level: float = 0.95, what: str = "best mean") -> Interval | None:
    """The interval of the largest of several runs' means (``runs[r][q]``, None: unscored), each resample of the
    questions taking the largest again (None: no run has a scored question)."""
    vals = np.array([[np.nan if x is None else float(x) for x in r] for r in runs], dtype=np.float64)
    if vals.size == 0 or not np.isfinite(vals).any():
        return None
    with warnings.catch_warnings():   # all-unscored runs and resamples: NaN, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        point = float(np.nanmax(np.nanmean(vals, axis=1)))
        idx = draws(vals.shape[1], n_boot=n_boot, rng=np.random.default_rng(seed))
        reps = np.nanmax(np.nanmean(vals[:, idx], axis=2), axis=0)
    reps = reps[np.isfinite(reps)]
    return _interval(point, reps, level, seed, what) if reps.size else None


def choose_point(runs: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any], questions: Sequence[int],
                 coherence_min: float) -> dict[str, Any] | None:
    """The (layer, coefficient) of the search ``runs`` with the largest mean judged trait delta over ``baseline`` on
    the ``questions`` only, among those whose mean coherence on them is at least ``coherence_min`` (None: none is).
    Each run has per-question ``trait`` and ``coherence`` lists (None: unscored); ties go to the earlier run."""
    qs = list(questions)

    def mean(xs: Sequence[float | None]) -> float | None:
        vals = [float(x) for q in qs if (x := xs[q]) is not None]
        return float(np.mean(vals)) if vals else None

    base = mean(baseline["trait"])
    if base is None:
        return None
    best: dict[str, Any] | None = None
    for r in runs:
        coh, tr = mean(r["coherence"]), mean(r["trait"])
        if coh is None or tr is None or coh < coherence_min:
            continue
        if best is None or tr - base > best["delta"]:
            best = {"layer": r["layer"], "coefficient": r["coefficient"], "delta": tr - base, "coherence": coh}
    return best


# --- A/B logit difference ----------------------------------------------------------------------------------------

def logit_agreement(reference: np.ndarray | Sequence[Sequence[float]], quantized: np.ndarray |
                    Sequence[Sequence[float]], coefficients: Sequence[float], band: Band, *, seed: int,
                    n_boot: int = 1000, level: float = 0.95, fail_on: Verdict | None = None,
                    fail_on_inconclusive: bool = False, min_units: int = MIN_UNITS,
                    min_p_shift: float = MIN_P_SHIFT) -> Outcome:
    """Per-question agreement of the A/B steering response: the Pearson r, across questions, of each question's
    steerability slope (logit difference per unit coefficient) at the quantized precision with the reference's,
    with a paired bootstrap over questions (banded ``logit_corr``).

    ``reference``/``quantized`` are ``[coefficients, questions]`` logit differences (logit(match) - logit(other)).
    Unlike a correlation pooled over coefficients x questions, a shift of every question's logit difference with the
    coefficient adds nothing here: only whether each question moves as it does at the reference counts.
    Gate: the reference's vector must move its mean p(match) = sigmoid(logit difference), from the lowest to the
    highest coefficient, by more than ``min_p_shift`` (its whole interval beyond it, either sign).
    """
    ref, q = np.asarray(reference, dtype=np.float64), np.asarray(quantized, dtype=np.float64)
    if ref.shape != q.shape or ref.ndim != 2:
        raise CellError(f"A/B logit differences of shapes {ref.shape} and {q.shape}; expected the same "
                        "[coefficients, questions]")
    if not (np.isfinite(ref).all() and np.isfinite(q).all()):
        raise CellError("A/B logit differences contain NaN or inf")
    c = np.asarray(coefficients, dtype=np.float64)
    s_ref, s_q = slopes(c, ref), slopes(c, q)
    n = s_ref.size
    lo, hi = int(np.argmin(c)), int(np.argmax(c))
    p_shift = 1.0 / (1.0 + np.exp(-ref[hi])) - 1.0 / (1.0 + np.exp(-ref[lo]))
    r_point = pearson(s_ref, s_q)
    by_c = {f"{x:g}": pearson(ref[i], q[i]) for i, x in enumerate(c)}
    figures: dict[str, Any] = {
        "n_questions": n, "steerability": float(s_q.mean()), "steerability_reference": float(s_ref.mean()),
        "reference_p_match_shift": float(p_shift.mean()),
        "logit_corr_by_coefficient": {k: (None if np.isnan(v) else v) for k, v in by_c.items()},
        "logit_corr_pooled": pearson(ref.ravel(), q.ravel()),
        **_common(n_boot, level, f"{n_boot} bootstrap resamples of the {n} A/B questions (each question's logit "
                                 "differences at every coefficient kept together), the same resample at the "
                                 "reference and the quantized precision"),
    }
    if np.isfinite(r_point):
        figures["logit_corr"] = r_point
    shown = r_point if np.isfinite(r_point) else 0.0
    idx = draws(n, n_boot=n_boot, rng=np.random.default_rng(seed))
    SR, SQ = s_ref[idx], s_q[idx]
    reps = _rows_pearson(SR, SQ)
    finite = reps[np.isfinite(reps)]
    # the headline's interval is recorded whenever the correlation and some resample's are defined, also when a
    # gate below decides the verdict (resamples without spread are left out: n_boot_undefined counts them)
    corr = _interval(r_point, finite, level, seed, "logit_corr") if np.isfinite(r_point) and finite.size else None
    if corr is not None:
        figures.update(corr.figures("logit_corr"))
    if n < min_units:
        return Outcome(_inconclusive("logit_corr", shown, band, _too_few(n, "A/B questions", min_units), fail_on,
                                     fail_on_inconclusive), None, figures)
    shift_i = _interval(float(p_shift.mean()), p_shift[idx].mean(axis=1), level, seed, "reference p(match) shift")
    st_ref = _interval(float(s_ref.mean()), SR.mean(axis=1), level, seed, "reference steerability")
    st_q = _interval(float(s_q.mean()), SQ.mean(axis=1), level, seed, "steerability")
    figures.update(shift_i.figures("reference_p_match_shift"), **st_ref.figures("steerability_reference"),
                   **st_q.figures("steerability"))
    if _excludes_zero(st_ref):
        ratio_reps = SQ.mean(axis=1) / np.where(SR.mean(axis=1) == 0, np.nan, SR.mean(axis=1))
        if np.isfinite(ratio_reps).all():
            ratio = _interval(float(s_q.mean() / s_ref.mean()), ratio_reps, level, seed, "steerability ratio")
            figures.update({"steerability_ratio": ratio.point, **ratio.figures("steerability_ratio")})
    if not (shift_i.low > min_p_shift or shift_i.high < -min_p_shift):
        reason = (f"the reference's vector does not clearly move its A/B answer: its mean p(match) changes by "
                  f"{shift_i.point:+.3f} from coefficient {c[lo]:g} to {c[hi]:g} ({level:.0%} interval "
                  f"{shift_i.low:+.3f}..{shift_i.high:+.3f}, not beyond +/-{min_p_shift:g}), so there is no "
                  f"steering response for the quantized model to agree with")
        return Outcome(_inconclusive("logit_corr", shown, band, reason, fail_on, fail_on_inconclusive),
                       None, figures)
    if not np.isfinite(r_point):
        reason = "the per-question steerability slopes do not vary at one precision, so their correlation is undefined"
        return Outcome(_inconclusive("logit_corr", shown, band, reason, fail_on, fail_on_inconclusive), None,
                       figures)
    undefined = int((~np.isfinite(reps)).sum())
    figures["n_boot_undefined"] = undefined
    if undefined > (1.0 - level) / 2.0 * n_boot or corr is None:
        reason = (f"in {undefined} of {n_boot} resamples the per-question slopes have no spread at one precision, "
                  f"so the correlation's interval is undefined")
        return Outcome(_inconclusive("logit_corr", r_point, band, reason, fail_on, fail_on_inconclusive), None,
                       figures)
    return Outcome(_banded("logit_corr", corr, band, fail_on, fail_on_inconclusive), corr, figures)


# --- transfer ----------------------------------------------------------------------------------------------------

def transfer_ratio(own: np.ndarray | Sequence[Sequence[float]], moved: np.ndarray | Sequence[Sequence[float]],
                   coefficients: Sequence[float], band: Band, *, seed: int, n_boot: int = 1000, level: float = 0.95,
                   fail_on: Verdict | None = None, fail_on_inconclusive: bool = False,
                   min_units: int = MIN_UNITS) -> Outcome:
    """The quantized model's A/B steerability with the reference's vectors over its steerability with its own
    (``transfer_ratio``, 1 = perfect transfer, sign kept), banded as ``1 - ratio`` in ``band`` (steering
    degradation), with a paired bootstrap over questions (the same questions under both vectors).

    Gate: the own vector's mean per-question slope interval excludes 0 (else the ratio divides by noise).
    """
    own_a, moved_a = np.asarray(own, dtype=np.float64), np.asarray(moved, dtype=np.float64)
    if own_a.shape != moved_a.shape:
        raise CellError(f"A/B sweeps of shapes {own_a.shape} and {moved_a.shape}; expected the same")
    s_own, s_moved = slopes(coefficients, own_a), slopes(coefficients, moved_a)
    n = s_own.size
    figures: dict[str, Any] = {
        "n_questions": n, "steerability_own": float(s_own.mean()),
        "steerability_reference_vectors": float(s_moved.mean()),
        **_common(n_boot, level, f"{n_boot} bootstrap resamples of the {n} A/B questions, the same resample under "
                                 "the quantized model's own vectors and the reference's"),
    }
    idx = draws(n, n_boot=n_boot, rng=np.random.default_rng(seed))
    O, M = s_own[idx].mean(axis=1), s_moved[idx].mean(axis=1)
    own_i = _interval(float(s_own.mean()), O, level, seed, "own steerability")
    moved_i = _interval(float(s_moved.mean()), M, level, seed, "steerability with the reference's vectors")
    figures.update(own_i.figures("steerability_own"), **moved_i.figures("steerability_reference_vectors"))
    if n < min_units:
        return Outcome(_inconclusive("steerability_own", float(s_own.mean()), band,
                                     _too_few(n, "A/B questions", min_units), fail_on, fail_on_inconclusive),
                       None, figures)
    if not _excludes_zero(own_i):
        reason = (f"the quantized model's own vector does not move its A/B logit difference distinguishably from 0 "
                  f"(mean slope {own_i.point:.3g} per unit coefficient, {level:.0%} interval {own_i.low:.3g}.."
                  f"{own_i.high:.3g}), so a transfer ratio would divide by noise")
        return Outcome(_inconclusive("steerability_own", own_i.point, band, reason, fail_on, fail_on_inconclusive),
                       None, figures)
    sign = np.sign(own_i.point)
    # a resample whose own slope has the other sign (fewer than the interval's tail do) has no meaningful ratio:
    # it counts as no transfer at all, the worst case
    ratio_reps = np.where(O * sign > 0, M / np.where(O == 0, 1.0, O), -UNBOUNDED)
    ratio = _interval(float(s_moved.mean() / s_own.mean()), ratio_reps, level, seed, "transfer ratio")
    deg = _interval(1.0 - ratio.point, 1.0 - ratio_reps, level, seed, "transfer degradation")
    figures.update({"transfer_ratio": ratio.point, **ratio.figures("transfer_ratio"),
                    "transfer_degradation": deg.point, **deg.figures("transfer_degradation")})
    return Outcome(_banded("steering_degradation", deg, band, fail_on, fail_on_inconclusive), deg, figures)


# --- refusal -----------------------------------------------------------------------------------------------------

REFUSAL_CONDITIONS = ("harmful", "harmful_ablated", "harmless", "harmless_actadd")


def refusal_degradation(reference: Mapping[str, Sequence[float]], quantized: Mapping[str, Sequence[float]],
                        band: Band, *, seed: int, n_boot: int = 1000, level: float = 0.95,
                        fail_on: Verdict | None = None, fail_on_inconclusive: bool = False,
                        min_units: int = MIN_UNITS) -> Outcome:
    """Degradation of the refusal effect ``(refusal(harmful) - refusal(harmful, ablated)) + (refusal(harmless, +r)
    - refusal(harmless))``, with a bootstrap over prompts: harmful and harmless prompts resampled each on their own,
    a prompt's conditions kept together, the same prompts at both precisions.

    The mappings hold 0/1 refusals per prompt for each of REFUSAL_CONDITIONS. Gate: the reference's effect > 0.
    """
    def arr(m: Mapping[str, Sequence[float]], k: str) -> np.ndarray:
        if k not in m:
            raise CellError(f"refusal condition {k!r} missing")
        return np.asarray(m[k], dtype=np.float64)

    r = {k: arr(reference, k) for k in REFUSAL_CONDITIONS}
    q = {k: arr(quantized, k) for k in REFUSAL_CONDITIONS}
    n_h, n_l = r["harmful"].size, r["harmless"].size
    for m in (r, q):
        if m["harmful_ablated"].size != n_h or m["harmful"].size != n_h or m["harmless"].size != n_l or \
                m["harmless_actadd"].size != n_l:
            raise CellError("refusal conditions of one group differ in their number of prompts")
    ab_r, add_r = r["harmful"] - r["harmful_ablated"], r["harmless_actadd"] - r["harmless"]
    ab_q, add_q = q["harmful"] - q["harmful_ablated"], q["harmless_actadd"] - q["harmless"]
    e_ref, e_q = float(ab_r.mean() + add_r.mean()), float(ab_q.mean() + add_q.mean())
    figures: dict[str, Any] = {
        "effect": e_q, "effect_reference": e_ref, "n_harmful": n_h, "n_harmless": n_l,
        **_common(n_boot, level, f"{n_boot} bootstrap resamples of the {n_h} harmful and {n_l} harmless prompts "
                                 "(each group on its own, a prompt's conditions together), the same prompts at the "
                                 "reference and the quantized precision"),
    }
    if min(n_h, n_l) == 0:
        raise CellError(f"refusal prompts: {n_h} harmful and {n_l} harmless; expected some of each")
    rng = np.random.default_rng(seed)
    ih, il = draws(n_h, n_boot=n_boot, rng=rng), draws(n_l, n_boot=n_boot, rng=rng)
    R = ab_r[ih].mean(axis=1) + add_r[il].mean(axis=1)
    Q = ab_q[ih].mean(axis=1) + add_q[il].mean(axis=1)
    ref_i, q_i = _interval(e_ref, R, level, seed, "reference refusal effect"), _interval(e_q, Q, level, seed,
                                                                                         "refusal effect")
    figures.update(ref_i.figures("effect_reference"), **q_i.figures("effect"))
    if min(n_h, n_l) < min_units:
        return Outcome(_inconclusive("effect", e_q, band, _too_few(min(n_h, n_l), "prompts in a group", min_units),
                                     fail_on, fail_on_inconclusive), None, figures)
    reason = (f"the reference shows no refusal effect to degrade: ablating the direction and adding it change its "
              f"refusal rates by {e_ref:+.2f} in all ({level:.0%} interval {ref_i.low:+.2f}..{ref_i.high:+.2f} "
              f"over resamples of its {n_h}+{n_l} prompts, not above 0)")
    return _degradation_outcome("effect", e_ref, e_q, R, Q, ref_i, reason, "refusal degradation", band, level, seed,
                                fail_on, fail_on_inconclusive, figures)
