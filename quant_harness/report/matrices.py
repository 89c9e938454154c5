"""Result files under reports/: JSON matrices merged by cell id, run.json counters, and the files derived from them.

The bottom of the report layer: the renderers (ranking, findings, html) read records through it, and
quant_harness.report.derive rebuilds what a reader opens from the matrices alone. Shards' or earlier ``-k`` slices'
results merge into one set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from quant_harness._util import counters, files
from quant_harness.records import Record, as_record
from quant_harness.study.kinds import KINDS

MATRICES = {name: spec.matrix for name, spec in KINDS.items()}
"""Kind -> its matrix file under results/ (from the kind registry)."""
DERIVED = ("robustness_ranking.json", "run.json")
"""Files in results/ that are not matrices of cell records."""


def matrix_file(kind: str) -> str:
    return MATRICES.get(kind, f"{kind}_comparison.json")


def record_key(record: Record) -> str:
    """A record's key in its matrix: the cell id, prefixed with the kind when the file is named after another kind.

    steering, logit_diff, transfer and refusal cells share steering_comparison.json and may share cell ids.
    """
    kind, file = record["kind"], matrix_file(record["kind"])
    primary = next((k for k, f in MATRICES.items() if f == file), kind)
    return str(record["cell_id"]) if kind == primary else f"{kind}:{record['cell_id']}"


def write_json(path: Path, data: Any) -> None:
    files.write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_matrix(path: Path) -> dict[str, Record]:
    """The records of one matrix file by key (empty when the file is missing or not JSON)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return {k: as_record(r) for k, r in data.get("records", {}).items()}


def _write_matrix(path: Path, records: dict[str, Record]) -> None:
    kinds = sorted({r.get("kind", "?") for r in records.values()})
    write_json(path, {"schema_version": 1, "kind": kinds[0] if len(kinds) == 1 else kinds,
                       "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "records": dict(sorted(records.items()))})


def merge_records(results_dir: Path, records: Iterable[Record]) -> list[Path]:
    """Update each matrix with these records; cells of other runs (other ``-k`` slices, shards) are kept."""
    by_file: dict[str, list[Record]] = {}
    for r in records:
        by_file.setdefault(matrix_file(r["kind"]), []).append(r)
    written = []
    for name, recs in sorted(by_file.items()):
        path = results_dir / name
        merged = read_matrix(path)
        merged.update({record_key(r): r for r in recs})
        _write_matrix(path, merged)
        written.append(path)
    return written


def matrix_paths(results_dir: Path) -> list[Path]:
    return sorted(p for p in results_dir.glob("*.json") if p.name not in DERIVED)


def load_records(results_dir: Path) -> list[Record]:
    """Every cell record of every matrix in ``results_dir``, in a stable order."""
    out: list[Record] = []
    for path in matrix_paths(results_dir):
        out += [r for _, r in sorted(read_matrix(path).items())]
    return out


def write_run(results_dir: Path, counts: dict[str, Any], **extra: Any) -> Path:
    path = results_dir / "run.json"
    write_json(path, {**counts, **extra, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return path


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def merge_reports(report_dir: Path, sources: Iterable[Path]) -> dict[str, Any]:
    """Merge several report folders' results (shards, machines) into ``report_dir``: records by cell id, counters
    summed. A cell present in several sources keeps the record of the last source given."""
    results = report_dir / "results"
    srcs = [Path(s) for s in sources]
    for src in srcs:
        if not (src / "results").is_dir():
            raise FileNotFoundError(f"{src}: no results/ folder to merge (expected {src / 'results'}/*.json)")
    parts, cells = [], 0
    for src in srcs:
        recs = load_records(src / "results")
        cells += len(recs)
        merge_records(results, recs)
        run = read_json(src / "results" / "run.json")
        if run:
            parts.append(run)
    run_here = read_json(results / "run.json")
    totals = counters.merge(parts) if parts else {}
    summary = {"merged_from": [str(s) for s in srcs], "cells_recorded": cells,
               "workers": sum(int(p.get("workers", 1)) for p in parts), "study": run_here.get("study") or
               next((p.get("study") for p in parts if p.get("study")), "")}
    write_run(results, totals, **summary)
    return {**totals, **summary}
