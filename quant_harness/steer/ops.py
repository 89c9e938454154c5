"""Steering operators on decoder-block outputs: add, clamp, directional ablation; greedy generation and A/B logits.

Layer L means the output of decoder block L (activations.LAYER_CONVENTION), on every precision: hooks sit on the
decoder blocks, which bitsandbytes and GPTQ leave in place (only their Linear layers are swapped).

Where steering-vectors is used and where not:
- ``steer(..., start=None)`` (every position of every call, one coefficient for every row) is steering-vectors'
  ``SteeringVector.patch_activations``; per-row coefficients and layers use our hook with the same arithmetic.
- ``start=<absolute position>`` (CAA: from the end of the instruction on, every generated token included; PV: the
  last prompt token and every generated token) is our own hook. steering-vectors' ``min_token_index`` is relative to
  each forward call, so under a KV cache it never reaches a decode step (its issue #60); our hook reads the cache
  length at each call and masks on absolute positions.
- ``clamp`` sets the projection on the unit vector to a target instead of adding: steering-vectors' operators only
  return a delta from the activation and a fixed vector, so it is written here too (as is ablation, which Arditi
  applies inside each block, to the attention and MLP outputs, not only at block outputs; here also to the post-norms
  that follow them on Gemma-2/3 and OLMo-2, and to every block's input and output).
- The A/B readout scores the answer continuations ``(A``/``(B`` however the tokenizer spells them
  (``models.adapter.answer_plan``), and reads the model's own logits, so Gemma-2's soft-cap is applied.
- Batching (``generate_batched``, ``ab_sweep``): rows of several conditions (layer, coefficient, ablation) share
  one call. A call stacks whole conditions of the same prompts, so it pads as the one-condition call does, and the
  hooks apply each condition's operation to its own rows only (``_on_rows``), so every row gets the arithmetic it
  gets alone: greedy outputs equal the one-condition-at-a-time path's wherever a row's numbers do not depend on the
  other rows of its batch (all precisions but LLM.int8, whose artefacts key on the batch bound instead).
Hooks never modify a tensor in place (except steering-vectors' own) and are removed on exit, even on error.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from quant_harness._util import counters
from quant_harness.errors import CellError
from quant_harness.extract import batching
from quant_harness.extract.activations import cache_arg, decoder_layers, encode
from quant_harness.extract.datasets import Prompt
from quant_harness.models import adapter

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


def _rows(mask: Sequence[bool] | None) -> Tensor | None:
    """Indices of the selected batch rows (None: every row)."""
    return None if mask is None else torch.tensor([i for i, m in enumerate(mask) if m], dtype=torch.long)


def _on_rows(h: Tensor, rows: Tensor | None, fn: Any, *args: Any) -> Tensor:
    """``fn(h, *args)`` on the given rows of ``h`` only (a new tensor; the other rows are ``h``'s). ``fn`` sees just
    those rows, so each row gets exactly the arithmetic it gets in a batch of its own condition."""
    if rows is None:
        return fn(h, *args)  # type: ignore[no-any-return]
    rows = rows.to(h.device)
    return h.index_copy(0, rows, fn(h.index_select(0, rows), *args))


def _sv_add(h: Tensor, v: Tensor, coefficient: float) -> Tensor:
    """steering-vectors' own addition at every position (``h + 1 * (c v)`` in the vector's float32, cast back to
    ``h``'s dtype), for rows that share a batch with other conditions: their values are ``steer``'s scalar path's."""
    return (h + coefficient * v).to(h.dtype)


@contextlib.contextmanager
def steer(
    model: Any,
    vectors: dict[int, Tensor],
    coefficient: float | Sequence[float],
    *,
    mode: Mode = "add",
    start: Tensor | None = None,
    rows: Mapping[int, Sequence[bool]] | None = None,
) -> Iterator[None]:
    """Steer the outputs of the given blocks while the context is open.

    Args:
        vectors: layer -> vector (raw, not normalized: coefficients multiply it as CAA and PV do).
        coefficient: ``add``: multiplier of the vector. ``clamp``: target projection in units of the vector's norm
            (so ``clamp`` at c on a state with no component along v equals ``add`` at c). One for every row, or one
            per batch row, so that rows steered by different amounts share a batch.
        start: per batch row, the first absolute position to steer (None: every position).
        rows: per layer, which batch rows it steers (None: every row), so that rows steered at different layers
            share a batch. Each row's values are those of a batch of its own condition (``_on_rows``).
    """
    if mode not in ("add", "clamp"):
        raise ValueError(f"steering mode {mode!r}: expected add or clamp")
    coefs = None if isinstance(coefficient, (int, float)) else [float(c) for c in coefficient]
    if mode == "add" and start is None and coefs is None and rows is None:
        from steering_vectors import SteeringVector

        sv = SteeringVector({int(k): v.detach().float() for k, v in vectors.items()}, "decoder_block")
        handle = sv.patch_activations(model, multiplier=float(coefficient), min_token_index=0)  # type: ignore[arg-type]
        try:
            yield
        finally:
            handle.remove()
        return
    blocks = decoder_layers(model)
    state = _Offset()
    handles = [_track_offset(model, state)]

    def groups(layer: int) -> list[tuple[float, Tensor | None]]:
        """(coefficient, rows) pairs the layer's hook applies: one per distinct coefficient of its rows."""
        mask = None if rows is None else list(rows[layer])
        if coefs is None:
            return [(float(coefficient), _rows(mask))]  # type: ignore[arg-type]
        chosen = [i for i in range(len(coefs)) if mask is None or mask[i]]
        return [(c, torch.tensor([i for i in chosen if coefs[i] == c], dtype=torch.long))
                for c in dict.fromkeys(coefs[i] for i in chosen)]

    def hook(v: Tensor, parts: list[tuple[float, Tensor | None]]) -> Any:
        def fn(_module: Any, _inputs: Any, output: Any) -> Any:
            h, rest = _split(output)
            vec = v.to(h.device)
            new = h
            for c, sel in parts:
                if mode == "clamp":
                    new = _on_rows(new, sel, clamp_delta, vec, c * float(vec.norm()))
                else:
                    new = _on_rows(new, sel, add_delta if start is not None else _sv_add, vec, c)
            if start is not None:
                pos = state.value + torch.arange(h.shape[-2], device=h.device)
                mask = (pos[None, :] >= start.to(h.device)[:, None]).unsqueeze(-1)
                new = torch.where(mask, new, h)
            return _join(new, rest)
        return fn

    try:
        for layer, v in vectors.items():
            handles.append(blocks[layer].register_forward_hook(hook(v.detach().float(), groups(layer))))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def ablation(model: Any, direction: Tensor, rows: Sequence[bool] | None = None) -> Iterator[None]:
    """Project ``direction`` out of the residual stream everywhere, on pre- and post-norm blocks alike (on the
    given batch rows only: None is every row, so ablated and plain rows can share a batch).

    Hooks sit on every block's input (Arditi's pre-hook on each block), on what each block writes to its residual
    stream, and on every block's output. What a block writes is found from what it computes
    (``models.adapter.block_structure``), not from module names: the attention and MLP outputs on pre-norm blocks
    (Llama, Qwen, Mistral, SmolLM2: Arditi's hooks), but the outputs of the norms applied after them on Gemma-2/3 and
    OLMo-2, whose per-dimension weights would put the direction back. So no block reads along it at its input, and
    the residual stream carries none of it between or inside blocks.
    """
    blocks = decoder_layers(model)
    writers = adapter.block_structure(model).writers
    r = unit(direction, "ablation direction")
    sel = _rows(rows)
    handles: list[Any] = []

    def cut(h: Tensor) -> Tensor:
        return _on_rows(h, sel, ablate, r)

    def out_hook(_module: Any, _inputs: Any, output: Any) -> Any:
        h, rest = _split(output)
        return _join(cut(h), rest)

    def in_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (cut(args[0]), *args[1:]), kwargs
        key = "hidden_states"
        return args, {**kwargs, key: cut(kwargs[key])}

    try:
        for block in blocks:
            handles.append(block.register_forward_pre_hook(in_hook, with_kwargs=True))
            for name in writers:
                sub = getattr(block, name, None)
                if isinstance(sub, torch.nn.Module):
                    handles.append(sub.register_forward_hook(out_hook))
            handles.append(block.register_forward_hook(out_hook))
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
    pad = batching.pad_id(tokenizer)
    ids, mask, offsets = batching.left_pad(encoded, pad)
    start = None
    if from_instruction_end:
        start = torch.tensor([o + s for o, s in zip(offsets, instruction_starts(tokenizer, prompts))])
    device = next(model.parameters()).device
    with _maybe_steer(model, vectors, coefficient, mode, start):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, temperature=None, top_p=None,
                             top_k=None)
    new = out[:, ids.shape[1]:]
    counters.add("generated_tokens", batching.generated_tokens(new, batching.stop_ids(model, tokenizer)))
    texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    return Generation(texts, [len(e) for e in encoded])


@dataclass(frozen=True)
class Condition:
    """One group of rows of a batched generation: every prompt, steered at ``layer`` by ``coefficient`` (``layer``
    None: not steered), with the ablation direction projected out where ``ablate``."""

    layer: int | None = None
    coefficient: float = 0.0
    ablate: bool = False

    def steered(self, mode: Mode) -> bool:
        """Whether the condition adds anything (``add`` at 0 is the unsteered model, as ``generate`` treats it)."""
        return self.layer is not None and not (self.coefficient == 0.0 and mode == "add")


def condition_chunks(n_conditions: int, n_prompts: int, max_rows: int) -> list[range]:
    """Conditions per batched call: as many whole conditions as fit in ``max_rows`` rows, at least one."""
    per = max(1, max_rows // max(1, n_prompts))
    return [range(i, min(i + per, n_conditions)) for i in range(0, n_conditions, per)]


@contextlib.contextmanager
def _condition_hooks(model: Any, conds: Sequence[Condition], n_prompts: int, vectors: dict[int, Tensor] | None,
                     direction: Tensor | None, mode: Mode, start: Tensor | None) -> Iterator[None]:
    """The per-row steering and ablation hooks of a batch of ``conds`` x ``n_prompts`` rows (condition-major)."""
    per_row = [c for c in conds for _ in range(n_prompts)]
    with contextlib.ExitStack() as stack:
        if any(c.ablate for c in conds):
            if direction is None:
                raise CellError("an ablated condition needs an ablation direction")
            stack.enter_context(ablation(model, direction, rows=[c.ablate for c in per_row]))
        layers = list(dict.fromkeys(c.layer for c in conds if c.steered(mode) and c.layer is not None))
        if layers:
            if vectors is None or any(L not in vectors for L in layers):
                raise CellError(f"steered conditions at layers {layers} without a vector at each")
            rows = {L: [c.steered(mode) and c.layer == L for c in per_row] for L in layers}
            stack.enter_context(steer(model, {L: vectors[L] for L in layers}, [c.coefficient for c in per_row],
                                      mode=mode, start=start, rows=rows))
        yield


@torch.no_grad()
def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    conditions: Sequence[Condition],
    *,
    vectors: dict[int, Tensor] | None = None,
    direction: Tensor | None = None,
    mode: Mode = "add",
    from_instruction_end: bool = True,
    max_new_tokens: int = 24,
    max_rows: int = 64,
) -> list[Generation]:
    """``generate`` for several conditions at once: one Generation per condition, from as few ``generate`` calls as
    ``max_rows`` allows (``condition_chunks``).

    A call stacks whole conditions of the same prompts, so it pads exactly as ``generate`` does for one condition,
    and each row is steered (or ablated) as in a batch of its own: greedy outputs are ``generate``'s, token for
    token (tests/unit/test_batched_generation.py), on precisions whose rows do not interact (not LLM.int8).
    """
    if not prompts or not conditions:
        raise CellError("no prompts or conditions to generate from")
    encoded = [encode(tokenizer, p)[0] for p in prompts]
    inst = instruction_starts(tokenizer, prompts) if from_instruction_end else None
    pad = batching.pad_id(tokenizer)
    stop = batching.stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    n = len(prompts)
    out: list[Generation] = []
    for chunk in condition_chunks(len(conditions), n, max_rows):
        conds = [conditions[i] for i in chunk]
        ids, mask, offsets = batching.left_pad(encoded * len(conds), pad)
        start = None if inst is None else torch.tensor([o + inst[k % n] for k, o in enumerate(offsets)])
        with _condition_hooks(model, conds, n, vectors, direction, mode, start):
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, temperature=None, top_p=None,
                                 top_k=None)
        new = gen[:, ids.shape[1]:]
        counters.add("generated_tokens", batching.generated_tokens(new, stop))
        texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
        out.extend(Generation(texts[j * n:(j + 1) * n], [len(e) for e in encoded]) for j in range(len(conds)))
    return out


@dataclass(frozen=True)
class ABLogits:
    """Per question: log p(matching answer) - log p(other answer) as continuations of the prompt, and
    p(match) / (p(match) + p(other)). Where the answers differ in one token after a shared prefix (every study
    tokenizer) this is the logit difference of the two letter tokens at the position after the prefix."""

    logit_diff: list[float]
    p_match: list[float]


def ab_answers(letters: str = "AB") -> dict[str, str]:
    """The answer continuations of CAA's A/B questions: ``(A``, ``(B``."""
    return {letter: f"({letter}" for letter in letters}


def letter_ids(tokenizer: Any, letters: str = "AB") -> dict[str, int]:
    """The token that tells each answer apart from the others after the tokens they share: ``A`` after ``(`` for
    SmolLM2 and Gemma, ``A`` after ``▁(`` for Mistral, the single token ``(A`` for Llama-3, Qwen2.5 and OLMo-2.
    An error only where an answer needs more than one token of its own (``ab_logits`` still scores those)."""
    plan = adapter.answer_plan(tokenizer, list(ab_answers(letters).values()))
    if not plan.single_token:
        raise CellError(f"the tokenizer spells the answers with several tokens each after their shared prefix "
                        f"{list(plan.shared)}: {plan.tails}")
    return {letter: plan.tails[answer][0] for letter, answer in ab_answers(letters).items()}


@torch.no_grad()
def ab_logits(
    model: Any,
    tokenizer: Any,
    questions: Sequence[tuple[Prompt, str]],
    *,
    vectors: dict[int, Tensor] | None = None,
    coefficient: float = 0.0,
) -> ABLogits:
    """A/B readout of CAA: the log-likelihood of the answer continuation ``(A`` against ``(B`` after the assistant
    header, whatever the tokenizer spells them as (``models.adapter.answer_plan``: tokenized apart from the prompt).

    ``questions`` pairs each prompt (the question, no prefill) with its matching letter. The answers' shared tokens
    (``(`` for SmolLM2 and Gemma) are appended to every prompt; where each answer then has one token of its own, one
    forward pass reads the two letters' logits at the last position; otherwise both continuations run and their
    tokens' log-probabilities are summed. Steering runs from the end of the instruction on, as in CAA.
    """
    r = _ab_rows(tokenizer, questions)
    ids, mask, offsets = batching.left_pad(r.seqs, batching.pad_id(tokenizer))
    starts = torch.tensor([o + r.inst[r.rows[k][0]] for k, o in enumerate(offsets)])
    device = next(model.parameters()).device
    with _maybe_steer(model, vectors, coefficient, "add", starts):
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    counters.add("forward_passes")
    return _ab_result(questions, _ab_scores(r, logits, offsets))


@dataclass(frozen=True)
class _ABRows:
    """The rows of an A/B readout: one per question where each answer has one token of its own after the shared
    ones (``plan.single_token``: the last position's logits read both letters), else one per question x answer
    with that answer's tokens appended (their log-probabilities summed)."""

    answers: dict[str, str]
    plan: Any
    base: list[list[int]]
    """Each question's prompt tokens plus the answers' shared tokens."""
    inst: list[int]
    """Where each question's instruction starts (steering runs from there on)."""
    rows: list[tuple[int, str]]
    """(question, answer letter) per row; the letter is empty on the single-token path."""
    seqs: list[list[int]]


def _ab_rows(tokenizer: Any, questions: Sequence[tuple[Prompt, str]]) -> _ABRows:
    answers = ab_answers()
    plan = adapter.answer_plan(tokenizer, list(answers.values()))
    prompts = [p for p, _ in questions]
    base = [encode(tokenizer, p)[0] + list(plan.shared) for p in prompts]
    if plan.single_token:
        rows, seqs = [(i, "") for i in range(len(base))], base
    else:
        rows = [(i, x) for i in range(len(base)) for x in answers]
        seqs = [base[i] + list(plan.tails[answers[x]]) for i, x in rows]
    return _ABRows(answers, plan, base, instruction_starts(tokenizer, prompts), rows, seqs)


def _ab_scores(r: _ABRows, logits: Tensor, offsets: Sequence[int]) -> list[dict[str, float]]:
    """Each question's score per answer letter from the logits of ``r.seqs`` (left-padded by ``offsets``)."""
    if r.plan.single_token:
        last = logits[:, -1].double().cpu()
        return [{x: float(last[i, r.plan.tails[a][0]]) for x, a in r.answers.items()} for i in range(len(r.base))]
    logp = torch.log_softmax(logits.double().cpu(), dim=-1)
    scores: list[dict[str, float]] = [{} for _ in r.base]
    for k, (i, x) in enumerate(r.rows):
        tail = r.plan.tails[r.answers[x]]
        first = offsets[k] + len(r.base[i])
        scores[i][x] = float(sum(logp[k, first + j - 1, t] for j, t in enumerate(tail)))
    return scores


def _ab_result(questions: Sequence[tuple[Prompt, str]], scores: Sequence[dict[str, float]]) -> ABLogits:
    diffs, probs = [], []
    for row, (_, match) in enumerate(questions):
        other = "B" if match == "A" else "A"
        d = torch.tensor(scores[row][match] - scores[row][other], dtype=torch.float64)
        diffs.append(float(d))
        probs.append(float(torch.sigmoid(d)))
    if not all(torch.isfinite(torch.tensor(diffs))):
        raise CellError("A/B logits contain NaN or inf")
    return ABLogits(diffs, probs)


@torch.no_grad()
def ab_sweep(
    model: Any,
    tokenizer: Any,
    questions: Sequence[tuple[Prompt, str]],
    coefficients: Sequence[float],
    *,
    vectors: dict[int, Tensor],
    max_rows: int = 64,
) -> list[ABLogits]:
    """``ab_logits`` at every coefficient, one ABLogits per coefficient, from as few forward passes as ``max_rows``
    allows: a pass stacks whole coefficients' rows (the same prompts, so the same padding), each row steered by its
    own coefficient; the figures are ``ab_logits``' one coefficient at a time (tests/unit/test_batched_generation.py).
    Steering starts at each prompt's last instruction token, so everything before the earliest start is the same in
    every row of a question: it runs once, into a KV cache each coefficient's rows continue from (the same tokens,
    positions and causal attention as the full forward: equal up to float rounding, tested on the seven twins).
    Only the positions the answers are read at get logits.
    """
    from transformers import DynamicCache

    r = _ab_rows(tokenizer, questions)
    device = next(model.parameters()).device
    n = len(r.seqs)
    ids, mask, offsets = batching.left_pad(r.seqs, batching.pad_id(tokenizer))
    ids, mask = ids.to(device), mask.to(device)
    starts = torch.tensor([o + r.inst[r.rows[k][0]] for k, o in enumerate(offsets)])
    split = int(starts.min())   # every position before it is unsteered in every row: run once, kept as a KV cache
    arg = cache_arg(model)
    prefix = DynamicCache(config=model.config)
    if split:
        model(input_ids=ids[:, :split], attention_mask=mask[:, :split], use_cache=True, **_last_logits(model, 1),
              **{arg: prefix})
        counters.add("forward_passes")
    keep = 1 if r.plan.single_token else max(len(t) for t in r.plan.tails.values()) + 1
    chunks = condition_chunks(len(coefficients), n, max_rows)
    out: list[ABLogits] = []
    for c, chunk in enumerate(chunks):
        group = [float(coefficients[i]) for i in chunk]
        cache = prefix if c == len(chunks) - 1 else copy.deepcopy(prefix)
        if split:
            cache.batch_select_indices(torch.arange(n, device=device).repeat(len(group)))
        per_row = [x for x in group for _ in r.seqs]
        steered = [x != 0.0 for x in per_row]   # add at 0 is the unsteered model, as ab_logits treats it
        with contextlib.ExitStack() as stack:
            if any(steered):
                stack.enter_context(steer(model, vectors, per_row, start=starts.repeat(len(group)),
                                          rows={L: steered for L in vectors}))
            logits = model(input_ids=ids[:, split:].repeat(len(group), 1), attention_mask=mask.repeat(len(group), 1),
                           use_cache=True, **_last_logits(model, keep), **{arg: cache}).logits
        counters.add("forward_passes")
        cut = ids.shape[1] - logits.shape[1]   # positions with no logits: the prefix and those logits_to_keep drops
        for j in range(len(group)):
            rows = slice(j * n, (j + 1) * n)
            out.append(_ab_result(questions, _ab_scores(r, logits[rows], [o - cut for o in offsets])))
    return out


def _last_logits(model: Any, last: int) -> dict[str, int]:
    """``logits_to_keep=last`` where the model's forward takes it (transformers' causal LMs): a readout of the last
    positions does not need the LM head at every position (for SmolLM2-135M a fifth of a forward)."""
    return {"logits_to_keep": last} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
