"""The plan's checkpoints and autonomy rules as recorded checks on cell records (the study's ``[gates]`` table).

Checkpoint 1 gates every quantized cell on its reference: an extraction whose reference AUROC is not above the
gate, a steering cell whose reference moves its trait too little (or only at coherence the judge calls garbage), a
benchmark cell whose reference accuracy was not recorded or is exactly 0 or 1 (broken scoring) has no baseline to
degrade from, so the cell is ``inconclusive`` with ``reference baseline failed: ...`` instead of a verdict.
INVESTIGATE and DISCARD conditions leave the verdict alone: they are flags on the record, which findings.md lists
so that a reader digs into those cells before trusting them. ``apply`` runs once per cell, where the plugin records
it, so the record, its JUnit properties, baselines and matrices all see the gated result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from quant_harness._util.validate import SectionContext, check_table
from quant_harness.errors import StudyError
from quant_harness.records import CellResult

CHECKPOINT, INVESTIGATE, DISCARD = "checkpoint", "investigate", "discard"
"""The ``rule`` of a flag: a failed reference gate (the verdict was withheld), a condition to dig into, a run that
generates garbage."""
GATE_PREFIX = "reference baseline failed: "


@dataclass(frozen=True)
class GateSettings:
    """The ``[gates]`` table; every default is the plan's figure."""

    reference_auroc_min: float = 0.6
    """Checkpoint 1: every reference extraction has validation AUROC above this."""
    reference_delta_min: float = 5.0
    """Checkpoint 1: a non-trivial reference steering delta (judge points, 0-100); the plan calls a delta below +5 on
    a well-studied model implausible."""
    investigate_delta_drop: float = 0.5
    """INVESTIGATE when the steering delta drops by more than this share of the reference's."""
    investigate_auroc: float = 0.55
    """INVESTIGATE when an extraction's validation AUROC is below this (any precision)."""
    investigate_cosine: float = 0.70
    """INVESTIGATE when a vector cell's layer-mean cosine with the reference is below this."""
    investigate_hellaswag_drop: float = 0.05
    """INVESTIGATE when HellaSwag accuracy drops by more than this (absolute) from the reference."""
    discard_coherence: float = 30.0
    """DISCARD when mean coherence is below this at every coefficient a steering record scored."""
    early_stop_cosine: float | None = None
    """The plan's early stop: skip a model x precision's transfer cells (phase 5) when every trait's vector cosine
    there is above this. None: phase 5 always runs."""


_BOUNDS: dict[str, tuple[float, float, str]] = {
    "reference_auroc_min": (0.0, 1.0, "an AUROC in 0..1"),
    "reference_delta_min": (0.0, 100.0, "a judge delta in 0..100"),
    "investigate_delta_drop": (0.0, 1.0, "a share of the reference delta in 0..1"),
    "investigate_auroc": (0.0, 1.0, "an AUROC in 0..1"),
    "investigate_cosine": (-1.0, 1.0, "a cosine in -1..1"),
    "investigate_hellaswag_drop": (0.0, 1.0, "an accuracy drop in 0..1"),
    "discard_coherence": (0.0, 100.0, "a coherence score in 0..100"),
    "early_stop_cosine": (0.0, 1.0, "a cosine in 0..1"),
}


def parse(ctx: SectionContext, table: object) -> GateSettings:
    """Validate ``[gates]`` (absent: the plan's figures); a bad key or value names file, key and expectation."""
    if table is None:
        return GateSettings()
    raw = check_table(ctx.path, "gates", table, {k: (int, float) for k in _BOUNDS})
    for key, value in raw.items():
        low, high, what = _BOUNDS[key]
        if not low <= float(value) <= high:
            raise StudyError(ctx.path, f"gates.{key}", value, what)
    return GateSettings(**{k: float(v) for k, v in raw.items()})


def _number(figures: Mapping[str, Any], name: str) -> float | None:
    v = figures.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def _flag(rule: str, check: str, figure: str, value: float | None, threshold: float, text: str) -> dict[str, Any]:
    return {"rule": rule, "check": check, "figure": figure, "value": value, "threshold": threshold, "text": text}


def _garbage(figures: Mapping[str, Any], names: tuple[str, ...], floor: float) -> float | None:
    """The best coherence among ``names`` when every one recorded is below ``floor`` (else None)."""
    values = [v for n in names if (v := _number(figures, n)) is not None]
    return max(values) if values and max(values) < floor else None


def reference_failures(result: CellResult, s: GateSettings, reference_auroc: float | None) -> list[dict[str, Any]]:
    """Checkpoint 1 for a quantized cell: which of its reference's gates failed (empty: the baseline stands).

    ``reference_auroc`` is the reference precision's validation AUROC of the cell's trait and method (the
    reference probe cell's ``auroc_reference``), or None for cells without an extraction (benchmarks)."""
    f, out = result.figures, []
    if reference_auroc is not None and not reference_auroc > s.reference_auroc_min:
        out.append(_flag(CHECKPOINT, "reference_auroc", "auroc_reference", reference_auroc, s.reference_auroc_min,
                         f"reference AUROC {reference_auroc:.3f} is not above {s.reference_auroc_min:g}"))
    if result.kind == "steering":
        delta = _number(f, "delta_reference")
        if delta is not None and delta < s.reference_delta_min:
            out.append(_flag(CHECKPOINT, "reference_delta", "delta_reference", delta, s.reference_delta_min,
                             f"reference steering delta {delta:+.1f} is below +{s.reference_delta_min:g}"))
        best = _garbage(f, ("coherence_reference", "baseline_coherence_reference"), s.discard_coherence)
        if best is not None:
            out.append(_flag(CHECKPOINT, "reference_coherence", "coherence_reference", best, s.discard_coherence,
                             f"reference coherence is below {s.discard_coherence:g} at every coefficient scored "
                             f"(best {best:.1f}): the reference generates garbage"))
    if result.kind == "benchmarks":
        acc = _number(f, "reference_accuracy")
        task = f.get("task", "the task")
        if acc is None:
            out.append(_flag(CHECKPOINT, "reference_accuracy", "reference_accuracy", None, 0.0,
                             f"{task} reference accuracy was not recorded"))
        elif acc in (0.0, 1.0):
            out.append(_flag(CHECKPOINT, "reference_accuracy", "reference_accuracy", acc, acc,
                             f"{task} reference accuracy is exactly {acc:g}: scoring is broken"))
    return out


def conditions(result: CellResult, s: GateSettings) -> list[dict[str, Any]]:
    """The INVESTIGATE and DISCARD conditions a record meets, at any precision."""
    f, out, k = result.figures, [], result.kind
    if k == "steering" and (drop := _number(f, "degradation")) is not None and drop > s.investigate_delta_drop:
        out.append(_flag(INVESTIGATE, "delta_drop", "degradation", drop, s.investigate_delta_drop,
                         f"steering delta drops {drop:.0%} from the reference (more than "
                         f"{s.investigate_delta_drop:.0%}): check the coefficient range, read the responses"))
    if k == "probes" and (auroc := _number(f, "auroc")) is not None and auroc < s.investigate_auroc:
        out.append(_flag(INVESTIGATE, "auroc", "auroc", auroc, s.investigate_auroc,
                         f"validation AUROC {auroc:.3f} is below {s.investigate_auroc:g}: check the dataset, "
                         "activations and position"))
    if k == "vectors" and (cos := _number(f, "cosine_mean")) is not None and cos < s.investigate_cosine:
        out.append(_flag(INVESTIGATE, "cosine", "cosine_mean", cos, s.investigate_cosine,
                         f"cosine {cos:.3f} with the reference is below {s.investigate_cosine:g}: check for "
                         "extraction failures and near-zero vectors"))
    if k == "benchmarks" and "hellaswag" in str(f.get("task", "")) \
            and (drop := _number(f, "accuracy_drop")) is not None and drop > s.investigate_hellaswag_drop:
        out.append(_flag(INVESTIGATE, "hellaswag_drop", "accuracy_drop", drop, s.investigate_hellaswag_drop,
                         f"HellaSwag accuracy drops {drop:.3f} (more than {s.investigate_hellaswag_drop:g}): "
                         "likely a loading problem, not quantization"))
    if k == "steering":
        best = _garbage(f, ("coherence", "baseline_coherence"), s.discard_coherence)
        if best is not None:
            out.append(_flag(DISCARD, "coherence", "coherence", best, s.discard_coherence,
                             f"coherence is below {s.discard_coherence:g} at every coefficient scored (best "
                             f"{best:.1f}): the model generates garbage (an OOM or loading problem); discard and "
                             "re-run"))
    return out


def apply(result: CellResult, s: GateSettings, *, quantized: bool, reference_auroc: float | None) -> CellResult:
    """The record with its flags, and, for a quantized cell whose reference failed Checkpoint 1, the verdict
    withheld: ``inconclusive`` with ``reference baseline failed: <gate, figure>`` before the cell's own
    explanation (which keeps the verdict the figures alone would have had)."""
    failed = reference_failures(result, s, reference_auroc) if quantized else []
    flags = [*result.flags, *failed, *conditions(result, s)]
    if not failed:
        return replace(result, flags=flags)
    reason = GATE_PREFIX + "; ".join(x["text"] for x in failed)
    return replace(result, verdict="inconclusive", flags=flags,
                   explanation=f"{reason} (verdict from the figures alone: {result.verdict}); {result.explanation}")


def early_stop(cosines: Mapping[str, float], threshold: float | None) -> str | None:
    """The plan's early stop for one model x precision: the skip reason of its transfer cells when every trait's
    vector cosine (trait key -> layer-mean cosine) is above ``threshold``, else None."""
    if threshold is None or not cosines or min(cosines.values()) <= threshold:
        return None
    low = min(cosines, key=cosines.__getitem__)
    return (f"early stop ([gates] early_stop_cosine = {threshold:g}): every vector cosine at this precision is above "
            f"it (lowest {low} {cosines[low]:.3f}), so reference vectors steer it as their own would; phase 5 skipped")
