"""Baselines: tolerance grammar, direction of figures, regression messages, version warnings, unused files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_harness._util.validate import SectionContext
from quant_harness.errors import StudyError
from quant_harness.metrics.verdicts import Band
from quant_harness.report.baselines import Baselines, BaselineVersionWarning, direction
from quant_harness.report.settings import BaselineSettings as Settings
from quant_harness.report.settings import Tolerance, parse


def _ctx(path: Path | str, models: tuple[str, ...] = ("m",)) -> SectionContext:
    return SectionContext(Path(path), Path(path).parent, 30, models, ())



def record(cos: float = 0.9, verdict: str = "degraded", torch: str = "2.14.1") -> dict[str, Any]:
    return {"cell_id": "m-nf4-caa_x-mean_diff", "kind": "vectors", "metric": "cosine_mean", "verdict": verdict,
            "value": cos, "figures": {"cosine_mean": cos, "norm_ratio_mean": 1.2, "cosine_min_layer": 3,
                                      "curve": {"x": [1]}},
            "provenance": {"versions": {"torch": torch, "transformers": "5.23"}}}


def test_settings_from_the_study_table(tmp_path: Path) -> None:
    s = parse(_ctx(tmp_path / "s.toml"), {"tolerance": 0.01, "figures": {"cosine_mean": "5%"}})
    assert s.tolerance == Tolerance(0.01) and s.for_figure("cosine_mean") == Tolerance(0.05, relative=True)
    assert parse(_ctx(tmp_path / "s.toml"), None) == Settings()
    with pytest.raises(StudyError, match=r"baselines\.tolerance.*percentage"):
        parse(_ctx(tmp_path / "s.toml"), {"tolerance": "lots"})
    with pytest.raises(StudyError, match=r"baselines\.tolerence"):
        parse(_ctx(tmp_path / "s.toml"), {"tolerence": 0.1})


def test_direction_of_figures() -> None:
    assert direction("vectors", "cosine_mean") == 1 and direction("probes", "auroc_ci_low") == 1
    assert direction("steering", "degradation") == -1 and direction("benchmarks", "accuracy_drop") == -1
    assert direction("vectors", "cosine_min_layer") == 0 and direction("vectors", "norm_ratio_mean") == 0
    assert direction("vectors", "n_layers") == 0 and direction("transfer", "steerability_own_se") == 0
    # figures the old substring rule could not place
    assert direction("transfer", "transfer_ratio") == 1 and direction("sae", "topk_jaccard") == 1
    assert direction("refusal", "effect") == 1 and direction("logit_diff", "steerability_reference") == 1
    assert direction("transfer", "transfer_degradation_ci_high") == -1 and direction("refusal", "degradation") == -1


def test_every_kinds_headline_goes_the_way_of_its_band() -> None:
    from quant_harness.metrics.verdicts import DEFAULT_BANDS
    from quant_harness.report.baselines import headline_direction
    from quant_harness.study.kinds import KINDS

    expected = {("vectors", "cosine_mean"): 1, ("probes", "auroc"): 1, ("probes", "auroc_drop"): -1,
                ("steering", "degradation"): -1, ("logit_diff", "logit_corr"): 1, ("transfer", "transfer_ratio"): 1,
                ("refusal", "degradation"): -1, ("benchmarks", "accuracy_drop"): -1, ("sae", "topk_jaccard"): 1}
    assert {(k, m) for k, spec in KINDS.items() for m in spec.banded} == set(expected)
    for (kind, metric), sign in expected.items():
        assert headline_direction(kind, metric, DEFAULT_BANDS) == sign, (kind, metric)
        assert direction(kind, metric) == sign, (kind, metric)   # the registry's figure direction agrees
    assert headline_direction("steering", "delta", DEFAULT_BANDS) is None   # an inconclusive cell's effect size
    flipped = {**DEFAULT_BANDS, "logit_corr": Band(0.1, 0.3, higher_is_better=False)}
    assert headline_direction("logit_diff", "logit_corr", flipped) == -1   # the study's band, not a guess


def cell(kind: str, metric: str, value: float, verdict: str = "robust", **figures: float) -> dict[str, Any]:
    return {"cell_id": "m-nf4-caa_x-mean_diff", "kind": kind, "metric": metric, "verdict": verdict, "value": value,
            "figures": figures, "provenance": {"versions": {}}}


@pytest.mark.parametrize(("kind", "metric", "old", "new"), [
    ("transfer", "transfer_ratio", 0.9, 0.6),
    ("sae", "topk_jaccard", 0.9, 0.7),
    ("steering", "degradation", 0.05, 0.2),
    ("refusal", "degradation", 0.0, 0.3),
    ("logit_diff", "logit_corr", 0.95, 0.8),
    ("probes", "auroc_drop", 0.01, 0.1),
    ("benchmarks", "accuracy_drop", 0.0, 0.05),
])
def test_every_banded_headline_is_gated_in_its_bands_direction(tmp_path: Path, kind: str, metric: str, old: float,
                                                              new: float) -> None:
    b = Baselines(tmp_path, Settings(Tolerance(0.02)))
    b.write([cell(kind, metric, old, "degraded", **{metric: old})])
    worse = b.check(cell(kind, metric, new, "degraded", **{metric: new}))
    assert worse.status == "regressed" and worse.regressions[0].startswith(f"{metric} got worse"), worse
    better = b.check(cell(kind, metric, 2 * old - new, "degraded", **{metric: 2 * old - new}))
    assert better.status == "ok", better


@pytest.mark.parametrize(("kind", "name", "old", "new"), [
    ("refusal", "effect", 1.2, 0.8), ("logit_diff", "steerability", 1.0, 0.5),
    ("logit_diff", "steerability_reference", 1.0, 0.5), ("transfer", "transfer_ratio_ci_low", 0.8, 0.5),
])
def test_other_figures_are_gated_in_their_own_direction(tmp_path: Path, kind: str, name: str, old: float,
                                                        new: float) -> None:
    b = Baselines(tmp_path, Settings(Tolerance(0.02)))
    b.write([cell(kind, "x", 0.0, **{name: old})])
    assert b.check(cell(kind, "x", 0.0, **{name: new})).regressions[0].startswith(f"{name} got worse")
    assert b.check(cell(kind, "x", 0.0, **{name: 2 * old - new})).status == "ok"


def test_the_headline_is_gated_even_when_figures_do_not_repeat_it(tmp_path: Path) -> None:
    b = Baselines(tmp_path, Settings(Tolerance(0.02)))
    b.write([cell("transfer", "transfer_ratio", 0.9)])
    assert json.loads(b.path("transfer", "m-nf4-caa_x-mean_diff").read_text())["figures"] == {"transfer_ratio": 0.9}
    assert b.check(cell("transfer", "transfer_ratio", 0.5)).status == "regressed"


def test_the_direction_function_can_be_swapped_but_not_for_the_headline(tmp_path: Path) -> None:
    b = Baselines(tmp_path, Settings(Tolerance(0.02)), direction=lambda kind, name: 0)
    b.write([cell("refusal", "degradation", 0.0, effect=1.2, degradation=0.0)])
    moved = b.check(cell("refusal", "degradation", 0.0, effect=0.5, degradation=0.0))
    assert moved.status == "ok" and "effect changed" in moved.notes[0]
    assert b.check(cell("refusal", "degradation", 0.5, effect=1.2, degradation=0.5)).status == "regressed"


@pytest.mark.parametrize(("old", "new", "regressed"), [
    ("robust", "inconclusive", True), ("robust", "degraded", True), ("robust", "broken", True),
    ("degraded", "broken", True), ("degraded", "inconclusive", False), ("inconclusive", "broken", False),
    ("broken", "degraded", False), ("inconclusive", "robust", False),
])
def test_verdict_changes(tmp_path: Path, old: str, new: str, regressed: bool) -> None:
    b = Baselines(tmp_path, Settings())
    b.write([cell("logit_diff", "logit_corr", 0.9, old)])
    check = b.check(cell("logit_diff", "logit_corr", 0.9, new))
    assert (check.status == "regressed") is regressed
    if regressed:
        assert check.regressions[0] == f"verdict got worse: baseline {old}, now {new}"


def test_worse_beyond_tolerance_fails_with_the_message(tmp_path: Path) -> None:
    b = Baselines(tmp_path, Settings(Tolerance(0.02)))
    assert b.check(record()).status == "missing"
    b.write([record(0.9)])
    stored = json.loads(b.path("vectors", "m-nf4-caa_x-mean_diff").read_text())
    assert stored["figures"] == {"cosine_mean": 0.9, "cosine_min_layer": 3, "norm_ratio_mean": 1.2}
    assert b.check(record(0.885)).status == "ok"
    assert b.check(record(0.95)).status == "ok"
    worse = b.check(record(0.85, verdict="broken"))
    assert worse.status == "regressed"
    assert worse.regressions[0] == "cosine_mean got worse: baseline 0.9, now 0.85, tolerance 0.02 absolute"
    assert worse.regressions[1] == "verdict got worse: baseline degraded, now broken"
    assert "--quant-update-baselines" in worse.regressions[-1]
    changed = b.check({**record(), "figures": {**record()["figures"], "norm_ratio_mean": 2.0}})
    assert changed.status == "ok" and "norm_ratio_mean changed" in changed.notes[0]


def test_other_library_versions_warn(tmp_path: Path) -> None:
    b = Baselines(tmp_path, Settings())
    b.write([record(torch="2.0.0")])
    with pytest.warns(BaselineVersionWarning, match=r"torch 2\.0\.0 -> 2\.14\.1"):
        assert b.check(record()).status == "ok"


def test_update_writes_selected_and_deletes_unused(tmp_path: Path) -> None:
    b = Baselines(tmp_path, Settings())
    b.write([record(), {**record(), "cell_id": "gone"}])
    lines, failed = b.finish([record()], [("vectors", "m-nf4-caa_x-mean_diff")])
    assert failed and lines == ["1 baselines unused; re-run with --quant-update-baselines to delete: vectors/gone.json"]
    upd = Baselines(tmp_path, Settings(), update=True)
    assert upd.check(record()).status == "updating"
    lines, failed = upd.finish([record()], [("vectors", "m-nf4-caa_x-mean_diff")])
    assert not failed and "1 baselines written" in lines[0] and "1 unused baselines deleted: gone.json" in lines[1]
    assert [p.name for p in b.stored()] == ["m-nf4-caa_x-mean_diff.json"]
