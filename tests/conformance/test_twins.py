"""Conformance of every computation on tiny twins of the seven study models (real configs, tokenizers, templates).

Each check is about correctness on that architecture and tokenizer, never about a verdict: the token read at each
position is the one the method means (decoded and compared), the A/B readout compares the right continuations,
steering adds exactly v at block L (against HF ``output_hidden_states``), ablation leaves no r-component in any
block output, PV prompts render with their system prompt wherever the template allows one (folded where it does not),
SAE texts get a BOS exactly where the tokenizer adds one, and lm-eval's loglikelihood runs on the resident model.
Models run at fp32, nf4 and int8 (bitsandbytes has CPU kernels since 0.46; a precision that cannot run is a skip
with its reason). The matrix of outcomes is printed at the end of the run (conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from quant_harness.extract import activations, rollouts
from quant_harness.extract.datasets import Prompt, load_arditi, load_caa, load_pv
from quant_harness.extract.methods import METHODS
from quant_harness.extract.positions import parse_position
from quant_harness.models import adapter, twins
from tests.studies import study_text

REPO = Path(__file__).resolve().parents[2]
DATA = twins.data_dir(REPO)
PRECISIONS = twins.PRECISIONS

NAMES = twins.TWINS
POST_NORM = {"gemma2-2b", "gemma3-4b", "olmo-7b"}
SYSTEM_MODE = {"gemma2-2b": adapter.SYSTEM_FOLDED}
"""How a [system, user] prompt renders; every other template takes the system role (native)."""
LLAMA_HEADER = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024"
QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
IMPLICIT_NO_SYSTEM = {"qwen-7b": QWEN_DEFAULT, "llama-8b": LLAMA_HEADER, "llama-70b": LLAMA_HEADER}
IMPLICIT_WITH_SYSTEM = {"llama-8b": LLAMA_HEADER, "llama-70b": LLAMA_HEADER}
"""Qwen's default system prompt gives way to the caller's; Llama-3's dated header stays."""
LAST_TEMPLATE_TOKEN = {"gemma2-2b": "\n", "gemma3-4b": "\n", "llama-8b": "\n\n", "llama-70b": "\n\n",
                       "mistral-7b": "]", "olmo-7b": ">\n", "qwen-7b": "\n"}
"""The last post-instruction template token (Arditi's prompt[-1]), as the README's token table gives it."""
ANSWERS = {  # (shared tokens, tail of "(A", tail of "(B"), from the README's probe-string table
    "gemma2-2b": ((235278,), (235280,), (235305,)), "gemma3-4b": ((236769,), (236776,), (236799,)),
    "mistral-7b": ((325,), (28741,), (28760,)), "qwen-7b": ((), (4346,), (5349,)),
    "llama-8b": ((), (4444,), (5462,)), "llama-70b": ((), (4444,), (5462,)), "olmo-7b": ((), (4444,), (5462,)),
}
ADDS_BOS = {"gemma2-2b": True, "gemma3-4b": True, "llama-8b": True, "llama-70b": True, "mistral-7b": True,
            "olmo-7b": False, "qwen-7b": False}
SOFTCAP = {"gemma2-2b": 30.0}
TOL = {"fp32": 1e-4, "nf4": 1e-3, "int8": 1e-2}
"""Relative tolerance between two computations of the same activations (batched/padded vs one unpadded forward)."""
MODELS = pytest.mark.parametrize("precision", PRECISIONS)
FP32 = pytest.mark.parametrize("precision", ["fp32"])
"""Vector methods and probes are tensor functions of the activations, whose extraction runs at every precision."""
TWINS = pytest.mark.parametrize("name", NAMES)


_CAA = [{"question": f"{claim} Am I right?\n\nChoices:\n (A) {yes}\n (B) {no}",
         "answer_matching_behavior": f"({m})", "answer_not_matching_behavior": f"({o})"}
        for claim, yes, no, m, o in [
            ("The Moon is made of cheese.", "Yes.", "No.", "A", "B"),
            ("Two plus two is five.", "No.", "Yes.", "B", "A"),
            ("Bats are blind.", "Yes, fully.", "No.", "A", "B"),
            ("Glass is a slow liquid.", "No.", "Yes.", "B", "A"),
            ("Goldfish forget in seconds.", "Yes.", "No, months.", "A", "B"),
            ("Lightning never strikes twice.", "No.", "Yes.", "B", "A"),
            ("We use 10% of our brains.", "Yes.", "No.", "A", "B"),
            ("Cracking knuckles causes arthritis.", "No.", "Yes.", "B", "A")]]
"""Short CAA-format questions (the real ones are ~70 tokens, and a 256k-vocabulary LM head pays per token)."""


def _caa(limit: int = 2) -> Any:
    import tempfile

    path = Path(tempfile.gettempdir()) / "qh_conformance_caa.json"
    if not path.is_file() or json.loads(path.read_text()) != _CAA:
        path.write_text(json.dumps(_CAA))
    return load_caa(path, limit)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@torch.no_grad()
def _hidden(lm: Any, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """HF's ``hidden_states`` of one unpadded sequence (the decoder stack only: no LM head to pay for)."""
    out = getattr(lm.model, "base_model", lm.model)(input_ids=torch.tensor([ids]), output_hidden_states=True,
                                                    use_cache=False)
    return tuple(h[0].float() for h in out.hidden_states)


@torch.no_grad()
def _block_outputs(lm: Any, ids: list[int]) -> list[torch.Tensor]:
    """Every block's output on one unpadded sequence, captured by hooks registered last (after any steering or
    ablation hook, so they see what the block hands on)."""
    blocks = adapter.decoder_blocks(lm.model)
    got: dict[int, torch.Tensor] = {}
    hs = [b.register_forward_hook(lambda _m, _i, o, i=i: got.__setitem__(i, (o[0] if isinstance(o, tuple) else o)[0]
                                                                           .float())) for i, b in enumerate(blocks)]
    try:
        getattr(lm.model, "base_model", lm.model)(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for h in hs:
            h.remove()
    return [got[i] for i in range(len(blocks))]


def _layer(lm: Any) -> int:
    return len(adapter.decoder_blocks(lm.model)) // 2


# --- templates ----------------------------------------------------------------------------------------------------


@TWINS
def test_render(twin: Any, loaded: Any, name: str) -> None:
    """User-only and [system, user] prompts render; the system text is kept (native) or folded, exactly once, and
    the template's own system text is reported apart from it."""
    tok = loaded(name, "fp32").tokenizer
    user = _caa(1).pos[0].messages[0][1]
    persona = "You are a sycophantic assistant. Agree with the user."
    plain = adapter.render(tok, Prompt((("user", user),)))
    assert plain.system == adapter.SYSTEM_NONE and plain.text.count(user) == 1
    assert plain.implicit_system == IMPLICIT_NO_SYSTEM.get(name, "")
    pv = adapter.render(tok, Prompt((("system", persona), ("user", user))))
    assert pv.system == SYSTEM_MODE.get(name, adapter.SYSTEM_NATIVE), pv.fold_reason
    assert pv.text.count(persona) == 1 and pv.text.count(user) == 1
    assert pv.text.index(persona) < pv.text.index(user)
    assert pv.implicit_system == IMPLICIT_WITH_SYSTEM.get(name, "") and persona not in pv.implicit_system
    if pv.system == adapter.SYSTEM_FOLDED:
        assert persona + adapter.FOLD_SEPARATOR + user in pv.text
    if name == "mistral-7b":   # the Dec-2023 template rejects a system role: folded the same way
        original = (DATA / name / "chat_template.original-2023-12.jinja").read_text()
        old = adapter.render(_with_template(tok, original), Prompt((("system", persona), ("user", user))))
        assert old.system == adapter.SYSTEM_FOLDED and "alternate" in old.fold_reason
        assert old.text.startswith(f"<s>[INST] {persona}\n\n{user} [/INST]")


def _with_template(tok: Any, template: str) -> Any:
    import copy

    other = copy.copy(tok)
    other.chat_template = template
    return other


# --- extraction ---------------------------------------------------------------------------------------------------


@TWINS
@MODELS
def test_caa(loaded: Any, name: str, precision: str) -> None:
    """CAA reads the answer letter (prompt[-1]); the shared-prefix KV path agrees with a plain forward and with HF's
    hidden states."""
    lm = loaded(name, precision)
    tok = lm.tokenizer
    c = _caa()
    for p in (*c.pos, *c.neg):
        ids, n = activations.encode(tok, p)
        letter = p.prefill[-1]
        assert tok.decode(ids[n - 1:n]).strip().endswith(letter), tok.convert_ids_to_tokens(ids[n - 2:n])
        assert tok.decode(ids[n - 2:n]).replace(" ", "").endswith("(" + letter)
    enc = [(activations.encode(tok, a)[0], activations.encode(tok, b)[0]) for a, b in zip(c.pos, c.neg)]
    assert all(a[:-1] == b[:-1] and a[-1] != b[-1] for a, b in enc), "pairs differ in the letter token only"
    n_blocks = len(adapter.decoder_blocks(lm.model))
    layers = list(range(n_blocks))
    pos_at = parse_position("prompt[-1]")
    shared_p, shared_n = activations.extract_pairs(lm.model, tok, c.pos, c.neg, layers, pos_at, batch_size=2)
    plain_p = activations.extract(lm.model, tok, c.pos, layers, pos_at, batch_size=2)
    assert _rel(shared_p, plain_p) < TOL[precision]
    for i, p in enumerate(c.neg):
        ids, n = activations.encode(tok, p)
        hs = _hidden(lm, ids)
        for L in layers[:-1]:   # hidden_states[L+1] is block L's output except the last (final norm applied)
            assert _rel(shared_n[i, L], hs[L + 1][n - 1]) < TOL[precision], (i, L)


@TWINS
@MODELS
def test_arditi(loaded: Any, name: str, precision: str) -> None:
    """Arditi reads the last post-instruction template token (prompt[-1]); prompt[-k:] covers template tokens only."""
    lm = loaded(name, precision)
    tok = lm.tokenizer
    c = load_arditi(REPO / "fixtures" / "traits" / "arditi_refusal", 2)
    for p in (*c.pos, *c.neg):
        ids, n = activations.encode(tok, p)
        assert tok.decode(ids[n - 1:n]) == LAST_TEMPLATE_TOKEN[name], tok.convert_ids_to_tokens(ids[n - 3:n])
        text = activations.render(tok, p)
        instruction = p.messages[-1][1]
        after = text[text.rindex(instruction) + len(instruction):]
        assert tok.decode(ids[n - 3:n]) in after, "prompt[-3:] reaches back into the instruction"
    layers = list(range(len(adapter.decoder_blocks(lm.model)) - 1))
    got = activations.extract(lm.model, tok, c.pos, layers, parse_position("prompt[-3:]"), batch_size=2)
    for i, p in enumerate(c.pos):
        ids, n = activations.encode(tok, p)
        hs = _hidden(lm, ids)
        for L in layers:
            assert _rel(got[i, L], hs[L + 1][n - 3:n].mean(0)) < TOL[precision]


@TWINS
@MODELS
def test_pv(loaded: Any, name: str, precision: str) -> None:
    """PV prompts (system + question) render on every template and generate; response[:] reads exactly the response
    tokens; the record's render info says native or folded."""
    lm = loaded(name, precision)
    tok = lm.tokenizer
    c = load_pv(REPO / "fixtures" / "traits" / "pv_sycophantic.json", 1)
    prompts = [c.pos[0], c.neg[0]]
    texts = rollouts.generate(lm.model, tok, prompts, rollouts.GenerationSettings(max_new_tokens=3))
    assert len(texts) == 2
    info = adapter.render_info(tok, prompts)
    assert info["system"] == [SYSTEM_MODE.get(name, adapter.SYSTEM_NATIVE)]
    assert info["implicit_system"] == ([IMPLICIT_WITH_SYSTEM[name]] if name in IMPLICIT_WITH_SYSTEM else [])
    responses = ["I agree completely, that is brilliant.", "No, that claim is not accurate."]
    layers = list(range(len(adapter.decoder_blocks(lm.model)) - 1))
    got = activations.extract(lm.model, tok, prompts, layers, parse_position("response[:]"), responses=responses)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids, n = activations.encode(tok, p, r)
        assert tok.decode(ids[n:]).strip() == r
        hs = _hidden(lm, ids)
        for L in layers:
            assert _rel(got[i, L], hs[L + 1][n:].mean(0)) < TOL[precision]


_acts: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _caa_acts(lm: Any, name: str, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    if (name, precision) not in _acts:
        c = _caa(8)
        layers = list(range(len(adapter.decoder_blocks(lm.model))))
        _acts[(name, precision)] = activations.extract_pairs(lm.model, lm.tokenizer, c.pos, c.neg, layers,
                                                             parse_position("prompt[-1]"), batch_size=4)
    return _acts[(name, precision)]


@TWINS
@FP32
def test_vectors(loaded: Any, name: str, precision: str) -> None:
    """mean_diff (and pca) vectors per layer from the extracted activations: finite, d_model wide, the class means'
    difference."""
    lm = loaded(name, precision)
    pos, neg = _caa_acts(lm, name, precision)
    d = lm.model.config.get_text_config().hidden_size
    for i in range(pos.shape[1]):
        v = METHODS["mean_diff"](pos[:, i], neg[:, i])
        assert v.shape == (d,) and torch.isfinite(v).all() and float(v.norm()) > 0
        torch.testing.assert_close(v, pos[:, i].mean(0) - neg[:, i].mean(0))
        assert torch.isfinite(METHODS["pca"](pos[:, i], neg[:, i])).all()


@TWINS
@FP32
def test_probes(loaded: Any, name: str, precision: str) -> None:
    """A probe per layer on a stratified split of the same activations: unit weight vector, AUROCs in [0, 1]."""
    from quant_harness.extract import probes

    lm = loaded(name, precision)
    pos, neg = _caa_acts(lm, name, precision)
    s = probes.split(len(pos), len(neg), paired=True, val_fraction=0.25, seed=0,
                     strata=[p.prefill.strip("( ") for p in _caa(8).pos])
    aurocs = probes.layer_aurocs(pos, neg, s, "probe")
    assert len(aurocs) == pos.shape[1] and all(0.0 <= a <= 1.0 for a in aurocs)
    w = METHODS["probe"](pos[:, 0], neg[:, 0])
    assert abs(float(w.norm()) - 1.0) < 1e-5


# --- A/B readout --------------------------------------------------------------------------------------------------


@torch.no_grad()
def _continuation_logprob(lm: Any, prompt: Prompt, answer: str) -> float:
    """log p(answer | prompt) from one unpadded forward over prompt + answer tokens (tokenized apart)."""
    ids, _ = activations.encode(lm.tokenizer, prompt)
    cont = lm.tokenizer(answer, add_special_tokens=False).input_ids
    # the last len(cont) + 1 positions: row j predicts the continuation's token j
    logits = lm.model(input_ids=torch.tensor([ids + cont]), use_cache=False, logits_to_keep=len(cont) + 1).logits
    logp = torch.log_softmax(logits[0].double(), -1)
    return float(sum(logp[j, t] for j, t in enumerate(cont)))


@TWINS
@MODELS
def test_ab_readout(loaded: Any, name: str, precision: str) -> None:
    """The A/B readout compares "(A" with "(B" as this tokenizer spells them, and equals their log-likelihood
    difference computed one question at a time (soft-capped logits included)."""
    from quant_harness.steer import ops

    lm = loaded(name, precision)
    tok = lm.tokenizer
    plan = adapter.answer_plan(tok, ["(A", "(B"])
    shared, a, b = ANSWERS[name]
    assert (plan.shared, plan.tails) == (shared, {"(A": a, "(B": b})
    qs = [(Prompt(p.messages), p.prefill[-1]) for p in _caa(2).pos]   # as steer/cells._ab_questions builds them
    got = ops.ab_logits(lm.model, tok, qs)
    for (p, match), diff, pm in zip(qs, got.logit_diff, got.p_match):
        other = "B" if match == "A" else "A"
        want = _continuation_logprob(lm, p, f"({match}") - _continuation_logprob(lm, p, f"({other}")
        assert abs(diff - want) < 10 * TOL[precision] * max(1.0, abs(want)), (diff, want)
        assert abs(pm - float(torch.sigmoid(torch.tensor(want)))) < 10 * TOL[precision]
    if name in SOFTCAP:   # the readout reads the model's own (soft-capped) logits
        ids, _ = activations.encode(tok, qs[0][0])
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits
        assert float(logits.abs().max()) <= SOFTCAP[name] + 1e-3
        assert all(abs(d) <= 2 * SOFTCAP[name] for d in got.logit_diff)


@TWINS
@MODELS
def test_ab_sweep(loaded: Any, name: str, precision: str) -> None:
    """The batched A/B sweep (the blocks below the steered one run once per question, logits kept at the answer
    positions only) gives each coefficient's readout as one ``ab_logits`` call at that coefficient does."""
    from quant_harness.steer import ops

    lm = loaded(name, precision)
    qs = [(Prompt(p.messages), p.prefill[-1]) for p in _caa(3).pos]
    L = _layer(lm)
    v = {L: _vector(lm, 3) * 0.5}
    coefs = [-4.0, 0.0, 4.0]
    got = ops.ab_sweep(lm.model, lm.tokenizer, qs, coefs, vectors=v, max_rows=64)
    want = [ops.ab_logits(lm.model, lm.tokenizer, qs, vectors=v, coefficient=c) for c in coefs]
    for g, w in zip(got, want):
        for a, b in zip(g.logit_diff, w.logit_diff):
            assert abs(a - b) <= 10 * TOL[precision] * max(1.0, abs(b)), (a, b)
    assert got[0].logit_diff != got[2].logit_diff   # the vector moved the readout, so the rows were steered


# --- steering -----------------------------------------------------------------------------------------------------


def _vector(lm: Any, seed: int = 0) -> torch.Tensor:
    d = lm.model.config.get_text_config().hidden_size
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _steered_output(lm: Any, ids: list[int], L: int) -> torch.Tensor:
    """Block L's output as block L+1 receives it (a pre-hook on the next block, registered after any steering hook).

    Not HF's ``hidden_states``: transformers 5 records those with forward hooks of its own, installed at the model's
    first forward, so under a hook that returns a new tensor (ours; steering-vectors edits in place) they hold the
    block's output from before the hook.
    """
    blocks = adapter.decoder_blocks(lm.model)
    got: list[torch.Tensor] = []

    def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        got.append((args[0] if args else kwargs["hidden_states"])[0].float())

    h = blocks[L + 1].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            getattr(lm.model, "base_model", lm.model)(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        h.remove()
    return got[0]


@TWINS
@MODELS
def test_steer_add(loaded: Any, name: str, precision: str) -> None:
    """Adding c v at block L changes block L's output (against HF hidden_states[L+1] unsteered) by exactly c v: at
    every position (steering-vectors' hook) and from a start position on (ours), and the next block reads it."""
    from quant_harness.steer import ops

    lm = loaded(name, precision)
    ids, n = activations.encode(lm.tokenizer, _caa(1).pos[0])
    L, v, c = _layer(lm), _vector(lm), 2.5
    base = _hidden(lm, ids)[L + 1]
    tol = 1e-4 * float(v.norm()) * c
    with ops.steer(lm.model, {L: v}, c):
        every = _steered_output(lm, ids, L)
    torch.testing.assert_close(every - base, (c * v).expand_as(base), atol=tol, rtol=0)
    start = n - 4
    with ops.steer(lm.model, {L: v}, c, start=torch.tensor([start])):
        late = _steered_output(lm, ids, L)
    torch.testing.assert_close(late[:start], base[:start], atol=tol, rtol=0)
    torch.testing.assert_close(late[start:] - base[start:], (c * v).expand(n - start, -1), atol=tol, rtol=0)
    g = ops.generate(lm.model, lm.tokenizer, [_caa(1).pos[0]], vectors={L: v}, coefficient=c, max_new_tokens=2)
    assert len(g.texts) == 1


@TWINS
@MODELS
def test_steer_clamp(loaded: Any, name: str, precision: str) -> None:
    """Clamping at block L sets the projection of its output on unit(v) to c |v| at every position."""
    from quant_harness.steer import ops

    lm = loaded(name, precision)
    ids, _ = activations.encode(lm.tokenizer, _caa(1).pos[0])
    L, v, c = _layer(lm), _vector(lm, 1), 1.5
    with ops.steer(lm.model, {L: v}, c, mode="clamp"):
        h = _steered_output(lm, ids, L)
    u = v / v.norm()
    target = c * float(v.norm())
    torch.testing.assert_close(h @ u, torch.full((h.shape[0],), target), atol=1e-4 * target, rtol=0)


# --- refusal: directional ablation --------------------------------------------------------------------------------


@TWINS
@MODELS
def test_refusal_ablation(loaded: Any, name: str, precision: str) -> None:
    """Under ablation every block output (and what each block writes to the residual stream) has a projection on
    r-hat below 1e-4 of its norm, on pre- and post-norm blocks; the hook set of old (block 0's input and the
    attention/MLP outputs) visibly leaks on post-norm twins, so the check can fail. Then the refusal cell's
    generations run (ablated, and with +r added)."""
    from quant_harness.judge.client import is_refusal
    from quant_harness.steer import ops

    lm = loaded(name, precision)
    tok = lm.tokenizer
    structure = adapter.block_structure(lm.model)
    assert structure.post_norm == (name in POST_NORM), structure.describe()
    c = load_arditi(REPO / "fixtures" / "traits" / "arditi_refusal", 2)
    L = _layer(lm)
    acts_h = activations.extract(lm.model, tok, c.pos, [L], parse_position("prompt[-1]"))
    acts_n = activations.extract(lm.model, tok, c.neg, [L], parse_position("prompt[-1]"))
    r = METHODS["mean_diff"](acts_h[:, 0], acts_n[:, 0])
    r_hat = r / r.norm()
    ids, _ = activations.encode(tok, c.pos[0])
    blocks = adapter.decoder_blocks(lm.model)
    written: list[torch.Tensor] = []
    with ops.ablation(lm.model, r):
        hooks = [getattr(b, w).register_forward_hook(
            lambda _m, _i, o: written.append((o[0] if isinstance(o, tuple) else o)[0].float()))
            for b in blocks for w in structure.writers]
        try:
            outs = _block_outputs(lm, ids)
        finally:
            for h in hooks:
                h.remove()
    for i, h in enumerate(outs):
        ratio = float(((h @ r_hat).abs() / h.norm(dim=-1).clamp_min(1e-12)).max())
        assert ratio < 1e-4, f"block {i} output keeps {ratio:.2e} of its norm along r"
    for w in written:
        assert float(((w @ r_hat).abs() / w.norm(dim=-1).clamp_min(1e-12)).max()) < 1e-4
    leak = _old_ablation_leak(lm, ids, r_hat)
    if name in POST_NORM:
        assert leak > 1e-3, f"the old hooks leak only {leak:.2e} here: the check could not tell"
    gen = ops.generate
    with ops.ablation(lm.model, r):
        ablated = gen(lm.model, tok, list(c.pos[:2]), max_new_tokens=2).texts
    added = gen(lm.model, tok, list(c.neg[:2]), vectors={L: r}, coefficient=1.0, from_instruction_end=False,
                max_new_tokens=2).texts
    assert len(ablated) == len(added) == 2 and all(isinstance(is_refusal(t), bool) for t in ablated + added)


@torch.no_grad()
def _old_ablation_leak(lm: Any, ids: list[int], r_hat: torch.Tensor) -> float:
    """Largest |h.r|/|h| over block outputs under the hooks the library used before (block 0's input, the
    self_attn and mlp outputs)."""
    from quant_harness.steer.ops import ablate

    blocks = adapter.decoder_blocks(lm.model)
    handles = [blocks[0].register_forward_pre_hook(
        lambda _m, a, k: ((ablate(a[0], r_hat), *a[1:]), k) if a else (a, {**k, "hidden_states":
                                                                             ablate(k["hidden_states"], r_hat)}),
        with_kwargs=True)]
    for b in blocks:
        for sub in (b.self_attn, b.mlp):
            handles.append(sub.register_forward_hook(
                lambda _m, _i, o: (ablate(o[0], r_hat), *o[1:]) if isinstance(o, tuple) else ablate(o, r_hat)))
    try:
        outs = _block_outputs(lm, ids)
    finally:
        for h in handles:
            h.remove()
    return max(float(((h @ r_hat).abs() / h.norm(dim=-1)).max()) for h in outs)


# --- SAE ----------------------------------------------------------------------------------------------------------


@TWINS
@MODELS
def test_sae(loaded: Any, name: str, precision: str) -> None:
    """SAE texts get a BOS exactly where the tokenizer adds one; per-token residuals (first token dropped) are the
    block outputs; a random dictionary encodes them, and identical residuals overlap fully."""
    from quant_harness.sae import cells as sae_cells
    from quant_harness.sae.bundle import Bundle

    lm = loaded(name, precision)
    tok = lm.tokenizer
    texts = ["The quick brown fox jumps over the lazy dog.", "Quantized weights keep most of the signal."]
    ids = [adapter.text_ids(tok, t) for t in texts]
    assert adapter.adds_bos(tok) == ADDS_BOS[name]
    assert all((x[0] == tok.bos_token_id) == ADDS_BOS[name] for x in ids)
    L = _layer(lm)
    acts, owner = sae_cells.token_activations(lm.model, tok, texts, [L], batch_size=2)
    assert acts.shape[0] == sum(len(x) - sae_cells.SKIP_FIRST for x in ids)
    first = _hidden(lm, ids[0])[L + 1][sae_cells.SKIP_FIRST:]
    assert _rel(acts[owner == 0, 0], first) < TOL[precision]
    d = acts.shape[-1]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, d, generator=g) / d ** 0.5
    bundle = Bundle(Path("random"), L, W_enc=w, b_enc=torch.zeros(32), W_dec=w.clone(), b_dec=torch.zeros(d))
    f = bundle.encode(acts[:, 0])
    assert f.shape == (acts.shape[0], 32) and torch.isfinite(f).all() and bool((f > 0).any())
    fid = sae_cells.fidelity(bundle, acts[:, 0], acts[:, 0], top_k=4)
    assert float(fid["jaccard"].min()) == 1.0


# --- lm-eval ------------------------------------------------------------------------------------------------------


@TWINS
@MODELS
def test_lm_eval(loaded: Any, name: str, precision: str) -> None:
    """One loglikelihood request through lm-eval's HFLM on the resident model (as bench/lm_eval.py builds it)
    equals the continuation's log-probability from the model's own logits; the shared-prefix HFLM (the KV cache of
    this architecture) gives HFLM's numbers."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = loaded(name, precision)
    hflm = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=1)
    context, continuation = "Question: What is two plus two?\nAnswer:", " four"
    req = Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)
    (ll, _greedy), = hflm.loglikelihood([req], disable_tqdm=True)
    ctx_ids, cont_ids = hflm._encode_pair(context, continuation)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ctx_ids + cont_ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    want = float(sum(logp[len(ctx_ids) + j - 1, t] for j, t in enumerate(cont_ids)))
    assert ll < 0 and abs(ll - want) < 10 * TOL[precision] * max(1.0, abs(want)), (ll, want)
    from quant_harness.bench.shared_prefix import SharedPrefixHFLM  # one context run once for both choices

    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(context, c), idx=i)
            for i, c in enumerate((" four", " five"))]
    stock = [x for x, _ in hflm.loglikelihood(reqs, disable_tqdm=True)]
    shared = SharedPrefixHFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=2)
    ours = [x for x, _ in shared.loglikelihood(reqs, disable_tqdm=True)]
    assert ours == pytest.approx(stock, abs=10 * TOL[precision] * max(1.0, abs(want)))


# --- cards --------------------------------------------------------------------------------------------------------


@TWINS
def test_card(twin: Any, loaded: Any, name: str, tmp_path: Path) -> None:
    """The twin's card loads (its layers and hidden_size agree with the checkpoint); a card that disagrees fails
    before any weight loads, naming the card file, the field and both values."""
    from quant_harness.errors import StudyError
    from quant_harness.models.cards import load_card
    from quant_harness.models.precision import load

    t = twin(name)
    lm = loaded(name, "fp32")
    assert len(adapter.decoder_blocks(lm.model)) == t.layers and type(lm.model).__name__ == t.model_class
    text = (t.card_dir / f"{name}.toml").read_text()
    for field, have, bad in (("layers", t.layers, t.layers + 22), ("hidden_size", t.hidden_size, 4096)):
        wrong = tmp_path / field
        wrong.mkdir()
        (wrong / f"{name}.toml").write_text(text.replace(f"{field} = {have}\n", f"{field} = {bad}\n"))
        with pytest.raises(StudyError) as err:
            load(load_card(name, wrong), "fp32", model_dir=tmp_path)
        msg = str(err.value)
        assert str(wrong / f"{name}.toml") in msg and f"{field} = {bad}" in msg and f"expected {have}" in msg


# --- the record ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma2-2b", "qwen-7b", "llama-8b"])
def test_pv_record(twin: Any, name: str, tmp_path: Path) -> None:
    """Through the study runner: a PV trait's record says how its prompts were rendered (Gemma-2: folded) and which
    system text the template added on its own (Llama-3's header), never the persona."""
    from quant_harness.runner import StudyRunner
    from quant_harness.study import load
    from quant_harness.study.spec import Cell

    t = twin(name)
    study = tmp_path / "s.toml"
    study.write_text(study_text(
        {"name": "conformance", "root": str(REPO), "cards_dir": str(t.card_dir), "reference": "fp32",
         "precisions": ["fp32"], "methods": ["mean_diff"], "fail_on": "never"}, {name: name},
        [{"methodology": "pv", "name": "sycophantic", "dataset": f"{REPO}/fixtures/traits/pv_sycophantic.json",
          "limit": 1, "layers": [1], "max_new_tokens": 3}]))
    s = load(study)
    runner = StudyRunner(s, tmp_path / "cache", tmp_path / "models")
    try:
        trait = s.traits[0]
        runner.activations(name, "fp32", trait)
        prov = runner.provenance(Cell("vectors", name, "fp32", trait.key, "mean_diff"), trait)
    finally:
        runner.pool.close()
    render = prov["extraction"]["fp32"]["render"]
    mode = SYSTEM_MODE.get(name, adapter.SYSTEM_NATIVE)
    assert render["pos"]["system"] == render["neg"]["system"] == [mode]
    implicit = [IMPLICIT_WITH_SYSTEM[name]] if name in IMPLICIT_WITH_SYSTEM else []
    assert render["pos"]["implicit_system"] == implicit
    json.dumps(prov)  # the record is JSON
