"""The files a study names, checked when it loads: what can be known before any model loads is a StudyError then
(a usage error, exit code 4), never an error inside every cell after minutes of extraction.

Checked here: a card's local checkpoint (it exists; its ``config.json`` agrees with the card's layers and hidden
size, as ``models.precision.check_config`` checks every loaded checkpoint), a local GPTQ checkpoint the same way,
external vectors of method ``file`` in safetensors (tensor names, shapes against each model's layers and width,
floating dtype, finite non-zero rows; read with numpy, no torch), SAE bundle folders (files, tensor names and
orientation from the safetensors headers). Once collection has selected the cells (``check_cell_files``, called by
the plugin): held-out A/B files (present, usable, at least two questions, no question shared with the trait's
training data), judge prompts of judged steering cells, and the refusal prompts file. Torch-free: a study loads
before a worker pins its GPUs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from quant_harness import data
from quant_harness.errors import DatasetError, StudyError
from quant_harness.extract import datasets
from quant_harness.models.cards import ModelCard
from quant_harness.models.precision import check_config
from quant_harness.study.spec import Cell, Study, TraitSpec

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
DECODER_KEYS = ("W_dec", "w_dec", "decoder", "W_D")
"""Names ``extract.methods.load_vectors`` reads an SAE decoder by."""
SAE_REQUIRED = ("W_enc", "b_enc", "W_dec", "b_dec")
SAE_OPTIONAL = ("W_skip", "threshold")
"""The tensors of a bundle layer file (``sae.bundle``)."""


def _local(spec: str) -> bool:
    """Whether a card's ``gptq`` names a local folder rather than a hub id (``org/name``)."""
    return spec.startswith(("/", ".", "~"))


def _check_checkpoint(card: ModelCard, key: str, folder: Path) -> None:
    if not folder.exists():
        raise StudyError(card.source_file or card.name, key, str(folder),
                         "an existing local checkpoint folder (with config.json)")
    config = folder / "config.json"
    if not config.is_file():
        return
    try:
        raw = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StudyError(config, "<json>", str(e), "a checkpoint config.json") from e
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    check_config(card, SimpleNamespace(**text), str(folder))


def check_card(card: ModelCard) -> None:
    """A card's local checkpoints: its ``path`` and a local ``gptq`` folder exist and agree with the card."""
    if card.path:
        _check_checkpoint(card, "path", Path(card.path))
    if card.gptq not in ("none", "quantize") and _local(card.gptq):
        _check_checkpoint(card, "gptq", Path(card.gptq).expanduser())


# --- vectors of method "file" ---------------------------------------------------------------------------------


def _header(path: Path, study: Path, key: str) -> dict[str, tuple[list[int], str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise StudyError(study, key, str(path), f"a readable safetensors file ({type(e).__name__}: {e})") from e


def _rows(path: Path, name: str, dtype: str) -> Any:
    """The tensor's values as float64 numpy, or None where numpy cannot hold its dtype (bf16: checked at run time)."""
    if dtype == "BF16":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return f.get_tensor(name).astype("float64")


def _layer_tensors(header: dict[str, tuple[list[int], str]], n_layers: int) -> dict[int, tuple[str, int | None]]:
    """Layer -> (tensor name, row or None) in load_vectors' layouts; empty when neither layout fits."""
    out: dict[int, tuple[str, int | None]] = {}
    for name, (shape, _) in header.items():
        tail = name.rsplit("_", 1)[-1].rsplit(".", 1)[-1]
        if tail.isdigit() and len(shape) == 1:
            out[int(tail)] = (name, None)
    if out:
        return out
    mats = [(n, s) for n, (s, _) in header.items() if len(s) == 2]
    if len(mats) == 1 and mats[0][1][0] in (n_layers, n_layers + 1):
        shift = 1 if mats[0][1][0] == n_layers + 1 else 0
        return {L: (mats[0][0], L + shift) for L in range(n_layers)}
    return {}


def check_vectors(study_path: Path, where: str, trait: TraitSpec, cards: Sequence[ModelCard]) -> None:
    """External vectors in safetensors: every layer the trait reads, for every model, is a finite non-zero
    floating ``[hidden_size]`` vector (``.pt`` files need torch to read: they are checked when a cell reads them)."""
    path = trait.vectors
    if path is None or path.suffix != ".safetensors":
        return
    key = f"{where}.vectors"
    header = _header(path, study_path, key)
    if not header:
        raise StudyError(study_path, key, str(path), "a file holding at least one tensor")
    for name, (_, dtype) in header.items():
        if dtype not in FLOAT_DTYPES:
            raise StudyError(study_path, key, str(path), f"floating-point vectors; tensor {name!r} is {dtype}")
    for card in cards:
        layers = trait.layers_for(card)
        if trait.sae_features:
            _check_sae_rows(study_path, key, path, header, trait.sae_features, card)
            continue
        found = _layer_tensors(header, card.layers)
        shapes = {k: v[0] for k, v in header.items()}
        if not found:
            raise StudyError(study_path, key, str(path),
                             f"per-layer [d] vectors keyed by layer, one [{card.layers}, d] or [{card.layers + 1}, d] "
                             f"matrix, or an SAE decoder with sae_features rows (found {shapes})")
        missing = [L for L in layers if L not in found]
        if missing:
            raise StudyError(study_path, key, str(path), f"a vector for layer {missing[0]} of {card.name} (it holds "
                                                         f"layers {sorted(found)})")
        for L in layers:
            name, row = found[L]
            width = header[name][0][-1]
            if width != card.hidden_size:
                raise StudyError(study_path, key, str(path), f"vectors of width {card.hidden_size} (hidden_size of "
                                                             f"{card.name}); tensor {name!r} is {header[name][0]}")
            values = _rows(path, name, header[name][1])
            if values is None:
                continue
            v = values if row is None else values[row]
            if not (abs(v) < float("inf")).all():
                raise StudyError(study_path, key, str(path), f"finite vectors; layer {L} ({name!r}"
                                                             f"{'' if row is None else f' row {row}'}) has NaN or inf")
            if not v.any():
                raise StudyError(study_path, key, str(path), f"non-zero vectors; layer {L} ({name!r}"
                                                             f"{'' if row is None else f' row {row}'}) is all zeros")


def _check_sae_rows(study_path: Path, key: str, path: Path, header: dict[str, tuple[list[int], str]],
                    rows: Sequence[Sequence[float]], card: ModelCard) -> None:
    for i, row in enumerate(rows):
        layer, feature = int(row[0]), int(row[1])
        name = next((k for k in (*(f"{d}.{layer}" for d in DECODER_KEYS), *DECODER_KEYS) if k in header), None)
        if name is None:
            raise StudyError(study_path, key, str(path), f"an SAE decoder ({', '.join(DECODER_KEYS)}) for "
                                                         f"sae_features[{i}]; found {', '.join(sorted(header))}")
        shape = header[name][0]
        if len(shape) != 2 or shape[1] != card.hidden_size:
            raise StudyError(study_path, key, str(path), f"a decoder [n_features, {card.hidden_size}] for "
                                                         f"{card.name}; {name!r} is {shape}")
        if not 0 <= feature < shape[0] or not 0 <= layer < card.layers:
            raise StudyError(study_path, f"{key.rsplit('.', 1)[0]}.sae_features[{i}]", list(row),
                             f"a layer in 0..{card.layers - 1} and a feature in 0..{shape[0] - 1} of {name!r}")


# --- SAE bundles ------------------------------------------------------------------------------------------------


def check_bundle(study_path: Path, where: str, folder: Path, layout: str, layers: Sequence[int],
                 card: ModelCard) -> None:
    """An SAE bundle's layer files exist and their tensors have the names and orientation ``sae.bundle`` reads
    (headers only: the values, NaN included, are checked when a cell loads the bundle)."""
    if not folder.is_dir():
        raise StudyError(study_path, f"{where}.path", str(folder), "an existing bundle folder of layer_{L}.safetensors")
    for layer in layers:
        f = folder / f"layer_{layer}.safetensors"
        if layout == "saelens" and not f.is_file() and (folder / f"layer_{layer}" / "sae_weights.safetensors").is_file():
            f = folder / f"layer_{layer}" / "sae_weights.safetensors"
        if not f.is_file():
            found = sorted(p.name for p in folder.glob("layer_*"))
            raise StudyError(study_path, f"{where}.path", str(folder),
                             f"a file layer_{layer}.safetensors for layer {layer} (found {', '.join(found) or 'none'})")
        header = {k: v[0] for k, v in _header(f, study_path, f"{where}.path").items()}
        missing = [n for n in SAE_REQUIRED if n not in header]
        unknown = sorted(n for n in header if n not in SAE_REQUIRED + SAE_OPTIONAL)
        if missing or unknown:
            raise StudyError(study_path, f"{where}.path", str(f),
                             f"tensors {', '.join(SAE_REQUIRED)} (+ optional {', '.join(SAE_OPTIONAL)}); tensor "
                             f"{(missing or unknown)[0]} {'missing' if missing else 'is not expected'}")
        n, d = (header["b_enc"] or [0])[0], card.hidden_size
        w_enc = header["W_enc"][::-1] if layout == "saelens" else header["W_enc"]
        for name, shape, want in (("W_enc", w_enc, [n, d]), ("W_dec", header["W_dec"], [n, d]),
                                  ("b_dec", header["b_dec"], [d])):
            if shape != want:
                hint = (" (it looks transposed: SAELens/GemmaScope store W_enc as [d_model, n_features]; set "
                        "layout = \"saelens\")" if name == "W_enc" and shape == [d, n] and layout != "saelens"
                        else " (it looks transposed)" if shape == [d, n] else "")
                raise StudyError(study_path, f"{where}.path", str(f),
                                 f"tensor {name} of shape {want} for {card.name} (d_model {d}); it is "
                                 f"{header[name] if name != 'W_enc' else shape}{hint}")


# --- held-out A/B questions, judge prompts, refusal prompts -------------------------------------------------------


def _user_texts(c: datasets.ContrastSet) -> set[str]:
    return {p.messages[-1][1].strip() for p in c.pos}


def check_cell_files(study: Study, selected: Sequence[Cell]) -> None:
    """What the selected cells of the steering kinds read (the plugin calls this once collection has selected them,
    so ``-k test_vector_fidelity`` never needs a held-out file): each CAA trait's held-out A/B file (present, usable,
    >= 2 questions, disjoint from its training data), judge prompts of judged cells, the refusal prompts."""
    s, root, path = study.steering, study.root or study.path.parent, study.path
    ab_traits = {c.trait for c in selected if c.kind in ("logit_diff", "transfer", "steering")}
    judged = {c.trait for c in selected if c.kind == "steering"}
    prompts_dir = data.path("judge_prompts")
    for i, trait in enumerate(study.traits):
        where = f"traits[{i}]"
        if trait.key in ab_traits and trait.methodology == "caa":
            f = s.ab_file(root, trait.key)
            key, value = ((f"steering.ab_files.{trait.key}", dict(s.ab_files)[trait.key])
                          if trait.key in dict(s.ab_files) else ("steering.ab_dir", s.ab_dir))
            if not f.is_file() and key != "steering.ab_dir":
                raise StudyError(path, key, value, f"an existing held-out A/B file (looked at {f})")
            if not f.is_file():
                raise StudyError(path, key, value,
                                 f"a folder holding {trait.key}_test.json, the held-out A/B questions of trait "
                                 f"{trait.key} (looked at {f}); write one (CAA schema) or set [steering] ab_dir")
            try:
                ab = datasets.load_caa(f)
            except DatasetError as e:
                raise StudyError(path, key, value, f"a usable held-out A/B file ({e})") from e
            if len(ab.pos) < 2:
                raise StudyError(path, key, value,
                                 f"at least 2 usable A/B questions in {f} (found {len(ab.pos)})")
            shared = sorted(_user_texts(ab) & _user_texts(datasets.load(trait.format, trait.dataset, trait.limit)))
            if shared:
                raise StudyError(path, f"{where}.dataset", str(trait.dataset),
                                 f"training data disjoint from the held-out A/B file {f} ({len(shared)} shared "
                                 f"question(s), e.g. {shared[0][:60]!r})")
        if trait.key in judged:
            has_own = trait.methodology == "pv" and datasets.load(trait.format, trait.dataset, trait.limit).eval_prompt
            if not has_own and not (prompts_dir / f"{trait.key}.txt").is_file():
                known = ", ".join(sorted(p.stem for p in prompts_dir.glob("*.txt")))
                raise StudyError(path, "steering.traits", trait.key,
                                 f"traits with a judge prompt {prompts_dir / (trait.key + '.txt')} (known: {known}), "
                                 "or leave this trait out of [steering] traits")
    if any(c.kind == "refusal" for c in selected):
        f = s.refusal_file(root)
        try:
            raw = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StudyError(path, "steering.refusal_prompts", s.refusal_prompts,
                             f"a JSON file {{harmful: [...], harmless: [...]}} ({f}: {e})") from e
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) and raw[k] for k in ("harmful",
                                                                                                "harmless")):
            raise StudyError(path, "steering.refusal_prompts", s.refusal_prompts,
                             f"non-empty lists harmful and harmless in {f}")
