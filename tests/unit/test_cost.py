"""The cost model behind --quant-plan's estimate, against counts made by hand from the plan's study file."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant_harness.scale import cost
from quant_harness.study.kinds import cells
from quant_harness.study.load import load

PLAN = Path(__file__).resolve().parents[2] / "cases" / "studies" / "quant-sensitivity.toml"


@pytest.fixture(scope="module")
def plan(monkeypatch_module: pytest.MonkeyPatch) -> object:
    monkeypatch_module.setenv("QUANT_HARNESS_DATA", "/no/data/here")
    return load(PLAN, check_data=False)


@pytest.fixture(scope="module")
def monkeypatch_module() -> pytest.MonkeyPatch:
    with pytest.MonkeyPatch.context() as m:
        yield m


def _bench(study: object, model: str, precision: str, task: str) -> cost.Cell:
    return next(c for c in cells(study, "benchmarks") if (c.model, c.precision, c.trait) == (model, precision, task))


def test_benchmark_work_is_docs_times_measured_tokens_per_doc(plan: object) -> None:
    """HellaSwag: the whole split (limit 0) at 177 tokens a doc; MMLU: 10 per subject x 57 at 423; TruthfulQA with
    shared_prefix: all 817 at 1260 tokens, 2.9x faster."""
    hs = cost.own_side(plan, _bench(plan, "llama-8b", "nf4", "hellaswag")).forward_tokens
    mmlu = cost.own_side(plan, _bench(plan, "llama-8b", "nf4", "mmlu")).forward_tokens
    tqa = cost.own_side(plan, _bench(plan, "llama-8b", "nf4", "truthfulqa_mc2")).forward_tokens
    assert hs == pytest.approx(10042 * 177)
    assert mmlu == pytest.approx(570 * 423)
    assert tqa == pytest.approx(817 * 1260 / 2.9)


def test_the_reference_benchmark_run_is_charged_once(plan: object) -> None:
    """The reference group runs each task once: its own benchmark cell and every quantized cell's reference side
    are the same artefact (bench/lm_eval.reference_side)."""
    model = "llama-8b"
    grid = [c for c in cells(plan, "benchmarks") if c.model == model and c.trait == "hellaswag"]
    ref = [c for c in grid if c.precision == plan.reference]
    assert len(ref) == 1 and len(grid) == 4
    work = cost.group_work(plan, model, plan.reference, ref, grid, {}, set())
    assert work.forward_tokens == pytest.approx(10042 * 177)


def test_an_ab_sweep_runs_each_prompt_once_and_the_steered_tail_per_coefficient(plan: object) -> None:
    s = plan.steering
    cell = next(c for c in cells(plan, "logit_diff") if c.precision != plan.reference)
    key, work = cost.reference_side(plan, cell)
    assert key == f"ab/{cell.trait}"
    assert work.forward_tokens == pytest.approx(s.ab_questions * (96 + len(s.ab_coefficients) * 2))
    assert (s.ab_questions, len(s.ab_coefficients)) == (50, 5)
