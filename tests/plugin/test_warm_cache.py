"""Extract once, everything else in seconds: a warm re-run of the same cells loads no model and runs no forward pass.

Also checks the three methodologies end to end on the embedded model at small sizes: PV rollouts (replayed from the
reference into int8), CAA at the answer letter, Arditi at the last post-instruction token, and the probe cells.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from registry_check import unregistered_figures

REPO = Path(__file__).resolve().parents[2]

TRAITS = f"""
[[traits]]
methodology = "caa"
name = "sycophancy"
dataset = "{REPO}/fixtures/traits/caa_sycophancy.json"
limit = 4
layers = [3, 12]

[[traits]]
methodology = "pv"
name = "sycophantic"
dataset = "{REPO}/fixtures/traits/pv_sycophantic.json"
limit = 1
layers = [3, 12]
max_new_tokens = 3
replay = true

[[traits]]
methodology = "arditi"
name = "refusal"
dataset = "{REPO}/fixtures/traits/arditi_refusal"
limit = 4
layers = [3, 12]
"""


def _run(pytester: pytest.Pytester, args: list[str]) -> dict[str, object]:
    result = pytester.runpytest_subprocess(*args, "-k", "test_probe_auroc or test_vector_fidelity")
    result.assert_outcomes(passed=18)
    return dict(json.loads((pytester.path / "reports/results/run.json").read_text()))


@pytest.mark.slow
def test_warm_rerun_loads_nothing_and_matches_the_cold_run(
        pytester: pytest.Pytester, make_study: Callable[..., Path], run_args: Callable[..., list[str]],
        tmp_path: Path) -> None:
    study = make_study(precisions=("fp32", "int8"), methods=("mean_diff", "probe"), traits=TRAITS)
    cache = tmp_path / "cache"
    cold = _run(pytester, run_args(study, cache=cache))
    assert cold["model_loads"] == 2 and cold["cache_misses"] == 43  # type: ignore[operator]
    assert cold["generated_tokens"] > 0  # type: ignore[operator]
    # every artefact of the store is counted, per kind: 6 activations, the fp32 rollouts, one plot entry per cell,
    # and each vector and probe cell's bootstrap result (extract.derived)
    misses = {k: v["misses"] for k, v in cold["cache_by_kind"].items()}  # type: ignore[attr-defined]
    assert misses == {"activations": 6, "plots": 18, "responses": 1, "derived/vectors": 6, "derived/probes": 12}
    probes = json.loads((pytester.path / "reports/results/probe_comparison.json").read_text())["records"]
    vectors = json.loads((pytester.path / "reports/results/vector_comparison.json").read_text())["records"]
    assert unregistered_figures(pytester.path / "reports/results") == []
    # replay: int8 activations read the fp32 responses, so only fp32 generated any
    assert [p.name for p in (cache / "responses" / "smollm2-135m").iterdir()] == ["fp32"]
    pv = probes["smollm2-135m-int8-pv_sycophantic-mean_diff"]["provenance"]
    assert pv["extraction"]["int8"]["responses_from"] == "fp32" and pv["extraction"]["int8"]["kept_pairs"] == 5
    assert "hidden_states[L+1]" in pv["layer_convention"]

    warm = _run(pytester, run_args(study, cache=cache))
    assert (warm["model_loads"], warm["forward_passes"], warm["generated_tokens"], warm["cache_misses"]) == \
        (0, 0, 0, 0)
    again = json.loads((pytester.path / "reports/results/probe_comparison.json").read_text())["records"]
    assert {k: r["value"] for k, r in again.items()} == {k: r["value"] for k, r in probes.items()}
    # the cached bootstrap results read back as computed: figures, per-layer curves and explanations alike
    same = json.loads((pytester.path / "reports/results/vector_comparison.json").read_text())["records"]
    for cold_records, warm_records in ((probes, again), (vectors, same)):
        for k, r in cold_records.items():
            for field in ("verdict", "figures", "per_layer", "explanation"):
                assert warm_records[k][field] == r[field], (k, field)

    # a statistics setting is part of the key: other bootstrap replicates recompute every result, no model work
    fewer = study.with_name("fewer.toml")
    fewer.write_text(study.read_text().replace('fail_on = "never"', 'fail_on = "never"\nbootstrap_n = 200'))
    other = _run(pytester, run_args(fewer, cache=cache))
    assert (other["model_loads"], other["forward_passes"]) == (0, 0)
    by_kind = other["cache_by_kind"]  # type: ignore[index]
    assert (by_kind["derived/vectors"]["misses"], by_kind["derived/probes"]["misses"]) == (6, 12)  # type: ignore[index]
    assert by_kind["activations"]["misses"] == 0  # type: ignore[index]
