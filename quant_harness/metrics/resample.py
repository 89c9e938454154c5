"""Intervals over the data: paired bootstrap resamples of the examples a figure is computed from, and verdicts that
separate a quantization shift from the noise of a few dozen examples.

A trait vector is a statistic of 15-24 contrast pairs, so it moves when the pairs do. Each figure here is recomputed
on bootstrap resamples of its units (contrast pairs, kept together; each class on its own for unpaired data;
validation examples; texts), with the *same* resample at the reference and the quantized precision, so the interval
is of the paired comparison. Beside it stands the reference's own noise floor: how far the reference's statistic
moves when only its examples are resampled (``cos(v_ref, v_ref on a resample)`` for vectors, the reference AUROC's
interval for probes). A verdict is given only when the interval sits in one band *and* the floor lets the data
decide that band; otherwise the cell is ``inconclusive`` with the reason.

Pure functions of arrays: no model, no cache, no study. The cell kinds (quant_harness.extract.vectors, .probes,
quant_harness.sae.cells) call them with cached activations; tests/unit/test_calibration.py runs them on synthetic
activations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, ParamSpec, TypeVar

import numpy as np
import torch
from torch import Tensor

from quant_harness.errors import CellError
from quant_harness.metrics.confidence import Interval, classify_interval, from_replicates
from quant_harness.metrics.verdicts import Band, Judgement, Verdict

BatchedMethod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``(pos [N, d], neg [M, d], pos_idx [B, N'], neg_idx [B, M']) -> [B, d]``: a vector method on every resample
(quant_harness.extract.methods.resampled)."""


class Draws(NamedTuple):
    """Bootstrap resamples as row indices: ``pos [B, N]`` and ``neg [B, M]`` (the same tensor for paired data)."""

    pos: Tensor
    neg: Tensor

    @property
    def n(self) -> int:
        return int(self.pos.shape[0])


@contextmanager
def small_ops() -> Iterator[None]:
    """One thread for torch and BLAS while resampling: thousands of tiny batched products run several times faster
    on one thread than on a pool that contends with other workers (3x measured on 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # shipped with scikit-learn; without it numpy keeps its pool
            yield
        else:
            with threadpool_limits(1):
                yield
    finally:
        torch.set_num_threads(before)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _one_thread(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with small_ops():
            return fn(*args, **kwargs)
    return run


def draws(n_pos: int, n_neg: int, *, paired: bool, n_boot: int, rng: np.random.Generator,
          strata: Sequence[str] | None = None) -> Draws:
    """``n_boot`` resamples with replacement: of pairs (one index per pair, both classes) or of each class.

    ``strata`` (paired data) labels each pair, e.g. CAA's matching answer letter: pairs are then drawn within their
    label, so every resample keeps the data's letter counts. A CAA set is balanced by design so that the letter
    token's own direction (A vs B) cancels in the mean difference; a plain resample unbalances it, and on SmolLM2 its
    layer-2 mean difference then points along the letter (two halves of the pairs give cosine -0.99), which is noise
    of the design, not of the trait.
    """
    if n_boot < 1:
        raise CellError(f"bootstrap needs n >= 1 replicates, got {n_boot}")
    if n_pos < 1 or n_neg < 1:
        raise CellError(f"cannot resample {n_pos} positive and {n_neg} negative examples")
    if paired:
        if n_pos != n_neg:
            raise CellError(f"paired resampling needs equal classes; got {n_pos} positive and {n_neg} negative")
        if strata is None:
            idx = torch.from_numpy(rng.integers(0, n_pos, size=(n_boot, n_pos)))
            return Draws(idx, idx)
        if len(strata) != n_pos:
            raise CellError(f"{len(strata)} strata labels for {n_pos} pairs")
        out = np.empty((n_boot, n_pos), dtype=np.int64)
        for label in sorted(set(strata)):
            members = np.array([i for i, x in enumerate(strata) if x == label])
            out[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        idx = torch.from_numpy(out)
        return Draws(idx, idx)
    return Draws(torch.from_numpy(rng.integers(0, n_pos, size=(n_boot, n_pos))),
                 torch.from_numpy(rng.integers(0, n_neg, size=(n_boot, n_neg))))


def identity(n_pos: int, n_neg: int) -> Draws:
    """The full data as one "resample" (the point estimate)."""
    return Draws(torch.arange(n_pos)[None], torch.arange(n_neg)[None])


def _rows_cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of matching rows ``[B, d] x [B, d] -> [B]`` (``b`` may be one row, broadcast)."""
    out: Tensor = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return out


def _count_mean(x: Tensor, idx: Tensor) -> Tensor:
    """Mean of the drawn rows of ``x [n, d]`` for each resample ``idx [B, n']``: ``[B, d]``."""
    w = torch.zeros(idx.shape[0], len(x), dtype=torch.float64).scatter_add_(
        1, idx.long(), torch.ones(idx.shape, dtype=torch.float64))
    return (w / idx.shape[1]) @ x.double()


def _align(v: Tensor, toward: Tensor) -> Tensor:
    """Each row of ``v`` signed to agree with the matching row of ``toward`` (or its one row)."""
    return v * torch.where((v * toward).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(v.dtype)


def tail(level: float) -> float:
    """The lower tail of a two-sided interval at ``level`` (0.025 at 0.95)."""
    return (1.0 - level) / 2.0


def _check_acts(name: str, x: Tensor) -> Tensor:
    if x.ndim != 3:
        raise CellError(f"{name} activations must be [examples, layers, d]; got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise CellError(f"{name} activations contain NaN or inf")
    return x


def _beyond(value: float, edge: float, band: Band) -> bool:
    """Whether ``value`` is strictly on the good side of ``edge``."""
    return value > edge if band.higher_is_better else value < edge


def judge_with_floor(metric: str, interval: Interval, band: Band, floor: float, *, floor_name: str, unit: str,
                     fail_on: Verdict | None, fail_on_inconclusive: bool = False) -> Judgement:
    """The interval rule, then the noise-floor rule for an agreement figure (cosine: 1 = unchanged).

    ``floor`` is the low quantile of the reference's self-agreement over resamples of its own examples. A band is
    kept only when the data can decide it:

    * ``robust`` needs the floor itself above the robust limit: a reference that does not agree with itself to that
      level cannot show that quantization left it there (with shuffled labels the interval sits near 1 because
      both precisions see the same noise, while the floor is far below);
    * ``degraded`` and ``broken`` need the floor above the broken limit (the reference's own noise does not reach
      the broken band), and the whole interval below the floor: quantization moved the figure further than
      resampling the examples moves the reference's.

    Anything else is ``inconclusive`` with the reason.
    """
    verdict = classify_interval(interval, band, what=metric)
    reason = ""
    if verdict is Verdict.ROBUST and not _beyond(floor, band.robust, band):
        reason = (f"the interval is in the robust band, but the reference's own {floor_name} over resamples of "
                  f"its {unit} reaches {floor:.4f}, not above the robust limit {band.robust:g}: the data do not pin "
                  f"the reference down well enough to call a shift smaller than that")
    elif verdict in (Verdict.DEGRADED, Verdict.BROKEN):
        if not _beyond(floor, band.broken, band):
            reason = (f"the interval is in the {verdict.label} band, but the reference's own {floor_name} over "
                      f"resamples of its {unit} reaches {floor:.4f}, into the broken band (limit {band.broken:g}): "
                      f"the reference is too unstable for a shift this size to be told from its sampling noise")
        elif not _beyond(floor, interval.high, band):
            reason = (f"the interval is in the {verdict.label} band, but its upper end {interval.high:.4f} is not "
                      f"below the reference's own {floor_name} floor {floor:.4f}: quantization moved it no more "
                      f"than resampling its {unit} moves the reference")
    if reason:
        verdict = Verdict.INCONCLUSIVE
    return Judgement(metric, interval.point, verdict, band, fail_on, interval=(interval.low, interval.high),
                     level=interval.level, fail_on_inconclusive=fail_on_inconclusive, reason=reason)


@dataclass(frozen=True)
class VectorAgreement:
    """Per-layer and layer-mean cosine of the quantized vectors with the reference's, with the paired interval and
    the reference's self-agreement floor."""

    layers: list[int]
    cosine: list[float]
    """Per layer, on the full data."""
    interval: Interval
    """Of the layer-mean cosine, over paired resamples of the examples."""
    self_cosine: list[float]
    """Per layer: median over resamples of cos(v_ref, v_ref on the resample)."""
    self_mean: float
    """Median of the layer-mean self-cosine."""
    self_low: float
    """Its low quantile (the interval's lower tail): the noise floor."""
    judgement: Judgement
    reference: list[Tensor]
    """Full-data reference vectors per layer (float64)."""
    quantized: list[Tensor]
    n_pos: int
    n_neg: int
    paired: bool
    paired_precisions: bool
    aligned: bool
    stratified: bool = False

    @property
    def value(self) -> float:
        return self.interval.point

    def resampled(self) -> str:
        """What the interval resamples, for explanations and records."""
        units = f"{self.n_pos} contrast pairs (pairs kept together)" if self.paired else \
            f"{self.n_pos} positive and {self.n_neg} negative examples (each class on its own)"
        if self.stratified:
            units += " drawn within each answer letter"
        same = "the same resample at the reference and the quantized precision" if self.paired_precisions else \
            "independent resamples at each precision (their rows are different examples)"
        return f"{self.interval.n} bootstrap resamples of {units}, {same}"

    def figures(self) -> dict[str, Any]:
        shift, floor_shift = 1.0 - self.value, 1.0 - self.self_mean
        return {
            **self.interval.figures("cosine_mean"),
            "self_cosine_reference": self.self_mean, "self_cosine_reference_low": self.self_low,
            "cosine_shift": shift, "self_shift_reference": floor_shift,
            "shift_over_floor": shift / floor_shift if floor_shift > 0 else None,
            "n_boot": self.interval.n, "ci_level": self.interval.level, "resampled": self.resampled(),
            "paired_across_precisions": self.paired_precisions, "pca_sign_aligned": self.aligned,
        }


@_one_thread
def vector_agreement(ref_pos: Tensor, ref_neg: Tensor, q_pos: Tensor, q_neg: Tensor, method: BatchedMethod,
                     band: Band, *, seed: int, n_boot: int = 1000, level: float = 0.95, paired: bool = True,
                     paired_precisions: bool = True, align_to_mean_diff: bool = False,
                     strata: Sequence[str] | None = None, layers: Sequence[int] | None = None,
                     fail_on: Verdict | None = None,
                     fail_on_inconclusive: bool = False) -> VectorAgreement:
    """Cosine of a method's vectors at the quantized precision with the reference's, from ``[n, layers, d]``
    activations of both classes at both precisions.

    Args:
        method: the method on resamples (quant_harness.extract.methods.resampled).
        paired: pos[i] and neg[i] form a pair (resampled together); else each class is resampled on its own.
        strata: a label per pair (CAA's matching answer letter): pairs are resampled within their label (``draws``).
        paired_precisions: row i is the same example at both precisions, so both get the same resample; False
            (e.g. PV rollouts that kept different pairs) draws the quantized precision's resamples independently.
        align_to_mean_diff: for PCA, whose sign is a convention: sign the reference's vector to agree with its
            mean difference at the layer (the full data's for the point, the same resample's for each replicate),
            and the quantized vector to agree with that reference vector (the same replicate's). The cross
            comparison is then of axes, also at layers whose PC1 is nearly orthogonal to the mean difference, where
            signing each precision to the mean difference flips the same axis (the default study read -0.997 for a
            0.997 axis agreement; methods.pca_sign_check); the self floor keeps the reference sign's own
            instability (a PCA axis the mean difference cannot orient, e.g. with shuffled labels, has no stable
            sign).
    """
    ref_pos, ref_neg = _check_acts("reference positive", ref_pos), _check_acts("reference negative", ref_neg)
    q_pos, q_neg = _check_acts("quantized positive", q_pos), _check_acts("quantized negative", q_neg)
    if ref_pos.shape[1:] != q_pos.shape[1:] or ref_neg.shape[1:] != q_neg.shape[1:] or \
            ref_pos.shape[1:] != ref_neg.shape[1:]:
        raise CellError(f"activation shapes differ: reference {tuple(ref_pos.shape)}/{tuple(ref_neg.shape)}, "
                        f"quantized {tuple(q_pos.shape)}/{tuple(q_neg.shape)}")
    if paired_precisions and (len(ref_pos) != len(q_pos) or len(ref_neg) != len(q_neg)):
        raise CellError(f"paired resampling across precisions needs the same examples; got {len(ref_pos)}/"
                        f"{len(ref_neg)} at the reference and {len(q_pos)}/{len(q_neg)} quantized")
    n_layers = ref_pos.shape[1]
    layer_ids = list(layers) if layers is not None else list(range(n_layers))
    if len(layer_ids) != n_layers:
        raise CellError(f"{len(layer_ids)} layer ids for {n_layers} layers of activations")
    rng = np.random.default_rng(seed)
    d_ref = draws(len(ref_pos), len(ref_neg), paired=paired, n_boot=n_boot, rng=rng,
                  strata=strata if paired else None)
    d_q = d_ref if paired_precisions else draws(len(q_pos), len(q_neg), paired=paired, n_boot=n_boot, rng=rng)
    one_r, one_q = identity(len(ref_pos), len(ref_neg)), identity(len(q_pos), len(q_neg))
    cos, self_med, refs, quants = [], [], [], []
    cross_reps = torch.zeros(n_boot, dtype=torch.float64)
    self_reps = torch.zeros(n_boot, dtype=torch.float64)
    for i in range(n_layers):
        rp, rn, qp, qn = ref_pos[:, i], ref_neg[:, i], q_pos[:, i], q_neg[:, i]
        v_r, v_q = method(rp, rn, *one_r)[0].double(), method(qp, qn, *one_q)[0].double()
        V_r, V_q = method(rp, rn, *d_ref).double(), method(qp, qn, *d_q).double()
        if align_to_mean_diff:
            full = (rp.double().mean(0) - rn.double().mean(0))[None]
            drawn = _count_mean(rp, d_ref.pos) - _count_mean(rn, d_ref.neg)
            v_r, V_r = _align(v_r[None], full)[0], _align(V_r, drawn)
            # the quantized axis takes the reference vector's sign: where the mean difference cannot pin a sign
            # (PC1 nearly orthogonal to it) it would flip the same axis (methods.pca_sign_check says why)
            v_q, V_q = _align(v_q[None], v_r[None])[0], _align(V_q, V_r)
        for name, v in (("reference", v_r), ("quantized", v_q)):
            if float(v.norm()) == 0.0:
                raise CellError(f"layer {layer_ids[i]}: the {name} vector is all zeros; refusing to score it")
        cos.append(float(_rows_cos(v_r, v_q)))
        c, s = _rows_cos(V_r, V_q), _rows_cos(V_r, v_r[None])
        if not (bool(torch.isfinite(c).all()) and bool(torch.isfinite(s).all())):
            raise CellError(f"layer {layer_ids[i]}: a resample gives a zero or non-finite vector")
        cross_reps += c
        self_reps += s
        self_med.append(float(s.median()))
        refs.append(v_r)
        quants.append(v_q)
    cross_reps /= n_layers
    self_reps /= n_layers
    point = float(np.mean(cos))
    interval = from_replicates(point, cross_reps.numpy(), level=level, seed=seed, what="layer-mean cosine")
    floor = float(np.quantile(self_reps.numpy(), tail(level)))
    unit = f"{len(ref_pos)} pairs" if paired else f"{len(ref_pos)} + {len(ref_neg)} examples"
    j = judge_with_floor("cosine_mean", interval, band, floor, floor_name="self-cosine", unit=unit,
                         fail_on=fail_on, fail_on_inconclusive=fail_on_inconclusive)
    return VectorAgreement(layer_ids, cos, interval, self_med, float(self_reps.median()), floor, j, refs, quants,
                           len(ref_pos), len(ref_neg), paired, paired_precisions, align_to_mean_diff,
                           stratified=paired and strata is not None)


# --- probes -----------------------------------------------------------------------------------------------------

def batched_auroc(scores_pos: Tensor, scores_neg: Tensor) -> Tensor:
    """Mann-Whitney AUROC per row: ``[B, P] x [B, N] -> [B]``: the share of (pos, neg) pairs ranked pos above neg,
    ties counting one half (each row's negatives sorted once, positives placed by binary search)."""
    if not (bool(torch.isfinite(scores_pos).all()) and bool(torch.isfinite(scores_neg).all())):
        raise CellError("AUROC scores contain NaN or inf")
    neg_sorted = scores_neg.double().sort(dim=1).values.contiguous()
    p = scores_pos.double().contiguous()
    below = torch.searchsorted(neg_sorted, p, side="left").double()
    not_above = torch.searchsorted(neg_sorted, p, side="right").double()
    return (below + not_above).sum(1) / (2.0 * p.shape[1] * neg_sorted.shape[1])


def _scores(x: Tensor, w: Tensor, normalize: bool) -> Tensor:
    """``x [n, d]`` scored by each of ``w [B, d]``: ``[B, n]``; ``normalize`` = unit rows first (method probe)."""
    x = x.double()
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return w.double() @ x.T


class Split(NamedTuple):
    """Row indices of the train and validation parts of each class (quant_harness.extract.probes.split)."""

    train_pos: list[int]
    val_pos: list[int]
    train_neg: list[int]
    val_neg: list[int]


def folds(n_pos: int, n_neg: int, *, paired: bool, k: int, seed: int,
          strata: Sequence[str] | None = None) -> list[tuple[list[int], list[int]]]:
    """``k`` seeded held-out folds ``(pos rows, neg rows)`` of a train split; paired folds hold whole pairs, dealt
    out label by label when ``strata`` are given (each fold then holds the letters in about the data's share)."""
    g = torch.Generator().manual_seed(seed)
    if paired:
        k = max(2, min(k, n_pos))
        if strata is None:
            perm = torch.randperm(n_pos, generator=g).tolist()
        else:                                   # each label's pairs in a row, so dealing round-robin spreads them
            perm = []
            for label in sorted(set(strata)):
                members = [i for i, x in enumerate(strata) if x == label]
                perm += [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
        return [(sorted(perm[f::k]), sorted(perm[f::k])) for f in range(k)]
    k = max(2, min(k, n_pos, n_neg))
    pp, pn = torch.randperm(n_pos, generator=g).tolist(), torch.randperm(n_neg, generator=g).tolist()
    return [(sorted(pp[f::k]), sorted(pn[f::k])) for f in range(k)]


@_one_thread
def select_layer(pos: Tensor, neg: Tensor, split: Split, method: BatchedMethod | Sequence[BatchedMethod], *,
                 paired: bool, normalize: bool, seed: int, k: int = 5,
                 strata: Sequence[str] | None = None) -> tuple[int, list[float]]:
    """The layer to judge a probe at, chosen on the reference's *train* split only (never its validation split):
    the highest mean held-out AUROC over ``k`` cross-validation folds of the train split. ``method`` is one for
    every layer or one per layer (fixed ``file`` vectors). Returns (index, per-layer CV AUROC); ties go to the
    earlier layer. ``strata`` labels every pair (not only the train split's): folds are dealt within labels."""
    tp, tn = pos[split.train_pos], neg[split.train_neg]
    if len(tp) < 2 or len(tn) < 2:
        raise CellError(f"train split of {len(tp)} positive and {len(tn)} negative examples is too small to "
                        f"choose a layer by cross-validation")
    cv: list[float] = []
    chunks = folds(len(tp), len(tn), paired=paired, k=k, seed=seed,
                   strata=None if strata is None or not paired else [strata[i] for i in split.train_pos])
    for i in range(pos.shape[1]):
        fold_aurocs = []
        for hold_p, hold_n in chunks:
            out_p, out_n = set(hold_p), set(hold_n)
            keep_p = [j for j in range(len(tp)) if j not in out_p]
            keep_n = [j for j in range(len(tn)) if j not in out_n]
            fit = method[i] if isinstance(method, Sequence) else method
            w = fit(tp[keep_p, i], tn[keep_n, i], *identity(len(keep_p), len(keep_n)))
            fold_aurocs.append(float(batched_auroc(_scores(tp[hold_p, i], w, normalize),
                                                   _scores(tn[hold_n, i], w, normalize))[0]))
        cv.append(float(np.mean(fold_aurocs)))
    return max(range(len(cv)), key=cv.__getitem__), cv


@dataclass(frozen=True)
class ProbeDrop:
    """Validation AUROC at one layer at the reference and the quantized precision, the drop, and their intervals."""

    reference: Interval
    quantized: Interval
    drop: Interval
    gate: float
    judgement: Judgement
    """Of the drop (quantized cells) or of the reference AUROC (reference cells)."""
    n_train: tuple[int, int]
    n_val: tuple[int, int]
    paired: bool
    paired_precisions: bool
    stratified: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gate_passed(self) -> bool:
        return self.reference.low > self.gate

    def resampled(self) -> str:
        what = ("pairs" + (" (within each answer letter)" if self.stratified else "")) if self.paired else \
            "examples of each class"
        same = "the same resamples at both precisions" if self.paired_precisions else \
            "independent resamples at each precision"
        return (f"{self.drop.n} bootstrap resamples of the train {what} ({self.n_train[0]}+{self.n_train[1]}, "
                f"direction refit on each) and of the validation {what} ({self.n_val[0]}+{self.n_val[1]}), {same}")

    def figures(self) -> dict[str, Any]:
        return {
            "auroc": self.quantized.point, **self.quantized.figures("auroc"),
            "auroc_reference": self.reference.point, **self.reference.figures("auroc_reference"),
            "auroc_drop": self.drop.point, **self.drop.figures("auroc_drop"),
            "reference_gate": self.gate, "reference_gate_passed": self.gate_passed,
            "n_boot": self.drop.n, "ci_level": self.drop.level, "resampled": self.resampled(),
            "paired_across_precisions": self.paired_precisions, **self.extra,
        }


@_one_thread
def probe_drop(ref_pos: Tensor, ref_neg: Tensor, q_pos: Tensor | None, q_neg: Tensor | None, split: Split,
               layer: int, method: BatchedMethod, band: Band, *, seed: int, n_boot: int = 1000,
               level: float = 0.95, paired: bool = True, paired_precisions: bool = True, normalize: bool = False,
               gate: float = 0.6, reference_band: Band | None = None, quant_split: Split | None = None,
               strata: Sequence[str] | None = None,
               fail_on: Verdict | None = None, fail_on_inconclusive: bool = False) -> ProbeDrop:
    """The drop in validation AUROC at ``layer`` from the reference to the quantized precision, with a paired
    bootstrap interval, gated on the reference's own AUROC interval.

    Each resample draws the train examples (the direction is refit at both precisions on the same draw) and the
    validation examples (scored at both precisions on the same draw); pairs stay together. The drop is judged in
    ``band`` (lower is better) only when the reference's AUROC interval clears ``gate`` from above: otherwise there
    is no readable trait for quantization to lose and the cell is ``inconclusive``. ``q_pos is None`` scores the
    reference alone (the reference cell): its AUROC interval is judged in ``reference_band`` behind the same gate.
    ``quant_split`` (with ``paired_precisions=False``) splits quantized activations whose rows are other examples.
    ``strata`` labels every pair (CAA's answer letter): train and validation pairs are drawn within their label.
    """
    reference_only = q_pos is None or q_neg is None
    qp_all, qn_all = (q_pos, q_neg) if q_pos is not None and q_neg is not None else (ref_pos, ref_neg)
    for name, x in (("reference positive", ref_pos), ("reference negative", ref_neg),
                    ("quantized positive", qp_all), ("quantized negative", qn_all)):
        _check_acts(name, x)
    if quant_split is not None and paired_precisions:
        raise CellError("a separate split of the quantized activations means their rows are other examples: "
                        "pass paired_precisions=False")
    rng = np.random.default_rng(seed)

    def resamples(s: Split, labels: Sequence[str] | None) -> tuple[Draws, Draws]:
        def part(rows: list[int]) -> list[str] | None:
            return None if labels is None or not paired else [labels[i] for i in rows]
        return (draws(len(s.train_pos), len(s.train_neg), paired=paired, n_boot=n_boot, rng=rng,
                      strata=part(s.train_pos)),
                draws(len(s.val_pos), len(s.val_neg), paired=paired, n_boot=n_boot, rng=rng, strata=part(s.val_pos)))

    q_split = quant_split or split
    tr, va = resamples(split, strata)
    tr_q, va_q = (tr, va) if paired_precisions or reference_only else resamples(q_split, None)

    def measure(pos: Tensor, neg: Tensor, s: Split, t: Draws, v: Draws) -> tuple[float, Tensor]:
        tp, tn = pos[s.train_pos, layer], neg[s.train_neg, layer]
        vp, vn = pos[s.val_pos, layer], neg[s.val_neg, layer]
        w0 = method(tp, tn, *identity(len(tp), len(tn)))
        point = float(batched_auroc(_scores(vp, w0, normalize), _scores(vn, w0, normalize))[0])
        w = method(tp, tn, *t)
        sp, sn = _scores(vp, w, normalize), _scores(vn, w, normalize)
        reps = batched_auroc(torch.gather(sp, 1, v.pos.long()), torch.gather(sn, 1, v.neg.long()))
        return point, reps

    r_point, r_reps = measure(ref_pos, ref_neg, split, tr, va)
    if reference_only:
        q_point, q_reps = r_point, r_reps
    else:
        q_point, q_reps = measure(qp_all, qn_all, q_split, tr_q, va_q)
    ref_i = from_replicates(r_point, r_reps.numpy(), level=level, seed=seed, what="reference AUROC")
    q_i = from_replicates(q_point, q_reps.numpy(), level=level, seed=seed, what="AUROC")
    drop_i = from_replicates(r_point - q_point, (r_reps - q_reps).numpy(), level=level, seed=seed,
                             what="AUROC drop")
    gate_reason = "" if ref_i.low > gate else (
        f"the reference's own validation AUROC at this layer is {ref_i.point:.3f} with {level:.0%} interval "
        f"{ref_i.low:.3f}..{ref_i.high:.3f} over resamples of its examples, whose lower end does not clear the "
        f"{gate:g} gate: the data do not show a readable trait for quantization to degrade")
    if reference_only:
        rb = reference_band or band
        verdict = classify_interval(ref_i, rb, what="auroc")
        j = Judgement("auroc", ref_i.point, Verdict.INCONCLUSIVE if gate_reason else verdict, rb, fail_on,
                      interval=(ref_i.low, ref_i.high), level=level, fail_on_inconclusive=fail_on_inconclusive,
                      reason=gate_reason)
    else:
        verdict = classify_interval(drop_i, band, what="auroc_drop")
        j = Judgement("auroc_drop", drop_i.point, Verdict.INCONCLUSIVE if gate_reason else verdict, band, fail_on,
                      interval=(drop_i.low, drop_i.high), level=level, fail_on_inconclusive=fail_on_inconclusive,
                      reason=gate_reason)
    return ProbeDrop(ref_i, q_i, drop_i, gate, j, (len(split.train_pos), len(split.train_neg)),
                     (len(split.val_pos), len(split.val_neg)), paired, paired_precisions or reference_only,
                     stratified=paired and strata is not None)


# --- SAE ----------------------------------------------------------------------------------------------------------

def grouped_mean(values: Tensor, groups: Tensor, *, seed: int, n_boot: int = 1000, level: float = 0.95,
                 what: str = "figure") -> tuple[Interval, int]:
    """The mean of per-token ``values`` with an interval from resampling whole groups (texts): each replicate is
    the token-weighted mean over the drawn texts, the same statistic as the point. Returns (interval, n_groups)."""
    values, groups = values.double().flatten(), groups.long().flatten()
    if len(values) == 0 or len(values) != len(groups):
        raise CellError(f"{what}: {len(values)} values for {len(groups)} group labels")
    ids, inverse = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).scatter_add_(0, inverse, values)
    counts = torch.zeros(len(ids), dtype=torch.float64).scatter_add_(0, inverse, torch.ones_like(values))
    rng = np.random.default_rng(seed)
    pick = torch.from_numpy(rng.integers(0, len(ids), size=(n_boot, len(ids))))
    reps = sums[pick].sum(1) / counts[pick].sum(1)
    point = float(sums.sum() / counts.sum())
    return from_replicates(point, reps.numpy(), level=level, seed=seed, what=what), len(ids)


def topk_self_overlap(features: Tensor, groups: Tensor, k: int, *, seed: int, n_boot: int = 1000,
                      level: float = 0.95) -> tuple[float, float]:
    """The reference's dataset-level top-k features (highest mean activation over the tokens) on resamples of the
    texts against the full set's: (median Jaccard, its low quantile). A low figure means the eval texts are too few
    to say which features the dictionary uses on them."""
    f = features.double()
    ids, inverse = torch.unique(groups.long(), return_inverse=True)
    sums = torch.zeros(len(ids), f.shape[1], dtype=torch.float64).index_add_(0, inverse, f)
    counts = torch.zeros(len(ids), dtype=torch.float64).scatter_add_(0, inverse, torch.ones(len(f), dtype=torch.float64))
    k = min(k, f.shape[1])
    full = torch.zeros(f.shape[1], dtype=torch.bool)
    full[(sums.sum(0) / counts.sum()).topk(k).indices] = True
    rng = np.random.default_rng(seed)
    pick = torch.from_numpy(rng.integers(0, len(ids), size=(n_boot, len(ids))))
    w = torch.zeros(n_boot, len(ids), dtype=torch.float64).scatter_add_(
        1, pick, torch.ones(pick.shape, dtype=torch.float64))
    means = (w @ sums) / (w @ counts)[:, None]
    top = torch.zeros(n_boot, f.shape[1], dtype=torch.bool).scatter_(1, means.topk(k, dim=1).indices, True)
    jac = (top & full).sum(1).double() / (top | full).sum(1).double()
    return float(jac.median()), float(np.quantile(jac.numpy(), tail(level)))

