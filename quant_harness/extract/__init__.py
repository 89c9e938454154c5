"""Extraction: trait datasets, token positions, activations, PV rollouts, vector methods, and the vectors and probes
cell kinds.

Owns: ``datasets`` (CAA / PV / Arditi formats, validated), ``positions`` (``prompt[-1]``, ``response[:]``),
``activations`` (batched hooks on decoder blocks; layer L = block L's output), ``batching`` (padding, masks, the
pad-id rule and the generated-token count, for every batched forward and generation), ``rollouts`` (PV generation),
``methods`` (mean_diff, probe, pca, file vectors), ``vectors`` and ``probes`` (the cells). May import: errors, _util,
models, store, metrics, judge, study, records. Only the torch-free ``datasets`` and ``positions`` are re-exported,
so ``study.load`` can validate datasets without torch.
"""

from quant_harness.extract.datasets import ContrastSet, Prompt
from quant_harness.extract.positions import Position, parse_position

__all__ = ["ContrastSet", "Position", "Prompt", "parse_position"]
