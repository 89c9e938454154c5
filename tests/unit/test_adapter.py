"""The model adapter on small hand-built cases (no shared data): system-prompt folding, implicit system text, answer
plans, BOS, norm structure from what a block computes, and ablation on pre- and post-norm blocks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    PreTrainedTokenizerFast,
)

from quant_harness.errors import CellError
from quant_harness.extract.datasets import Prompt
from quant_harness.models import adapter
from quant_harness.steer import ops

REJECTS_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
                  "supported') }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}</>{% endfor %}"
                  "{% if add_generation_prompt %}<model>{% endif %}")
DROPS_SYSTEM = ("{% for m in messages %}{% if m['role'] != 'system' %}<{{ m['role'] }}>{{ m['content'] }}</>"
                "{% endif %}{% endfor %}{% if add_generation_prompt %}<model>{% endif %}")
DEFAULT_SYSTEM = ("{% if messages[0]['role'] != 'system' %}<|system|>\nYou are Bot, a helpful assistant.\n"
                  "{% endif %}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
MISTRAL_2023 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == "
                "0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
                "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
                "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
                "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


def _tok(template: str, bos: bool = False) -> PreTrainedTokenizerFast:
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,!?()<>|/[]\n"
    vocab = {c: i for i, c in enumerate(chars)} | {"<pad>": 90, "<s>": 91, "</s>": 92}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                  pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.chat_template = template
    if bos:
        from tokenizers.processors import TemplateProcessing

        tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 91)])
    return tok


PERSONA = "You are a careful assistant."
QUESTION = "Is it blue?"


@pytest.mark.parametrize(("template", "mode", "reason"), [
    (REJECTS_SYSTEM, adapter.SYSTEM_FOLDED, "System role not supported"),
    (DROPS_SYSTEM, adapter.SYSTEM_FOLDED, "dropped"),
    (MISTRAL_2023, adapter.SYSTEM_FOLDED, "must alternate"),
    (DEFAULT_SYSTEM, adapter.SYSTEM_NATIVE, ""),
])
def test_a_system_prompt_is_kept_or_folded_and_says_so(template: str, mode: str, reason: str) -> None:
    r = adapter.render(_tok(template), Prompt((("system", PERSONA), ("user", QUESTION)), "(A"))
    assert r.system == mode and reason in r.fold_reason
    assert r.text.count(PERSONA) == 1 and r.text.endswith("(A")
    if mode == adapter.SYSTEM_FOLDED:
        assert f"{PERSONA}\n\n{QUESTION}" in r.text
    assert r.implicit_system == ""


def test_the_templates_own_system_text_is_reported_never_the_persona() -> None:
    tok = _tok(DEFAULT_SYSTEM)
    plain = adapter.render(tok, Prompt((("user", QUESTION),)))
    assert (plain.system, plain.implicit_system) == (adapter.SYSTEM_NONE, "You are Bot, a helpful assistant.")
    with_persona = adapter.render(tok, Prompt((("system", PERSONA), ("user", QUESTION))))
    assert with_persona.implicit_system == ""
    info = adapter.render_info(tok, [Prompt((("user", QUESTION),))])
    assert info == {"system": ["none"], "implicit_system": ["You are Bot, a helpful assistant."]}


class _Spelling:
    """A tokenizer that spells given strings as given ids (answer plans only read ``__call__``)."""

    def __init__(self, spell: dict[str, list[int]]) -> None:
        self.spell = spell

    def __call__(self, text: str, add_special_tokens: bool = False) -> Any:
        class R:
            input_ids = self.spell[text]
        return R()


@pytest.mark.parametrize(("spell", "shared", "tails", "single"), [
    ({"(A": [4444], "(B": [5462]}, (), {"(A": (4444,), "(B": (5462,)}, True),          # Llama-3, Qwen, OLMo
    ({"(A": [235278, 235280], "(B": [235278, 235305]}, (235278,), {"(A": (235280,), "(B": (235305,)}, True),  # Gemma
    ({"(A": [5, 6, 7], "(B": [5, 8, 9]}, (5,), {"(A": (6, 7), "(B": (8, 9)}, False),
])
def test_answer_plans(spell: dict[str, list[int]], shared: tuple[int, ...], tails: dict[str, tuple[int, ...]],
                      single: bool) -> None:
    plan = adapter.answer_plan(_Spelling(spell), ["(A", "(B"])
    assert (plan.shared, plan.tails, plan.single_token) == (shared, tails, single)


def test_answers_spelled_alike_are_an_error() -> None:
    with pytest.raises(CellError, match="cannot be told apart"):
        adapter.answer_plan(_Spelling({"(A": [5, 6], "(B": [5]}), ["(A", "(B"])


def test_bos_only_where_the_tokenizer_adds_one() -> None:
    assert adapter.text_ids(_tok(DEFAULT_SYSTEM), "ab") == [0, 1]
    with_bos = _tok(DEFAULT_SYSTEM, bos=True)
    assert adapter.adds_bos(with_bos) and adapter.text_ids(with_bos, "ab") == [91, 0, 1]


def _randomize_norms(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        w = getattr(m, "weight", None)
        if "norm" in type(m).__name__.lower() and isinstance(w, torch.nn.Parameter) and w.ndim == 1:
            with torch.no_grad():
                w.add_(torch.rand(w.shape, generator=g) - 0.5)
    return model.eval()


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common: dict[str, Any] = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
    if kind == "llama":
        return _randomize_norms(LlamaForCausalLM(LlamaConfig(**common)))
    if kind == "gemma2":
        return _randomize_norms(Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8)))
    return _randomize_norms(Olmo2ForCausalLM(Olmo2Config(**common)))


@pytest.mark.parametrize(("kind", "writers", "post"), [
    ("llama", ("self_attn", "mlp"), ()),   # its post_attention_layernorm is the pre-MLP norm: not a post-norm
    ("gemma2", ("post_attention_layernorm", "post_feedforward_layernorm"),
     (("post_attention_layernorm", "self_attn"), ("post_feedforward_layernorm", "mlp"))),
    ("olmo2", ("post_attention_layernorm", "post_feedforward_layernorm"),
     (("post_attention_layernorm", "self_attn"), ("post_feedforward_layernorm", "mlp"))),
])
def test_norm_structure_comes_from_what_the_block_computes(kind: str, writers: tuple[str, ...],
                                                           post: tuple[tuple[str, str], ...]) -> None:
    s = adapter.block_structure(_model(kind))
    assert (s.writers, s.post_norms) == (writers, post)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["llama", "gemma2", "olmo2"])
def test_ablation_leaves_no_component_in_any_block_output(kind: str) -> None:
    model = _model(kind)
    r = torch.randn(32, generator=torch.Generator().manual_seed(5))
    r_hat = r / r.norm()
    blocks = adapter.decoder_blocks(model)
    outs: list[torch.Tensor] = []
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with ops.ablation(model, r):
        hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(o[0] if isinstance(o, tuple) else o))
                 for b in blocks]
        model(ids)
        for h in hooks:
            h.remove()
    assert len(outs) == 3
    for h in outs:
        assert float(((h @ r_hat).abs() / h.norm(dim=-1)).max()) < 1e-5
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
