"""The resampling statistics against independent computations: numpy means and SVDs, sklearn's LogisticRegression
and roc_auc_score, scipy.stats.bootstrap; the noise-floor rule on hand cases; the vector and probe cells on a fake
runner (record keys the reports read)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from quant_harness.errors import CellError
from quant_harness.extract import methods
from quant_harness.extract.probes import probe_comparison, split
from quant_harness.extract.vectors import rows_correspond, vector_comparison
from quant_harness.metrics import resample
from quant_harness.metrics.confidence import Interval, from_replicates
from quant_harness.metrics.verdicts import DEFAULT_BANDS, Verdict
from quant_harness.study.spec import Cell

COSINE = DEFAULT_BANDS["cosine"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(seed: int = 0, n: int = 20, m: int | None = None, d: int = 12, layers: int = 2,
          signal: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    u = np.zeros(d)
    u[0] = signal
    pos = rng.normal(size=(n, layers, d)) + u
    neg = rng.normal(size=(m or n, layers, d))
    return torch.from_numpy(pos).float(), torch.from_numpy(neg).float()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_batched_methods_match_each_resample_computed_on_its_own() -> None:
    pos, neg = _data(d=30)
    p, q = pos[:, 0], neg[:, 0]
    idx = resample.draws(20, 20, paired=True, n_boot=4, rng=np.random.default_rng(1)).pos
    md = methods.mean_diff_resampled(p, q, idx, idx).numpy()
    pc = methods.pca_resampled(p, q, idx, idx).numpy()
    pr = methods.probe_resampled(p, q, idx, idx).numpy()
    for b, rows in enumerate(idx.numpy()):
        P, N = p.numpy()[rows].astype(float), q.numpy()[rows].astype(float)
        assert np.allclose(md[b], P.mean(0) - N.mean(0), atol=1e-12)
        delta = P - N
        vh = np.linalg.svd(np.r_[delta, -delta], full_matrices=False)[2][0]
        vh *= np.sign(vh @ delta.mean(0))
        assert _cos(pc[b], vh) == pytest.approx(1.0, abs=1e-9)
        x = np.r_[P, N]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        w = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(x, np.r_[np.ones(20), np.zeros(20)]).coef_[0]
        assert _cos(pr[b], w) == pytest.approx(1.0, abs=1e-9)
    # the per-split functions agree with their batched forms (sklearn's lbfgs stops at its tolerance)
    one = resample.identity(20, 20)
    assert _cos(methods.probe(p, q).double().numpy(), methods.probe_resampled(p, q, *one)[0].numpy()) > 0.9999
    assert _cos(methods.pca(p, q).double().numpy(), methods.pca_resampled(p, q, *one)[0].numpy()) > 0.99999


def test_unpaired_pca_is_the_pca_of_every_difference_and_ignores_row_order() -> None:
    pos, neg = _data(n=9, m=13, d=7)
    p, q = pos[:, 0], neg[:, 0]
    v = methods.pca_unpaired(p, q).double().numpy()
    diffs = (p.double().numpy()[:, None] - q.double().numpy()[None]).reshape(-1, 7)          # all 9 x 13 differences
    ref = np.linalg.svd(diffs, full_matrices=False)[2][0]
    ref *= np.sign(ref @ diffs.mean(0))
    assert _cos(v, ref) == pytest.approx(1.0, abs=1e-6)
    shuffled = methods.pca_unpaired(p[torch.randperm(9)], q[torch.randperm(13)]).double().numpy()
    assert _cos(v, shuffled) == pytest.approx(1.0, abs=1e-6)
    # file-order pairing would depend on the order: pca of the first 9 negatives' pairs changes under a shuffle
    assert methods.resampled("pca", paired=False) is methods.pca_unpaired_resampled
    assert methods.for_contrast("pca", paired=False) is methods.pca_unpaired
    assert methods.resampled("pca", paired=True) is methods.pca_resampled
    with pytest.raises(CellError, match="paired"):
        methods.pca_resampled(p, q[:9], torch.zeros(1, 9, dtype=torch.long), torch.ones(1, 9, dtype=torch.long))


def test_unpaired_draws_resample_each_class_and_paired_draws_keep_pairs() -> None:
    rng = np.random.default_rng(0)
    d = resample.draws(5, 8, paired=False, n_boot=3, rng=rng)
    assert tuple(d.pos.shape) == (3, 5) and tuple(d.neg.shape) == (3, 8) and int(d.neg.max()) < 8
    p = resample.draws(6, 6, paired=True, n_boot=3, rng=rng)
    assert p.pos is p.neg
    with pytest.raises(CellError, match="equal classes"):
        resample.draws(5, 6, paired=True, n_boot=3, rng=rng)


def test_vector_agreement_reproduces_a_numpy_paired_bootstrap() -> None:
    rp, rn = _data(seed=2)
    rng = np.random.default_rng(3)
    qp, qn = rp + 0.3 * torch.from_numpy(rng.normal(size=rp.shape)), rn + 0.3 * torch.from_numpy(rng.normal(size=rn.shape))
    a = resample.vector_agreement(rp, rn, qp, qn, methods.mean_diff_resampled, COSINE, seed=5, n_boot=400)
    R, Q = (rp.double().numpy(), rn.double().numpy()), (qp.double().numpy(), qn.double().numpy())

    def layer_mean_cos(rows: np.ndarray) -> float:
        return float(np.mean([_cos(R[0][rows, i].mean(0) - R[1][rows, i].mean(0),
                                   Q[0][rows, i].mean(0) - Q[1][rows, i].mean(0)) for i in range(2)]))

    assert a.cosine == pytest.approx([_cos(R[0][:, i].mean(0) - R[1][:, i].mean(0),
                                           Q[0][:, i].mean(0) - Q[1][:, i].mean(0)) for i in range(2)], abs=1e-6)
    idx = np.random.default_rng(5).integers(0, 20, size=(400, 20))     # the resamples the function draws
    reps = np.array([layer_mean_cos(r) for r in idx])
    low, high = np.quantile(reps, [0.025, 0.975])
    assert (a.interval.low, a.interval.high) == pytest.approx((min(low, a.value), max(high, a.value)), abs=1e-6)
    self_reps = [np.mean([_cos(R[0][r, i].mean(0) - R[1][r, i].mean(0), R[0][:, i].mean(0) - R[1][:, i].mean(0))
                          for i in range(2)]) for r in idx]
    assert a.self_low == pytest.approx(float(np.quantile(self_reps, 0.025)), abs=1e-6)
    # an independent bootstrap (scipy's own resampling of the pair indices) gives about the same interval
    sci = stats.bootstrap((np.arange(20),), lambda i: layer_mean_cos(np.asarray(i, dtype=int)), vectorized=False,
                          n_resamples=2000, method="percentile", random_state=11, confidence_level=0.95)
    width = a.interval.high - a.interval.low
    assert abs(sci.confidence_interval.low - a.interval.low) < 0.3 * width
    assert abs(sci.confidence_interval.high - a.interval.high) < 0.3 * width + 1e-3


def test_pca_vectors_are_compared_as_axes_when_aligned_to_the_reference_mean_difference() -> None:
    """The demo's int8 pca layer 6 read -0.998: the same axis with the other sign. Here the differences spread along
    e0 in both directions (PC1 = e0) and the mean difference's e0 part is tiny and flips sign between precisions."""
    rng = np.random.default_rng(0)
    n, d = 24, 8
    a = rng.normal(size=n) * 3.0
    a -= a.mean() - 0.05                                      # mean along e0: +0.05 at the reference
    delta = np.zeros((n, 1, d))
    delta[:, 0, 0] = a
    delta[:, 0, 1] = 0.5                                       # the mean difference points mostly along e1
    delta += 0.01 * rng.normal(size=delta.shape)
    neg = rng.normal(size=(n, 1, d))
    rp, rn = torch.from_numpy(neg + delta), torch.from_numpy(neg)
    shifted = delta.copy()
    shifted[:, 0, 0] -= 0.1                                    # quantized: mean along e0 is -0.05
    qp, qn = torch.from_numpy(neg + shifted), torch.from_numpy(neg)
    raw = resample.vector_agreement(rp, rn, qp, qn, methods.pca_resampled, COSINE, seed=0, n_boot=200)
    aligned = resample.vector_agreement(rp, rn, qp, qn, methods.pca_resampled, COSINE, seed=0, n_boot=200,
                                        align_to_mean_diff=True)
    assert raw.cosine[0] < -0.99 and aligned.cosine[0] > 0.99
    # the reference's own sign is not determined by its mean difference: its floor says so
    assert aligned.judgement.verdict is Verdict.INCONCLUSIVE and aligned.self_low < 0


def test_the_noise_floor_rule_on_hand_cases() -> None:
    def j(low: float, high: float, floor: float) -> Verdict:
        return resample.judge_with_floor("cosine_mean", Interval((low + high) / 2, low, high, 0.95, 100, 0), COSINE,
                                         floor, floor_name="self-cosine", unit="24 pairs",
                                         fail_on=Verdict.BROKEN).verdict

    assert j(0.97, 0.99, 0.96) is Verdict.ROBUST
    assert j(0.97, 0.99, 0.94) is Verdict.INCONCLUSIVE          # the reference itself is not pinned to 0.95
    assert j(0.85, 0.90, 0.97) is Verdict.DEGRADED
    assert j(0.85, 0.90, 0.89) is Verdict.INCONCLUSIVE          # within the reference's own noise
    assert j(0.60, 0.70, 0.97) is Verdict.BROKEN
    assert j(0.60, 0.70, 0.75) is Verdict.INCONCLUSIVE          # the floor reaches the broken band: never broken
    assert j(0.90, 0.97, 0.99) is Verdict.INCONCLUSIVE          # straddles 0.95
    out = resample.judge_with_floor("cosine_mean", Interval(0.65, 0.6, 0.7, 0.95, 100, 0), COSINE, 0.75,
                                    floor_name="self-cosine", unit="24 pairs", fail_on=Verdict.BROKEN)
    assert "0.7500" in out.explain() and "CI 0.6000..0.7000" in out.explain() and out.allowed


def test_from_replicates_is_the_numpy_percentile_interval_widened_to_the_point() -> None:
    reps = np.random.default_rng(0).normal(size=1000)
    i = from_replicates(0.1, reps, level=0.9, seed=0)
    assert (i.low, i.high) == pytest.approx(tuple(np.quantile(reps, [0.05, 0.95])))
    assert from_replicates(5.0, reps, level=0.9, seed=0).high == 5.0
    with pytest.raises(CellError, match="not finite"):
        from_replicates(0.0, [0.0, float("nan")], level=0.9, seed=0)


def test_grouped_mean_is_token_weighted_and_matches_scipy_over_equal_texts() -> None:
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.random(10 * 7))
    groups = torch.arange(10).repeat_interleave(7)
    ci, n = resample.grouped_mean(values, groups, seed=0, n_boot=4000)
    per_text = values.numpy().reshape(10, 7).mean(1)
    sci = stats.bootstrap((per_text,), np.mean, n_resamples=4000, method="percentile", random_state=1)
    assert n == 10 and ci.point == pytest.approx(float(values.mean()))
    assert ci.low == pytest.approx(sci.confidence_interval.low, abs=0.01)
    assert ci.high == pytest.approx(sci.confidence_interval.high, abs=0.01)
    uneven, _ = resample.grouped_mean(torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([0, 0, 0, 1]), seed=0)
    assert uneven.point == pytest.approx(0.75)                 # token-weighted, not the mean of text means (0.5)


def test_topk_self_overlap_is_one_for_identical_texts_and_drops_when_they_disagree() -> None:
    same = torch.tensor([[3.0, 2.0, 1.0, 0.0]] * 6)
    assert resample.topk_self_overlap(same, torch.arange(6), 2, seed=0, n_boot=50) == (1.0, 1.0)
    differ = torch.eye(4).repeat(2, 1)                         # each text uses one feature
    _, low = resample.topk_self_overlap(differ, torch.arange(8), 2, seed=0, n_boot=200)
    assert low < 1.0


def test_batched_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    p = torch.from_numpy(rng.integers(0, 4, size=(5, 6)).astype(float))
    n = torch.from_numpy(rng.integers(0, 4, size=(5, 9)).astype(float))
    out = resample.batched_auroc(p, n)
    for b in range(5):
        y = np.r_[np.ones(6), np.zeros(9)]
        assert float(out[b]) == pytest.approx(roc_auc_score(y, np.r_[p[b].numpy(), n[b].numpy()]), abs=1e-12)


def test_probe_drop_point_is_the_sklearn_auroc_at_the_layer_and_its_drop() -> None:
    rp, rn = _data(seed=4, n=24, layers=3, signal=1.5)
    qp = rp.clone()
    qp[:, 1, 0] -= 1.0                                         # less signal at layer 1
    s = split(24, 24, paired=True, val_fraction=0.25, seed=0)
    pd = resample.probe_drop(rp, rn, qp, rn, s, 1, methods.mean_diff_resampled, DEFAULT_BANDS["auroc_drop"],
                             seed=0, n_boot=200)

    def sk(pos: torch.Tensor, neg: torch.Tensor) -> float:
        w = (pos[s.train_pos, 1].mean(0) - neg[s.train_neg, 1].mean(0)).numpy()
        scores = np.r_[pos[s.val_pos, 1].numpy() @ w, neg[s.val_neg, 1].numpy() @ w]
        return float(roc_auc_score(np.r_[np.ones(6), np.zeros(6)], scores))

    assert pd.reference.point == pytest.approx(sk(rp, rn)) and pd.quantized.point == pytest.approx(sk(qp, rn))
    assert pd.drop.point == pytest.approx(sk(rp, rn) - sk(qp, rn))
    assert pd.drop.low <= pd.drop.point <= pd.drop.high and pd.judgement.metric == "auroc_drop"


def test_the_layer_is_chosen_without_reading_the_validation_split() -> None:
    rp, rn = _data(seed=5, n=24, layers=4, signal=1.0)
    s = split(24, 24, paired=True, val_fraction=0.25, seed=0)
    chosen, cv = resample.select_layer(rp, rn, s, methods.mean_diff_resampled, paired=True, normalize=False, seed=0)
    garbage_p, garbage_n = rp.clone(), rn.clone()
    garbage_p[s.val_pos] = torch.randn(len(s.val_pos), 4, 12) * 100
    garbage_n[s.val_neg] = torch.randn(len(s.val_neg), 4, 12) * 100
    again = resample.select_layer(garbage_p, garbage_n, s, methods.mean_diff_resampled, paired=True,
                                  normalize=False, seed=0)
    assert again == (chosen, cv) and len(cv) == 4


# --- the cells on a fake runner -----------------------------------------------------------------------------------

def _runner(acts: dict[str, tuple[torch.Tensor, torch.Tensor]], *, paired: bool = True,
            info: dict[str, dict[str, Any]] | None = None) -> Any:
    n = len(next(iter(acts.values()))[0])
    trait = NS(key="caa_x", format="caa")
    study = NS(reference="fp32", bands=dict(DEFAULT_BANDS), seed=0, bootstrap_n=200, ci_level=0.95,
               fail_on=Verdict.BROKEN, fail_on_inconclusive=False, massive_dims_k=4, probe_val_fraction=0.25,
               trait=lambda key: trait)
    contrast = NS(paired=paired, format="caa" if paired else "arditi",
                  pos=[NS(prefill="(A" if i % 2 else "(B") for i in range(n)])

    class Runner:
        def __init__(self) -> None:
            self.study = study
            self.cache = NS(root=Path(tempfile.mkdtemp(prefix="qh-derived-")))  # a fresh store: nothing is reused

        def contrast(self, t: Any) -> Any:
            return contrast

        def activations(self, model: str, precision: str, t: Any) -> Any:
            return NS(tensors={"pos": acts[precision][0], "neg": acts[precision][1]},
                      meta={"components": {"layers": [2, 4]}, "info": (info or {}).get(precision, {})})

        def provenance(self, cell: Cell, t: Any) -> dict[str, Any]:
            return {"reference": "fp32"}

    return Runner()


def _acts(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    rp, rn = _data(seed=seed, n=24, d=16, signal=8.0)
    g = torch.Generator().manual_seed(seed)
    return {"fp32": (rp, rn), "nf4": (rp + 0.1 * torch.randn(rp.shape, generator=g),
                                      rn + 0.1 * torch.randn(rn.shape, generator=g))}


def test_vector_cell_records_its_paired_interval_and_the_reference_floor() -> None:
    r = vector_comparison(_runner(_acts()), Cell("vectors", "m", "nf4", "caa_x", "mean_diff"))
    f = r.figures
    assert r.metric == "cosine_mean" and r.value == f["cosine_mean"] and r.verdict == "robust"
    assert f["cosine_mean_ci_low"] <= r.value <= f["cosine_mean_ci_high"]
    assert f["self_cosine_reference_low"] <= f["self_cosine_reference"] <= 1.0
    assert len(r.per_layer["cosine"]) == len(r.per_layer["self_cosine_reference"]) == 2
    assert "resampled: 200 bootstrap resamples of 24 contrast pairs" in r.explanation
    unpaired = vector_comparison(_runner(_acts(), paired=False), Cell("vectors", "m", "nf4", "arditi_x", "pca"))
    assert "no file-order pairing" in unpaired.explanation and "each class on its own" in unpaired.explanation


def test_probe_cells_band_the_drop_and_the_reference_its_own_auroc() -> None:
    runner = _runner(_acts())
    q = probe_comparison(runner, Cell("probes", "m", "nf4", "caa_x", "mean_diff"))
    ref = probe_comparison(runner, Cell("probes", "m", "fp32", "caa_x", "mean_diff"))
    assert q.metric == "auroc_drop" and q.value == q.figures["auroc_drop"] and q.verdict == "robust"
    assert {"auroc_drop_ci_low", "auroc_drop_ci_high", "auroc_reference_ci_low", "auroc_layer"} <= set(q.figures)
    assert ref.metric == "auroc" and ref.value == ref.figures["auroc_reference"] and ref.figures["reference_gate_passed"]
    assert "auroc_best" not in q.figures and "never by the validation split" in q.explanation


def test_rows_line_up_across_precisions_unless_rollouts_kept_other_pairs() -> None:
    def entry(n: int, **info: Any) -> Any:
        return NS(tensors={"pos": torch.zeros(n, 1, 2), "neg": torch.zeros(n, 1, 2)}, meta={"info": info})

    assert rows_correspond(entry(4), entry(4)) and not rows_correspond(entry(4), entry(3))
    assert rows_correspond(entry(4, n_pairs=4, kept_pairs=4, responses_from="fp32"),
                           entry(4, n_pairs=4, kept_pairs=4, responses_from="nf4"))
    assert rows_correspond(entry(3, n_pairs=4, kept_pairs=3, responses_from="fp32"),
                           entry(3, n_pairs=4, kept_pairs=3, responses_from="fp32"))     # replay: the same pairs
    assert not rows_correspond(entry(3, n_pairs=4, kept_pairs=3, responses_from="fp32"),
                               entry(3, n_pairs=4, kept_pairs=3, responses_from="nf4"))


def test_rows_that_are_other_examples_get_independent_resamples() -> None:
    """PV rollouts that kept other pairs at the quantized precision: no paired draw across precisions."""
    rp, rn = _data(seed=6, n=20)
    qp, qn = rp[2:] + 0.01, rn[2:]
    with pytest.raises(CellError, match="same examples"):
        resample.vector_agreement(rp, rn, qp, qn, methods.mean_diff_resampled, COSINE, seed=0, n_boot=50)
    a = resample.vector_agreement(rp, rn, qp, qn, methods.mean_diff_resampled, COSINE, seed=0, n_boot=50,
                                  paired_precisions=False)
    assert "independent resamples" in a.resampled() and not a.figures()["paired_across_precisions"]
    s_r, s_q = split(20, 20, paired=True, val_fraction=0.25, seed=0), split(18, 18, paired=True, val_fraction=0.25,
                                                                             seed=0)
    pd = resample.probe_drop(rp, rn, qp, qn, s_r, 0, methods.mean_diff_resampled, DEFAULT_BANDS["auroc_drop"],
                             seed=0, n_boot=50, paired_precisions=False, quant_split=s_q)
    assert pd.n_val == (5, 5) and not pd.paired_precisions
    with pytest.raises(CellError, match="paired_precisions=False"):
        resample.probe_drop(rp, rn, qp, qn, s_r, 0, methods.mean_diff_resampled, DEFAULT_BANDS["auroc_drop"],
                            seed=0, n_boot=50, quant_split=s_q)


def test_caa_pairs_are_resampled_within_their_answer_letter() -> None:
    """A CAA set balances its matching letters so the letter token's own direction cancels in the mean difference;
    resampling pairs within each letter keeps that balance, and the reference's floor then measures the trait's
    noise, not the letter's."""
    letters = ["A", "B"] * 12
    d = resample.draws(24, 24, paired=True, n_boot=200, rng=np.random.default_rng(0), strata=letters)
    picked = np.asarray(letters)[d.pos.numpy()]
    assert (picked == "A").sum(1).tolist() == [12] * 200
    rng = np.random.default_rng(1)
    n, dim = 24, 16
    letter = np.zeros(dim)
    letter[1] = 20.0                                             # a large letter direction, +-
    sign = np.where(np.asarray(letters) == "A", 1.0, -1.0)[:, None]
    neg = rng.normal(size=(n, 1, dim))
    pos = neg + (np.eye(dim)[0] * 4.0 + sign * letter)[:, None, :] + 0.5 * rng.normal(size=(n, 1, dim))
    rp, rn = torch.from_numpy(pos), torch.from_numpy(neg)
    qp = rp + 0.01 * torch.from_numpy(rng.normal(size=rp.shape))
    plain = resample.vector_agreement(rp, rn, qp, rn, methods.mean_diff_resampled, COSINE, seed=0, n_boot=300)
    within = resample.vector_agreement(rp, rn, qp, rn, methods.mean_diff_resampled, COSINE, seed=0, n_boot=300,
                                       strata=letters)
    assert plain.self_low < 0.8 < 0.95 < within.self_low
    assert within.judgement.verdict is Verdict.ROBUST and "within each answer letter" in within.resampled()
