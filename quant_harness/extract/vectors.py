"""The ``vectors`` kind: per-layer cosine of a trait's vectors at a quantized precision against the reference's.

The verdict comes from quant_harness.metrics.resample.vector_agreement on the cached activations (no model work):
a paired bootstrap over the contrast examples (the same resample at both precisions) gives the interval of the
layer-mean cosine, and the reference's self-cosine over the same resamples is the noise floor that decides whether
the data can tell a quantization shift from the noise of its few dozen examples.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from quant_harness.extract import derived, methods
from quant_harness.metrics import resample
from quant_harness.metrics import tensors as metrics
from quant_harness.records import CellResult
from quant_harness.study.spec import Cell

if TYPE_CHECKING:
    from torch import Tensor

    from quant_harness.extract.datasets import ContrastSet
    from quant_harness.protocols import CellRunner


def answer_letters(contrast: ContrastSet) -> list[str]:
    """CAA: the matching answer's letter per pair (the positive prompt is prefilled up to it, e.g. "(A")."""
    return [p.prefill.strip("( ") for p in contrast.pos]


def strata_of(contrast: ContrastSet, paired: bool) -> list[str] | None:
    """The labels pairs are resampled within: CAA's matching answer letter (its sets balance A and B so that the
    letter's own direction cancels), else none."""
    return answer_letters(contrast) if paired and contrast.format == "caa" else None


def rows_correspond(ref: Any, quant: Any) -> bool:
    """Whether row i of two activation entries (``Entry``) is the same example at both precisions, so that both can
    take the same bootstrap resample. Prompt datasets (CAA, Arditi) always line up; PV rollouts line up when both
    read the same responses (replay) or every pair was kept at both precisions."""
    for side in ("pos", "neg"):
        if ref.tensors[side].shape[0] != quant.tensors[side].shape[0]:
            return False
    ri, qi = ref.meta.get("info", {}), quant.meta.get("info", {})
    if "kept_pairs" not in ri and "kept_pairs" not in qi:
        return True
    if ri.get("responses_from") is not None and ri.get("responses_from") == qi.get("responses_from"):
        return True
    return bool(ri.get("kept_pairs") == ri.get("n_pairs") and qi.get("kept_pairs") == qi.get("n_pairs"))


def reference_side(runner: CellRunner, cell: Cell) -> None:
    """What a quantized vector, probe or transfer-vector cell reads of the reference: its activations (KindSpec)."""
    runner.activations(cell.model, runner.study.reference, runner.study.trait(cell.trait))


def vector_comparison(runner: CellRunner, cell: Cell) -> CellResult:
    """Per-layer cosine of the cell's vectors against the reference precision's, its paired bootstrap interval and
    the reference's self-agreement floor, norms, massive-dim energy."""
    study, trait = runner.study, runner.study.trait(cell.trait)
    contrast = runner.contrast(trait)
    ref_e = runner.activations(cell.model, study.reference, trait)
    q_e = runner.activations(cell.model, cell.precision, trait)
    layers = list(ref_e.meta["components"]["layers"])
    rp, rn, qp, qn = ref_e.tensors["pos"], ref_e.tensors["neg"], q_e.tensors["pos"], q_e.tensors["neg"]
    paired = contrast.paired and len(rp) == len(rn) and len(qp) == len(qn)
    same_rows = rows_correspond(ref_e, q_e)
    strata = strata_of(contrast, paired)
    comps = {"activations": derived.digest([rp, rn, qp, qn]), "layers": layers, "paired": paired,
             "paired_precisions": same_rows, "strata": strata,
             **derived.statistics_settings(study, {"cosine": study.bands["cosine"]})}
    return derived.cached_result(
        runner, cell, ("quant_harness.extract.vectors",), comps,
        lambda: _compare(runner, cell, layers, rp, rn, qp, qn, paired, same_rows, strata),
        lambda: runner.provenance(cell, trait))


def _compare(runner: CellRunner, cell: Cell, layers: list[int], rp: Tensor, rn: Tensor, qp: Tensor, qn: Tensor,
             paired: bool, same_rows: bool, strata: list[str] | None) -> CellResult:
    """The comparison itself, without provenance (``derived.cached_result`` adds it on every run)."""
    study = runner.study
    a = resample.vector_agreement(
        rp, rn, qp, qn, methods.resampled(cell.method, paired=paired), study.bands["cosine"], seed=study.seed,
        n_boot=study.bootstrap_n, level=study.ci_level, paired=paired, paired_precisions=same_rows,
        align_to_mean_diff=cell.method == "pca", strata=strata, layers=layers,
        fail_on=study.fail_on, fail_on_inconclusive=study.fail_on_inconclusive)
    k = study.massive_dims_k
    cos = a.cosine
    per_layer = {
        "cosine": cos,
        "self_cosine_reference": a.self_cosine,
        "norm_reference": [float(v.norm()) for v in a.reference],
        "norm": [float(v.norm()) for v in a.quantized],
        "massive_dim_energy_reference": [metrics.massive_dim_energy(v, k) for v in a.reference],
        "massive_dim_energy": [metrics.massive_dim_energy(v, k) for v in a.quantized],
    }
    mean_cos = a.value
    worst = min(range(len(cos)), key=cos.__getitem__)
    figures = {
        "cosine_mean": mean_cos, "cosine_min": cos[worst], "cosine_min_layer": layers[worst],
        "cosine_max": max(cos), "norm_ratio_mean": statistics.fmean(
            q / r for q, r in zip(per_layer["norm"], per_layer["norm_reference"])),
        "massive_dim_energy_mean": statistics.fmean(per_layer["massive_dim_energy"]),
        "n_layers": len(layers), **a.figures(),
    }
    notes = [f"resampled: {a.resampled()}",
             (f"reference self-cosine median {a.self_mean:.4f}, {resample.tail(a.interval.level):.1%} quantile "
              f"{a.self_low:.4f}; quantization shift 1-cos {1 - mean_cos:.4f} against the reference's own "
              f"1-self {1 - a.self_mean:.4f}")]
    if cell.method == "pca":
        checks = [methods.pca_sign_check(v_r, v_q, rp[:, i].double().mean(0) - rn[:, i].double().mean(0))
                  for i, (v_r, v_q) in enumerate(zip(a.reference, a.quantized))]
        per_layer["pca_mean_diff_cosine_reference"] = [c[0] for c in checks]
        per_layer["cosine_signed_to_mean_diff"] = [c[1] for c in checks]
        flips = [L for L, c in zip(layers, checks) if c[1] < 0]
        figures["pca_sign_unpinned_layers"] = flips
        notes.append("PCA: the reference's vector signed to agree with its mean difference, the quantized vector "
                     "with the reference's" + (f"; at layers {flips} PC1 is nearly orthogonal to the mean difference "
                                               "and signing each precision to it would flip the same axis"
                                               if flips else ""))
        if not paired:
            notes.append("unpaired data: PCA of every positive-negative difference (no file-order pairing)")
    return CellResult(
        cell_id=cell.id, kind="vectors", verdict=a.judgement.verdict.label, metric="cosine_mean", value=mean_cos,
        figures=figures, per_layer=per_layer, layers=layers, explanation="; ".join([a.judgement.explain(), *notes]))
