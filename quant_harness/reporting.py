"""Result files under reports/: JSON matrices merged by cell id, and run.json with the run's counters."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

MATRICES = {
    "vectors": "vector_comparison.json",
    "probes": "probe_comparison.json",
    "steering": "steering_comparison.json",
    "benchmarks": "benchmark_comparison.json",
    "sae": "sae_comparison.json",
}


def matrix_file(kind: str) -> str:
    return MATRICES.get(kind, f"{kind}_comparison.json")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_matrix(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return dict(data.get("records", {}))


def merge_records(results_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
    """Update each kind's matrix with these records; cells of other runs (other ``-k`` slices) are kept."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)
    written = []
    for kind, recs in sorted(by_kind.items()):
        path = results_dir / matrix_file(kind)
        merged = read_matrix(path)
        merged.update({r["cell_id"]: r for r in recs})
        _write_json(path, {"schema_version": 1, "kind": kind, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "records": dict(sorted(merged.items()))})
        written.append(path)
    return written


def write_run(results_dir: Path, counts: dict[str, Any], **extra: Any) -> Path:
    path = results_dir / "run.json"
    _write_json(path, {**counts, **extra, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return path
