"""The cell-id grammar, in one place: ``{model}-{precision}-{subject}``.

``subject`` is ``{methodology}_{trait}-{method}`` for trait cells, the benchmark for benchmark cells, ``sae_{layer}-
{dictionary}`` for SAE cells. Model names may contain ``-``; the first part that names a precision ends the model.
The scheduler groups by ``{model}-{precision}``, reports split ids into their parts, and ``-k`` selects by any part.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from quant_harness.models.registry import PRECISIONS

_PARAM = re.compile(r"\[([^\[\]]+)\](@[^\]]*)?$")


class CellName(NamedTuple):
    """The parts of a cell id."""

    model: str
    precision: str
    subject: str


def cell_id(model: str, precision: str, *subject: str) -> str:
    """Join the parts of an id, leaving out empty ones (a trait cell without method, a model-level cell)."""
    return "-".join(p for p in (model, precision, *subject) if p)


def split_cell_id(cell_id: str, record: Mapping[str, Any] | None = None) -> CellName:
    """Model, precision and the rest (trait-method, or benchmark) of a cell id; provenance wins when it says."""
    prov = (record or {}).get("provenance", {})
    parts = cell_id.split("-")
    at = next((i for i, p in enumerate(parts) if p in PRECISIONS and i > 0), None)
    if at is None:
        return CellName(str(prov.get("model", cell_id)), str(prov.get("precision", "?")), "")
    return CellName(str(prov.get("model", "-".join(parts[:at]))), str(prov.get("precision", parts[at])),
                    "-".join(parts[at + 1:]))


def group_of_id(cell_id: str) -> str | None:
    """``smollm2-135m-nf4-caa_sycophancy-mean_diff`` -> ``smollm2-135m-nf4``; None for a non-cell id."""
    name = split_cell_id(cell_id)
    return None if name.precision == "?" else f"{name.model}-{name.precision}"


def group_of_nodeid(nodeid: str) -> str | None:
    """The group of a test's node id (its last ``[...]`` is the cell id; xdist may append ``@group``)."""
    m = _PARAM.search(nodeid)
    return group_of_id(m.group(1)) if m else None


def split_group(group: str) -> tuple[str, str]:
    """``llama-70b-nf4`` -> ``("llama-70b", "nf4")``."""
    model, _, precision = group.rpartition("-")
    return model, precision
