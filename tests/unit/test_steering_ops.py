"""Steering operators on a tiny random Llama: clamp, ablation, positions under a KV cache, clean removal."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from quant_harness.errors import CellError
from quant_harness.extract.methods import sae_feature_vectors
from quant_harness.steer import ops as steering

D = 32


class _Tok:
    """A character tokenizer with a chat template, enough for steering.generate on a random model."""

    pad_token_id = 0
    eos_token_id = 0

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):  # noqa: ANN001, ANN201
        return "".join(f"<{r}>{c}" for r, c in ((m["role"], m["content"]) for m in messages)) + "<a>"

    def __call__(self, text, add_special_tokens=False):  # noqa: ANN001, ANN201
        class R:
            input_ids = [3 + (ord(ch) % 90) for ch in text]
        return R()

    def decode(self, ids, skip_special_tokens=True):  # noqa: ANN001, ANN201
        return " ".join(str(int(i)) for i in ids)


@pytest.fixture(scope="module")
def tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=D, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def _prompts():  # noqa: ANN202
    from quant_harness.extract.datasets import Prompt

    return [Prompt((("user", "hello"),)), Prompt((("user", "a longer question"),), "(")]


def test_clamp_sets_the_projection_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    h, v = torch.randn(2, 5, D, generator=g), torch.randn(D, generator=g) * 3
    out = steering.clamp_delta(h, v, 7.5)
    u = v / v.norm()
    torch.testing.assert_close(out @ u, torch.full((2, 5), 7.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(out - (out @ u)[..., None] * u, h - (h @ u)[..., None] * u, rtol=0, atol=1e-5)


def test_ablation_removes_the_direction() -> None:
    g = torch.Generator().manual_seed(1)
    h, r = torch.randn(4, D, generator=g), torch.randn(D, generator=g)
    assert float((steering.ablate(h, r) @ (r / r.norm())).abs().max()) < 1e-5


def test_zero_vector_is_an_error() -> None:
    with pytest.raises(CellError, match="zero"):
        steering.unit(torch.zeros(D))


@torch.no_grad()
@pytest.mark.parametrize("op", ["add_all", "add_from", "clamp", "ablation"])
def test_hooks_leave_the_model_bit_identical(tiny: LlamaForCausalLM, op: str) -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = tiny(ids).logits.clone()
    v = {1: torch.randn(D, generator=torch.Generator().manual_seed(2))}
    ctx = {"add_all": lambda: steering.steer(tiny, v, 4.0),
           "add_from": lambda: steering.steer(tiny, v, 4.0, start=torch.tensor([2])),
           "clamp": lambda: steering.steer(tiny, v, 4.0, mode="clamp"),
           "ablation": lambda: steering.ablation(tiny, v[1])}[op]
    with ctx():
        steered = tiny(ids).logits
    assert not torch.equal(steered, before)
    assert torch.equal(tiny(ids).logits, before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.modules())


def test_a_raising_block_still_removes_hooks(tiny: LlamaForCausalLM) -> None:
    with pytest.raises(RuntimeError), steering.steer(tiny, {0: torch.ones(D)}, 1.0, start=torch.tensor([0])):
        raise RuntimeError("boom")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.modules())


@torch.no_grad()
def test_absolute_positions_reach_decode_steps(tiny: LlamaForCausalLM) -> None:
    """Steering from the first generated position leaves the first token alone and changes later ones, which a
    per-call min_token_index cannot do under a KV cache."""
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    v = {2: 50 * torch.randn(D, generator=torch.Generator().manual_seed(3))}
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    base = tiny.generate(ids, **kw)[0, 5:]
    with steering.steer(tiny, v, 1.0, start=torch.tensor([ids.shape[1]])):
        late = tiny.generate(ids, **kw)[0, 5:]
    assert late[0] == base[0]
    assert not torch.equal(late, base)


@torch.no_grad()
def test_generate_and_ab_logits_on_a_tiny_model(tiny: LlamaForCausalLM) -> None:
    tok, ps = _Tok(), _prompts()
    plain = steering.generate(tiny, tok, ps, max_new_tokens=4).texts
    steered = steering.generate(tiny, tok, ps, vectors={1: 30 * torch.ones(D)}, coefficient=1.0,
                                max_new_tokens=4).texts
    assert plain == steering.generate(tiny, tok, ps, max_new_tokens=4).texts
    assert steered != plain


def test_sae_feature_vectors_sum_rows_per_layer() -> None:
    w = torch.randn(10, D, generator=torch.Generator().manual_seed(4))
    out = sae_feature_vectors(w, [[3, 1, 2.0], [3, 4, -1.0], [5, 0, 0.5]])
    torch.testing.assert_close(out[3], 2 * w[1] - w[4])
    torch.testing.assert_close(out[5], 0.5 * w[0])
    with pytest.raises(ValueError, match="feature 99"):
        sae_feature_vectors(w, [[1, 99, 1.0]])
