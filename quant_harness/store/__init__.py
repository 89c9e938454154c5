"""The one artefact store: every cached result (activations, rollouts, SAE residuals and dictionaries, judge answers,
steering searches, A/B sweeps, refusal generations, benchmark scores, plot images) goes through it.

Owns: ``artefacts`` (``ArtefactStore.get_or_build``: one key function, key components in ``meta.json`` checked on
read, a per-entry file lock with a re-check once held, atomic writes, hit/miss counters; ``entries``/``prune`` for
``quant-harness cache``; ``legacy_json`` to adopt results cached in a layout from before the store), ``codecs``
(JSON, named byte files, folders, tensors), ``activations`` (``ActivationCache``, the typed face for named tensors
that the runner and the planner use). May import: errors, _util. Importing this package loads no torch: the tensor
codec imports torch and safetensors inside its methods.
"""

from quant_harness.store.activations import ActivationCache, Entry
from quant_harness.store.artefacts import META, Artefact, ArtefactStore, Codec, canonical, key_of, legacy_json
from quant_harness.store.codecs import (
           FILES,
           JSON,
           DirectoryCodec,
           FilesCodec,
           JsonCodec,
           TensorCodec,
           Tensors,
)

__all__ = ["FILES", "JSON", "META", "ActivationCache", "Artefact", "ArtefactStore", "Codec",
           "DirectoryCodec", "Entry", "FilesCodec", "JsonCodec", "TensorCodec", "Tensors", "canonical", "key_of",
           "legacy_json"]
