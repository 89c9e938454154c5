"""Matrices, shard merging and derived files (ranking, findings, summary page, plots) from stored records only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_harness.cli import main
from quant_harness.report import findings, plots, ranking
from quant_harness.report import html as html_report
from quant_harness.report import matrices as reporting
from quant_harness.study import ids


def rec(model: str, precision: str, trait: str, method: str, cos: float, kind: str = "vectors",
        **extra: Any) -> dict[str, Any]:
    cell = f"{model}-{precision}-{trait}-{method}"
    return {"cell_id": cell, "kind": kind, "verdict": "degraded", "metric": "cosine_mean", "value": cos,
            "figures": {"cosine_mean": cos, "cosine_mean_ci_low": cos - 0.02, "cosine_mean_ci_high": cos + 0.02},
            "per_layer": {"cosine": [cos - 0.05, cos, cos + 0.05], "norm": [1.0, 2.0, 3.0],
                          "norm_reference": [1.1, 2.1, 3.1]},
            "layers": [3, 10, 20], "explanation": "cosine ...",
            "provenance": {"reference": "fp32", "notes": ["dequantized Q4_1"]}, **extra}


GRID = [rec("smollm2-135m", p, t, m, c) for p, t, m, c in [
    ("nf4", "caa_sycophancy", "mean_diff", 0.70), ("nf4", "caa_sycophancy", "probe", 0.72),
    ("int8", "caa_sycophancy", "mean_diff", 0.90), ("int8", "caa_sycophancy", "probe", 0.93),
    ("nf4", "caa_refusal", "mean_diff", 0.60), ("int8", "caa_refusal", "mean_diff", 0.88)]]


def test_split_cell_id() -> None:
    assert ids.split_cell_id("llama-70b-nf4-caa_sycophancy-mean_diff") == (
        "llama-70b", "nf4", "caa_sycophancy-mean_diff")
    assert ids.split_cell_id("gemma2-2b-gptq-hellaswag") == ("gemma2-2b", "gptq", "hellaswag")


def test_kinds_sharing_a_matrix_do_not_overwrite_each_other(tmp_path: Path) -> None:
    steer = rec("m", "nf4", "caa_x", "mean_diff", 0.5, kind="steering")
    logit = rec("m", "nf4", "caa_x", "mean_diff", 0.6, kind="logit_diff")
    reporting.merge_records(tmp_path, [steer, logit])
    data = json.loads((tmp_path / "steering_comparison.json").read_text())
    assert set(data["records"]) == {"m-nf4-caa_x-mean_diff", "logit_diff:m-nf4-caa_x-mean_diff"}
    assert data["kind"] == ["logit_diff", "steering"]


def test_merge_shards_and_rebuild(tmp_path: Path) -> None:
    shards = [tmp_path / "s0", tmp_path / "s1"]
    for i, (shard, recs) in enumerate(zip(shards, (GRID[:3], GRID[3:]))):
        reporting.merge_records(shard / "results", recs)
        reporting.write_run(shard / "results", {"model_loads": 2 + i, "forward_passes": 10, "cache_hits": 1,
                                                "loads_by_group": {f"g{i}": 1}}, study="tiny", workers=1)
    out = tmp_path / "all"
    assert main(["report", "--report-dir", str(out), "--merge", *map(str, shards)]) == 0
    merged = reporting.load_records(out / "results")
    assert sorted(r["cell_id"] for r in merged) == sorted(r["cell_id"] for r in GRID)
    run = json.loads((out / "results" / "run.json").read_text())
    assert run["model_loads"] == 5 and run["forward_passes"] == 20 and run["loads_by_group"] == {"g0": 1, "g1": 1}
    assert run["workers"] == 2 and run["study"] == "tiny"
    assert {p.name for p in out.iterdir()} >= {"findings.md", "summary.html", "results"}
    assert main(["report", "--report-dir", str(out), "--merge", str(tmp_path / "nope")]) == 2


def test_ranking_orders_precisions_and_pairs_conditions() -> None:
    r = ranking.rank(GRID)["by_kind"]["vectors"]
    assert [p["name"] for p in r["precisions"]] == ["int8", "nf4"]
    assert r["paired"]["int8_vs_nf4"]["b_more_robust"] and r["paired"]["int8_vs_nf4"]["n_pairs"] == 3
    assert r["paired"]["probe_vs_mean_diff"]["n_pairs"] == 2
    assert r["size_scaling"] is None and "two or more sizes" in r["size_scaling_note"]
    assert ranking.rank(GRID) == ranking.rank(list(reversed(GRID)))


def test_findings_answer_what_was_measured_and_name_what_is_missing() -> None:
    text = findings.render(GRID, ranking.rank(GRID), {"study": "tiny"})
    assert "### H6: INT8 degrades less than NF4\n\n**Answer:** vectors: int8 more robust" in text
    assert "### H2:" in text and "not measured: steering_comparison.json has no steering records" in text
    assert "not measured: needs two sizes of one family" in text
    assert "- dequantized Q4_1" in text and "no LLM judge" in text
    judged = GRID + [rec("smollm2-135m", "nf4", "caa_x", "mean_diff", 0.2, kind="steering",
                         provenance={"judge": "gpt-4.1-mini @ http://127.0.0.1:8000/v1"})]
    assert "Steering was scored by: gpt-4.1-mini" in findings.render(judged, ranking.rank(judged), {})


def test_plots_are_drawn_from_record_fields() -> None:
    r = rec("m", "nf4", "caa_x", "mean_diff", 0.8)
    r["figures"]["delta_by_coefficient"] = {"x": [0, 4, 8], "x_label": "coefficient", "delta": [0, 10, 20]}
    r["figures"]["accuracy"] = {"fp32": 0.5, "nf4": 0.48}
    titles = [p.title for p in plots.cell_plots(r)]
    assert [t.split(":")[0] for t in titles] == ["cosine by layer", "norm by layer", "delta_by_coefficient",
                                                 "accuracy"]
    assert all(p.png.startswith(b"\x89PNG") for p in plots.cell_plots(r))
    bench = [{"cell_id": f"m-{p}-hellaswag", "kind": "benchmarks", "metric": "accuracy_drop", "value": v}
             for p, v in (("fp32", 0.0), ("nf4", 0.02))]
    assert [p.title for p in plots.group_plots("m hellaswag", bench)] == ["accuracy_drop by precision: m hellaswag"]


def test_summary_table_colours_each_cell_by_verdict() -> None:
    r = rec("m", "nf4", "caa_x", "mean_diff", 0.8, verdict="inconclusive")
    r["figures"]["responses"] = [{"prompt": "Hi <b>", "coefficient": 4.0, "response": "steered"}]
    table = html_report.summary_table([r])
    assert html_report.COLOURS["inconclusive"] in table and "0.8000 [0.780, 0.820]" in table
    block = html_report.cell_block(r)
    assert "Hi &lt;b&gt;" in block and "coefficient=4.0000" in block and "data:image/png;base64," in block


def test_cell_plots_are_drawn_once_and_read_back_from_the_plot_cache(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from quant_harness.report import plots

    record = {"cell_id": "m-nf4-caa_x-mean_diff", "kind": "vectors", "layers": [0, 1, 2],
              "per_layer": {"cosine": [0.9, 0.95, 0.97], "cosine_reference": [1.0, 1.0, 1.0]}, "figures": {}}
    first = plots.cell_plots_cached(record, tmp_path)
    assert first == plots.cell_plots(record) and len(first) == 1
    monkeypatch.setattr(plots, "cell_plots", lambda r: pytest.fail("drawn again despite the cache"))
    assert plots.cell_plots_cached(record, tmp_path) == first
    changed = {**record, "per_layer": {"cosine": [0.5, 0.6, 0.7]}}
    monkeypatch.undo()
    assert plots.cell_plots_cached(changed, tmp_path) != first


def test_h2_and_h7_lines_state_one_figure_each() -> None:
    steer = [rec("m", "nf4", "caa_x", "mean_diff", 0.2, kind="steering", metric="degradation", verdict="broken",
                 figures={"degradation": 0.4, "delta": 3.0, "logit_corr": 0.5}),
             rec("m", "nf4", "caa_y", "mean_diff", 1.0, kind="steering", metric="delta", verdict="inconclusive",
                 figures={"delta": 1.0}),
             rec("m", "nf4", "caa_x", "mean_diff", 0.95, kind="logit_diff", metric="logit_corr", verdict="robust",
                 figures={"logit_corr": 0.95, "logit_corr_pooled": 0.99}),
             rec("m", "nf4", "caa_x", "mean_diff", 0.8, kind="transfer", metric="transfer_ratio",
                 verdict="degraded", figures={"transfer_ratio": 0.8})]
    text = findings.render(steer, ranking.rank(steer), {})
    h2 = text.split("### H2:")[1].split("### H3:")[0]
    assert "steering: 1 of 2 cells degraded or broken, 1 inconclusive; logit_diff: 0 of 1" in h2
    lines = [ln for ln in h2.splitlines() if ln.startswith("- ")]
    assert lines == [
        "- steering, nf4: mean degradation 0.400 over 1 cells (degradation of the judged steering delta at the "
        "reference's operating point); verdicts broken 1, inconclusive 1; 1 cells without it (the reference shows "
        "no effect to compare)",
        "- logit_diff, nf4: mean logit_corr 0.950 over 1 cells (correlation of per-question A/B steerability slopes "
        "with the reference's); verdicts robust 1"]
    h7 = text.split("### H7:")[1].split("### H8:")[0]
    assert "0 of 1 transfer cells robust, 1 degraded or broken" in h7 and "mean transfer_ratio 0.800" in h7


def test_ranking_reads_each_headlines_direction_from_the_kind_registry() -> None:
    from quant_harness.report.ranking import degradation

    def rec(kind: str, metric: str, value: float) -> Any:
        return {"cell_id": "m-nf4-x", "kind": kind, "metric": metric, "value": value}

    assert degradation(rec("vectors", "cosine_mean", 0.9)) == pytest.approx(0.1)
    assert degradation(rec("probes", "auroc_drop", 0.05)) == pytest.approx(0.05)
    assert degradation(rec("transfer", "transfer_ratio", 0.8)) == pytest.approx(0.2)
    assert degradation(rec("benchmarks", "accuracy_drop", 0.02)) == pytest.approx(0.02)
    assert degradation(rec("sae", "topk_jaccard", 0.7)) == pytest.approx(0.3)
    assert degradation(rec("steering", "delta", 12.0)) is None, "an inconclusive cell's effect size is not ranked"
    assert degradation(rec("vectors", "cosine_mean", float("nan"))) is None
