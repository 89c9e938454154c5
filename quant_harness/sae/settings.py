"""The study's ``[sae]`` table: layers, texts, top-k and the dictionaries whose feature fidelity is measured.

```toml
[sae]
layers = [12]                       # block outputs (activations.LAYER_CONVENTION)
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
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant_harness.errors import StudyError
from quant_harness.sae.bundle import LAYOUTS
from quant_harness.sae.train import TrainSettings

REPO = Path(__file__).resolve().parent.parent.parent
_NAME = re.compile(r"^[a-z0-9_]+$")
_KEYS: dict[str, Any] = {"layers": list, "texts": str, "top_k": int, "dictionaries": dict}
_TRAIN_KEYS: dict[str, Any] = {"features": int, "steps": int, "batch_size": int, "lr": (int, float),
                               "l1": (int, float), "seed": int}
_FILE_KEYS: dict[str, Any] = {"path": str, "layout": str, "models": list}


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
    layers: tuple[int, ...]
    texts: Path
    top_k: int
    dictionaries: tuple[Dictionary, ...]


def _typed(path: Path, key: str, value: object, typ: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise StudyError(path, key, value, f"a {names}")


def _resolve(p: str, root: Path) -> Path:
    path = Path(os.path.expandvars(p)).expanduser()
    return path if path.is_absolute() else root / path


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
        _typed(path, f"{where}.{key}", value, keys[key])
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
    return Dictionary(name, path=_resolve(table["path"], root), layout=layout, models=tuple(fit))


def sae_settings(study: Any) -> SaeSettings:
    """Validate ``[sae]``; every problem is a StudyError naming file, key, value and expectation."""
    path = study.path
    table = study.extra.get("sae", {})
    _typed(path, "sae", table, dict)
    for key, value in table.items():
        if key not in _KEYS:
            raise StudyError(path, f"sae.{key}", value, f"one of {', '.join(sorted(_KEYS))}")
        _typed(path, f"sae.{key}", value, _KEYS[key])
    n_layers = min(c.layers for c in study.cards.values())
    layers = table.get("layers", [min(12, n_layers - 1)])
    if not layers or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n_layers for v in layers):
        raise StudyError(path, "sae.layers", layers, f"a non-empty list of layer indices in 0..{n_layers - 1}")
    top_k = table.get("top_k", 10)
    if top_k < 1:
        raise StudyError(path, "sae.top_k", top_k, "a positive integer")
    texts = _resolve(table.get("texts", "fixtures/sae/texts.json"), REPO)
    raw = table.get("dictionaries", {})
    if not raw:
        raise StudyError(path, "sae.dictionaries", raw, "at least one [sae.dictionaries.<name>] table")
    dicts = tuple(_dictionary(path, name, t, REPO, set(study.cards)) for name, t in sorted(raw.items()))
    return SaeSettings(tuple(sorted(set(layers))), texts, top_k, dicts)


def cell_names(study: Any, model: str) -> list[str]:
    """The id parts after model-precision: ``sae_{layer}-{dictionary}``, layers then dictionaries, sorted."""
    if "sae" not in study.extra:
        return []
    s = sae_settings(study)
    return [f"sae_{layer}-{d.name}" for layer in s.layers for d in s.dictionaries if not d.models or model in d.models]
