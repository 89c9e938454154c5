"""Extraction hooks on a tiny random Llama: the layer convention and batching invariance."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from quant_harness.extract.activations import decoder_layers, extract
from quant_harness.extract.datasets import Prompt
from quant_harness.extract.positions import parse_position


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


def test_pairs_sharing_a_prefix_equal_hidden_states_and_half_the_work(tiny: tuple) -> None:
    """CAA-shaped pairs (one prompt, two final letters) read through the shared-prefix KV path equal the model's
    own hidden_states of each full sequence, in one prefix pass + one letter step per batch."""
    from quant_harness._util import counters
    from quant_harness.extract.activations import extract_pairs

    model, tok = tiny
    questions = ["abcabc", "hello", "zz", "longerprompt", "q"]
    pos = [Prompt((("user", q),), "a") for q in questions]
    neg = [Prompt((("user", q),), "b") for q in questions]
    layers = [0, 2, 3]
    before = counters.snapshot()["forward_passes"]
    p, n = extract_pairs(model, tok, pos, neg, layers, parse_position("prompt[-1]"), batch_size=4)
    assert counters.snapshot()["forward_passes"] - before == 4   # 2 batches x (prefix + letters)
    for acts, side in ((p, pos), (n, neg)):
        for i, prompt in enumerate(side):
            ids = tok(prompt.messages[0][1] + prompt.prefill, add_special_tokens=False, return_tensors="pt").input_ids
            hs = model(ids, output_hidden_states=True).hidden_states
            for j, layer in enumerate(layers[:-1]):   # the last block's hidden_states entry is final-normed
                torch.testing.assert_close(acts[i, j], hs[layer + 1][0, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p, extract(model, tok, pos, layers, parse_position("prompt[-1]")), rtol=1e-4, atol=1e-4)


def test_pairs_of_another_shape_fall_back_to_two_extractions(tiny: tuple) -> None:
    from quant_harness.extract.activations import extract_pairs

    model, tok = tiny
    pos, neg = _prompts(), _prompts()[::-1]   # different prompts: no shared prefix
    position = parse_position("prompt[-3:]")
    p, n = extract_pairs(model, tok, pos, neg, [1, 3], position)
    torch.testing.assert_close(p, extract(model, tok, pos, [1, 3], position))
    torch.testing.assert_close(n, extract(model, tok, neg, [1, 3], position))
