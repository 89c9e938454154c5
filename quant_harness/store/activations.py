"""The activation cache: extract once per (model, precision, data, position, settings), reuse forever.

A typed face of the artefact store (quant_harness.store.artefacts) for named tensors: activations, PV rollouts
(packed as uint8 tensors) and SAE residuals. A namespace ``activations/<model>/<precision>`` is the store's kind
(its first segment) and the folder under it. Tensors are stored at half precision and upcast to float32 on read;
locking, key checks, atomic writes and hit/miss counting are the store's.

Contrast activations (``covering``) are keyed by what determines their values, not by the layers a study asks for:
an entry records its layers and its examples (count and per-example hashes), and a request for a subset of layers,
or for a prefix of the examples of a dataset that grew by appending, is served by slicing a cached superset with no
model work. Entries of the layout that keyed on the layer list are still found this way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant_harness._util import counters
from quant_harness.store.artefacts import META, Artefact, ArtefactStore, canonical, key_of
from quant_harness.store.codecs import TENSORS_FILE, TensorCodec, Tensors

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["META", "TENSORS", "ActivationCache", "Entry", "entry_examples", "entry_layers", "key_of"]

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


_NOT_VALUES = ("layers", "dataset")
"""Components that say which slice of the values an entry holds rather than how they were computed: the layer list
(of the old layout) and the dataset's content hash (a grown dataset's entry holds the smaller one's rows)."""
Build = Callable[[list[int]], tuple[dict[str, "Tensor"], dict[str, Any]]]


def entry_layers(meta: Mapping[str, Any]) -> list[int]:
    """The layers an entry holds, in its tensors' order (recorded in ``info``; the old layout keyed on them)."""
    info = meta.get("info") or {}
    layers = info.get("layers") if isinstance(info, dict) else None
    if layers is None:
        layers = (meta.get("components") or {}).get("layers")
    return [int(x) for x in layers] if isinstance(layers, list) else []


def entry_examples(meta: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per side, the hashes of the examples an entry's rows are (empty when rows are not examples, e.g. rollouts)."""
    info = meta.get("info") or {}
    ex = info.get("examples") if isinstance(info, dict) else None
    if not isinstance(ex, dict):
        return {}
    return {side: list(v["hashes"]) for side, v in ex.items()
            if isinstance(v, dict) and isinstance(v.get("hashes"), list)}


def _base(components: Mapping[str, Any]) -> Any:
    return canonical({k: v for k, v in components.items() if k not in _NOT_VALUES})


def _rows_for(meta: Mapping[str, Any], dataset: Any, examples: Mapping[str, Sequence[str]] | None
              ) -> dict[str, int] | None:
    """Rows of a candidate entry that serve the request: all of them for the same dataset, a prefix per side when
    the request's examples open the entry's, else None."""
    if (meta.get("components") or {}).get("dataset") == dataset:
        return {}
    stored = entry_examples(meta)
    if not examples or not stored or set(examples) - set(stored):
        return None
    for side, hashes in examples.items():
        if list(stored[side][:len(hashes)]) != list(hashes) or len(hashes) > len(stored[side]):
            return None
    return {side: len(hashes) for side, hashes in examples.items()}


def _view(a: Artefact[Tensors], components: Mapping[str, Any], layers: list[int], rows: Mapping[str, int]) -> Entry:
    """The request's slice of a cached entry: its layers in the request's order, its first rows per side; the
    meta names the request's components (with ``layers``, as readers expect) and where it was served from."""
    stored = entry_layers(a.meta)
    pick = [stored.index(layer) for layer in layers]
    tensors = {}
    for name, t in a.value.tensors.items():
        if name in rows:
            t = t[:rows[name]]
        if pick != list(range(len(stored))) and t.dim() == 3 and t.shape[1] == len(stored):
            t = t[:, pick]
        tensors[name] = t
    info = dict(a.meta.get("info") or {})
    info["layers"] = list(layers)
    for side, n in rows.items():
        info[f"n_{side}"] = n
        if isinstance(info.get("examples"), dict) and side in info["examples"]:
            info["examples"] = {**info["examples"], side: {"n": n, "hashes": info["examples"][side]["hashes"][:n]}}
    meta = {**a.meta, "components": {**canonical(components), "layers": list(layers)}, "info": info}
    if rows or pick != list(range(len(stored))) or a.key != key_of(components):
        meta["served_from"] = {"key": a.key, "layers": stored, "rows": dict(rows)}
    return Entry(a.key, a.path, tensors, meta)


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

    def covering(self, namespace: str, components: dict[str, Any], layers: Sequence[int], build: Build,
                 examples: Mapping[str, Sequence[str]] | None = None) -> Entry:
        """Contrast activations at ``layers``, from an entry that holds them or extracted once.

        ``components`` are what determine the values (never the layer list). ``examples`` are the per-side example
        hashes when row i of a side is example i (prompt datasets), so a prefix of a grown dataset is served; the
        entry records them. A hit from a superset is counted like any hit and runs no ``build``; a miss builds the
        requested layers plus any an entry under the same key already held, so the entry only ever grows.
        """
        kind, under = _split(namespace)
        want = [int(x) for x in layers]
        exact = self.store.get(kind, components, _CODEC, under=under)
        if exact is not None and set(want) <= set(entry_layers(exact.meta)):
            counters.add_cache(kind, hit=True)
            return _view(exact, components, want, {})
        served = self._superset(kind, under, components, want, examples)
        if served is not None:
            counters.add_cache(kind, hit=True)
            return served
        extract = sorted(set(want) | set(entry_layers(exact.meta) if exact is not None else []))

        def make() -> Tensors:
            tensors, info = build(extract)
            recorded: dict[str, Any] = {}
            for side, t in tensors.items():
                hashes = list((examples or {}).get(side, []))
                recorded[side] = {"n": int(t.shape[0]), **({"hashes": hashes} if len(hashes) == t.shape[0] else {})}
            return Tensors(tensors, {**info, "layers": extract, "examples": recorded})

        built = self.store.get_or_build(kind, components, make, _CODEC, under=under,
                                        accept=lambda a: set(want) <= set(entry_layers(a.meta)))
        return _view(built, components, want, {})

    def find(self, namespace: str, components: Mapping[str, Any], layers: Sequence[int],
             examples: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any] | None:
        """Which entry would serve a request, from ``meta.json`` alone (no tensor is read): its ``path`` under the
        root, ``layers``, ``examples`` (rows per side) and ``reuse`` ("exact", "superset"); None: it would be
        extracted. The smallest covering entry (fewest layers, then rows) is the one ``covering`` reads."""
        kind, under = _split(namespace)
        found = self._candidates(kind, under, components, [int(x) for x in layers], examples)
        if not found:
            return None
        meta, rows = found[0]
        exact = meta["key"] == key_of(components) and entry_layers(meta) == [int(x) for x in layers] and not rows
        return {"path": Path(kind, under, meta["key"]).as_posix(), "layers": entry_layers(meta),
                "examples": {side: int(s[0]) for side, s in (meta.get("shapes") or {}).items() if s},
                "rows": rows, "reuse": "exact" if exact else "superset"}

    def _candidates(self, kind: str, under: str, components: Mapping[str, Any], layers: list[int],
                    examples: Mapping[str, Sequence[str]] | None) -> list[tuple[dict[str, Any], dict[str, int]]]:
        """Entries computed the same way whose layers and examples cover the request, smallest first."""
        base, dataset = _base(components), canonical(components).get("dataset")
        found: list[tuple[int, int, dict[str, Any], dict[str, int]]] = []
        for meta in self._metas(kind, under):
            if _base(meta.get("components") or {}) != base or not set(layers) <= set(entry_layers(meta)):
                continue
            rows = _rows_for(meta, dataset, examples)
            if rows is not None:
                n = sum(int(s[0]) for s in (meta.get("shapes") or {}).values() if s)
                found.append((len(entry_layers(meta)), n, meta, rows))
        return [(meta, rows) for _, _, meta, rows in sorted(found, key=lambda f: (f[0], f[1]))]

    def _superset(self, kind: str, under: str, components: Mapping[str, Any], layers: list[int],
                  examples: Mapping[str, Sequence[str]] | None) -> Entry | None:
        """A sound covering entry as the request's slice (the first of ``_candidates`` that reads back whole)."""
        for meta, rows in self._candidates(kind, under, components, layers, examples):
            a = self.store.get(kind, meta["components"], _CODEC, under=under)
            if a is not None:
                return _view(a, components, layers, rows)
        return None

    def _metas(self, kind: str, under: str) -> list[dict[str, Any]]:
        """The readable ``meta.json`` of every entry folder in a namespace (checked in full only once chosen)."""
        folder = self.store.root.joinpath(kind, *Path(under).parts)
        out = []
        for f in sorted(folder.glob(f"*/{META}")) if folder.is_dir() else []:
            if f.parent.name.startswith("."):
                continue
            try:
                meta = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if (isinstance(meta, dict) and meta.get("key") == f.parent.name
                    and isinstance(meta.get("components"), dict)
                    and meta.get("codec", "tensors" if meta.get("schema") == 1 else None) == _CODEC.name):
                out.append(meta)
        return out

    def entries(self) -> list[dict[str, Any]]:
        """Every tensor entry with its size and metadata summary (what the planner matches warm groups against),
        with the layers and example counts it holds."""
        out = self.store.entries(codec=_CODEC.name)
        for e in out:
            try:
                meta = json.loads((self.root / e["path"] / META).read_text())
            except (OSError, json.JSONDecodeError):
                meta = {}
            info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
            e["layers"] = entry_layers(meta)
            e["examples"] = {side: int(v.get("n", 0)) for side, v in (info.get("examples") or {}).items()
                             if isinstance(v, dict)} or {k[2:]: v for k, v in info.items()
                                                         if k in ("n_pos", "n_neg") and isinstance(v, int)}
            e["example_hashes"] = entry_examples(meta)
        return out

    def prune(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Delete the tensor entries for which ``keep`` is False; return what was deleted."""
        return self.store.prune(keep, codec=_CODEC.name)
