"""One way to check a study table: known keys, value types, paths. Every failure is a StudyError that names the
file, the key, the value and what was expected, in words (``expected a list``, never a Python type repr)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant_harness.errors import StudyError

Expected = type | tuple[type, ...]

_NAMES: dict[type, str] = {
    bool: "boolean (true or false)", int: "integer", float: "number", str: "string", list: "list", dict: "table",
}


def describe(typ: Expected) -> str:
    """``a list``, ``an integer``, ``a number`` (int or float), ``a string or list``."""
    types = (typ,) if isinstance(typ, type) else tuple(typ)
    if set(types) == {int, float}:
        return "a number"
    words = " or ".join(_NAMES.get(t, t.__name__) for t in types)
    return ("an " if words[0] in "aeiou" else "a ") + words


def expect(path: object, key: str, value: object, typ: Expected) -> None:
    """Raise unless ``value`` is of ``typ``; a bool is never taken for a number."""
    types = (typ,) if isinstance(typ, type) else tuple(typ)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise StudyError(path, key, value, describe(typ))


def check_table(path: object, where: str, table: object, keys: Mapping[str, Expected]) -> dict[str, Any]:
    """``table`` must be a table whose keys are all in ``keys`` and whose values have their types."""
    if not isinstance(table, dict):
        raise StudyError(path, where, table, f"a [{where}] table")
    for key, value in table.items():
        if key not in keys:
            raise StudyError(path, f"{where}.{key}", value, f"one of {', '.join(sorted(keys))}")
        expect(path, f"{where}.{key}", value, keys[key])
    return table


def resolve(value: str, root: Path) -> Path:
    """Expand ``$VARS`` and ``~`` (data locations differ per machine), then resolve against ``root``."""
    p = Path(os.path.expandvars(value)).expanduser()
    return p if p.is_absolute() else root / p


@dataclass(frozen=True)
class SectionContext:
    """What a section parser may know of the rest of the study, parsed before it: plain data, so that the
    section modules (steer, bench, sae, judge, report) never import the study package that calls them."""

    path: Path
    """The study file, for messages."""
    root: Path
    """Where relative paths resolve (``[study] root``, default the study file's folder)."""
    n_layers: int
    """Layers of the study's shallowest model."""
    models: tuple[str, ...]
    traits: tuple[tuple[str, tuple[int, ...] | None], ...]
    """(trait key, explicit layers or None for all) of every trait, in file order."""
    check_data: bool = True
    """Whether the files a section names are checked now (off for ``--quant-plan``, which runs where they are not)."""

    @property
    def trait_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.traits)
