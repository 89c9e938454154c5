"""Layers given as a block index or as a fraction of the model's depth, resolved per model.

A study can hold models of 26 to 80 blocks: ``layers = [12]`` is block 12 of every model (what it has always been),
``layers = [0.4]`` is ``round(0.4 * n_layers)`` of each model (block 12 of a 30-block model, 13 of a 32-block one,
32 of an 80-block one). TOML tells the two apart by type: an integer is an index, a float a fraction in [0, 1] (1.0
is the last block). Settings keep what the study wrote; a cell resolves it with its own model's depth.
"""

from __future__ import annotations

from collections.abc import Sequence

from quant_harness.errors import StudyError

Layer = int | float
DEFAULT_FRACTION = 0.4
"""The default steering and SAE layer: 40% of the depth (block 12 of SmolLM2's 30, the layer used so far)."""


def parse_layers(path: object, key: str, value: object, n_layers: int) -> tuple[Layer, ...]:
    """A non-empty list of block indices in ``0..n_layers-1`` (``n_layers``: the study's shallowest model) and/or
    fractions of depth in [0, 1]; anything else is a StudyError naming the file, the key and the value."""
    expected = (f"a non-empty list of layers: block indices in 0..{n_layers - 1} (integers) or fractions of "
                f"the model's depth in [0, 1] (floats, e.g. 0.4)")
    if not isinstance(value, list) or not value:
        raise StudyError(path, key, value, expected)
    for v in value:
        index = isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n_layers
        fraction = isinstance(v, float) and 0.0 <= v <= 1.0
        if not (index or fraction):
            raise StudyError(path, key, value, expected)
    return tuple(value)


def resolve(layer: Layer, n_layers: int) -> int:
    """The block index of ``layer`` in a model of ``n_layers`` blocks."""
    if isinstance(layer, float):
        return min(n_layers - 1, max(0, round(layer * n_layers)))
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range for a model of {n_layers} blocks")
    return layer


def resolve_all(layers: Sequence[Layer], n_layers: int) -> tuple[int, ...]:
    """Each layer resolved, in order, without repeats (two fractions may land on one block)."""
    return tuple(dict.fromkeys(resolve(x, n_layers) for x in layers))
