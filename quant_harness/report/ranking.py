"""Robustness rankings from the matrices: methods, models, families, size scaling, quantization schemes.

Each record's headline figure becomes a *degradation* (0 = identical to the reference, larger = worse) so that
cells of one kind can be averaged across conditions; kinds are never mixed, since a cosine and an accuracy drop
are not on one scale. Means come with seeded bootstrap intervals, and paired differences (probe vs mean_diff on
the same model, precision and trait; INT8 vs NF4 on the same model and trait) with theirs.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from quant_harness.metrics.confidence import bootstrap_ci
from quant_harness.records import Record
from quant_harness.study.ids import split_cell_id
from quant_harness.study.kinds import KINDS

METHOD_NAMES = ("mean_diff", "probe", "pca", "file")
SEED = 0
MEASURE = ("degradation of the headline figure: 1 - value for figures where 1 is perfect (cosine, AUROC, "
           "correlation, overlap, transfer ratio), the value itself for drops and degradations; lower is more robust")


def degradation(record: Record) -> float | None:
    """How far a cell is from its reference on a 0-is-perfect scale, or None when its metric is not the banded
    headline of its kind (an inconclusive cell's effect size): the kind registry says which way the metric goes;
    every banded headline is either 1-is-perfect (cosine, AUROC, correlation, overlap, ratio) or 0-is-perfect."""
    metric, value = str(record.get("metric", "")), record.get("value")
    spec = KINDS.get(str(record.get("kind", "")))
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    if spec is None or metric not in spec.banded or spec.direction(metric) == 0:
        return None
    return float(value) if spec.direction(metric) < 0 else 1.0 - float(value)


def method_of(subject: str) -> str:
    head, _, tail = subject.rpartition("-")
    return tail if head and tail in METHOD_NAMES else ""


def _card_info(model: str, record: Record, cards_dir: Path | None) -> dict[str, Any]:
    info = dict(record.get("provenance", {}).get("model_card") or {})
    if info.get("family") and cards_dir is None:
        return info
    from quant_harness import data
    from quant_harness.errors import StudyError
    from quant_harness.models.cards import load_card

    folder = cards_dir or data.path("model_cards")
    try:
        card = load_card(model, folder)
    except StudyError:
        return info
    return {"family": card.family, "params_b": card.params_b, "massive_dims_ratio": card.massive_dims_ratio, **info}


def _summary(name: str, values: list[float], **extra: Any) -> dict[str, Any]:
    ci = bootstrap_ci(values, seed=SEED, n=1000, what=f"degradation of {name}")
    return {"name": name, "mean_degradation": ci.point, "ci_low": ci.low, "ci_high": ci.high, "n": len(values),
            **extra}


def _ranked(groups: dict[str, list[float]], extra: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    rows = [_summary(k, v, **(extra or {}).get(k, {})) for k, v in groups.items() if v]
    return sorted(rows, key=lambda r: (r["mean_degradation"], r["name"]))


def _paired(items: list[tuple[str, str, float]], a: str, b: str) -> dict[str, Any] | None:
    """Mean of (b - a) degradations over conditions measured for both; negative means b is more robust."""
    by_cond: dict[str, dict[str, float]] = {}
    for cond, what, d in items:
        by_cond.setdefault(cond, {})[what] = d
    diffs = [v[b] - v[a] for v in by_cond.values() if a in v and b in v]
    if not diffs:
        return None
    ci = bootstrap_ci(diffs, seed=SEED, n=1000, what=f"{b} - {a}")
    return {"a": a, "b": b, "mean_difference_b_minus_a": ci.point, "ci_low": ci.low, "ci_high": ci.high,
            "n_pairs": len(diffs), "b_more_robust": ci.high < 0, "a_more_robust": ci.low > 0}


def rank_kind(records: list[Record], cards_dir: Path | None = None) -> dict[str, Any]:
    """Rankings over the records of one kind."""
    methods: dict[str, list[float]] = {}
    models: dict[str, list[float]] = {}
    families: dict[str, list[float]] = {}
    precisions: dict[str, list[float]] = {}
    model_extra: dict[str, dict[str, Any]] = {}
    by_method: list[tuple[str, str, float]] = []
    by_precision: list[tuple[str, str, float]] = []
    metrics = sorted({str(r.get("metric")) for r in records})
    for r in records:
        d = degradation(r)
        if d is None:
            continue
        name = split_cell_id(r["cell_id"], r)
        if name.precision == r.get("provenance", {}).get("reference"):
            continue  # a reference cell (probes, benchmarks) has no degradation from itself
        method = method_of(name.subject)
        info = _card_info(name.model, r, cards_dir)
        model_extra[name.model] = {"family": info.get("family", ""), "params_b": info.get("params_b", 0.0)}
        models.setdefault(name.model, []).append(d)
        families.setdefault(str(info.get("family") or "unknown"), []).append(d)
        precisions.setdefault(name.precision, []).append(d)
        if method:
            methods.setdefault(method, []).append(d)
            trait = name.subject.rpartition("-")[0]
            by_method.append((f"{name.model}/{name.precision}/{trait}", method, d))
        by_precision.append((f"{name.model}/{name.subject}", name.precision, d))
    sizes: dict[str, list[dict[str, Any]]] = {}
    for m, extra in model_extra.items():
        sizes.setdefault(str(extra["family"] or "unknown"), []).append(
            {"model": m, "params_b": extra["params_b"], "mean_degradation": statistics.fmean(models[m])})
    scaling = {fam: sorted(rows, key=lambda x: x["params_b"]) for fam, rows in sizes.items()
               if len({x["params_b"] for x in rows}) > 1}
    pairs = {f"{b}_vs_{a}": _paired(items, a, b) for items, a, b in (
        (by_method, "mean_diff", "probe"), (by_precision, "nf4", "int8"), (by_precision, "nf4", "gptq"),
        (by_precision, "int8", "gptq"))}
    return {
        "metrics": metrics, "n_records": len(records),
        "methods": _ranked(methods), "models": _ranked(models, model_extra), "families": _ranked(families),
        "precisions": _ranked(precisions),
        "size_scaling": scaling or None,
        "size_scaling_note": "" if scaling else "needs two or more sizes of one family (e.g. llama-8b and llama-70b)",
        "paired": {k: v for k, v in pairs.items() if v is not None},
    }


def rank(records: list[Record], *, cards_dir: Path | None = None) -> dict[str, Any]:
    """robustness_ranking.json: per kind, methods/models/families/precisions ranked by mean degradation."""
    by_kind: dict[str, list[Record]] = {}
    for r in sorted(records, key=lambda x: (str(x.get("kind")), str(x.get("cell_id")))):
        by_kind.setdefault(str(r.get("kind", "?")), []).append(r)
    return {"schema_version": 1, "measure": MEASURE, "seed": SEED,
            "by_kind": {k: rank_kind(v, cards_dir) for k, v in sorted(by_kind.items())}}
