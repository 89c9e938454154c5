"""Study files (cases/studies/*.toml) -> a validated Study. Every table is checked here, when the study loads.

A problem anywhere (an unknown key in ``[judge]``, a trait whose layers do not exist, an empty dataset) is a
StudyError naming file, key, value and expectation, which the plugin turns into a usage error at configure time:
before any model loads, never inside a cell.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomllib

from quant_harness import data
from quant_harness._util.validate import SectionContext, expect, resolve
from quant_harness.bench import settings as bench_settings
from quant_harness.errors import DatasetError, StudyError
from quant_harness.extract import datasets
from quant_harness.extract.positions import parse_position
from quant_harness.judge import settings as judge_settings
from quant_harness.metrics.verdicts import DEFAULT_BANDS, FAIL_ON, Band
from quant_harness.models.cards import ModelCard, load_card
from quant_harness.models.registry import PRECISIONS
from quant_harness.report import gates as gate_settings
from quant_harness.report import settings as baseline_settings
from quant_harness.sae import settings as sae_settings
from quant_harness.steer import settings as steer_settings
from quant_harness.study import files
from quant_harness.study.spec import FORMATS, METHODOLOGIES, METHODS, Study, TraitSpec
from quant_harness.study.trait_options import trait_options

SECTIONS: dict[str, Callable[[SectionContext, object], Any]] = {
    "baselines": baseline_settings.parse,
    "judge": judge_settings.parse,
    "steering": steer_settings.parse,
    "benchmarks": bench_settings.parse,
    "sae": sae_settings.parse,
    "gates": gate_settings.parse,
}
"""Optional top-level tables, each parsed by the module that owns it (one parser, called only from here)."""

_TOP_KEYS = {"study", "models", "traits", "thresholds"}
_STUDY_KEYS = {
    "name": str, "reference": str, "precisions": list, "methods": list, "fail_on": str, "batch_size": int,
    "seed": int, "nf4_compute_dtype": str, "cards_dir": str, "calibration": str, "probe_val_fraction": float,
    "massive_dims_k": int, "root": str, "fail_on_inconclusive": bool, "bootstrap_n": int, "ci_level": float,
    "replay": bool,
}
_TRAIT_KEYS = {
    "methodology": str, "name": str, "dataset": str, "format": str, "position": str, "layers": (str, list),
    "methods": list, "limit": int, "max_new_tokens": int, "n_per_question": int, "temperature": (int, float),
    "replay": bool, "vectors": str, "sae_features": list, "judge_filter": (int, float),
}


def _check_dataset(path: Path, where: str, value: str, trait: TraitSpec) -> None:
    """Read the trait's dataset now: an empty or malformed one is a usage error before any model loads."""
    try:
        data = datasets.load(trait.format, trait.dataset, trait.limit)
    except DatasetError as e:
        raise StudyError(path, f"{where}.dataset", value, f"a usable {trait.format} dataset ({e})") from e
    if not data.pos or not data.neg:
        raise StudyError(path, f"{where}.dataset", value, f"examples on both sides (found {len(data.pos)} positive, "
                                                          f"{len(data.neg)} negative)")


def _layers(path: Path, key: str, value: object, card_layers: int) -> tuple[int, ...] | None:
    if value == "all":
        return None
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        bad = [v for v in value if not 0 <= v < card_layers]
        if bad:
            raise StudyError(path, key, bad[0], f"a layer index in 0..{card_layers - 1}")
        return tuple(sorted(set(value)))
    raise StudyError(path, key, value, '"all" or a non-empty list of layer indices')


def load(path: str | Path, *, check_data: bool = True) -> Study:
    """Parse and validate a study file; every problem is a StudyError naming file, key, value, expectation.

    Relative paths in the file resolve against ``study.root`` (itself relative to the study file; default: the
    study file's folder), after ``$VARS`` are expanded, so one file works from any working directory.
    ``check_data=False`` skips the existence check of datasets: ``--quant-plan`` runs where the data is not.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise StudyError(path, "--quant-study", str(path), "an existing study file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise StudyError(path, "<toml>", str(e), "valid TOML") from e
    known_top = _TOP_KEYS | set(SECTIONS)
    for key in raw:
        if key not in known_top:
            raise StudyError(path, key, "...", f"a top-level table among {', '.join(sorted(known_top))}")
    head = raw.get("study", {})
    root = (path.parent / head["root"]).resolve() if isinstance(head.get("root"), str) else path.parent
    for key, value in head.items():
        if key not in _STUDY_KEYS:
            raise StudyError(path, f"study.{key}", value, f"one of {', '.join(sorted(_STUDY_KEYS))}")
        typ = _STUDY_KEYS[key]
        if typ is float and isinstance(value, int):
            value = float(value)
        expect(path, f"study.{key}", value, typ)

    default_precisions = head.get("precisions", ["fp16", "nf4", "int8", "gptq"])
    reference = head.get("reference", default_precisions[0] if default_precisions else "fp16")
    for i, p in enumerate(default_precisions):
        if p not in PRECISIONS:
            raise StudyError(path, f"study.precisions[{i}]", p, f"one of {', '.join(PRECISIONS)}")
    if reference not in PRECISIONS:
        raise StudyError(path, "study.reference", reference, f"one of {', '.join(PRECISIONS)}")
    methods = head.get("methods", ["mean_diff", "probe"])
    for i, m in enumerate(methods):
        if m not in METHODS:
            raise StudyError(path, f"study.methods[{i}]", m, f"one of {', '.join(METHODS)}")
    if head.get("bootstrap_n", 1000) < 1:
        raise StudyError(path, "study.bootstrap_n", head["bootstrap_n"], "a positive number of bootstrap replicates")
    if not 0.0 < head.get("ci_level", 0.95) < 1.0:
        raise StudyError(path, "study.ci_level", head["ci_level"], "a confidence level between 0 and 1, e.g. 0.95")
    fail_on_name = head.get("fail_on", "broken")
    if fail_on_name not in FAIL_ON:
        raise StudyError(path, "study.fail_on", fail_on_name, f"one of {', '.join(FAIL_ON)}")
    # an explicit cards_dir is the only place looked at; by default a card is the study root's own
    # fixtures/model_cards/<card>.toml when there is one, else the card shipped in quant_harness/data/model_cards
    card_dirs = ((resolve(head["cards_dir"], root),) if "cards_dir" in head
                 else (root / "fixtures" / "model_cards", data.path("model_cards")))

    models = raw.get("models", {})
    if not isinstance(models, dict) or not models:
        raise StudyError(path, "models", models, "at least one [models.<name>] table")
    cards: dict[str, ModelCard] = {}
    precisions: dict[str, tuple[str, ...]] = {}
    for name, spec in models.items():
        expect(path, f"models.{name}", spec, dict)
        nested = next((k for k, v in spec.items() if isinstance(v, dict)), None)
        if nested is not None:
            raise StudyError(path, f"models.{name}.{nested}", spec[nested],
                             f"card and precisions keys; a model name with a dot is a nested table in TOML: quote it, "
                             f'[models."{name}.{nested}"]')
        for key in spec:
            if key not in ("card", "precisions"):
                raise StudyError(path, f"models.{name}.{key}", spec[key], "one of card, precisions")
        card_name = spec.get("card", name)
        cards_dir = next((d for d in card_dirs if (d / f"{card_name}.toml").is_file()), None)
        if cards_dir is None:
            known = ", ".join(sorted({p.stem for d in card_dirs for p in d.glob("*.toml")})) or "none"
            where = " or ".join(str(d) for d in card_dirs)
            raise StudyError(path, f"models.{name}.card", card_name, f"a card in {where}; known cards: {known}")
        card = load_card(card_name, cards_dir)
        if card.name != name:
            raise StudyError(path, f"models.{name}.card", spec.get("card"), f"a card whose name is {name!r}")
        if check_data:
            files.check_card(card)
        cards[name] = card
        plist = spec.get("precisions", default_precisions)
        expect(path, f"models.{name}.precisions", plist, list)
        for i, p in enumerate(plist):
            if p not in PRECISIONS:
                raise StudyError(path, f"models.{name}.precisions[{i}]", p, f"one of {', '.join(PRECISIONS)}")
        ordered = [reference] + [p for p in plist if p != reference]
        precisions[name] = tuple(ordered)

    max_layers = min(c.layers for c in cards.values())
    traits: list[TraitSpec] = []
    raw_traits = raw.get("traits", [])
    expect(path, "traits", raw_traits, list)
    for i, t in enumerate(raw_traits):
        where = f"traits[{i}]"
        expect(path, where, t, dict)
        for key, value in t.items():
            if key not in _TRAIT_KEYS:
                raise StudyError(path, f"{where}.{key}", value, f"one of {', '.join(sorted(_TRAIT_KEYS))}")
            expect(path, f"{where}.{key}", value, _TRAIT_KEYS[key])
        for key in ("methodology", "name", "dataset"):
            if key not in t:
                raise StudyError(path, f"{where}.{key}", None, "a value (required)")
        methodology = t["methodology"]
        if methodology not in METHODOLOGIES:
            raise StudyError(path, f"{where}.methodology", methodology, f"one of {', '.join(METHODOLOGIES)}")
        fmt = t.get("format", METHODOLOGIES[methodology])
        if fmt not in FORMATS:
            raise StudyError(path, f"{where}.format", fmt, f"one of {', '.join(FORMATS)}")
        dataset = resolve(t["dataset"], root)
        if check_data and not dataset.exists():
            unset = "; set the environment variables it names" if "$" in str(dataset) else ""
            raise StudyError(path, f"{where}.dataset", t["dataset"], f"an existing file (looked at {dataset}{unset})")
        tmethods = t.get("methods", methods)
        for j, m in enumerate(tmethods):
            if m not in METHODS:
                raise StudyError(path, f"{where}.methods[{j}]", m, f"one of {', '.join(METHODS)}")
        default_pos = "response[:]" if methodology == "pv" else "prompt[-1]"
        position = t.get("position", default_pos)
        try:
            parse_position(position)
        except ValueError as e:
            raise StudyError(path, f"{where}.position", position, str(e)) from e
        limit = t.get("limit", 0)
        if limit < 0:
            raise StudyError(path, f"{where}.limit", limit, "0 (all) or a positive count")
        spec_ = TraitSpec(methodology, t["name"], dataset, fmt, position,
                          _layers(path, f"{where}.layers", t.get("layers", "all"), max_layers),
                          tuple(tmethods), limit, **trait_options(path, where, t, tmethods, root, check_data))
        if check_data:
            _check_dataset(path, where, t["dataset"], spec_)
            files.check_vectors(path, where, spec_, list(cards.values()))
        if any(s.key == spec_.key for s in traits):
            raise StudyError(path, f"{where}.name", t["name"], f"a name unique within methodology {methodology}")
        traits.append(spec_)

    bands = dict(DEFAULT_BANDS)
    for metric, over in raw.get("thresholds", {}).items():
        if metric not in bands:
            raise StudyError(path, f"thresholds.{metric}", over, f"one of {', '.join(sorted(bands))}")
        expect(path, f"thresholds.{metric}", over, dict)
        base = bands[metric]
        for key, value in over.items():
            if key not in ("robust", "broken"):
                raise StudyError(path, f"thresholds.{metric}.{key}", value, "robust or broken")
            expect(path, f"thresholds.{metric}.{key}", value, (int, float))
        bands[metric] = Band(float(over.get("robust", base.robust)), float(over.get("broken", base.broken)),
                             base.higher_is_better)

    calibration = head.get("calibration")
    ctx = SectionContext(path, root, max_layers, tuple(cards), tuple((t.key, t.layers) for t in traits),
                         check_data=check_data)
    sections = {name: parse(ctx, raw.get(name)) for name, parse in SECTIONS.items()}
    study = Study(
        path=path, name=head.get("name", path.stem), reference=reference, cards=cards, precisions=precisions,
        traits=tuple(traits), bands=bands, fail_on=FAIL_ON[fail_on_name],
        batch_size=head.get("batch_size", 8), seed=head.get("seed", 0),
        nf4_compute_dtype=head.get("nf4_compute_dtype", "bfloat16"),
        calibration=resolve(calibration, root) if calibration else None,
        probe_val_fraction=head.get("probe_val_fraction", 0.25), massive_dims_k=head.get("massive_dims_k", 8),
        fail_on_inconclusive=head.get("fail_on_inconclusive", False), bootstrap_n=head.get("bootstrap_n", 1000),
        ci_level=head.get("ci_level", 0.95), replay=head.get("replay", False),
        root=root, **sections,
    )
    sae = study.sae
    if check_data and sae is not None:
        for d in sae.dictionaries:
            for model in (d.models or tuple(cards)):
                if d.path is not None:
                    files.check_bundle(path, f"sae.dictionaries.{d.name}", d.path, d.layout,
                                       sae.layers_for(cards[model].layers), cards[model])
    return study
