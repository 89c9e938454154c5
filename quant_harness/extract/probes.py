"""Probe validation from the activation cache: fit a direction on a train split, score AUROC on the rest.

A vector that looks stable under quantization is worth little if it never separated the classes; this measures
separation on held-out examples at every precision (reference included) without touching a model, so a study can
try layers and methods in seconds once activations are cached.

The verdict is judged at one layer, chosen by cross-validation on the reference's *train* split (the validation
split never picks it: the best of ~30 layers on a 6-vs-6 split reads 0.83 under no signal at all). There a paired
bootstrap (train and validation examples resampled, the same draw at both precisions, directions refit on each)
gives intervals of the reference AUROC, the quantized AUROC and their drop (quant_harness.metrics.resample
.probe_drop). A quantized cell bands the drop (``auroc_drop``); the reference cell bands its own AUROC (``auroc``).
Either is judged only when the reference's AUROC interval clears REFERENCE_FLOOR, else it is inconclusive.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from quant_harness.errors import CellError
from quant_harness.extract import derived, methods
from quant_harness.extract.vectors import answer_letters, rows_correspond, strata_of
from quant_harness.metrics import resample
from quant_harness.metrics import tensors as metrics
from quant_harness.metrics.resample import Split
from quant_harness.metrics.verdicts import DEFAULT_BANDS
from quant_harness.records import CellResult
from quant_harness.study.spec import Cell

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner

REFERENCE_FLOOR = 0.6
"""The reference gate: unless the lower end of the reference's validation AUROC interval (at the chosen layer) is
above this, the data do not show a linearly readable trait and every probe cell of it is inconclusive."""
CV_FOLDS = 5
"""Folds of the train-split cross-validation that chooses the layer."""

__all__ = ["REFERENCE_FLOOR", "Split", "answer_letters", "layer_aurocs", "probe_comparison", "split"]


def split(n_pos: int, n_neg: int, *, paired: bool, val_fraction: float, seed: int,
          strata: Sequence[str] | None = None) -> Split:
    """A seeded split; paired sets split by pair index so a pair never straddles train and validation.

    ``strata`` (paired sets) labels each pair, e.g. CAA's matching answer letter: each label is split on its own, so
    both parts hold the letters in the data's proportion and a probe cannot score by reading "A" vs "B".
    """
    if not 0.0 < val_fraction < 1.0:
        raise CellError(f"probe_val_fraction {val_fraction}: expected a fraction strictly between 0 and 1")
    g = torch.Generator().manual_seed(seed)

    def cut(n: int, perm: list[int]) -> tuple[list[int], list[int]]:
        n_val = max(1, round(n * val_fraction))
        if n - n_val < 1:
            raise CellError(f"cannot split {n} examples into train and validation (fraction {val_fraction})")
        return sorted(perm[n_val:]), sorted(perm[:n_val])

    if paired:
        if n_pos != n_neg:
            raise CellError(f"paired split needs equal classes; got {n_pos} positive and {n_neg} negative")
        if strata is None:
            tr, va = cut(n_pos, torch.randperm(n_pos, generator=g).tolist())
            return Split(tr, va, tr, va)
        if len(strata) != n_pos:
            raise CellError(f"{len(strata)} strata labels for {n_pos} pairs")
        tr, va = [], []
        for label in sorted(set(strata)):
            members = [i for i, x in enumerate(strata) if x == label]
            if len(members) < 2:
                raise CellError(f"only {len(members)} pair labelled {label!r}: a stratified split needs at least two "
                                f"per label, one for train and one for validation")
            t, v = cut(len(members), [members[j] for j in torch.randperm(len(members), generator=g).tolist()])
            tr += t
            va += v
        return Split(sorted(tr), sorted(va), sorted(tr), sorted(va))
    tp, vp = cut(n_pos, torch.randperm(n_pos, generator=g).tolist())
    tn, vn = cut(n_neg, torch.randperm(n_neg, generator=g).tolist())
    return Split(tp, vp, tn, vn)


def _scores(x: Tensor, direction: Tensor, normalize: bool) -> Tensor:
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ direction


def layer_aurocs(pos: Tensor, neg: Tensor, s: Split, method: str,
                 fixed: dict[int, Tensor] | None = None, layers: list[int] | None = None, *,
                 paired: bool = True) -> list[float]:
    """Validation AUROC per layer of ``pos/neg [N, n_layers, d]``: direction from the train split (or ``fixed``).

    A diagnostic (the per-layer curves of a report): the verdict never reads the best of these."""
    out = []
    for i in range(pos.shape[1]):
        tp, tn = pos[s.train_pos, i], neg[s.train_neg, i]
        if fixed is not None and layers is not None:
            direction = fixed[layers[i]].float()
        else:
            direction = methods.for_contrast(method, paired=paired)(tp, tn)
        vp, vn = pos[s.val_pos, i], neg[s.val_neg, i]
        normalize = method == "probe"
        out.append(metrics.auroc(_scores(vp, direction, normalize), _scores(vn, direction, normalize)))
    return out


def probe_comparison(runner: CellRunner, cell: Cell) -> CellResult:
    """Validation AUROC of the cell's method at a layer chosen on the reference's train split: the drop from the
    reference (quantized cells) or the reference's own AUROC (reference cell), each with its bootstrap interval."""
    study, trait = runner.study, runner.study.trait(cell.trait)
    contrast = runner.contrast(trait)
    is_ref = cell.precision == study.reference
    ref_e = runner.activations(cell.model, study.reference, trait)
    q_e = ref_e if is_ref else runner.activations(cell.model, cell.precision, trait)
    layers = list(ref_e.meta["components"]["layers"])
    rp, rn, qp, qn = ref_e.tensors["pos"], ref_e.tensors["neg"], q_e.tensors["pos"], q_e.tensors["neg"]
    paired = contrast.paired and len(rp) == len(rn) and len(qp) == len(qn)
    same_rows = is_ref or rows_correspond(ref_e, q_e)
    fixed = runner.vectors(cell.model, study.reference, trait, "file") if cell.method == "file" else None
    bands = {"auroc": study.bands["auroc"], "auroc_drop": study.bands.get("auroc_drop", DEFAULT_BANDS["auroc_drop"])}
    comps = {"activations": derived.digest([rp, rn] if is_ref else [rp, rn, qp, qn]), "layers": layers,
             "paired": paired, "paired_precisions": same_rows, "format": contrast.format,
             "letters": answer_letters(contrast) if contrast.format == "caa" else None,
             "fixed": None if fixed is None else derived.digest(fixed[L] for L in layers),
             **derived.statistics_settings(study, bands)}
    return derived.cached_result(
        runner, cell, ("quant_harness.extract.probes",), comps,
        lambda: _compare(runner, cell, layers, (rp, rn, qp, qn), paired, same_rows, fixed),
        lambda: runner.provenance(cell, trait))


def _compare(runner: CellRunner, cell: Cell, layers: list[int], acts: tuple[Tensor, Tensor, Tensor, Tensor],
             paired: bool, same_rows: bool, fixed: dict[int, Tensor] | None) -> CellResult:
    """The comparison itself, without provenance (``derived.cached_result`` adds it on every run)."""
    study, trait = runner.study, runner.study.trait(cell.trait)
    contrast = runner.contrast(trait)
    is_ref = cell.precision == study.reference
    rp, rn, qp, qn = acts

    def split_of(n_pos: int, n_neg: int) -> Split:
        strata = answer_letters(contrast) if paired and contrast.format == "caa" else None
        return split(n_pos, n_neg, paired=paired, val_fraction=study.probe_val_fraction, seed=study.seed,
                     strata=strata)

    s_ref = split_of(len(rp), len(rn))
    s_q = s_ref if same_rows else split_of(len(qp), len(qn))
    normalize = cell.method == "probe"
    if fixed is not None:
        per_layer_method: list[resample.BatchedMethod] = [methods.fixed_direction(fixed[L]) for L in layers]
    else:
        per_layer_method = [methods.resampled(cell.method, paired=paired)] * len(layers)
    strata = strata_of(contrast, paired)
    chosen, cv = resample.select_layer(rp, rn, s_ref, per_layer_method, paired=paired, normalize=normalize,
                                       seed=study.seed, k=CV_FOLDS, strata=strata)
    bands = study.bands
    pd = resample.probe_drop(
        rp, rn, None if is_ref else qp, None if is_ref else qn, s_ref, chosen, per_layer_method[chosen],
        bands.get("auroc_drop", DEFAULT_BANDS["auroc_drop"]), seed=study.seed, n_boot=study.bootstrap_n,
        level=study.ci_level, paired=paired, paired_precisions=same_rows, normalize=normalize,
        gate=REFERENCE_FLOOR, reference_band=bands["auroc"], quant_split=None if same_rows else s_q, strata=strata,
        fail_on=study.fail_on, fail_on_inconclusive=study.fail_on_inconclusive)
    aurocs = layer_aurocs(qp, qn, s_q, cell.method, fixed, layers, paired=paired)
    figures: dict[str, Any] = {
        **pd.figures(), "auroc_layer": layers[chosen], "auroc_cv_reference_at_layer": cv[chosen],
        "layer_choice": f"highest mean held-out AUROC of {CV_FOLDS}-fold cross-validation on the reference's "
                        f"train split",
        "auroc_mean": statistics.fmean(aurocs), "reference_flagged": not pd.gate_passed,
        "n_train": len(s_q.train_pos) + len(s_q.train_neg), "n_val": len(s_q.val_pos) + len(s_q.val_neg),
        "val_fraction": study.probe_val_fraction, "n_layers": len(layers),
    }
    if trait.format == "caa":
        letters = answer_letters(contrast)
        figures["val_matching_letters"] = {x: sum(letters[i] == x for i in s_q.val_pos) for x in sorted(set(letters))}
    per_layer: dict[str, list[float]] = {"auroc": aurocs, "auroc_cv_reference": cv}
    if not is_ref:
        per_layer["auroc_reference"] = layer_aurocs(rp, rn, s_ref, cell.method, fixed, layers, paired=paired)
    j = pd.judgement
    notes = [(f"layer {layers[chosen]} chosen by {CV_FOLDS}-fold cross-validation on the reference's train split "
              f"(CV AUROC {cv[chosen]:.3f}), never by the validation split"),
             f"reference AUROC {pd.reference.point:.3f} ({pd.reference.low:.3f}..{pd.reference.high:.3f})"
             + ("" if is_ref else f", quantized {pd.quantized.point:.3f} "
                                  f"({pd.quantized.low:.3f}..{pd.quantized.high:.3f})"),
             f"resampled: {pd.resampled()}"]
    if cell.method == "pca" and not paired:
        notes.append("unpaired data: PCA of every positive-negative difference (no file-order pairing)")
    return CellResult(cell_id=cell.id, kind="probes", verdict=j.verdict.label, metric=j.metric,
                      value=j.value, figures=figures, per_layer=per_layer, layers=layers,
                      explanation="; ".join([j.explain(), *notes]))
