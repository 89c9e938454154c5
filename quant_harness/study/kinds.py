"""The registry of cell kinds: one ``KindSpec`` entry says everything about a kind.

Its grid shape (which models, precisions, traits and methods get a cell), the function that computes a cell (a lazy
``"module:function"`` string, as lm-eval's model registry does, so a kind's heavy libraries load only when its cells
run), the result matrix it is written to, the study table it reads and the band its verdict is judged in. Adding a
kind means one module with its compute function, one entry here and its test module; ``cells`` and the report
layer read everything else from the entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quant_harness.bench.settings import BenchmarkSettings
from quant_harness.errors import StudyError
from quant_harness.metrics.verdicts import Band
from quant_harness.sae.settings import cell_names as sae_cell_names
from quant_harness.study.spec import Cell, Study, TraitSpec

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner
    from quant_harness.records import CellResult


@dataclass(frozen=True)
class KindSpec:
    """One kind of cell."""

    name: str
    compute: str
    """``"module:function"``; the function takes (runner, cell), the runner a quant_harness.protocols.CellRunner,
    and returns a CellResult."""
    matrix: str
    """File under ``reports/results/`` its records are merged into (several kinds may share one)."""
    band: str
    """The study band (``[thresholds.<band>]``) its headline figure is judged in."""
    reference: bool = False
    """Whether the reference precision gets cells of this kind (False when a cell compares against it)."""
    methods: tuple[str, ...] = ("mean_diff", "probe", "pca")
    """Methods that make a cell each; empty = one cell per trait, no method part in the id."""
    methodologies: tuple[str, ...] = ()
    """Only traits of these methodologies (empty = all)."""
    per_model: Callable[[Study, str], list[str]] | None = None
    """Model-level kinds (benchmarks, refusal, sae): the id parts after model-precision, instead of traits."""
    select: Callable[[Study, TraitSpec, str], bool] | None = None
    """A study-level choice of (trait, method) pairs, e.g. the ``[steering]`` table's ``traits`` and ``methods``."""
    section: str = ""
    """The study table the kind's cells read (``[steering]``, ``[benchmarks]``, ``[sae]``), if any."""
    banded: Mapping[str, int] = field(default_factory=dict)
    """Headline metrics a band judges and how each stands to its band: ``1`` the band's own figure, ``-1`` its
    complement (a transfer record's metric is the ratio; its band judges ``1 - ratio``). The band is the one named
    like the metric where the study has one (``auroc_drop``, ``accuracy_drop``), else ``band``."""
    directions: Mapping[str, int] = field(default_factory=dict)
    """Which way each recorded figure should move: ``1`` larger is better, ``-1`` smaller is better, ``0`` no
    direction. Baselines gate figures this way and the ranking turns headlines into degradations with it; a figure
    not named here is noted, never gated (a test checks that every figure the kinds record is named)."""

    judged: bool = False
    """Whether its cells ask the study's LLM judge: skipped with the reason where that judge cannot be reached."""
    reference_side: str = ""
    """``"module:function"`` building, into the cache, what a quantized cell of this kind reads of the reference
    precision (its activations, steering search, A/B sweep, ...); run in the reference's phase
    (quant_harness.runner.StudyRunner.prepare) so that no quantized group loads the reference. Empty: nothing."""

    def direction(self, figure: str) -> int:
        """The direction of ``figure`` (an interval end ``x_ci_low`` goes the way of ``x``)."""
        return self.directions.get(figure_base(figure), 0)

    def band_of(self, metric: str, bands: Mapping[str, Band]) -> Band | None:
        """The study band that judges headline ``metric``, or None when the metric is not banded."""
        if metric not in self.banded:
            return None
        return bands.get(metric) or bands.get(self.band)

    def headline_direction(self, metric: str, bands: Mapping[str, Band]) -> int | None:
        """+1 / -1 for a banded headline metric (from its band), None for an unbanded one."""
        band = self.band_of(metric, bands)
        if band is None:
            return None
        relation = self.banded[metric]
        return relation if band.higher_is_better else -relation

    def run(self, runner: CellRunner, cell: Cell) -> CellResult:
        """Import the compute function and run it on one cell."""
        module, _, name = self.compute.partition(":")
        result: CellResult = getattr(importlib.import_module(module), name)(runner, cell)
        return result

    def prepare(self, runner: CellRunner, cell: Cell) -> None:
        """Build the reference side of a quantized cell (``reference_side``) into the cache."""
        if self.reference_side:
            module, _, name = self.reference_side.partition(":")
            getattr(importlib.import_module(module), name)(runner, cell)


_CI_ENDS = ("_ci_low", "_ci_high")


def figure_base(name: str) -> str:
    """An interval end's figure (``degradation_ci_high`` -> ``degradation``): it goes the figure's way."""
    for end in _CI_ENDS:
        if name.endswith(end):
            return name[: -len(end)]
    return name


def _refusal_subjects(study: Study, _model: str) -> list[str]:
    return [t.key for t in study.traits if t.methodology == "arditi"] or \
        [t.key for t in study.traits if t.name == "refusal"]


def _benchmark_subjects(study: Study, model: str) -> list[str]:
    settings: BenchmarkSettings = study.benchmarks
    return settings.names(model)


def _sae_subjects(study: Study, model: str) -> list[str]:
    return sae_cell_names(study.sae, model, study.cards[model].layers)


def _steering_selects(study: Study, trait: TraitSpec, method: str) -> bool:
    return study.steering.selects(trait.key, method)


_STEERING = "steering_comparison.json"
_ACTIVATIONS = "quant_harness.extract.vectors:reference_side"
_STEER_REFERENCE = "quant_harness.steer.cells:reference_side"
_COUNTS = {"n_layers": 0, "n_questions": 0, "n_prompts": 0, "n_texts": 0, "n_docs": 0, "n_train": 0, "n_val": 0,
           "layer": 0, "unscored": 0, "val_fraction": 0, "ci_level": 0, "n_boot": 0}
"""Counts and settings recorded beside the figures: they have no better or worse."""

_VECTORS = {"cosine_mean": 1, "cosine_min": 1, "cosine_max": 1, "cosine_min_layer": 0, "cosine_shift": -1,
            "shift_over_floor": -1, "self_cosine_reference": 1, "self_cosine_reference_low": 1,
            "self_shift_reference": -1, "norm_ratio_mean": 0, "massive_dim_energy_mean": 0}
_PROBES = {"auroc": 1, "auroc_reference": 1, "auroc_drop": -1, "auroc_best": 1, "auroc_mean": 1,
           "auroc_best_layer": 0, "auroc_reference_best": 1, "auroc_reference_at_best": 1, "auroc_drop_max": -1,
           "reference_flagged": 0, "auroc_layer": 0, "auroc_cv_reference_at_layer": 1, "reference_gate": 0}
_STEERING_FIGURES = {"degradation": -1, "delta": 1, "delta_reference": 1, "coherence": 1, "coherence_reference": 1,
                     "baseline_trait": 0, "baseline_trait_reference": 0, "baseline_coherence": 0,
                     "baseline_coherence_reference": 0, "n_questions_total": 0, "n_questions_unscored": 0}
_LOGIT_DIFF = {"logit_corr": 1, "logit_corr_pooled": 1, "logit_corr_unsteered": 1, "steerability": 1,
               "steerability_reference": 1, "steerability_ratio": 1, "p_match_slope": 1, "reference_p_match_shift": 1}
_TRANSFER = {"transfer_ratio": 1, "transfer_degradation": -1, "steerability_own": 1, "steerability_own_se": 0,
             "steerability_reference_vectors": 1, "steerability_reference_vectors_se": 0,
             "logit_corr_own_vs_reference_vectors": 1}
_REFUSAL = {"degradation": -1, "effect": 1, "effect_reference": 1, "n_harmful": 0, "n_harmless": 0,
            **{f"refusal_{c}{r}": 0 for c in ("harmful", "harmful_ablated", "harmless", "harmless_actadd")
               for r in ("", "_reference")}}
"""The four refusal rates make up the effect, which is gated; alone each can move either way without harm."""
_BENCHMARKS = {"accuracy_drop": -1, "accuracy": 1, "accuracy_reference": 1, "reference_accuracy": 1,
               "acc,none": 1, "acc_norm,none": 1, "acc_stderr,none": 0, "acc_norm_stderr,none": 0,
               "accuracy_stderr": 0, "reference_stderr": 0, "drop_stderr": 0, "drop_stderr_unpaired": 0,
               "significant": 0, "n": 0, "n_reference": 0}
_SAE = {"topk_jaccard": 1, "active_kept": 1, "shared_corr": 1, "fvu_reference": 0, "fvu_quantized": -1,
        "sae_eval_fvu": 0, "sae_dead_share": 0, "self_overlap_reference": 1, "self_overlap_reference_low": 1,
        "l0": 0, "l0_reference": 0, "n_features": 0, "n_tokens": 0, "top_k": 0}

KINDS: dict[str, KindSpec] = {k.name: k for k in (
    KindSpec("vectors", "quant_harness.extract.vectors:vector_comparison", "vector_comparison.json", "cosine",
             banded={"cosine_mean": 1}, directions={**_COUNTS, **_VECTORS}, reference_side=_ACTIVATIONS),
    KindSpec("probes", "quant_harness.extract.probes:probe_comparison", "probe_comparison.json", "auroc_drop",
             reference=True, methods=("mean_diff", "probe", "pca", "file"),
             banded={"auroc": 1, "auroc_drop": 1}, directions={**_COUNTS, **_PROBES}, reference_side=_ACTIVATIONS),
    KindSpec("steering", "quant_harness.steer.cells:steering_delta", _STEERING, "steering_degradation",
             methods=("mean_diff", "file"), methodologies=("caa", "pv"), select=_steering_selects,
             section="steering", banded={"degradation": 1}, directions={**_COUNTS, **_STEERING_FIGURES},
             judged=True, reference_side=_STEER_REFERENCE),
    KindSpec("logit_diff", "quant_harness.steer.cells:logit_diff", _STEERING, "logit_corr",
             methods=("mean_diff",), methodologies=("caa",), section="steering",
             banded={"logit_corr": 1}, directions={**_COUNTS, **_LOGIT_DIFF}, reference_side=_STEER_REFERENCE),
    KindSpec("transfer", "quant_harness.steer.cells:transfer", _STEERING, "steering_degradation",
             methods=("mean_diff",), methodologies=("caa",), section="steering",
             banded={"transfer_ratio": -1}, directions={**_COUNTS, **_TRANSFER}, reference_side=_STEER_REFERENCE),
    KindSpec("refusal", "quant_harness.steer.cells:refusal", _STEERING, "steering_degradation",
             reference=True, per_model=_refusal_subjects, section="steering",
             banded={"degradation": 1}, directions={**_COUNTS, **_REFUSAL}, reference_side=_STEER_REFERENCE),
    KindSpec("benchmarks", "quant_harness.bench.lm_eval:benchmark_comparison", "benchmark_comparison.json",
             "accuracy_drop", reference=True, per_model=_benchmark_subjects, section="benchmarks",
             banded={"accuracy_drop": 1}, directions={**_COUNTS, **_BENCHMARKS},
             reference_side="quant_harness.bench.lm_eval:reference_side"),
    KindSpec("sae", "quant_harness.sae.cells:sae_comparison", "sae_comparison.json", "sae_overlap",
             per_model=_sae_subjects, section="sae", banded={"topk_jaccard": 1}, directions={**_COUNTS, **_SAE},
             reference_side="quant_harness.sae.cells:reference_side"),
)}
"""Every kind of cell, in the order reports list them."""


def kind(name: str, path: object = "<study>") -> KindSpec:
    """The entry of ``name``; an unknown kind (a case module's ``quant_cells`` marker) is a StudyError."""
    if name not in KINDS:
        raise StudyError(path, "quant_cells", name, f"one of {', '.join(sorted(KINDS))}")
    return KINDS[name]


def cells(study: Study, kind_name: str) -> list[Cell]:
    """The cells of one kind, in a deterministic order (xdist needs the same order on every worker)."""
    shape = kind(kind_name, study.path)
    out: list[Cell] = []
    for model in sorted(study.cards):
        for precision in study.precisions[model]:
            if precision == study.reference and not shape.reference:
                continue
            if shape.per_model is not None:
                out += [Cell(kind_name, model, precision, item) for item in shape.per_model(study, model)]
                continue
            for trait in study.traits:
                if shape.methodologies and trait.methodology not in shape.methodologies:
                    continue
                methods = [m for m in trait.methods if m in shape.methods] if shape.methods else [""]
                if shape.select is not None:
                    methods = [m for m in methods if shape.select(study, trait, m)]
                out += [Cell(kind_name, model, precision, trait.key, m) for m in methods]
    return out


def all_cells(study: Study) -> list[Cell]:
    """Every cell of every kind."""
    return [c for name in KINDS for c in cells(study, name)]
