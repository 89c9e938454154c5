"""Merging the report folders of several shards (or several runs) into one set of matrices, JUnit and run.json.

Each ``--quant-shard I/N`` run writes ``<report dir>/shards/shard-I-of-N/`` (``junit.xml``, ``results/*.json``);
``quant-harness merge OUT DIR...`` turns those folders into ``OUT/junit.xml``, ``OUT/results/*.json``, the cells'
plot files and pages (``plots/``, so the merged summary links every cell to its plots) and the derived pages
(report.derive.rebuild).
Records are keyed by cell id, so the merge of disjoint shards equals one unsharded run.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quant_harness.errors import QuantHarnessError
from quant_harness.report import derive as reporting

SHARDS_DIR = "shards"


def shard_dirs(report_dir: Path) -> list[Path]:
    """The shard folders under a report folder, in a stable order."""
    return sorted(p for p in (report_dir / SHARDS_DIR).glob("shard-*-of-*") if p.is_dir())


def merge_junit(out_file: Path, sources: Sequence[Path]) -> int:
    """One ``<testsuite>`` holding the test cases of every source's junit.xml (the last copy of a case wins)."""
    cases: dict[tuple[str, str], ET.Element] = {}
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    time = 0.0
    for source in sources:
        f = source if source.suffix == ".xml" else source / "junit.xml"
        if not f.is_file():
            continue
        try:
            root = ET.parse(f).getroot()
        except ET.ParseError as e:
            raise QuantHarnessError(f"{f}: not valid JUnit XML ({e}); expected the junit.xml of a pytest run") from e
        for suite in root.iter("testsuite"):
            time += float(suite.get("time", 0) or 0)
            for case in suite.findall("testcase"):
                cases[(case.get("classname", ""), case.get("name", ""))] = case
    for case in cases.values():
        totals["tests"] += 1
        for tag, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            totals[key] += 1 if case.find(tag) is not None else 0
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", {"name": "pytest", **{k: str(v) for k, v in totals.items()},
                                                "time": f"{time:.3f}"})
    suite.extend(cases[k] for k in sorted(cases))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.tmp")
    ET.ElementTree(suites).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, out_file)
    return totals["tests"]


def expand(sources: Sequence[Path]) -> list[Path]:
    """Report folders to merge: a folder that holds ``shards/shard-*-of-*`` stands for those shards."""
    out: list[Path] = []
    for s in map(Path, sources):
        out += shard_dirs(s) or [s]
    return list(dict.fromkeys(out))


def merge(out: Path, sources: Sequence[Path]) -> dict[str, Any]:
    """Merge shard (or run) report folders into ``out``: matrices and run.json through report.derive.rebuild (which
    also rebuilds the ranking, findings.md and summary.html), and the JUnit files here."""
    expanded = expand(sources)
    missing = [s for s in expanded if not (s / "results").is_dir() and not (s / "junit.xml").is_file()]
    if not expanded or missing:
        raise QuantHarnessError(f"{missing[0] if missing else 'merge'}: no results/ or junit.xml; expected report "
                                "folders written by pytest --quant-report-dir DIR (or DIR/shards/* of --quant-shard I/N)")
    written = reporting.rebuild(out, [s for s in expanded if (s / "results").is_dir()])
    cases = merge_junit(out / "junit.xml", expanded)
    return {"sources": [str(s) for s in expanded], "junit_cases": cases, "written": [str(p) for p in written]}
