"""PNG plots of cell records, drawn from the record's fields alone so that every kind gets plots for free.

What is drawn (generic by record field):
  * ``per_layer[name]`` against ``layers``: one line per precision (the summary page) or for the cell, with
    ``per_layer[name + "_reference"]`` dashed beside it and the study's default band limits when ``name`` is a
    banded metric (cosine, auroc, ...). Cosine by layer, AUROC by layer, norms, massive-dim energy.
  * a *series* figure, ``figures[name] = {"x": [...], "x_label": "coefficient", "<y name>": [...], ...}``: one line
    per y list (steering delta vs coefficient, coherence vs coefficient).
  * a *bar* figure, ``figures[name] = {"<label>": number, ...}`` (accuracy by precision, by task).
  * across cells without per-layer data, the headline ``value`` per precision as bars (benchmark accuracy).

Uses matplotlib's object API on the Agg canvas (imported on first draw): no pyplot state, no display, safe in
workers.

Reports link plots as files (``publish``: ``plots/<cell>-NN.png`` beside the page, and ``plots/<cell>.html``
showing them) instead of embedding them, so a page stays small at the full grid's ~800 cells; a file that already
holds the same bytes is left alone, so a warm re-run rewrites nothing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from quant_harness.errors import CacheError
from quant_harness.metrics.verdicts import DEFAULT_BANDS
from quant_harness.models.registry import display_key
from quant_harness.records import Record
from quant_harness.store import FILES, META, ArtefactStore
from quant_harness.study.ids import split_cell_id

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REFERENCE_SUFFIX = "_reference"


class Plot(NamedTuple):
    """One PNG with the title it is shown under."""

    title: str
    png: bytes

    def b64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


class PlotFile(NamedTuple):
    """A published plot: its title and its file's path relative to the pages in the report folder."""

    title: str
    src: str


PLOTS_DIR = "plots"
"""The folder beside report.html and summary.html that holds the plot files."""


def file_stem(name: str) -> str:
    """A cell id (or group name) as a file name: anything but letters, digits, ``._-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write atomically unless the file already holds ``data`` (a warm re-run rewrites nothing)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def page_href(stem: str) -> str:
    """Where the page of one cell's (or group's) plots is, relative to the report folder."""
    return f"{PLOTS_DIR}/{file_stem(stem)}.html"


def publish(plot_list: list[Plot], report_dir: Path, stem: str, heading: str = "") -> list[PlotFile]:
    """Write plots as ``<report_dir>/plots/<stem>-NN.png`` and a page showing them (``page_href``); return the
    files for an ``<img>`` each."""
    stem = file_stem(stem)
    out = []
    for i, p in enumerate(plot_list):
        name = f"{stem}-{i:02d}.png"
        _write_if_changed(report_dir / PLOTS_DIR / name, p.png)
        out.append(PlotFile(p.title, f"{PLOTS_DIR}/{name}"))
    if out:
        imgs = "".join(f'<img loading="lazy" alt="{html.escape(f.title, quote=True)}" '
                       f'title="{html.escape(f.title, quote=True)}" src="{f.src.removeprefix(PLOTS_DIR + "/")}"/>'
                       for f in out)
        title = html.escape(heading or stem)
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                f"<body style='font-family:Helvetica,Arial,sans-serif'><h2>{title}</h2>{imgs}</body></html>\n")
        _write_if_changed(report_dir / page_href(stem), page.encode())
    return out


def _finite(values: Iterable[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    # imported here, not with the module: a warm report reads cached plots and draws none
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 2.9), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    return fig, ax


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _bands(ax: Any, name: str) -> None:
    band = DEFAULT_BANDS.get(name)
    if band is not None:
        ax.axhline(band.robust, color="#2e7d32", lw=0.8, ls=":", label=f"robust {band.robust:g}")
        ax.axhline(band.broken, color="#c62828", lw=0.8, ls=":", label=f"broken {band.broken:g}")


def precision_key(p: str) -> tuple[int, str]:
    """Report order of precisions (the registry's ``display_order``); unknown names last."""
    return display_key(p)


def per_layer_names(record: Record) -> list[str]:
    """Per-layer figures to plot: every name except the ``_reference`` partners, which are drawn beside them."""
    names = list(record.get("per_layer", {}))
    return [n for n in names if not (n.endswith(REFERENCE_SUFFIX) and n[: -len(REFERENCE_SUFFIX)] in names)]


def layer_plot(title: str, name: str, curves: dict[str, tuple[list[int], list[float]]],
               reference: tuple[list[int], list[float]] | None = None) -> Plot | None:
    """``name`` by layer, one line per label (precisions), the reference dashed."""
    curves = {k: v for k, v in curves.items() if v[0] and len(v[0]) == len(v[1]) and _finite(v[1])}
    values = [v for _, ys in curves.values() for v in ys]
    if not curves or max(values) - min(values) < 1e-6:
        return None
    fig, ax = _figure(title, "layer", name)
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", ms=3, lw=1.4, label=label)
    if reference and reference[0] and _finite(reference[1]):
        ax.plot(reference[0], reference[1], color="black", ls="--", lw=1.0, label="reference")
    _bands(ax, name)
    ax.legend(fontsize=7, loc="best")
    return Plot(title, _png(fig))


def series_plot(title: str, series: dict[str, Any]) -> Plot | None:
    """A ``{"x": [...], "x_label": ..., "<y>": [...]}`` figure: one line per y list."""
    xs = series.get("x")
    if not isinstance(xs, list) or not xs or not _finite(xs):
        return None
    ys = {k: v for k, v in series.items() if k not in ("x", "x_label") and isinstance(v, list)
          and len(v) == len(xs) and _finite(v)}
    if not ys:
        return None
    fig, ax = _figure(title, str(series.get("x_label", "x")), ", ".join(ys))
    for label, values in ys.items():
        ax.plot(xs, values, marker="o", ms=3, lw=1.4, label=label)
    ax.legend(fontsize=7, loc="best")
    return Plot(title, _png(fig))


def bar_plot(title: str, bars: dict[str, float], ylabel: str) -> Plot | None:
    """Labelled bars (accuracy by precision), the value printed on each."""
    bars = {k: v for k, v in bars.items() if _finite([v])}
    if not bars:
        return None
    fig, ax = _figure(title, "", ylabel)
    labels = list(bars)
    rects = ax.bar(labels, [bars[k] for k in labels], color="#4f7cac")
    ax.bar_label(rects, labels=[f"{bars[k]:.3g}" for k in labels], fontsize=8)
    return Plot(title, _png(fig))


def _is_series(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("x"), list)


def _is_bars(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and not _is_series(v) and _finite(v.values())


def cell_plots(record: Record) -> list[Plot]:
    """The plots of one cell: its per-layer curves (with the reference's), series and bar figures."""
    out: list[Plot | None] = []
    layers, per_layer = list(record.get("layers", [])), record.get("per_layer", {})
    cell, prec = record.get("cell_id", "?"), split_precision(record)
    for name in per_layer_names(record):
        ref = per_layer.get(name + REFERENCE_SUFFIX)
        xs = layers if len(layers) == len(per_layer[name]) else list(range(len(per_layer[name])))
        out.append(layer_plot(f"{name} by layer: {cell}", name, {prec: (xs, list(per_layer[name]))},
                              (xs, list(ref)) if isinstance(ref, list) and len(ref) == len(xs) else None))
    for name, value in record.get("figures", {}).items():
        if _is_series(value):
            out.append(series_plot(f"{name}: {cell}", value))
        elif _is_bars(value):
            out.append(bar_plot(f"{name}: {cell}", value, name))
    return [p for p in out if p is not None]


def cell_plots_cached(record: Record, cache_dir: Path) -> list[Plot]:
    """``cell_plots`` memoized in the artefact store (kind ``plots``) by the fields they are drawn from, so a warm
    re-run draws nothing (drawing is most of a warm run's time: ~0.15 s a PNG, two per cell)."""
    drawn_from = {k: record.get(k) for k in ("cell_id", "kind", "layers", "per_layer", "figures")}
    return ArtefactStore(cache_dir).get_or_build("plots", drawn_from, lambda: cell_plots(record), _PNGS).value


class _PngCodec:
    """Plots as PNG files a person can open (``00.png``, ...), their titles in the entry's meta.json."""

    name = "png"

    def write(self, value: list[Plot], folder: Path) -> dict[str, Any]:
        names = [f"{i:02d}.png" for i in range(len(value))]
        FILES.write(dict(zip(names, (p.png for p in value))), folder)
        return {"titles": [[n, p.title] for n, p in zip(names, value)]}

    def read(self, folder: Path, meta: Mapping[str, Any]) -> list[Plot]:
        try:
            return [Plot(str(title), (folder / name).read_bytes()) for name, title in meta["titles"]]
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise CacheError(f"{folder / META}: titles = {meta.get('titles')!r}: expected [file, title] pairs "
                             f"({e})") from e


_PNGS = _PngCodec()


def split_precision(record: Record) -> str:

    return split_cell_id(str(record.get("cell_id", "")), record).precision


def group_plot_files(title: str, records: list[Record], report_dir: Path, stem: str) -> list[PlotFile]:
    """``group_plots`` published as files, drawn only when the records' plotted fields changed since the files
    were written (a digest of them is kept in ``plots/<stem>.json``): summary.html's plots cost a warm re-run
    nothing."""
    drawn_from = [{k: r.get(k) for k in ("cell_id", "kind", "layers", "per_layer", "metric", "value")}
                  for r in sorted(records, key=lambda r: str(r.get("cell_id")))]
    digest = hashlib.sha256(json.dumps([title, drawn_from], sort_keys=True, default=str).encode()).hexdigest()
    index = report_dir / PLOTS_DIR / f"{file_stem(stem)}.json"
    try:
        known = json.loads(index.read_text())
        if known.get("digest") == digest and all((report_dir / f).is_file() for f, _ in known["plots"]):
            return [PlotFile(str(t), str(f)) for f, t in known["plots"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    out = publish(group_plots(title, records), report_dir, stem, title)
    _write_if_changed(index, json.dumps({"digest": digest, "plots": [[f.src, f.title] for f in out]}).encode())
    return out


def group_plots(title: str, records: list[Record]) -> list[Plot]:
    """The plots of one model x subject across precisions: per-layer lines per precision, else headline bars."""

    recs = sorted(records, key=lambda r: precision_key(split_cell_id(r["cell_id"], r).precision))
    names: list[str] = []
    for r in recs:
        names += [n for n in per_layer_names(r) if n not in names]
    out: list[Plot | None] = []
    for name in names:
        curves: dict[str, tuple[list[int], list[float]]] = {}
        reference = None
        for r in recs:
            values = r.get("per_layer", {}).get(name)
            if not isinstance(values, list):
                continue
            xs = list(r.get("layers", [])) if len(r.get("layers", [])) == len(values) else list(range(len(values)))
            curves[split_cell_id(r["cell_id"], r).precision] = (xs, values)
            ref = r.get("per_layer", {}).get(name + REFERENCE_SUFFIX)
            if reference is None and isinstance(ref, list) and len(ref) == len(xs):
                reference = (xs, ref)
        out.append(layer_plot(f"{name} by layer: {title}", name, curves, reference))
    if not names:
        metric = str(recs[0].get("metric", "value")) if recs else "value"
        out.append(bar_plot(f"{metric} by precision: {title}",
                            {split_cell_id(r["cell_id"], r).precision: r.get("value") for r in recs}, metric))
    return [p for p in out if p is not None]


def copy_plots(out: Path, sources: Sequence[Path]) -> None:
    """Copy each source's cell plot files and pages into ``out/plots`` (cell ids are unique across shards), writing
    only what differs (``_write_if_changed``)."""
    target = out / PLOTS_DIR
    for s in sources:
        folder = s / PLOTS_DIR
        if folder.is_dir() and folder.resolve() != target.resolve():
            for f in folder.iterdir():
                if f.is_file() and not f.name.startswith("."):   # not another writer's temporary file
                    _write_if_changed(target / f.name, f.read_bytes())
