"""Models: their cards, the precisions they load at, and the embedded default model.

Owns: ``cards`` (what a study knows of a model before loading it), ``registry`` (one entry per precision: its kind,
bytes per parameter and report order; plain data), ``precision`` (loading a card at fp32/fp16/bf16,
bitsandbytes NF4/INT8, GPTQ; quantizer libraries imported only inside the loaders so a worker can pin its GPUs
first), ``embedded`` (SmolLM2 and Gemma-3-270M from their packages' GGUFs, sha256-pinned, dequantized once into
the model store), ``base_model`` (plain-text prompts of a base card, the cells it skips), ``massive`` (the
massive-dim ratio, measured). May import: errors,
_util. Importing this package loads no torch.
"""

from quant_harness.models.cards import ModelCard, load_card
from quant_harness.models.precision import LoadedModel, load, unavailable_reason
from quant_harness.models.registry import PRECISIONS, REGISTRY, PrecisionSpec

__all__ = ["PRECISIONS", "REGISTRY", "LoadedModel", "ModelCard", "PrecisionSpec", "load", "load_card",
           "unavailable_reason"]
