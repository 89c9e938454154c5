"""A tiny random Llama with a character tokenizer and a chat template: hook, shape and generation tests in ms."""

from __future__ import annotations

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
