"""The ``vectors`` kind: per-layer cosine of a trait's vectors at a quantized precision against the reference's."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from quant_harness.metrics import tensors as metrics
from quant_harness.metrics.confidence import bootstrap_ci, judge_interval
from quant_harness.records import CellResult
from quant_harness.study.spec import Cell

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner


def vector_comparison(runner: CellRunner, cell: Cell) -> CellResult:
    """Per-layer cosine of the cell's vectors against the reference precision's, norms, massive-dim energy."""
    study, trait = runner.study, runner.study.trait(cell.trait)
    ref = runner.vectors(cell.model, study.reference, trait, cell.method)
    quant = runner.vectors(cell.model, cell.precision, trait, cell.method)
    layers = sorted(ref)
    k = study.massive_dims_k
    cos = [metrics.cosine(ref[L], quant[L], what=f"cell {cell.id}: layer {L} vector") for L in layers]
    per_layer = {
        "cosine": cos,
        "norm_reference": [float(ref[L].norm()) for L in layers],
        "norm": [float(quant[L].norm()) for L in layers],
        "massive_dim_energy_reference": [metrics.massive_dim_energy(ref[L], k) for L in layers],
        "massive_dim_energy": [metrics.massive_dim_energy(quant[L], k) for L in layers],
    }
    mean_cos = statistics.fmean(cos)
    worst = min(range(len(cos)), key=cos.__getitem__)
    ci = bootstrap_ci(cos, seed=study.seed, n=study.bootstrap_n, level=study.ci_level,
                      what=f"cell {cell.id}: cosine over layers")
    j = judge_interval("cosine", ci, study.bands["cosine"], study.fail_on, study.fail_on_inconclusive)
    figures = {
        "cosine_mean": mean_cos, "cosine_min": cos[worst], "cosine_min_layer": layers[worst],
        "cosine_max": max(cos), "norm_ratio_mean": statistics.fmean(
            q / r for q, r in zip(per_layer["norm"], per_layer["norm_reference"])),
        "massive_dim_energy_mean": statistics.fmean(per_layer["massive_dim_energy"]),
        "n_layers": len(layers), **ci.figures("cosine_mean"),
    }
    return CellResult(
        cell_id=cell.id, kind="vectors", verdict=j.verdict.label, metric="cosine_mean", value=mean_cos,
        figures=figures, per_layer=per_layer, layers=layers, explanation=j.explain(),
        provenance=runner.provenance(cell, trait))
