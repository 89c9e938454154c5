"""Study files for the harness's own tests: one writer of ``[study]``, ``[models.<name>]`` and ``[[traits]]`` tables,
so that tests state only the keys they are about and a change of the study format is made in one place."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


def toml_value(value: object) -> str:
    """A TOML literal for the values study files hold: strings (JSON quoting is valid TOML basic-string quoting),
    booleans, numbers and lists of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {type(value).__name__} {value!r}")


def _table(header: str, keys: Mapping[str, object]) -> str:
    return "\n".join([header, *(f"{k} = {toml_value(v)}" for k, v in keys.items())]) + "\n"


def study_text(study: Mapping[str, object], models: Mapping[str, str],
               traits: Sequence[Mapping[str, object]] = ()) -> str:
    """A study file: the ``[study]`` keys, one ``[models.<name>]`` table per model naming its card, then one
    ``[[traits]]`` table per trait, in that order (tests append further tables after it)."""
    parts = [_table("[study]", study), *(_table(f"[models.{name}]", {"card": card}) for name, card in models.items()),
             *(_table("[[traits]]", t) for t in traits)]
    return "\n".join(parts)
