"""The registry of cell kinds: one ``KindSpec`` entry says everything about a kind.

Its grid shape (which models, precisions, traits and methods get a cell), the function that computes a cell (a lazy
``"module:function"`` string, as lm-eval's model registry does, so a kind's heavy libraries load only when its cells
run), the result matrix it is written to, the study table it reads and the band its verdict is judged in. Adding a
kind means one module with its compute function, one entry here and its test module; ``cells`` and the report
layer read everything else from the entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from quant_harness.bench.settings import BenchmarkSettings
from quant_harness.errors import StudyError
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

    def run(self, runner: CellRunner, cell: Cell) -> CellResult:
        """Import the compute function and run it on one cell."""
        module, _, name = self.compute.partition(":")
        result: CellResult = getattr(importlib.import_module(module), name)(runner, cell)
        return result


def _refusal_subjects(study: Study, _model: str) -> list[str]:
    return [t.key for t in study.traits if t.methodology == "arditi"] or \
        [t.key for t in study.traits if t.name == "refusal"]


def _benchmark_subjects(study: Study, _model: str) -> list[str]:
    settings: BenchmarkSettings = study.benchmarks
    return settings.names()


def _sae_subjects(study: Study, model: str) -> list[str]:
    return sae_cell_names(study.sae, model)


def _steering_selects(study: Study, trait: TraitSpec, method: str) -> bool:
    return study.steering.selects(trait.key, method)


_STEERING = "steering_comparison.json"

KINDS: dict[str, KindSpec] = {k.name: k for k in (
    KindSpec("vectors", "quant_harness.extract.vectors:vector_comparison", "vector_comparison.json", "cosine"),
    KindSpec("probes", "quant_harness.extract.probes:probe_comparison", "probe_comparison.json", "auroc",
             reference=True, methods=("mean_diff", "probe", "pca", "file")),
    KindSpec("steering", "quant_harness.steer.cells:steering_delta", _STEERING, "steering_degradation",
             methods=("mean_diff", "file"), methodologies=("caa", "pv"), select=_steering_selects,
             section="steering"),
    KindSpec("logit_diff", "quant_harness.steer.cells:logit_diff", _STEERING, "logit_corr",
             methods=("mean_diff",), methodologies=("caa",), section="steering"),
    KindSpec("transfer", "quant_harness.steer.cells:transfer", _STEERING, "steering_degradation",
             methods=("mean_diff",), methodologies=("caa",), section="steering"),
    KindSpec("refusal", "quant_harness.steer.cells:refusal", _STEERING, "steering_degradation",
             reference=True, per_model=_refusal_subjects, section="steering"),
    KindSpec("benchmarks", "quant_harness.bench.lm_eval:benchmark_comparison", "benchmark_comparison.json",
             "accuracy_drop", reference=True, per_model=_benchmark_subjects, section="benchmarks"),
    KindSpec("sae", "quant_harness.sae.cells:sae_comparison", "sae_comparison.json", "sae_overlap",
             per_model=_sae_subjects, section="sae"),
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
