"""Steering operators on decoder-block outputs: add, clamp, directional ablation; greedy generation and A/B logits.

Layer L means the output of decoder block L (activations.LAYER_CONVENTION), on every precision: hooks sit on the
decoder blocks, which bitsandbytes and GPTQ leave in place (only their Linear layers are swapped).

Where steering-vectors is used and where not:
- ``steer(..., start=None)`` (every position of every call) is steering-vectors' ``SteeringVector.patch_activations``.
- ``start=<absolute position>`` (CAA: from the end of the instruction on, every generated token included; PV: the
  last prompt token and every generated token) is our own hook. steering-vectors' ``min_token_index`` is relative to
  each forward call, so under a KV cache it never reaches a decode step (its issue #60); our hook reads the cache
  length at each call and masks on absolute positions.
- ``clamp`` sets the projection on the unit vector to a target instead of adding: steering-vectors' operators only
  return a delta from the activation and a fixed vector, so it is written here too (as is ablation, which Arditi
  applies inside each block, to the attention and MLP outputs, not only at block outputs).
Hooks never modify a tensor in place (except steering-vectors' own) and are removed on exit, even on error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import Tensor

from quant_harness._util import counters
from quant_harness.extract.activations import decoder_layers, encode
from quant_harness.extract.datasets import Prompt
from quant_harness.errors import CellError

Mode = Literal["add", "clamp"]


def unit(v: Tensor, what: str = "steering vector") -> Tensor:
    """The unit vector of ``v``; a zero or NaN vector cannot give a direction."""
    v = v.detach().float()
    norm = float(v.norm())
    if not torch.isfinite(v).all() or norm == 0.0:
        raise CellError(f"{what} is zero or not finite; cannot steer with it")
    return v / norm


def add_delta(h: Tensor, v: Tensor, coefficient: float) -> Tensor:
    """CAA / PV activation addition: ``h + c v``."""
    return h + coefficient * v.to(h.dtype)


def clamp_delta(h: Tensor, v: Tensor, target: float) -> Tensor:
    """Set the projection of ``h`` on ``unit(v)`` to ``target`` (the SAE seed's clamp): ``h + (target - h.u) u``."""
    u = unit(v).to(h.device)
    proj = h.float() @ u
    return (h.float() + (target - proj).unsqueeze(-1) * u).to(h.dtype)


def ablate(h: Tensor, direction: Tensor) -> Tensor:
    """Arditi's directional ablation ``h - (h.r) r`` with r the unit direction."""
    r = unit(direction, "ablation direction").to(h.device)
    return (h.float() - (h.float() @ r).unsqueeze(-1) * r).to(h.dtype)


def _split(output: Any) -> tuple[Tensor, tuple[Any, ...] | None]:
    return (output[0], tuple(output[1:])) if isinstance(output, tuple) else (output, None)


def _join(h: Tensor, rest: tuple[Any, ...] | None) -> Any:
    return h if rest is None else (h, *rest)


@dataclass
class _Offset:
    """Absolute position of the first token of the current forward call (the KV cache's length before it)."""

    value: int = 0
    hooks: list[Any] = field(default_factory=list)


def _track_offset(model: Any, state: _Offset) -> Any:
    def pre(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        # transformers 5.24 passes the KV cache as ``cache``; earlier 5.x releases as ``past_key_values``
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        state.value = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
    return model.register_forward_pre_hook(pre, with_kwargs=True)


@contextlib.contextmanager
def steer(
    model: Any,
    vectors: dict[int, Tensor],
    coefficient: float,
    *,
    mode: Mode = "add",
    start: Tensor | None = None,
) -> Iterator[None]:
    """Steer the outputs of the given blocks while the context is open.

    Args:
        vectors: layer -> vector (raw, not normalized: coefficients multiply it as CAA and PV do).
        coefficient: ``add``: multiplier of the vector. ``clamp``: target projection in units of the vector's norm
            (so ``clamp`` at c on a state with no component along v equals ``add`` at c).
        start: per batch row, the first absolute position to steer (None: every position).
    """
    if mode not in ("add", "clamp"):
        raise ValueError(f"steering mode {mode!r}: expected add or clamp")
    if mode == "add" and start is None:
        from steering_vectors import SteeringVector

        sv = SteeringVector({int(k): v.detach().float() for k, v in vectors.items()}, "decoder_block")
        handle = sv.patch_activations(model, multiplier=float(coefficient), min_token_index=0)
        try:
            yield
        finally:
            handle.remove()
        return
    blocks = decoder_layers(model)
    state = _Offset()
    handles = [_track_offset(model, state)]

    def hook(v: Tensor) -> Any:
        def fn(_module: Any, _inputs: Any, output: Any) -> Any:
            h, rest = _split(output)
            vec = v.to(h.device)
            if mode == "add":
                new = add_delta(h, vec, coefficient)
            else:
                new = clamp_delta(h, vec, coefficient * float(vec.norm()))
            if start is not None:
                pos = state.value + torch.arange(h.shape[-2], device=h.device)
                mask = (pos[None, :] >= start.to(h.device)[:, None]).unsqueeze(-1)
                new = torch.where(mask, new, h)
            return _join(new, rest)
        return fn

    try:
        for layer, v in vectors.items():
            handles.append(blocks[layer].register_forward_hook(hook(v.detach().float())))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def ablation(model: Any, direction: Tensor) -> Iterator[None]:
    """Project ``direction`` out of the residual stream everywhere (Arditi): block 0's input and the attention and
    MLP outputs of every block, so no block ever reads or writes along it."""
    blocks = decoder_layers(model)
    r = unit(direction, "ablation direction")
    handles: list[Any] = []

    def out_hook(_module: Any, _inputs: Any, output: Any) -> Any:
        h, rest = _split(output)
        return _join(ablate(h, r), rest)

    def in_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (ablate(args[0], r), *args[1:]), kwargs
        key = "hidden_states"
        return args, {**kwargs, key: ablate(kwargs[key], r)}

    try:
        handles.append(blocks[0].register_forward_pre_hook(in_hook, with_kwargs=True))
        for block in blocks:
            subs = [getattr(block, n) for n in ("self_attn", "mlp") if isinstance(getattr(block, n, None),
                                                                              torch.nn.Module)]
            for m in subs or [block]:
                handles.append(m.register_forward_hook(out_hook))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class Generation:
    """Greedy responses to prompts, with the token counts steering positions were computed from."""

    texts: list[str]
    n_prompt: list[int]


def instruction_starts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[int]:
    """Per prompt, the position of the last token of the chat template's instruction (before any prefill):
    CAA steers from here on (its issue #3: the first generated token must be steered too)."""
    return [len(encode(tokenizer, Prompt(p.messages))[0]) - 1 for p in prompts]


def _left_pad(tokenizer: Any, encoded: list[list[int]]) -> tuple[Tensor, Tensor, list[int]]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    offsets = []
    for i, row in enumerate(encoded):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
        offsets.append(width - len(row))
    return ids, mask, offsets


@contextlib.contextmanager
def _maybe_steer(model: Any, vectors: dict[int, Tensor] | None, coefficient: float, mode: Mode,
                 start: Tensor | None) -> Iterator[None]:
    if not vectors or (coefficient == 0.0 and mode == "add"):
        yield
        return
    with steer(model, vectors, coefficient, mode=mode, start=start):
        yield


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    vectors: dict[int, Tensor] | None = None,
    coefficient: float = 0.0,
    mode: Mode = "add",
    from_instruction_end: bool = True,
    max_new_tokens: int = 24,
) -> Generation:
    """Greedy responses, steered from the end of each instruction on (or at every position)."""
    if not prompts:
        raise CellError("no prompts to generate from")
    encoded = [encode(tokenizer, p)[0] for p in prompts]
    ids, mask, offsets = _left_pad(tokenizer, encoded)
    start = None
    if from_instruction_end:
        start = torch.tensor([o + s for o, s in zip(offsets, instruction_starts(tokenizer, prompts))])
    device = next(model.parameters()).device
    with _maybe_steer(model, vectors, coefficient, mode, start):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id or
                             tokenizer.eos_token_id, temperature=None, top_p=None, top_k=None)
    new = out[:, ids.shape[1]:]
    counters.add("generated_tokens", int((new != (tokenizer.pad_token_id or tokenizer.eos_token_id)).sum()))
    texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    return Generation(texts, [len(e) for e in encoded])


@dataclass(frozen=True)
class ABLogits:
    """Per question, at the answer-letter position: logit(match) - logit(non-match) and p(match)/(p(A)+p(B))."""

    logit_diff: list[float]
    p_match: list[float]


def letter_ids(tokenizer: Any, letters: str = "AB") -> dict[str, int]:
    """Token ids of the answer letters as they follow "(" (SmolLM2 and Llama split "(A)" into "(", "A", ")")."""
    out = {}
    for letter in letters:
        ids = tokenizer(f"({letter}", add_special_tokens=False).input_ids
        paren = tokenizer("(", add_special_tokens=False).input_ids
        if len(ids) != len(paren) + 1:
            raise CellError(f"tokenizer splits '({letter}' as {ids}; expected '(' then one letter token")
        out[letter] = ids[-1]
    return out


@torch.no_grad()
def ab_logits(
    model: Any,
    tokenizer: Any,
    questions: Sequence[tuple[Prompt, str]],
    *,
    vectors: dict[int, Tensor] | None = None,
    coefficient: float = 0.0,
) -> ABLogits:
    """A/B readout of CAA: each prompt ends with "(" so the next token is the answer letter; ``questions`` pairs
    the prompt with its matching letter. Steering runs from the end of the instruction on, as in CAA."""
    ids_of = letter_ids(tokenizer)
    encoded = [encode(tokenizer, p)[0] for p, _ in questions]
    ids, mask, offsets = _left_pad(tokenizer, encoded)
    starts = torch.tensor([o + s for o, s in zip(offsets, instruction_starts(tokenizer, [p for p, _ in questions]))])
    device = next(model.parameters()).device
    with _maybe_steer(model, vectors, coefficient, "add", starts):
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits[:, -1]
    counters.add("forward_passes")
    logits = logits.double().cpu()
    diffs, probs = [], []
    for row, (_, match) in enumerate(questions):
        other = "B" if match == "A" else "A"
        lm, lo = logits[row, ids_of[match]], logits[row, ids_of[other]]
        diffs.append(float(lm - lo))
        probs.append(float(torch.sigmoid(lm - lo)))
    if not all(torch.isfinite(torch.tensor(diffs))):
        raise CellError("A/B logits contain NaN or inf")
    return ABLogits(diffs, probs)
