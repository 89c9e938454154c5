"""Which cells run together: the model x precision group read back from a cell id, for xdist's controller."""

from __future__ import annotations

import re

from quant_harness.precision import PRECISIONS

_PARAM = re.compile(r"\[([^\[\]]+)\](@[^\]]*)?$")


def group_of_id(cell_id: str) -> str | None:
    """``smollm2-135m-nf4-caa_sycophancy-mean_diff`` -> ``smollm2-135m-nf4``; None for a non-cell id."""
    parts = cell_id.split("-")
    for i, part in enumerate(parts):
        if part in PRECISIONS and i > 0:
            return "-".join(parts[: i + 1])
    return None


def group_of_nodeid(nodeid: str) -> str | None:
    """The group of a test's node id (its last ``[...]`` is the cell id; xdist may append ``@group``)."""
    m = _PARAM.search(nodeid)
    return group_of_id(m.group(1)) if m else None
