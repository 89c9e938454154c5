"""The contract between the engine and the cell kinds: what a kind's compute function may ask of the runner.

Every ``"module:function"`` of the kind registry (quant_harness.study.kinds) takes a ``CellRunner`` and a Cell and
returns a CellResult. quant_harness.runner.StudyRunner is the one implementation (mypy checks it structurally, in
runner.py); tests may pass any object with these members. Written as ``typing.Protocol`` (as xdist's
``scheduler/protocol.py`` does), so the cell modules depend on this contract and not on runner.py, which imports all
of them. Nothing is imported at run time: the types named here are read by the type checker only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch import Tensor

    from quant_harness.extract.datasets import ContrastSet
    from quant_harness.models.precision import LoadedModel
    from quant_harness.store.activations import Entry
    from quant_harness.study.spec import Cell, Study, TraitSpec


class TensorCache(Protocol):
    """The disk cache of tensors (activations, rollouts, SAE residuals) as cells use it."""

    @property
    def root(self) -> Path:
        """Its folder; the JSON caches of steering, benchmarks, judges and SAE dictionaries live under it too."""
        ...

    def get_or_build(self, namespace: str, components: dict[str, Any],
                     build: Callable[[], tuple[dict[str, Tensor], dict[str, Any]]]) -> Entry:
        """The entry keyed by ``components`` under ``namespace``; missing, ``build`` makes its tensors and info
        once (the first worker builds under a lock, the others wait and read it)."""
        ...


class ModelSource(Protocol):
    """Resident models as cells use them (quant_harness.runner.ModelPool)."""

    @property
    def model_dir(self) -> Path:
        """The model store: the embedded checkpoint, GPTQ quantizations and the local judge's checkpoint."""
        ...

    def get(self, model: str, precision: str) -> LoadedModel:
        """The study's ``model`` loaded at ``precision``: loaded at most once per worker while resident."""
        ...


class CellRunner(Protocol):
    """What a cell computation needs from the engine: the study, the caches, models, data and shared records."""

    @property
    def study(self) -> Study:
        """The study the cell belongs to: its settings, cards, traits, bands and reference precision."""
        ...

    @property
    def cache(self) -> TensorCache:
        """The tensor cache; cells that cache JSON results put them under ``cache.root``."""
        ...

    @property
    def pool(self) -> ModelSource:
        """Resident models; a cell asks for one only when a cache misses, so a warm run loads none."""
        ...

    def contrast(self, trait: TraitSpec) -> ContrastSet:
        """The trait's contrast examples, read and validated once per process."""
        ...

    def precision_settings(self, model: str, precision: str) -> dict[str, Any]:
        """The quantization settings of a precision, as every cache key and record states them."""
        ...

    def key_components(self, model: str, precision: str) -> dict[str, Any]:
        """What every cached artefact built from the model at the precision keys on (quant_harness.models.identity:
        weights identity, precision settings, device, unquantized dtype, batch size where it matters, versions)."""
        ...

    def activations(self, model: str, precision: str, trait: TraitSpec) -> Entry:
        """Contrast activations (``pos``, ``neg``: ``[examples, layers, d_model]``) of a trait at a precision, from
        the cache or extracted once; ``meta["components"]["layers"]`` names the layers."""
        ...

    def vectors(self, model: str, precision: str, trait: TraitSpec, method: str) -> dict[int, Tensor]:
        """One vector per layer by ``method`` (``mean_diff``, ``probe``, ``pca`` or ``file``), from the cached
        activations."""
        ...

    def provenance(self, cell: Cell, trait: TraitSpec) -> dict[str, Any]:
        """Where a trait cell's figures come from: versions, commit, dataset and extraction, precision settings."""
        ...
