"""The [steering] table: defaults, the clamp mode, and errors that name file, key, value and expectation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from quant_harness.errors import StudyError
from quant_harness.study import load
from quant_harness.study.kinds import cells


def test_defaults_and_the_clamp_mode(make_study: Callable[..., Path]) -> None:
    assert load(make_study(extra="")).steering.mode == "add"
    s = load(make_study(extra='[steering]\nmode = "clamp"\nlayers = [3, 9]\ncoefficient = 2\n')).steering
    assert (s.mode, s.layers, s.coefficient) == ("clamp", (3, 9), 2.0)


@pytest.mark.parametrize(("table", "key"), [
    ('mode = "multiply"', "steering.mode"),
    ("layers = [99]", "steering.layers"),
    ("questions = 0", "steering.questions"),
    ("ab_coefficients = [1.0]", "steering.ab_coefficients"),
    ("temperature = 1.0", "steering.temperature"),
    ('methods = ["probe"]', "steering.methods"),
])
def test_a_bad_key_names_the_file_and_the_key(make_study: Callable[..., Path], table: str, key: str) -> None:
    path = make_study(extra=f"[steering]\n{table}\n")
    with pytest.raises(StudyError, match=key) as err:
        load(path)
    assert str(path) in str(err.value)


def test_traits_and_methods_choose_the_steering_cells(make_study: Callable[..., Path], repo: Path) -> None:
    vectors = repo / "fixtures" / "vectors" / "smollm2-135m_caa_sycophancy_steering-vectors.safetensors"
    trait = f"""
        [[traits]]
        methodology = "caa"
        name = "sycophancy"
        dataset = "{repo}/fixtures/traits/caa_sycophancy.json"
        methods = ["mean_diff", "probe", "file"]
        vectors = "{vectors}"

        [[traits]]
        methodology = "caa"
        name = "refusal"
        dataset = "{repo}/fixtures/traits/caa_refusal.json"
    """
    everything = load(make_study(traits=trait, extra=""))
    assert [c.id for c in cells(everything, "steering")] == [
        "smollm2-135m-nf4-caa_sycophancy-mean_diff", "smollm2-135m-nf4-caa_refusal-mean_diff"]
    chosen = load(make_study(traits=trait, extra='[steering]\ntraits = ["caa_sycophancy"]\nmethods = ["mean_diff", "file"]\n'))
    assert [c.id for c in cells(chosen, "steering")] == [
        "smollm2-135m-nf4-caa_sycophancy-mean_diff", "smollm2-135m-nf4-caa_sycophancy-file"]
    assert chosen.steering.traits == ("caa_sycophancy",)
    with pytest.raises(StudyError, match="steering.traits"):   # a typo is found at load, never an empty grid
        load(make_study(traits=trait, extra='[steering]\ntraits = ["pv_evil"]\n'))


def test_steerability_is_the_mean_per_question_slope_with_its_standard_error() -> None:
    from quant_harness.steer.cells import steerability

    coefs = [-2.0, 0.0, 2.0]
    rows = [[-1.0, 0.0, 3.0], [0.0, 0.5, 3.0], [1.0, 1.0, 3.0]]   # coefficient-major: questions slope 0.5, 0.25, 0
    slope, se = steerability(coefs, rows)
    per_q = np.polyfit(coefs, np.array(rows), 1)[0]   # numpy's least-squares slope per question
    assert slope == pytest.approx(per_q.mean()) and se == pytest.approx(per_q.std(ddof=1) / np.sqrt(3))
