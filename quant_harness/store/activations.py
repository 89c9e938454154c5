"""The activation cache: extract once per (model, precision, data, position, layers, settings), reuse forever.

A typed face of the artefact store (quant_harness.store.artefacts) for named tensors: activations, PV rollouts
(packed as uint8 tensors) and SAE residuals. A namespace ``activations/<model>/<precision>`` is the store's kind
(its first segment) and the folder under it. Tensors are stored at half precision and upcast to float32 on read;
locking, key checks, atomic writes and hit/miss counting are the store's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from quant_harness.store.artefacts import META, Artefact, ArtefactStore, key_of
from quant_harness.store.codecs import TENSORS_FILE, TensorCodec, Tensors

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["META", "TENSORS", "ActivationCache", "Entry", "key_of"]

TENSORS = TENSORS_FILE
"""The tensors' file name in an entry folder."""
_CODEC = TensorCodec()


@dataclass(frozen=True)
class Entry:
    """A validated cache entry: float32 tensors plus the metadata a user can read in meta.json."""

    key: str
    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]


def _entry(a: Artefact[Tensors]) -> Entry:
    return Entry(a.key, a.path, a.value.tensors, a.meta)


def _split(namespace: str) -> tuple[str, str]:
    kind, _, under = namespace.partition("/")
    return kind, under


class ActivationCache:
    """Entries ``<root>/<namespace>/<key>/{tensors.safetensors, meta.json}`` in the artefact store at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.store = ArtefactStore(self.root)

    def get(self, namespace: str, components: dict[str, Any]) -> Entry | None:
        """The entry for ``components``, or None; a damaged entry is reported, removed and treated as a miss."""
        kind, under = _split(namespace)
        found = self.store.get(kind, components, _CODEC, under=under)
        return _entry(found) if found is not None else None

    def get_or_build(self, namespace: str, components: dict[str, Any],
                     build: Callable[[], tuple[dict[str, Tensor], dict[str, Any]]]) -> Entry:
        """Return the entry, building it under a lock when missing: the first worker builds, the others wait."""
        kind, under = _split(namespace)
        return _entry(self.store.get_or_build(kind, components, lambda: Tensors(*build()), _CODEC, under=under))

    def entries(self) -> list[dict[str, Any]]:
        """Every tensor entry with its size and metadata summary (what the planner matches warm groups against)."""
        return self.store.entries(codec=_CODEC.name)

    def prune(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Delete the tensor entries for which ``keep`` is False; return what was deleted."""
        return self.store.prune(keep, codec=_CODEC.name)
