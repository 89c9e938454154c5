"""Reports stay light at the full grid: with plots as files beside the pages (lazily loaded, each summary cell linked
to its plots' page), report.html and summary.html of a synthetic 800-cell results folder stay under 5 MB, and a
warm rebuild draws and rewrites no plot."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from quant_harness.report import derive, plots
from quant_harness.report import html as html_report
from quant_harness.report.matrices import merge_records, write_run
from quant_harness.study.ids import split_cell_id

LIMIT = 5_000_000
MODELS = ["llama-8b", "qwen-7b", "mistral-7b", "gemma2-9b", "olmo2-7b", "llama-70b", "gemma3-4b"]
PRECISIONS = ["fp16", "nf4", "int8", "gptq"]
TRAITS = ["caa_sycophancy", "caa_refusal", "caa_hallucination", "pv_evil", "pv_sycophantic", "arditi_refusal",
          "caa_optimism", "caa_survival", "caa_corrigible", "pv_impolite"]


def _record(model: str, precision: str, trait: str, method: str, i: int) -> dict[str, Any]:
    """A vector cell the size of a real one: six 32-layer curves, a figure table, provenance, steered responses."""
    layers = list(range(32))
    curve = [0.9 + 0.003 * ((i + L) % 30) for L in layers]
    return {"cell_id": f"{model}-{precision}-{trait}-{method}", "kind": "vectors", "verdict": "degraded",
            "metric": "cosine_mean", "value": 0.91, "explanation": "layer-mean cosine 0.910 [0.890, 0.930] vs the "
            "reference's self-agreement 0.990: degraded (robust > 0.95, broken < 0.80)",
            "layers": layers, "per_layer": {name: curve for name in (
                "cosine", "self_cosine_reference", "norm", "norm_reference", "massive_dim_energy",
                "massive_dim_energy_reference")},
            "figures": {**{f"figure_{k}": 0.123456 * k for k in range(18)},
                        "responses": [{"prompt": "Is the sky green? " * 4, "coefficient": 4.0,
                                       "response": "No, the sky is blue. " * 6} for _ in range(3)]},
            "provenance": {"reference": "fp16", "study": "quant-sensitivity", "dataset_hash": "0123456789abcdef",
                           "versions": {"torch": "2.9.0", "transformers": "5.24.0", "bitsandbytes": "0.50.0"},
                           "notes": ["full precision is fp16"], "n_pos": 100, "n_neg": 100}}


def records_800() -> list[dict[str, Any]]:
    """7 models x 4 precisions x 10 traits x 3 methods, the first 800: the plan's grid size."""
    grid = [(m, p, t, meth) for m in MODELS for t in TRAITS for meth in ("mean_diff", "probe", "pca")
            for p in PRECISIONS][:800]
    return [_record(m, p, t, meth, i) for i, (m, p, t, meth) in enumerate(grid)]


@pytest.fixture(scope="module")
def png() -> plots.Plot:
    """One real plot, reused for every cell so that the test measures the pages, not matplotlib."""
    p = plots.layer_plot("cosine by layer", "cosine", {"nf4": ([0, 1, 2], [0.9, 0.95, 0.97])})
    assert p is not None
    return p


def _fake_drawing(monkeypatch: pytest.MonkeyPatch, png: plots.Plot, drawn: list[str]) -> None:
    def cell(record: dict[str, Any]) -> list[plots.Plot]:
        drawn.append(str(record["cell_id"]))
        return [plots.Plot(f"cosine by layer: {record['cell_id']}", png.png), plots.Plot("norm", png.png)]

    def group(title: str, recs: list[dict[str, Any]]) -> list[plots.Plot]:
        drawn.append(title)
        return [plots.Plot(f"cosine by layer: {title}", png.png)]

    monkeypatch.setattr(plots, "cell_plots", cell)
    monkeypatch.setattr(plots, "group_plots", group)


def _srcs(page: str) -> list[str]:
    return re.findall(r'<img loading="lazy" [^>]*src="([^"]+)"', page)


def test_summary_page_of_800_cells_links_plot_files_and_stays_light(tmp_path: Path, png: plots.Plot,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[str] = []
    _fake_drawing(monkeypatch, png, drawn)
    records = records_800()
    for r in records:   # what report.html's blocks publish on the workers
        plots.publish(plots.cell_plots(r), tmp_path, r["cell_id"], r["cell_id"])
    merge_records(tmp_path / "results", records)
    write_run(tmp_path / "results", {"model_loads": 0})
    derive.derive(tmp_path)
    page = (tmp_path / "summary.html").read_text()
    assert len(page.encode()) < LIMIT and "data:image" not in page
    srcs = _srcs(page)
    groups = {(n.model, n.subject) for n in (split_cell_id(r["cell_id"], r) for r in records)}
    assert len(records) == 800 and len(srcs) == len(groups) == 200   # one plot per model x trait/method
    assert srcs and all((tmp_path / s).is_file() for s in srcs)
    links = re.findall(r'<a href="(plots/[^"]+\.html)">plots</a>', page)
    assert len(links) == 800 and all((tmp_path / h).is_file() for h in links)
    cell_page = (tmp_path / links[0]).read_text()
    assert all((tmp_path / "plots" / s).is_file() for s in re.findall(r'src="([^"]+)"', cell_page))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "plots").iterdir()}
    drawn.clear()
    assert html_report.summary_page(records, {}, tmp_path)   # warm: nothing drawn, no plot file rewritten
    assert drawn == [] and {p: p.stat().st_mtime_ns for p in (tmp_path / "plots").iterdir()} == before


def test_report_html_of_800_cells_stays_under_5_mb(pytester: pytest.Pytester, png: plots.Plot) -> None:
    """pytest-html with 800 cells carrying the harness's blocks (as the plugin's extras hook makes them)."""
    png_file = pytester.path / "one.png"
    png_file.write_bytes(png.png)
    pytester.makeconftest(textwrap.dedent(f"""
        import pytest
        from pathlib import Path
        from quant_harness.report import html as html_report, plots
        from tests_light_records import records_800

        RECORDS = records_800()
        PNG = Path({str(png_file)!r}).read_bytes()
        plots.cell_plots = lambda r: [plots.Plot("cosine: " + r["cell_id"], PNG), plots.Plot("norm", PNG)]

        def pytest_generate_tests(metafunc):
            metafunc.parametrize("i", range(len(RECORDS)))

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(item, call):
            outcome = yield
            rep = outcome.get_result()
            if rep.when == "call":
                rep.extras = html_report.extras(RECORDS[item.callspec.params["i"]], None,
                                                Path(item.config.option.htmlpath).parent)

        def pytest_html_results_summary(prefix, summary, postfix, session):
            prefix.append(html_report.summary_table(RECORDS, links=html_report.plot_links(
                RECORDS, Path(session.config.option.htmlpath).parent)))
    """))
    pytester.makepyfile(tests_light_records=Path(__file__).read_text(), test_cells="def test_cell(i):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-q", "--html=reports/report.html",
                                "--self-contained-html", "test_cells.py")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    report = pytester.path / "reports" / "report.html"
    page = report.read_text()
    size = len(page.encode())
    assert size < LIMIT, f"report.html is {size / 1e6:.2f} MB at 800 cells"
    assert "data:image/png" not in page
    # pytest-html keeps the blocks in a JSON blob inside an attribute: quotes there are \&#34;
    q = r'(?:\\&#34;|")'
    srcs = re.findall(rf'loading={q}lazy{q} [^>]*?src={q}(plots/[^"&\\]+){q}', page)
    assert len(srcs) == 1600 and all((report.parent / s).is_file() for s in srcs)
    links = re.findall(r'<a href="(plots/[^"]+\.html)">plots</a>', page)
    assert len(links) == 800 and all((report.parent / h).is_file() for h in links)
    print(f"report.html at 800 cells: {size / 1e6:.2f} MB")


def test_a_block_without_a_report_folder_still_embeds_its_plots(png: plots.Plot) -> None:
    r = _record("m", "nf4", "caa_x", "mean_diff", 0)
    block = html_report.cell_block(r, [png])
    assert "data:image/png;base64," in block and 'loading="lazy"' not in block
    files = [plots.PlotFile("cosine", "plots/m-00.png")]
    linked = html_report.cell_block(r, files=files, with_style=False)
    assert '<img loading="lazy" alt="cosine" title="cosine" src="plots/m-00.png"/>' in linked
    assert "<style>" not in linked and "data:image" not in linked
