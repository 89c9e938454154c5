"""Results computed from cached activations alone (the vectors and probes kinds), cached in their turn.

A vector or probe cell does no model work on a warm run, but its bootstrap (1000 resamples of every layer's
method, and for probes a cross-validated layer choice) took 74 of the default study's 86 warm seconds. Its result
is a pure function of the activation tensors, the study's statistics settings and the code that computes it, so
it is stored under a key of exactly those: the tensors' content digests (a subset served from a superset entry
digests what the cell read), the settings the caller names, and the sha256 of the source files of the computing
modules (an edit to a metric is a miss, no version number to forget). Provenance is rebuilt on every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant_harness.records import CellResult
from quant_harness.store import ArtefactStore, JsonCodec

if TYPE_CHECKING:
    from torch import Tensor

    from quant_harness.metrics.verdicts import Band
    from quant_harness.protocols import CellRunner
    from quant_harness.study.spec import Cell, Study

_STATS_MODULES = ("quant_harness.metrics.resample", "quant_harness.metrics.confidence",
                  "quant_harness.metrics.verdicts", "quant_harness.metrics.tensors", "quant_harness.extract.methods")
"""Modules every activation-derived result runs through; a kind adds its own."""


def digest(tensors: Iterable[Tensor | None]) -> str:
    """sha256 over the tensors' shapes, dtypes and bytes (None for a missing one)."""
    import torch

    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        c = t.detach().cpu().contiguous()
        h.update(f"{tuple(c.shape)}{c.dtype}".encode())
        h.update(c.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@cache
def source_digest(modules: tuple[str, ...]) -> str:
    """sha256 of the modules' source files, in order."""
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()


def statistics_settings(study: Study, bands: Mapping[str, Band]) -> dict[str, Any]:
    """The study settings every activation-derived verdict reads."""
    return {"seed": study.seed, "bootstrap_n": study.bootstrap_n, "ci_level": study.ci_level,
            "fail_on": None if study.fail_on is None else study.fail_on.label,
            "fail_on_inconclusive": study.fail_on_inconclusive, "probe_val_fraction": study.probe_val_fraction,
            "massive_dims_k": study.massive_dims_k,
            "bands": {k: dataclasses.asdict(b) for k, b in sorted(bands.items())}}


def _encode(r: CellResult) -> dict[str, Any]:
    return {k: v for k, v in r.to_dict().items() if k != "provenance"}


def _decode(d: Any) -> CellResult:
    """A stored result (no provenance); one that no longer fits CellResult raises TypeError: a miss."""
    if not isinstance(d, dict) or "provenance" in d:
        raise ValueError("not a stored cell result")
    return CellResult(**d)


_CODEC: JsonCodec[CellResult] = JsonCodec(encode=_encode, decode=_decode)


def cached_result(runner: CellRunner, cell: Cell, modules: tuple[str, ...], components: Mapping[str, Any],
                  build: Callable[[], CellResult], provenance: Callable[[], dict[str, Any]]) -> CellResult:
    """The cell's result from the store, or ``build()`` stored (its provenance is not: ``provenance()`` gives it,
    on every run); ``modules`` are the kind's computing modules."""
    comps = {"cell": cell.id, "kind": cell.kind, "method": cell.method, **components,
             "code": source_digest(_STATS_MODULES + modules)}
    value = ArtefactStore(Path(runner.cache.root)).get_or_build(f"derived/{cell.kind}", comps, build, _CODEC,
                                                               under=f"{cell.model}/{cell.precision}").value
    return dataclasses.replace(value, provenance=provenance())
