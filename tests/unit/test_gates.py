"""The plan's gates (quant_harness.report.gates) on hand-built records, the [gates] table, the per-model benchmark
scope, the judge skip and the findings sections: no model, no cache."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from quant_harness import study
from quant_harness.errors import StudyError
from quant_harness.judge import settings as judge_settings
from quant_harness.records import CellResult
from quant_harness.report import findings, gates
from quant_harness.report.gates import GateSettings
from quant_harness.study.kinds import cells

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "cases/studies/quant-sensitivity.toml"


def _result(kind: str, cell_id: str, verdict: str = "broken", **figures: Any) -> CellResult:
    return CellResult(cell_id=cell_id, kind=kind, verdict=verdict, metric="m", value=0.5, figures=figures,
                      explanation="m 0.5: BROKEN")


def test_a_quantized_cell_whose_reference_auroc_fails_is_inconclusive_with_the_figure() -> None:
    r = gates.apply(_result("vectors", "m-nf4-caa_x-mean_diff", cosine_mean=0.5), GateSettings(), quantized=True,
                    reference_auroc=0.58)
    assert r.verdict == "inconclusive"
    assert r.explanation.startswith("reference baseline failed: reference AUROC 0.580 is not above 0.6")
    assert "verdict from the figures alone: broken" in r.explanation
    assert [f["check"] for f in r.flags] == ["reference_auroc", "cosine"], "the INVESTIGATE flag is kept too"


def test_a_passing_reference_keeps_the_verdict_and_the_reference_itself_is_never_gated() -> None:
    passed = gates.apply(_result("vectors", "m-nf4-caa_x-mean_diff", cosine_mean=0.9), GateSettings(),
                         quantized=True, reference_auroc=0.61)
    assert (passed.verdict, passed.flags) == ("broken", [])
    ref = gates.apply(_result("probes", "m-bf16-caa_x-mean_diff", auroc=0.52), GateSettings(), quantized=False,
                      reference_auroc=0.52)
    assert ref.verdict == "broken" and [f["rule"] for f in ref.flags] == ["investigate"]


@pytest.mark.parametrize(("kind", "figures", "check"), [
    ("steering", {"delta_reference": 3.0, "coherence_reference": 80.0}, "reference_delta"),
    ("steering", {"delta_reference": 40.0, "coherence_reference": 20.0, "baseline_coherence_reference": 25.0},
     "reference_coherence"),
    ("benchmarks", {"task": "qh_hellaswag", "reference_accuracy": 1.0}, "reference_accuracy"),
    ("benchmarks", {"task": "qh_hellaswag"}, "reference_accuracy"),
])
def test_each_checkpoint_gate_withholds_the_verdict(kind: str, figures: dict[str, Any], check: str) -> None:
    r = gates.apply(_result(kind, "m-int8-x", **figures), GateSettings(), quantized=True, reference_auroc=None)
    assert r.verdict == "inconclusive" and r.flags[0]["check"] == check and r.flags[0]["rule"] == "checkpoint"


@pytest.mark.parametrize(("kind", "figures", "check", "flagged"), [
    ("steering", {"degradation": 0.51, "delta_reference": 40.0}, "delta_drop", True),
    ("steering", {"degradation": 0.49, "delta_reference": 40.0}, "delta_drop", False),
    ("probes", {"auroc": 0.54}, "auroc", True),
    ("probes", {"auroc": 0.56}, "auroc", False),
    ("vectors", {"cosine_mean": 0.69}, "cosine", True),
    ("benchmarks", {"task": "qh_hellaswag", "reference_accuracy": 0.6, "accuracy_drop": 0.06}, "hellaswag_drop", True),
    ("benchmarks", {"task": "qh_mmlu", "reference_accuracy": 0.6, "accuracy_drop": 0.06}, "hellaswag_drop", False),
    ("steering", {"coherence": 29.0, "baseline_coherence": 12.0, "delta_reference": 40.0}, "coherence", True),
    ("steering", {"coherence": 29.0, "baseline_coherence": 31.0, "delta_reference": 40.0}, "coherence", False),
])
def test_investigate_and_discard_flag_without_changing_the_verdict(kind: str, figures: dict[str, Any], check: str,
                                                                   flagged: bool) -> None:
    r = gates.apply(_result(kind, "m-nf4-x", **figures), GateSettings(), quantized=True, reference_auroc=0.9)
    assert r.verdict == "broken"
    assert (check in [f["check"] for f in r.flags]) is flagged
    assert all(f["rule"] == ("discard" if check == "coherence" else "investigate") for f in r.flags)


def test_flags_travel_in_the_record_and_the_junit_properties() -> None:
    r = gates.apply(_result("vectors", "m-nf4-x", cosine_mean=0.6), GateSettings(), quantized=True,
                    reference_auroc=0.9)
    assert r.to_dict()["flags"][0]["value"] == 0.6
    assert ("flag_investigate", r.flags[0]["text"]) in r.properties()


def test_early_stop_only_when_every_cosine_clears_it() -> None:
    assert gates.early_stop({"a": 0.97, "b": 0.96}, 0.95) is not None
    assert gates.early_stop({"a": 0.97, "b": 0.95}, 0.95) is None
    assert gates.early_stop({"a": 0.99}, None) is None


def _study(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "g.toml"
    p.write_text(f'[study]\nroot = "{REPO}"\nreference = "fp32"\nprecisions = ["fp32", "nf4"]\n'
                 f'[models.smollm2-135m]\ncard = "smollm2-135m"\n{extra}\n')
    return p


@pytest.mark.parametrize(("table", "key", "expected"), [
    ("[gates]\nreference_auroc_min = 1.5", "gates.reference_auroc_min", "an AUROC in 0..1"),
    ("[gates]\nearly_stop_cosine = \"0.95\"", "gates.early_stop_cosine", "a number"),
    ("[gates]\ninvestigate_cosin = 0.7", "gates.investigate_cosin", "one of"),
    ("[benchmarks]\ntasks = [\"qh_sanity\"]\n[benchmarks.per_task.qh_sanity]\nmodels = [\"llama-8b\"]",
     "benchmarks.per_task.qh_sanity.models", "the study's models"),
    ("[steering.ab_files]\ncaa_nope = \"x.json\"", "steering.ab_files.caa_nope", "for a trait among"),
])
def test_bad_gates_and_benchmark_scope_are_usage_errors(tmp_path: Path, table: str, key: str, expected: str) -> None:
    with pytest.raises(StudyError) as e:
        study.load(_study(tmp_path, table), check_data=False)
    assert e.value.key == key and expected in e.value.expected


def test_the_plan_study_encodes_the_plans_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANT_HARNESS_DATA", "/nonexistent")
    s = study.load(PLAN, check_data=False)
    bench = [c.id for c in cells(s, "benchmarks")]
    assert sum(i.endswith("-hellaswag") for i in bench) == 7 * 4
    assert sorted({i.rsplit("-", 2)[0] for i in bench if i.endswith("-mmlu")}) == ["gemma2-2b", "llama-70b",
                                                                                   "llama-8b"]
    assert sum(i.endswith("-truthfulqa_mc2") for i in bench) == 3 * 4
    assert s.benchmarks.options["qh_mmlu"].limit == 10 and s.benchmarks.options["qh_hellaswag"].limit == 0
    assert (s.judge.model, s.judge.api_key_env, s.steering.search_steps) == ("gpt-4.1-mini", "OPENAI_API_KEY", 5)
    assert s.gates == GateSettings(early_stop_cosine=0.95), "the plan's figures"
    pv = [t for t in s.traits if t.methodology == "pv"]
    assert len(s.traits) == 6 and all((t.max_new_tokens, t.n_per_question) == (256, 2) for t in pv)
    assert s.steering.layers_for(80)[0] == 32 and s.steering.layers_for(26)[0] == 10, "depth-relative layers"


def test_without_the_key_judged_cells_skip_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    s = study.load(PLAN, check_data=False)
    reason = judge_settings.missing_key(s.judge)
    assert reason is not None and "OPENAI_API_KEY is not set" in reason
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert judge_settings.missing_key(s.judge) is None
    assert judge_settings.missing_key(judge_settings.JudgeSettings()) is None, "the local judge needs no key"


def _record(kind: str, cell_id: str, verdict: str, figures: dict[str, Any], flags: list[dict[str, Any]] | None = None
            ) -> dict[str, Any]:
    return {"cell_id": cell_id, "kind": kind, "verdict": verdict, "metric": "m", "value": 0.5, "figures": figures,
            "flags": flags or [], "provenance": {"reference": "bf16"}}


def test_findings_has_the_gate_sections_and_ticks_the_success_criteria() -> None:
    gated = gates.apply(_result("vectors", "llama-8b-nf4-caa_x-mean_diff", cosine_mean=0.6), GateSettings(),
                        quantized=True, reference_auroc=0.5).to_dict()
    gated["provenance"] = {"reference": "bf16"}
    records = [gated,
               _record("probes", "llama-8b-bf16-caa_x-mean_diff", "robust", {"auroc_reference": 0.5, "auroc": 0.5}),
               _record("benchmarks", "llama-8b-bf16-hellaswag", "robust",
                       {"task": "qh_hellaswag", "reference_accuracy": 0.7}),
               _record("benchmarks", "llama-8b-nf4-hellaswag", "robust",
                       {"task": "qh_hellaswag", "reference_accuracy": 0.7, "accuracy_drop": 0.01})]
    page = findings.render(records, {"by_kind": {}}, {})
    assert "### Checkpoint 1: reference baselines" in page and "### INVESTIGATE" in page and "### DISCARD" in page
    assert "- vectors llama-8b-nf4-caa_x-mean_diff: reference AUROC 0.500 is not above 0.6" in page
    assert "withheld (inconclusive, reference baseline failed):** 1 of 4 (reference_auroc 1)" in page
    assert "cosine 0.600 with the reference is below 0.7" in page
    assert "- [x] Capability preserved: HellaSwag on every model x precision" in page
    assert "- [ ] Cross-precision transfer tested" in page
    assert "- [x] Vector cosine measured for every precision x model x trait" in page


def test_the_early_stop_reads_every_traits_cosine_at_the_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """StudyRunner.cosines: one layer-mean cosine per trait (the [steering] method's vectors), what early_stop reads."""
    import torch

    from quant_harness.runner import StudyRunner

    monkeypatch.setenv("QUANT_HARNESS_DATA", "/nonexistent")
    s = study.load(PLAN, check_data=False)
    vecs = {"bf16": {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 1.0])},
            "nf4": {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([1.0, 1.0])}}
    fake = SimpleNamespace(study=s, vectors=lambda model, precision, trait, method: vecs[precision])
    out = StudyRunner.cosines(fake, "llama-8b", "nf4")  # type: ignore[arg-type]
    assert set(out) == {t.key for t in s.traits}
    assert all(abs(v - (1 + 2 ** -0.5) / 2) < 1e-6 for v in out.values())
    assert gates.early_stop(out, 0.95) is None and gates.early_stop(out, 0.8) is not None
