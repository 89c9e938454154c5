"""HTML for people: the verdict summary table, each cell's block (verdict, figures, plots, responses) and the
standalone summary page that ``quant-harness report`` rebuilds from the matrices.

The pytest-html report gets the table through ``pytest_html_results_summary`` and each cell's block as an
``html`` extra (a plain dict, so it crosses xdist on the report); the plugin only forwards to these functions.
Plots are PNG files beside the pages (``plots/``, report.plots.publish), shown by lazily loaded ``<img>`` tags, and
every cell of the summary table links to its plots' page: report.html stays a few MB at the full grid's ~800 cells
(it was ~100 KB of embedded PNG per cell). Without a report folder a block embeds its plots as data URIs.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from quant_harness.records import Record
from quant_harness.report import plots
from quant_harness.report.matrices import matrix_file
from quant_harness.study.ids import split_cell_id

COLOURS = {"robust": "#c8e6c9", "degraded": "#ffe0b2", "broken": "#ffcdd2", "inconclusive": "#e1e1f5"}
STYLE = """
.qh-summary,.qh-cell{font-family:Helvetica,Arial,sans-serif;font-size:13px;margin:8px 0 16px;color:#111}
.qh-summary *{color:#111}
.qh-summary h2,.qh-summary h3{margin:10px 0 4px}
.qh-table{border-collapse:collapse;margin:4px 0 10px}
.qh-table th,.qh-table td{border:1px solid #bbb;padding:3px 8px;text-align:left;vertical-align:top}
.qh-table th{background:#eee}
.qh-v{font-weight:bold;text-transform:uppercase;font-size:11px}
.qh-legend span{display:inline-block;padding:1px 8px;margin-right:6px;border:1px solid #bbb}
.qh-cell img{margin:4px 8px 4px 0;border:1px solid #ddd}
.qh-resp{white-space:pre-wrap;font-family:monospace;font-size:12px}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"
    return str(v)


def legend() -> str:
    return '<div class="qh-legend">' + "".join(
        f'<span style="background:{c}">{k}</span>' for k, c in COLOURS.items()) + "</div>"


def _ci(record: Record) -> str:
    figs, metric = record.get("figures", {}), record.get("metric", "")
    lo, hi = figs.get(f"{metric}_ci_low"), figs.get(f"{metric}_ci_high")
    return f" [{lo:.3f}, {hi:.3f}]" if isinstance(lo, float) and isinstance(hi, float) else ""


def plot_links(records: list[Record], report_dir: Path) -> dict[str, str]:
    """cell id -> its plots' page, for the cells whose page exists in ``report_dir``."""
    out = {}
    for r in records:
        href = plots.page_href(str(r.get("cell_id", "")))
        if (report_dir / href).is_file():
            out[str(r["cell_id"])] = href
    return out


def summary_table(records: list[Record], *, with_style: bool = True, links: dict[str, str] | None = None) -> str:
    """One table per result matrix: rows model x trait/method (or benchmark), columns precisions, cells coloured
    by verdict with the headline figure and its confidence interval; the explanation is the cell's tooltip, and
    ``links`` (cell id -> href) link a cell to its plots."""
    if not records:
        return '<div class="qh-summary"><p>No cell recorded a result in this run.</p></div>'
    by_file: dict[str, list[Record]] = {}
    for r in records:
        by_file.setdefault(matrix_file(str(r.get("kind", "?"))), []).append(r)
    parts = [f"<style>{STYLE}</style>" if with_style else "", '<div class="qh-summary" id="quant-summary">',
             "<h2>Verdicts by model, precision and trait</h2>", legend()]
    for file, recs in sorted(by_file.items()):
        names = {id(r): split_cell_id(r["cell_id"], r) for r in recs}
        precisions = sorted({n.precision for n in names.values()}, key=plots.precision_key)
        rows: dict[tuple[str, str, str], dict[str, Record]] = {}
        for r in recs:
            n = names[id(r)]
            rows.setdefault((n.model, str(r.get("kind", "")), n.subject), {})[n.precision] = r
        metrics = ", ".join(sorted({str(r.get("metric")) for r in recs}))
        refs = ", ".join(sorted({str(r.get("provenance", {}).get("reference", "?")) for r in recs}))
        parts.append(f"<h3>{_e(file)} <small>({_e(metrics)} against reference {_e(refs)}; "
                     "value [confidence interval] verdict)</small></h3>")
        parts.append('<table class="qh-table quant-summary-table"><tr><th>model</th><th>kind</th>'
                     "<th>trait / method</th>" + "".join(f"<th>{_e(p)}</th>" for p in precisions) + "</tr>")
        for (model, kind, subject), cells in sorted(rows.items()):
            tds = []
            for p in precisions:
                c = cells.get(p)
                if c is None:
                    tds.append("<td>-</td>")
                    continue
                v = str(c.get("verdict", ""))
                href = (links or {}).get(str(c.get("cell_id")))
                link = f' <a href="{_e(href)}">plots</a>' if href else ""
                tds.append(f'<td style="background:{COLOURS.get(v, "#fff")}" title="{_e(c.get("explanation", ""))}">'
                           f'{_e(_fmt(c.get("value")))}{_e(_ci(c))} <span class="qh-v">{_e(v)}</span>{link}</td>')
            parts.append(f"<tr><td>{_e(model)}</td><td>{_e(kind)}</td><td>{_e(subject)}</td>{''.join(tds)}</tr>")
        parts.append("</table>")
    parts.append("</div>")
    return "".join(parts)


def _responses(record: Record, limit: int = 3) -> list[dict[str, Any]]:
    """Steered responses a record carries: any figure that is a list of dicts with a ``response``."""
    for value in record.get("figures", {}).values():
        if isinstance(value, list) and value and all(isinstance(x, dict) and "response" in x for x in value):
            return value[:limit]
    return []


def _img(f: plots.PlotFile) -> str:
    return f'<img loading="lazy" alt="{_e(f.title)}" title="{_e(f.title)}" src="{_e(f.src)}"/>'


def cell_block(record: Record, plot_list: list[plots.Plot] | None = None, *,
               files: list[plots.PlotFile] | None = None, with_style: bool = True) -> str:
    """One cell: verdict, explanation, scalar figures, plots (``files`` as links, else embedded) and up to three
    steered responses. ``with_style=False`` where the page already has the style (report.html's summary)."""
    v = str(record.get("verdict", ""))
    figs = {k: x for k, x in record.get("figures", {}).items() if isinstance(x, (int, float, str, bool))}
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(x))}</td></tr>" for k, x in figs.items())
    out = [f'<div class="qh-cell">{f"<style>{STYLE}</style>" if with_style else ""}',
           f'<p><span class="qh-v" style="background:{COLOURS.get(v, "#fff")};padding:2px 6px">{_e(v)}</span> '
           f'{_e(record.get("explanation", ""))}</p>', f'<table class="qh-table">{rows}</table>']
    if files is not None:
        out += [_img(f) for f in files]
    else:
        for p in plot_list if plot_list is not None else plots.cell_plots(record):
            out.append(f'<img alt="{_e(p.title)}" title="{_e(p.title)}" src="data:image/png;base64,{p.b64()}"/>')
    resp = _responses(record)
    if resp:
        out.append('<table class="qh-table"><tr><th>prompt</th><th>setting</th><th>response</th></tr>')
        for x in resp:
            setting = ", ".join(f"{k}={_fmt(val)}" for k, val in x.items() if k not in ("prompt", "response"))
            out.append(f'<tr><td class="qh-resp">{_e(x.get("prompt", ""))}</td><td>{_e(setting)}</td>'
                       f'<td class="qh-resp">{_e(x["response"])}</td></tr>')
        out.append("</table>")
    notes = record.get("provenance", {}).get("notes") or []
    if notes:
        out.append("<p><i>" + _e("; ".join(map(str, notes))) + "</i></p>")
    out.append("</div>")
    return "".join(out)


def extras(record: Record, cache_dir: Path | None = None, report_dir: Path | None = None) -> list[dict[str, Any]]:
    """pytest-html extras for a cell (the dict ``pytest_html.extras.html`` builds, made here without importing it);
    with ``cache_dir`` the plots are read from (or drawn into) its plot cache, and with ``report_dir`` (report.html's
    folder) they are published there as files the block links to."""
    plot_list = plots.cell_plots_cached(record, cache_dir) if cache_dir is not None else None
    if report_dir is not None:
        plot_list = plot_list if plot_list is not None else plots.cell_plots(record)
        cell = str(record.get("cell_id", "cell"))
        content = cell_block(record, files=plots.publish(plot_list, report_dir, cell, cell), with_style=False)
    else:
        content = cell_block(record, plot_list)
    return [{"name": "quant_harness", "format_type": "html", "content": content,
             "mime_type": None, "extension": None}]


def summary_page(records: list[Record], run: dict[str, Any], report_dir: Path | None = None) -> str:
    """reports/summary.html: the summary table (each cell linked to its plots' page when report.html published
    one) and, per model x trait/method, the plots across precisions: files in ``report_dir/plots`` (drawn again
    only when their records changed), embedded when no folder is given."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for r in records:
        n = split_cell_id(r["cell_id"], r)
        groups.setdefault((str(r.get("kind", "")), n.model, n.subject), []).append(r)
    body = [summary_table(records, links=plot_links(records, report_dir) if report_dir is not None else None)]
    counts = ", ".join(f"{k} {run[k]}" for k in ("model_loads", "forward_passes", "cache_hits", "cache_misses",
                                                   "judge_calls") if k in run)
    if counts:
        body.append(f"<p>Last run: study {_e(run.get('study', '?'))}; {_e(counts)}.</p>")
    for (kind, model, subject), recs in sorted(groups.items()):
        body.append(f"<h3>{_e(kind)}: {_e(model)} {_e(subject)}</h3>")
        if report_dir is not None:
            stem = f"summary-{kind}-{model}-{subject}"
            body += [_img(f) for f in plots.group_plot_files(f"{model} {subject}", recs, report_dir, stem)]
        else:
            body += [f'<img alt="{_e(p.title)}" src="data:image/png;base64,{p.b64()}"/>'
                     for p in plots.group_plots(f"{model} {subject}", recs)]
    notes = sorted({str(n) for r in records for n in r.get("provenance", {}).get("notes") or []})
    if notes:
        body.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>quant_harness summary</title>"
            f"<style>body{{font-family:Helvetica,Arial,sans-serif;margin:16px}}{STYLE}</style></head><body>"
            f"<h1>quant_harness summary</h1><p>Rebuilt {time.strftime('%Y-%m-%d %H:%M:%S')} from "
            f"reports/results/*.json ({len(records)} cells).</p>{''.join(body)}</body></html>\n")
