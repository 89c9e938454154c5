"""A tiny random Llama with a character tokenizer and a chat template: hook, shape and generation tests in ms."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def tiny_llama(layers: int = 3) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                         eos_token_id=63, bos_token_id=62, pad_token_id=60)).eval()
    vocab = {chr(97 + i): i for i in range(26)} | {"|": 58, ">": 59, "<pad>": 60, " ": 61, "<s>": 62, "</s>": 63}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                  pad_token="<pad>", eos_token="</s>")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}|{% endfor %}"
                         "{% if add_generation_prompt %}>>{% endif %}")
    return model, tok


class SeveralTokenABTokenizer:
    """Characters as ids, except the answers: "(A" is three tokens and "(B" three others after a shared "(" (the
    A/B readout's several-token path, which no real tokenizer of the study takes for these letters)."""

    pad_token_id = 0
    eos_token_id = 0

    def apply_chat_template(self, messages: Any, tokenize: bool = False, add_generation_prompt: bool = True) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<a>"

    def __call__(self, text: str, add_special_tokens: bool = False) -> Any:
        spelled = {"(A": [40, 61, 62], "(B": [40, 71, 72]}

        class R:
            input_ids = spelled.get(text) or [3 + (ord(ch) % 90) for ch in text]
        return R()


def several_token_ab_model() -> LlamaForCausalLM:
    """A tiny random Llama over SeveralTokenABTokenizer's 96 ids."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()
