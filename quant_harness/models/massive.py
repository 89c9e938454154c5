"""Massive-dimension ratio of a model: how far its largest residual-stream dimension stands above the typical one.

The plan's H4 ("families with severe massive dims are more sensitive") orders models by this figure (Gemma-3-4B
~1500x, Llama-3.1-8B ~100x). Here it is measured, not quoted: for every block output except the last (HF's last
hidden state has the final norm applied) and every token of some plain texts, the token's ``max_d |h_d|`` over
its ``median_d |h_d|``; the model's figure is the largest of these. Position 0 is left out of the headline: models
park an attention sink there (Gemma-3-270M's BOS reaches 10,931x, against 4,140x on every other token), which says
nothing about the activations a trait vector is read from (CAA reads the answer letter); the figure with it is
reported beside. Measured 2026-12-01: SmolLM2-135M 747x (block 6), Gemma-3-270M 4,140x (block 1).

Run ``python -m quant_harness.models.massive CARD`` to measure a card's model (the cards' ``massive_dims_ratio``
came from that).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "In 1492, Columbus sailed across the Atlantic Ocean to reach new lands.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "She opened the letter, read it twice, and put it back in the drawer without a word.",
    "To compute the mean, add all the values and divide by how many there are.",
    "The committee will meet on Tuesday to discuss the budget for next year.",
)
"""Plain texts the ratio is measured on (no chat template, so instruct and base models read the same tokens)."""


@dataclass(frozen=True)
class MassiveDims:
    """A model's massive-dimension figures."""

    ratio: float
    """max over blocks and tokens (position 0 excluded) of a token's max |h_d| / median |h_d|."""
    layer: int
    """The block where ``ratio`` was found."""
    dim: int
    """The hidden dimension that holds it."""
    ratio_with_first: float
    """The same with position 0 (the attention sink) included."""
    per_layer: tuple[float, ...]
    """``ratio`` per block (position 0 excluded)."""


def token_ratios(hidden: Any) -> Any:
    """Per token, ``max_d |h_d| / median_d |h_d|`` of a ``[tokens, d]`` tensor (a zero median counts as tiny)."""
    a = hidden.abs().float()
    return a.max(dim=-1).values / a.median(dim=-1).values.clamp_min(1e-12)


def measure(model: Any, tokenizer: Any, texts: Sequence[str] = TEXTS) -> MassiveDims:
    """The massive-dimension figures of ``model`` on ``texts`` (one forward pass per text)."""
    import torch

    from quant_harness.models.adapter import text_ids

    if not texts:
        raise ValueError("massive-dim ratio: no texts to measure on")
    best, best_layer, best_dim, with_first = 0.0, -1, -1, 0.0
    per_layer: list[float] = []
    device = next(model.parameters()).device
    for text in texts:
        ids = torch.tensor([text_ids(tokenizer, text)], device=device)
        if ids.shape[1] < 2:
            raise ValueError(f"massive-dim ratio: text {text!r} has fewer than 2 tokens")
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1:-1]
        for layer, h in enumerate(hidden):
            r = token_ratios(h[0])
            with_first = max(with_first, float(r.max()))
            rest = r[1:]
            top = float(rest.max())
            if len(per_layer) <= layer:
                per_layer.append(top)
            per_layer[layer] = max(per_layer[layer], top)
            if top > best:
                t = int(rest.argmax()) + 1
                best, best_layer, best_dim = top, layer, int(h[0, t].abs().argmax())
    return MassiveDims(best, best_layer, best_dim, with_first, tuple(per_layer))


def main(argv: list[str] | None = None) -> int:
    """Load a card's model at fp32 and print its massive-dimension figures."""
    from pathlib import Path

    from quant_harness import data
    from quant_harness.models.cards import load_card
    from quant_harness.models.precision import load

    p = argparse.ArgumentParser(prog="python -m quant_harness.models.massive", description=__doc__)
    p.add_argument("card")
    p.add_argument("--model-dir", default=".quant_cache/models")
    args = p.parse_args(argv)
    card = load_card(args.card, data.path("model_cards"))
    loaded = load(card, "fp32", model_dir=Path(args.model_dir))
    m = measure(loaded.model, loaded.tokenizer)
    print(f"{card.name}: massive-dim ratio {m.ratio:.0f}x (block {m.layer}, dim {m.dim}); with position 0 "
          f"{m.ratio_with_first:.0f}x; per block " + " ".join(f"{x:.0f}" for x in m.per_layer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
