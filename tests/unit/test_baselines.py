"""Baselines: tolerance grammar, direction of figures, regression messages, version warnings, unused files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_harness.report.baselines import BaselineSettings as Settings
from quant_harness.report.baselines import Baselines, BaselineVersionWarning, Tolerance, direction, parse
from quant_harness.errors import StudyError
from quant_harness._util.validate import SectionContext

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
    assert direction("cosine_mean") == 1 and direction("auroc_ci_low") == 1
    assert direction("steering_degradation") == -1 and direction("accuracy_drop") == -1
    assert direction("cosine_min_layer") == 0 and direction("norm_ratio_mean") == 0 and direction("n_layers") == 0


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
