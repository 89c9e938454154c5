"""Files derived from the matrices: robustness_ranking.json, findings.md and summary.html.

Everything a reader opens is rebuilt from the matrices alone, so ``quant-harness report`` can regenerate it and
merged shards get one set of reports. The top of the report layer: only this module imports the renderers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from quant_harness._util import files
from quant_harness.report import findings, html, plots, ranking
from quant_harness.report.matrices import load_records, merge_reports, read_json, write_json


def derive(report_dir: Path, *, cards_dir: Path | None = None) -> list[Path]:
    """Write the files derived from the matrices: robustness_ranking.json, findings.md and summary.html."""


    results = report_dir / "results"
    records = load_records(results)
    run = read_json(results / "run.json")
    rank = ranking.rank(records, cards_dir=cards_dir)
    rank_path = results / "robustness_ranking.json"
    write_json(rank_path, rank)
    findings_path = report_dir / "findings.md"
    files.write_text(findings_path, findings.render(records, rank, run))
    summary_path = report_dir / "summary.html"
    files.write_text(summary_path, html.summary_page(records, run, report_dir))
    return [rank_path, findings_path, summary_path]


def rebuild(report_dir: Path, sources: Iterable[Path] = (), *, cards_dir: Path | None = None) -> list[Path]:
    """Merge ``sources`` (other report folders) into ``report_dir`` if given, with their cells' plot files and pages
    (so the merged summary links every cell to its plots), then rebuild the derived files.

    Runs no cell and loads no model: the public entry point for ``quant-harness report`` and for shard merging.
    """
    srcs = list(sources)
    if srcs:
        merge_reports(Path(report_dir), srcs)
        plots.copy_plots(Path(report_dir), srcs)
    return derive(Path(report_dir), cards_dir=cards_dir)
