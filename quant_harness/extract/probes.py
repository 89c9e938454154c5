"""Probe validation from the activation cache: fit a direction on a train split, score AUROC per layer on the rest.

A vector that looks stable under quantization is worth little if it never separated the classes; this measures
separation on held-out examples at every precision (reference included) without touching a model, so a study can
try layers and methods in seconds once activations are cached.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import torch
from torch import Tensor

from quant_harness.metrics import tensors as metrics
from quant_harness.extract.datasets import ContrastSet
from quant_harness.errors import CellError
from quant_harness.extract.methods import METHODS
from quant_harness.records import CellResult
from quant_harness.study.spec import Cell
from quant_harness.metrics.verdicts import judge

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner

REFERENCE_FLOOR = 0.6
"""Below this best-layer AUROC on the reference precision the trait is not linearly readable: flagged."""


class Split(NamedTuple):
    """Row indices of the train and validation parts of each class."""

    train_pos: list[int]
    val_pos: list[int]
    train_neg: list[int]
    val_neg: list[int]


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


def answer_letters(contrast: ContrastSet) -> list[str]:
    """CAA: the matching answer's letter per pair (the positive prompt is prefilled up to it, e.g. "(A")."""
    return [p.prefill.strip("( ") for p in contrast.pos]


def _scores(x: Tensor, direction: Tensor, normalize: bool) -> Tensor:
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ direction


def layer_aurocs(pos: Tensor, neg: Tensor, s: Split, method: str,
                 fixed: dict[int, Tensor] | None = None, layers: list[int] | None = None) -> list[float]:
    """Validation AUROC per layer of ``pos/neg [N, n_layers, d]``: direction from the train split (or ``fixed``)."""
    out = []
    for i in range(pos.shape[1]):
        tp, tn = pos[s.train_pos, i], neg[s.train_neg, i]
        if fixed is not None and layers is not None:
            direction = fixed[layers[i]].float()
        else:
            direction = METHODS[method](tp, tn)
        vp, vn = pos[s.val_pos, i], neg[s.val_neg, i]
        normalize = method == "probe"
        out.append(metrics.auroc(_scores(vp, direction, normalize), _scores(vn, direction, normalize)))
    return out


def probe_comparison(runner: CellRunner, cell: Cell) -> CellResult:
    """Validation AUROC per layer of the cell's method at its precision, beside the reference precision's."""
    study, trait = runner.study, runner.study.trait(cell.trait)

    def measure(precision: str) -> tuple[list[float], Split]:
        entry = runner.activations(cell.model, precision, trait)
        pos, neg = entry.tensors["pos"], entry.tensors["neg"]
        layers = list(entry.meta["components"]["layers"])
        contrast = runner.contrast(trait)
        paired = contrast.paired and len(pos) == len(neg)
        strata = answer_letters(contrast) if paired and contrast.format == "caa" else None
        s = split(len(pos), len(neg), paired=paired, val_fraction=study.probe_val_fraction, seed=study.seed,
                  strata=strata)
        fixed = runner.vectors(cell.model, precision, trait, "file") if cell.method == "file" else None
        return layer_aurocs(pos, neg, s, cell.method, fixed, layers), s

    aurocs, s = measure(cell.precision)
    layers = list(runner.activations(cell.model, cell.precision, trait).meta["components"]["layers"])
    best = max(range(len(aurocs)), key=aurocs.__getitem__)
    figures: dict[str, Any] = {
        "auroc_best": aurocs[best], "auroc_best_layer": layers[best], "auroc_mean": statistics.fmean(aurocs),
        "n_train": len(s.train_pos) + len(s.train_neg), "n_val": len(s.val_pos) + len(s.val_neg),
        "val_fraction": study.probe_val_fraction, "n_layers": len(layers),
    }
    if trait.format == "caa":
        letters = answer_letters(runner.contrast(trait))
        figures["val_matching_letters"] = {x: sum(letters[i] == x for i in s.val_pos) for x in sorted(set(letters))}
    per_layer: dict[str, list[float]] = {"auroc": aurocs}
    flag = ""
    if cell.precision == study.reference:
        ref = aurocs
    else:
        ref, _ = measure(study.reference)
        per_layer["auroc_reference"] = ref
        figures["auroc_reference_at_best"] = ref[best]
        figures["auroc_drop_max"] = max(r - a for r, a in zip(ref, aurocs))
    ref_best = max(ref)
    figures["auroc_reference_best"] = ref_best
    figures["reference_flagged"] = ref_best < REFERENCE_FLOOR
    if ref_best < REFERENCE_FLOOR:
        flag = (f"; FLAGGED: the reference precision's best validation AUROC is {ref_best:.3f} < "
                f"{REFERENCE_FLOOR}, so this trait is not linearly readable and quantized comparisons say little")
    j = judge("auroc_best", aurocs[best], study.bands["auroc"], study.fail_on)
    return CellResult(cell_id=cell.id, kind="probes", verdict=j.verdict.label, metric="auroc_best",
                      value=aurocs[best], figures=figures, per_layer=per_layer, layers=layers,
                      explanation=j.explain() + flag, provenance=runner.provenance(cell, trait))
