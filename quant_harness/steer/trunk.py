"""The blocks below the first steered one, run once per prompt however many coefficients are swept.

Steering at block L leaves every block below it as it was, so rows that differ only in their steering coefficient
carry the same residual stream up to L's input. ``block_input`` runs each prompt once up to block L and stops there;
``resume`` then runs a batch of those rows repeated (one copy per coefficient) from block L on, the blocks below
passing their input through. A sweep of k coefficients over an N-block model then costs L + k (N - L) block passes
per prompt instead of k N. Each row's arithmetic is unchanged (the same kernels on the same values), so the outputs
are the unshared path's (tests/unit/test_batched_generation.py compares them bit for bit on CPU).

``logits_to_keep`` asks a forward for the logits of its last positions only: a readout of one answer letter does
not need the LM head at every position (for SmolLM2-135M a fifth of the forward, and a batch x length x vocab
tensor written and read).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from quant_harness.models.adapter import decoder_blocks


class _Reached(Exception):
    """Raised at block L's input: nothing above it is needed from the first pass."""


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # type: ignore[no-any-return]


@torch.no_grad()
def block_input(model: Any, input_ids: Tensor, attention_mask: Tensor, layer: int) -> tuple[Tensor, bool]:
    """The residual stream entering block ``layer`` for each row, and whether blocks return tuples (transformers 4.x)
    or a tensor (5.x), which ``resume``'s pass-through must mimic."""
    blocks = decoder_blocks(model)
    if not 0 < layer < len(blocks):
        raise ValueError(f"block {layer}: expected 1..{len(blocks) - 1} (a block with blocks below it)")
    seen: dict[str, Any] = {}

    def first_out(_m: Any, _a: Any, output: Any) -> None:
        seen["tuple"] = isinstance(output, tuple)

    def stop(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["h"] = _hidden(args, kwargs)
        raise _Reached

    handles = [blocks[0].register_forward_hook(first_out),
               blocks[layer].register_forward_pre_hook(stop, with_kwargs=True)]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Reached:
        pass
    finally:
        for h in handles:
            h.remove()
    if "h" not in seen:
        raise RuntimeError(f"block {layer} was never reached by the forward pass")
    return seen["h"], bool(seen.get("tuple"))


@contextlib.contextmanager
def resume(model: Any, layer: int, hidden: Tensor, tuples: bool) -> Iterator[None]:
    """While open, a forward pass skips blocks ``0..layer-1`` (each returns its input) and block ``layer`` reads
    ``hidden`` (rows as the batch's) instead of what reaches it. Hooks on the skipped blocks do not fire."""
    blocks = decoder_blocks(model)

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        h = _hidden(args, kwargs)
        return (h,) if tuples else h

    def swap(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        h = _hidden(args, kwargs)
        if h.shape != hidden.shape:
            raise ValueError(f"block {layer} input {tuple(h.shape)}: expected the shared trunk's {tuple(hidden.shape)}")
        new = hidden.to(device=h.device, dtype=h.dtype)
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": new}
        return (new, *args[1:]), kwargs

    saved = [(b, b.__dict__.get("forward")) for b in blocks[:layer]]
    handle = blocks[layer].register_forward_pre_hook(swap, with_kwargs=True)
    try:
        for b, _ in saved:
            b.forward = passthrough
        yield
    finally:
        handle.remove()
        for b, own in saved:
            if own is None:
                del b.forward
            else:
                b.forward = own


def logits_to_keep(model: Any, last: int) -> dict[str, int]:
    """``{"logits_to_keep": last}`` where the model's forward takes it (transformers' causal LMs), else nothing."""
    return {"logits_to_keep": last} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
