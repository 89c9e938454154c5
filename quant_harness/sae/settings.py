"""The study's ``[sae]`` table: layers, texts, top-k and the dictionaries whose feature fidelity is measured.

```toml
[sae]
layers = [12]                       # block outputs (activations.LAYER_CONVENTION); 0.4 = 40% of each model's depth
texts = "fixtures/sae/texts.json"   # {"train": [...], "eval": [...]}; eval texts are encoded by the cells
top_k = 10
[sae.dictionaries.tiny]             # trained here on the reference precision's residuals of the train texts
features = 1024
steps = 300
[sae.dictionaries.scope]            # an existing bundle folder of layer_{L}.safetensors
path = "$SAE_DIR/gemma-scope-2b"
layout = "saelens"
models = ["gemma2-2b"]
```
Cells: ``{model}-{precision}-sae_{layer}-{dictionary}`` for every model, non-reference precision, layer, dictionary.
Paths (``texts``, a dictionary's ``path``) are study data: they resolve against the study's ``root``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quant_harness._util import depth
from quant_harness._util.depth import Layer
from quant_harness._util.validate import SectionContext, check_table, expect, resolve
from quant_harness.errors import StudyError

LAYOUTS = ("features_first", "saelens")
"""How a bundle's tensors are oriented on disk (quant_harness.sae.bundle reads both)."""
_NAME = re.compile(r"^[a-z0-9_]+$")
_KEYS: dict[str, Any] = {"layers": list, "texts": str, "top_k": int, "dictionaries": dict}
_TRAIN_KEYS: dict[str, Any] = {"features": int, "steps": int, "batch_size": int, "lr": (int, float),
                               "l1": (int, float), "seed": int}
_FILE_KEYS: dict[str, Any] = {"path": str, "layout": str, "models": list}


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters; all of them are part of the dictionary's cache key."""

    n_features: int = 1024
    steps: int = 300
    batch_size: int = 256
    lr: float = 2e-3
    l1: float = 3.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Dictionary:
    """A named dictionary: trained here (``train`` set) or read from ``path``."""

    name: str
    train: TrainSettings | None = None
    path: Path | None = None
    layout: str = "features_first"
    models: tuple[str, ...] = ()
    """Models it fits (empty: every model of the study)."""


@dataclass(frozen=True)
class SaeSettings:
    layers: tuple[Layer, ...]
    """As the study wrote them: block indices (int) or fractions of each model's depth (float)."""
    texts: Path
    top_k: int
    dictionaries: tuple[Dictionary, ...]

    def layers_for(self, n_layers: int) -> tuple[int, ...]:
        """The SAE layers of a model of ``n_layers`` blocks, sorted (``round(f * n_layers)`` for a fraction f)."""
        return tuple(sorted(depth.resolve_all(self.layers, n_layers)))


def _dictionary(path: Path, name: str, table: object, root: Path, models: set[str]) -> Dictionary:
    where = f"sae.dictionaries.{name}"
    if not _NAME.match(name):
        raise StudyError(path, where, name, "a name of lowercase letters, digits and _ (it is part of cell ids)")
    if not isinstance(table, dict):
        raise StudyError(path, where, table, "a [sae.dictionaries.<name>] table")
    keys = _FILE_KEYS if "path" in table else _TRAIN_KEYS
    for key, value in table.items():
        if key not in keys:
            raise StudyError(path, f"{where}.{key}", value, f"one of {', '.join(sorted(keys))}"
                             + (" (a dictionary with path is read, not trained)" if "path" in table else ""))
        expect(path, f"{where}.{key}", value, keys[key])
    if "path" not in table:
        for key in ("features", "steps", "batch_size"):
            if key in table and table[key] < 1:
                raise StudyError(path, f"{where}.{key}", table[key], "a positive integer")
        for key in ("lr", "l1"):
            if key in table and not table[key] > 0:
                raise StudyError(path, f"{where}.{key}", table[key], "a positive number")
        base = TrainSettings()
        train = TrainSettings(n_features=table.get("features", base.n_features), steps=table.get("steps", base.steps),
                              batch_size=table.get("batch_size", base.batch_size), lr=float(table.get("lr", base.lr)),
                              l1=float(table.get("l1", base.l1)), seed=table.get("seed", base.seed))
        return Dictionary(name, train=train)
    layout = table.get("layout", "features_first")
    if layout not in LAYOUTS:
        raise StudyError(path, f"{where}.layout", layout, f"one of {', '.join(LAYOUTS)}")
    fit = table.get("models", [])
    for i, m in enumerate(fit):
        if m not in models:
            raise StudyError(path, f"{where}.models[{i}]", m, f"a model of the study ({', '.join(sorted(models))})")
    return Dictionary(name, path=resolve(table["path"], root), layout=layout, models=tuple(fit))


def parse(ctx: SectionContext, table: object) -> SaeSettings | None:
    """Validate ``[sae]`` (absent: None, no SAE cells); every problem is a StudyError naming file, key and value."""
    if table is None:
        return None
    path, n_layers = ctx.path, ctx.n_layers
    check_table(path, "sae", table, _KEYS)
    assert isinstance(table, dict)
    layers = depth.parse_layers(path, "sae.layers", table.get("layers", [depth.DEFAULT_FRACTION]), n_layers)
    top_k = table.get("top_k", 10)
    if top_k < 1:
        raise StudyError(path, "sae.top_k", top_k, "a positive integer")
    texts = resolve(table.get("texts", "fixtures/sae/texts.json"), ctx.root)
    raw = table.get("dictionaries", {})
    if not raw:
        raise StudyError(path, "sae.dictionaries", raw, "at least one [sae.dictionaries.<name>] table")
    dicts = tuple(_dictionary(path, name, t, ctx.root, set(ctx.models)) for name, t in sorted(raw.items()))
    return SaeSettings(tuple(dict.fromkeys(layers)), texts, top_k, dicts)


def cell_names(settings: SaeSettings | None, model: str, n_layers: int) -> list[str]:
    """The id parts after model-precision: ``sae_{layer}-{dictionary}``, layers then dictionaries, sorted."""
    if settings is None:
        return []
    return [f"sae_{layer}-{d.name}" for layer in settings.layers_for(n_layers) for d in settings.dictionaries
            if not d.models or model in d.models]
