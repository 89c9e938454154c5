"""Extraction hooks on a tiny random Llama: the layer convention and batching invariance."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers

from quant_harness.activations import decoder_layers, extract
from quant_harness.datasets import Prompt
from quant_harness.positions import parse_position


@pytest.fixture(scope="module")
def tiny() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=4)).eval()
    vocab = {chr(97 + i): i for i in range(26)} | {"<pad>": 60, " ": 61, "<s>": 62, "</s>": 63}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                  pad_token="<pad>", eos_token="</s>")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return model, tok


def _prompts() -> list[Prompt]:
    return [Prompt((("user", "abcabc"),), "d"), Prompt((("user", "hello"),), "x"),
            Prompt((("user", "zz"),), "q"), Prompt((("user", "longerprompt"),), "k")]


def test_block_output_equals_hidden_states_plus_one(tiny: tuple) -> None:
    model, tok = tiny
    layers = [0, 1, 2]
    acts = extract(model, tok, _prompts(), layers, parse_position("prompt[-1]"), batch_size=1)
    for i, p in enumerate(_prompts()):
        ids = tok(p.messages[0][1] + p.prefill, add_special_tokens=False, return_tensors="pt").input_ids
        hs = model(ids, output_hidden_states=True).hidden_states
        for j, layer in enumerate(layers):
            torch.testing.assert_close(acts[i, j], hs[layer + 1][0, -1], rtol=1e-5, atol=1e-5)


def test_batching_and_padding_do_not_change_activations(tiny: tuple) -> None:
    model, tok = tiny
    pos = parse_position("prompt[-3:]")
    one = extract(model, tok, _prompts(), [1, 3], pos, batch_size=1)
    many = extract(model, tok, _prompts(), [1, 3], pos, batch_size=4)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5)


def test_hooks_are_removed(tiny: tuple) -> None:
    model, tok = tiny
    before = [dict(block._forward_hooks) for block in decoder_layers(model)]
    extract(model, tok, _prompts(), [0, 2], parse_position("prompt[-1]"))
    assert [dict(block._forward_hooks) for block in decoder_layers(model)] == before
