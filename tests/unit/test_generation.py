"""Rollouts: determinism, seeded sampling, token counting, the kept-pair filter and response packing."""

from __future__ import annotations

import pytest
import torch
from tiny_llama import tiny_llama

from quant_harness._util import counters
from quant_harness.errors import CellError
from quant_harness.extract.activations import extract
from quant_harness.extract.datasets import Prompt
from quant_harness.extract.positions import parse_position
from quant_harness.extract.rollouts import GenerationSettings, PairScores, generate, kept_pairs, pack, unpack


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return tiny_llama()


PROMPTS = [Prompt((("system", "be kind"), ("user", "abc"))), Prompt((("user", "hello there"),)),
           Prompt((("user", "zz"),))]


def test_greedy_is_deterministic_and_independent_of_batching(tiny: tuple) -> None:
    model, tok = tiny
    one = generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=5, batch_size=1))
    many = generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=5, batch_size=3))
    assert one == many and len(one) == 3


def test_sampling_is_reproducible_with_a_seed_and_gives_n_per_prompt(tiny: tuple) -> None:
    model, tok = tiny
    s = GenerationSettings(max_new_tokens=6, n_per_question=2, temperature=1.0, seed=3)
    a, b = generate(model, tok, PROMPTS, s), generate(model, tok, PROMPTS, s)
    assert a == b and len(a) == 6
    assert generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=6, n_per_question=2, temperature=1.0,
                                                            seed=4)) != a


def test_generated_tokens_are_counted(tiny: tuple) -> None:
    model, tok = tiny
    before = counters.snapshot()["generated_tokens"]
    generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=4))
    added = counters.snapshot()["generated_tokens"] - before  # type: ignore[operator]
    assert 3 <= added <= 12


def test_response_positions_average_the_response_tokens(tiny: tuple) -> None:
    model, tok = tiny
    acts = extract(model, tok, PROMPTS[:1], [1], parse_position("response[:]"), responses=["abcd"])
    ids = tok(tok.apply_chat_template([{"role": r, "content": c} for r, c in PROMPTS[0].messages], tokenize=False,
                                      add_generation_prompt=True) + "abcd", add_special_tokens=False,
              return_tensors="pt").input_ids
    hs = model(ids, output_hidden_states=True).hidden_states[2][0]
    torch.testing.assert_close(acts[0, 0], hs[-4:].mean(0), rtol=1e-5, atol=1e-5)


def test_kept_pairs_drop_empty_and_unscored_and_apply_the_pv_rule() -> None:
    assert kept_pairs(["a", "", "c"], ["x", "y", "z"]) == [0, 2]
    scores = [PairScores(80, 10, 90, 90), PairScores(40, 10), PairScores(80, 60), PairScores(None, 0),
              PairScores(90, 5, 20, 90)]
    assert kept_pairs(["a"] * 5, ["b"] * 5, scores) == [0]


def test_an_empty_kept_set_is_an_error() -> None:
    with pytest.raises(CellError, match="no rollout pair kept"):
        kept_pairs(["a"], ["b"], [PairScores(10, 90)])
    with pytest.raises(CellError, match="misaligned"):
        kept_pairs(["a"], [])


def test_responses_round_trip_through_a_tensor() -> None:
    texts = ["plain", "ünïcode ✓", "", "quote \" and\nnewline"]
    assert unpack(pack(texts)) == texts
    assert unpack(pack(texts).float()) == texts
