"""Every figure a cell records has a direction in its kind's registry entry (quant_harness.study.kinds).

Called by the tests that run cells end to end: a new figure without a registered direction would be noted but never
gated by the baselines, so adding one without saying which way it should move fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

from quant_harness.study.kinds import KINDS, figure_base


def unregistered_figures(results: Path) -> list[str]:
    """``kind.figure`` for each numeric figure of the matrices in ``results`` that its kind does not name."""
    missing: set[str] = set()
    for path in sorted(results.glob("*_comparison.json")):
        for record in json.loads(path.read_text())["records"].values():
            spec = KINDS[record["kind"]]
            for name, value in record.get("figures", {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                        figure_base(name) not in spec.directions:
                    missing.add(f"{record['kind']}.{name}")
            if record.get("metric") and record["metric"] not in spec.directions:
                missing.add(f"{record['kind']}.{record['metric']} (headline)")
    return sorted(missing)
