"""Forward passes with hooks -> per-example activations at the requested layers and positions.

Layer convention, stated once and recorded in every result: the activation of layer L is the OUTPUT of decoder
block L (the residual stream after the block, "resid_post"), which equals ``hidden_states[L + 1]`` of
``output_hidden_states`` for every block but the last (transformers applies the final norm to that one).
CAA reads this point; PV's ``hidden_states[L]`` is our layer L-1; Arditi's block input is our layer L-1.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from quant_harness._util import counters, progress
from quant_harness.extract import batching
from quant_harness.extract.datasets import Prompt
from quant_harness.extract.positions import Position
from quant_harness.models import adapter

LAYER_CONVENTION = "block_output"
LAYER_CONVENTION_TEXT = "layer L = output of decoder block L (resid_post) = hidden_states[L+1]"
EXTRACTION_VERSION = 1
"""Version of the numbers this module writes; every activation and SAE-residual cache key holds it. Bump it with any
change that moves them (a tokenization, template or hook fix), so caches built by the old code are rebuilt."""


def example_hashes(prompts: Sequence[Prompt]) -> list[str]:
    """One hash per prompt of what the model sees (as ``ContrastSet.content_hash`` hashes it): the activation cache
    records them so a dataset that grew by appending is served from the entry of its larger version."""
    return [hashlib.sha256(json.dumps([p.messages, p.prefill]).encode()).hexdigest()[:16] for p in prompts]


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's decoder blocks (models.adapter.decoder_blocks: steering-vectors' matcher, through bnb/GPTQ)."""
    return adapter.decoder_blocks(model)


def render(tokenizer: Any, prompt: Prompt) -> str:
    """The prompt as the model sees it: its chat template with the generation header, then the prefill; a system
    message the template rejects is folded into the first user turn (models.adapter.render says which mode)."""
    return adapter.render(tokenizer, prompt).text


def encode(tokenizer: Any, prompt: Prompt, response: str = "") -> tuple[list[int], int]:
    """Token ids of prompt (+ response) and the prompt's length; the two are tokenized apart so the boundary holds."""
    return adapter.encode(tokenizer, prompt, response)


class _Done(Exception):
    """Raised by the deepest requested block's hook: later blocks (and the LM head) would compute nothing we read."""


def _capture(blocks: list[torch.nn.Module], layers: Sequence[int], captured: dict[int, Tensor]) -> list[Any]:
    deepest = max(layers)

    def hook(layer: int) -> Any:
        def fn(_module: Any, _inputs: Any, output: Any) -> None:
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == deepest:
                raise _Done
        return fn

    return [blocks[layer].register_forward_hook(hook(layer)) for layer in layers]


def _forward(model: Any, **inputs: Any) -> None:
    """The decoder stack only (``base_model``: no LM head), stopped after the deepest hooked block."""
    try:
        getattr(model, "base_model", model)(**inputs)
    except _Done:
        pass


def _blocks_for(model: Any, layers: Sequence[int]) -> list[torch.nn.Module]:
    blocks = decoder_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if bad:
        raise ValueError(f"layer {bad[0]} out of range: the model has {len(blocks)} decoder blocks")
    if not layers:
        raise ValueError("no layer requested")
    return blocks


@torch.no_grad()
def extract(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    position: Position,
    *,
    responses: Sequence[str] | None = None,
    batch_size: int = 8,
    desc: str = "extract",
) -> Tensor:
    """Activations ``[len(prompts), len(layers), d_model]`` in float32, averaged over the position's tokens."""
    if position.needs_response and responses is None:
        raise ValueError(f"position {position.spec} needs generated responses")
    blocks = _blocks_for(model, layers)
    encoded = [encode(tokenizer, p, responses[i] if responses else "") for i, p in enumerate(prompts)]
    picks = [position.indices(n_prompt, len(ids)) for ids, n_prompt in encoded]
    device = next(model.parameters()).device
    pad = batching.pad_id(tokenizer)
    captured: dict[int, Tensor] = {}
    handles = _capture(blocks, layers, captured)
    try:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        results: dict[int, Tensor] = {}
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in progress.bar(batches, desc=desc, unit="batch"):
            padded = batching.right_pad([encoded[i][0] for i in batch], pad)
            _forward(model, input_ids=padded.input_ids.to(device), attention_mask=padded.attention_mask.to(device),
                     use_cache=False)
            counters.add("forward_passes")
            for row, i in enumerate(batch):
                idx = torch.tensor(picks[i], device=device)
                results[i] = torch.stack(
                    [captured[layer][row].index_select(0, idx).float().mean(0).cpu() for layer in layers])
            captured.clear()
    finally:
        for h in handles:
            h.remove()
    return torch.stack([results[i] for i in range(len(encoded))])


def cache_arg(module: Any) -> str:
    """The keyword a forward takes its KV cache by: ``cache`` since transformers 5.24, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


@torch.no_grad()
def extract_pairs(
    model: Any,
    tokenizer: Any,
    pos: Sequence[Prompt],
    neg: Sequence[Prompt],
    layers: Sequence[int],
    position: Position,
    *,
    batch_size: int = 8,
    desc: str = "extract",
) -> tuple[Tensor, Tensor]:
    """Activations of contrast pairs, ``(pos, neg)`` as ``extract`` returns them.

    CAA pairs are one prompt ending in two different answer letters, read at the letter: the shared prefix runs once
    (left-padded, with its KV cache), then both letters run as one step from that cache, which halves the forward
    work of extracting each side apart. Pairs of any other shape go through ``extract`` twice.
    """
    enc_p = [encode(tokenizer, p)[0] for p in pos]
    enc_n = [encode(tokenizer, p)[0] for p in neg]
    shared = (not position.needs_response and len(pos) == len(neg) and len(pos) > 0
              and all(len(a) == len(b) > 1 and a[:-1] == b[:-1] for a, b in zip(enc_p, enc_n))
              and all(position.indices(len(a), len(a)) == [len(a) - 1] for a in enc_p))
    if not shared:
        return (extract(model, tokenizer, pos, layers, position, batch_size=batch_size, desc=f"{desc} +"),
                extract(model, tokenizer, neg, layers, position, batch_size=batch_size, desc=f"{desc} -"))
    from transformers import DynamicCache

    blocks = _blocks_for(model, layers)
    device = next(model.parameters()).device
    pad = batching.pad_id(tokenizer)
    arg = cache_arg(getattr(model, "base_model", model))
    captured: dict[int, Tensor] = {}
    handles = _capture(blocks, layers, captured)
    out_p: dict[int, Tensor] = {}
    out_n: dict[int, Tensor] = {}
    try:
        order = sorted(range(len(enc_p)), key=lambda i: len(enc_p[i]))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in progress.bar(batches, desc=f"{desc} +/-", unit="batch"):
            ids, mask, _ = batching.left_pad([enc_p[i][:-1] for i in batch], pad)
            cache = DynamicCache(config=model.config)
            _forward(model, input_ids=ids.to(device), attention_mask=mask.to(device),
                     position_ids=(mask.cumsum(-1) - 1).clamp_min(0).to(device), use_cache=True, **{arg: cache})
            captured.clear()
            cache.batch_repeat_interleave(2)
            letters = torch.tensor([[enc[i][-1]] for i in batch for enc in (enc_p, enc_n)])
            mask2 = torch.cat([mask.repeat_interleave(2, 0), torch.ones(2 * len(batch), 1, dtype=torch.long)], 1)
            where = torch.tensor([len(enc_p[i]) - 1 for i in batch]).repeat_interleave(2).unsqueeze(1)
            _forward(model, input_ids=letters.to(device), attention_mask=mask2.to(device),
                     position_ids=where.to(device), use_cache=True, **{arg: cache})
            counters.add("forward_passes", 2)
            for row, i in enumerate(batch):
                out_p[i] = torch.stack([captured[layer][2 * row, -1].float().cpu() for layer in layers])
                out_n[i] = torch.stack([captured[layer][2 * row + 1, -1].float().cpu() for layer in layers])
            captured.clear()
    finally:
        for h in handles:
            h.remove()
    return torch.stack([out_p[i] for i in range(len(pos))]), torch.stack([out_n[i] for i in range(len(neg))])
