"""Forward passes with hooks -> per-example activations at the requested layers and positions.

Layer convention, stated once and recorded in every result: the activation of layer L is the OUTPUT of decoder
block L (the residual stream after the block, "resid_post"), which equals ``hidden_states[L + 1]`` of
``output_hidden_states`` for every block but the last (transformers applies the final norm to that one).
CAA reads this point; PV's ``hidden_states[L]`` is our layer L-1; Arditi's block input is our layer L-1.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from quant_harness import counters, progress
from quant_harness.datasets import Prompt
from quant_harness.positions import Position

LAYER_CONVENTION = "block_output"
LAYER_CONVENTION_TEXT = "layer L = output of decoder block L (resid_post) = hidden_states[L+1]"


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's decoder blocks, found by steering-vectors' layer matcher (works through bnb/GPTQ wrappers)."""
    from steering_vectors import guess_and_enhance_layer_config
    from steering_vectors.layer_matching import collect_matching_layers

    config = guess_and_enhance_layer_config(model, layer_type="decoder_block")
    names = collect_matching_layers(model, config["decoder_block"])
    modules = dict(model.named_modules())
    return [modules[n] for n in names]


def render(tokenizer: Any, prompt: Prompt) -> str:
    """The prompt as the model sees it: its chat template with the generation header, then the prefill."""
    messages = [{"role": r, "content": c} for r, c in prompt.messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text) + prompt.prefill


def encode(tokenizer: Any, prompt: Prompt, response: str = "") -> tuple[list[int], int]:
    """Token ids of prompt (+ response) and the prompt's length; the two are tokenized apart so the boundary holds."""
    ids = list(tokenizer(render(tokenizer, prompt), add_special_tokens=False).input_ids)
    n_prompt = len(ids)
    if response:
        ids += list(tokenizer(response, add_special_tokens=False).input_ids)
    return ids, n_prompt


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
    blocks = decoder_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if bad:
        raise ValueError(f"layer {bad[0]} out of range: the model has {len(blocks)} decoder blocks")
    encoded = [encode(tokenizer, p, responses[i] if responses else "") for i, p in enumerate(prompts)]
    picks = [position.indices(n_prompt, len(ids)) for ids, n_prompt in encoded]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[Tensor] = []
    captured: dict[int, Tensor] = {}

    def hook(layer: int) -> Any:
        def fn(_module: Any, _inputs: Any, output: Any) -> None:
            captured[layer] = output[0] if isinstance(output, tuple) else output
        return fn

    handles = [blocks[layer].register_forward_hook(hook(layer)) for layer in layers]
    try:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        results: dict[int, Tensor] = {}
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in progress.bar(batches, desc=desc, unit="batch"):
            width = max(len(encoded[i][0]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i][0]
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
            counters.add("forward_passes")
            for row, i in enumerate(batch):
                idx = torch.tensor(picks[i], device=device)
                results[i] = torch.stack(
                    [captured[layer][row].index_select(0, idx).float().mean(0).cpu() for layer in layers])
            captured.clear()
        out = [results[i] for i in range(len(encoded))]
    finally:
        for h in handles:
            h.remove()
    return torch.stack(out)
