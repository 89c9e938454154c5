"""Study files (cases/studies/*.toml) -> Study -> the grid of cells that pytest parametrizes."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from quant_harness.cards import ModelCard, load_card
from quant_harness.errors import StudyError
from quant_harness.precision import PRECISIONS
from quant_harness.verdicts import DEFAULT_BANDS, FAIL_ON, Band, Verdict

METHODOLOGIES = {"caa": "caa", "pv": "pv", "arditi": "arditi"}
"""Methodology -> the dataset format it reads by default."""
FORMATS = ("caa", "pv", "arditi")
METHODS = ("mean_diff", "probe", "pca", "file")

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


@dataclass(frozen=True)
class TraitSpec:
    """One trait of a study: where its contrast data lives and where activations are read."""

    methodology: str
    name: str
    dataset: Path
    format: str
    position: str
    layers: tuple[int, ...] | None
    """Explicit layer indices, or None for every layer of the model."""
    methods: tuple[str, ...]
    limit: int = 0
    """Use only the first N examples (0 = all): keeps CI studies small."""
    max_new_tokens: int = 16
    """PV rollouts: tokens generated per response."""
    n_per_question: int = 1
    """PV rollouts: responses per prompt (sampled with the study seed when > 1 and temperature > 0)."""
    temperature: float = 0.0
    """PV rollouts: 0 = greedy."""
    replay: bool | None = None
    """PV: prefill every precision with the reference precision's responses (None = the study's ``replay``)."""
    vectors: Path | None = None
    """Method ``file``: a safetensors/pt file of per-layer vectors, or an SAE decoder (``W_dec``)."""
    sae_features: tuple[tuple[float, ...], ...] = ()
    """Method ``file`` over an SAE decoder: rows ``[layer, feature_id, strength]``."""
    judge_filter: float | None = None
    """PV: keep only rollout pairs the study's judge passes at this 0-100 threshold (PV's rule); None = keep all."""

    @property
    def key(self) -> str:
        return f"{self.methodology}_{self.name}"

    def layers_for(self, card: ModelCard) -> tuple[int, ...]:
        return self.layers if self.layers is not None else tuple(range(card.layers))


@dataclass(frozen=True)
class Cell:
    """One parametrized test case. Its id is the contract users select with ``-k``."""

    kind: str
    model: str
    precision: str
    trait: str = ""
    method: str = ""

    @property
    def id(self) -> str:
        return "-".join(p for p in (self.model, self.precision, self.trait, self.method) if p)

    @property
    def group(self) -> str:
        """Model x precision: the unit that one worker loads once."""
        return f"{self.model}-{self.precision}"


@dataclass(frozen=True)
class Study:
    """A parsed, validated study file."""

    path: Path
    name: str
    reference: str
    cards: dict[str, ModelCard]
    precisions: dict[str, tuple[str, ...]]
    """Model name -> its precisions, reference first."""
    traits: tuple[TraitSpec, ...]
    bands: dict[str, Band]
    fail_on: Verdict | None
    batch_size: int = 8
    seed: int = 0
    nf4_compute_dtype: str = "bfloat16"
    calibration: Path | None = None
    probe_val_fraction: float = 0.25
    massive_dims_k: int = 8
    fail_on_inconclusive: bool = False
    """Whether a verdict whose confidence interval straddles a band boundary fails the cell."""
    bootstrap_n: int = 1000
    """Bootstrap replicates behind each confidence interval (quant_harness.confidence)."""
    ci_level: float = 0.95
    replay: bool = False
    """PV: prefill quantized models with the reference precision's responses (controlled comparison)."""
    extra: dict[str, object] = field(default_factory=dict)
    """Sections other modules read (judge, steering, benchmarks, ...), validated where they are used."""

    def trait(self, key: str) -> TraitSpec:
        return next(t for t in self.traits if t.key == key)

    def cells(self, kind: str) -> list[Cell]:
        """The cells of one kind, in a deterministic order (xdist needs the same order on every worker)."""
        if kind not in CELL_KINDS:
            raise StudyError(self.path, "quant_cells", kind, f"one of {', '.join(sorted(CELL_KINDS))}")
        shape = CELL_KINDS[kind]
        out: list[Cell] = []
        for model in sorted(self.cards):
            for precision in self.precisions[model]:
                if precision == self.reference and not shape.reference:
                    continue
                if shape.per_model is not None:
                    out += [Cell(kind, model, precision, item) for item in shape.per_model(self, model)]
                    continue
                for trait in self.traits:
                    if shape.methodologies and trait.methodology not in shape.methodologies:
                        continue
                    methods = [m for m in trait.methods if m in shape.methods] if shape.methods else [""]
                    if shape.select is not None:
                        methods = [m for m in methods if shape.select(self, trait, m)]
                    out += [Cell(kind, model, precision, trait.key, m) for m in methods]
        return out


@dataclass(frozen=True)
class CellKind:
    """The shape of one kind of cell in the grid; case modules select a kind with ``quant_cells(kind)``."""

    reference: bool = False
    """Whether the reference precision gets cells of this kind (False when a cell compares against it)."""
    methods: tuple[str, ...] = ("mean_diff", "probe", "pca")
    """Methods that make a cell each; empty = one cell per trait, no method part in the id."""
    methodologies: tuple[str, ...] = ()
    """Only traits of these methodologies (empty = all)."""
    per_model: Callable[[Study, str], list[str]] | None = None
    """Model-level kinds (benchmarks): the id parts after model-precision, instead of traits."""
    select: Callable[[Study, TraitSpec, str], bool] | None = None
    """A study-level choice of (trait, method) pairs, e.g. the ``[steering]`` table's ``traits`` and ``methods``."""


#: Every kind of cell. Other modules add theirs here (one entry each), next to the case module that uses it.
CELL_KINDS: dict[str, CellKind] = {
    "vectors": CellKind(reference=False, methods=("mean_diff", "probe", "pca")),
    "probes": CellKind(reference=True, methods=("mean_diff", "probe", "pca", "file")),
    "steering": CellKind(reference=False, methods=("mean_diff", "file"), methodologies=("caa", "pv"),
                         select=lambda s, trait, method: _steering_selects(s, trait, method)),
    "logit_diff": CellKind(reference=False, methods=("mean_diff",), methodologies=("caa",)),
    "transfer": CellKind(reference=False, methods=("mean_diff",), methodologies=("caa",)),
    "refusal": CellKind(reference=True, per_model=lambda s, _model: (
        [t.key for t in s.traits if t.methodology == "arditi"] or [t.key for t in s.traits if t.name == "refusal"])),
    "benchmarks": CellKind(reference=True, per_model=lambda s, model: _benchmark_cells(s, model)),
    "sae": CellKind(reference=False, per_model=lambda s, model: _sae_cells(s, model)),
}


def _steering_selects(study: Study, trait: TraitSpec, method: str) -> bool:
    """Judged steering is the costly kind: ``[steering] traits`` (default: all) and ``methods`` (default mean_diff)
    say which vectors get cells (quant_harness.steering_settings owns and validates the table)."""
    from quant_harness.steering_settings import settings

    s = settings(study)
    return (s.traits is None or trait.key in s.traits) and method in s.methods


def _sae_cells(study: Study, model: str) -> list[str]:
    """``sae_{layer}-{dictionary}`` from the [sae] table (quant_harness.sae.settings owns and validates it)."""
    from quant_harness.sae.settings import cell_names

    return cell_names(study, model)


def _benchmark_cells(study: Study, model: str) -> list[str]:
    """The [benchmarks] tasks of the study (quant_harness.benchmarks owns and validates that table)."""
    from quant_harness.benchmark_settings import cell_names

    return cell_names(study, model)


def _expect(path: Path, key: str, value: object, typ: type | tuple[type, ...]) -> None:
    if (isinstance(value, bool) and typ is not bool) or not isinstance(value, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise StudyError(path, key, value, f"a {names}")


def _resolve(path_str: str, root: Path) -> Path:
    """Expand ``$VARS`` (data locations differ per machine) and resolve against the study's root."""
    p = Path(os.path.expandvars(path_str)).expanduser()
    return p if p.is_absolute() else (root / p)


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
    known_top = _TOP_KEYS | set(EXTRA_SECTIONS)
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
        _expect(path, f"study.{key}", value, typ)

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
    cards_dir = _resolve(head.get("cards_dir", "fixtures/model_cards"), root)

    models = raw.get("models", {})
    if not isinstance(models, dict) or not models:
        raise StudyError(path, "models", models, "at least one [models.<name>] table")
    cards: dict[str, ModelCard] = {}
    precisions: dict[str, tuple[str, ...]] = {}
    for name, spec in models.items():
        _expect(path, f"models.{name}", spec, dict)
        for key in spec:
            if key not in ("card", "precisions"):
                raise StudyError(path, f"models.{name}.{key}", spec[key], "one of card, precisions")
        card_name = spec.get("card", name)
        if not (cards_dir / f"{card_name}.toml").is_file():
            known = ", ".join(sorted(p.stem for p in cards_dir.glob("*.toml"))) or "none"
            raise StudyError(path, f"models.{name}.card", card_name, f"a card in {cards_dir}; known cards: {known}")
        card = load_card(card_name, cards_dir)
        if card.name != name:
            raise StudyError(path, f"models.{name}.card", spec.get("card"), f"a card whose name is {name!r}")
        cards[name] = card
        plist = spec.get("precisions", default_precisions)
        _expect(path, f"models.{name}.precisions", plist, list)
        for i, p in enumerate(plist):
            if p not in PRECISIONS:
                raise StudyError(path, f"models.{name}.precisions[{i}]", p, f"one of {', '.join(PRECISIONS)}")
        ordered = [reference] + [p for p in plist if p != reference]
        precisions[name] = tuple(ordered)

    max_layers = min(c.layers for c in cards.values())
    traits: list[TraitSpec] = []
    raw_traits = raw.get("traits", [])
    _expect(path, "traits", raw_traits, list)
    for i, t in enumerate(raw_traits):
        where = f"traits[{i}]"
        _expect(path, where, t, dict)
        for key, value in t.items():
            if key not in _TRAIT_KEYS:
                raise StudyError(path, f"{where}.{key}", value, f"one of {', '.join(sorted(_TRAIT_KEYS))}")
            _expect(path, f"{where}.{key}", value, _TRAIT_KEYS[key])
        for key in ("methodology", "name", "dataset"):
            if key not in t:
                raise StudyError(path, f"{where}.{key}", None, "a value (required)")
        methodology = t["methodology"]
        if methodology not in METHODOLOGIES:
            raise StudyError(path, f"{where}.methodology", methodology, f"one of {', '.join(METHODOLOGIES)}")
        fmt = t.get("format", METHODOLOGIES[methodology])
        if fmt not in FORMATS:
            raise StudyError(path, f"{where}.format", fmt, f"one of {', '.join(FORMATS)}")
        dataset = _resolve(t["dataset"], root)
        if check_data and not dataset.exists():
            unset = "; set the environment variables it names" if "$" in str(dataset) else ""
            raise StudyError(path, f"{where}.dataset", t["dataset"], f"an existing file (looked at {dataset}{unset})")
        tmethods = t.get("methods", methods)
        for j, m in enumerate(tmethods):
            if m not in METHODS:
                raise StudyError(path, f"{where}.methods[{j}]", m, f"one of {', '.join(METHODS)}")
        default_pos = "response[:]" if methodology == "pv" else "prompt[-1]"
        from quant_harness.positions import parse_position

        position = t.get("position", default_pos)
        try:
            parse_position(position)
        except ValueError as e:
            raise StudyError(path, f"{where}.position", position, str(e)) from e
        limit = t.get("limit", 0)
        if limit < 0:
            raise StudyError(path, f"{where}.limit", limit, "0 (all) or a positive count")
        from quant_harness.trait_options import trait_options

        spec_ = TraitSpec(methodology, t["name"], dataset, fmt, position,
                          _layers(path, f"{where}.layers", t.get("layers", "all"), max_layers),
                          tuple(tmethods), limit, **trait_options(path, where, t, tmethods, root, check_data))
        if any(s.key == spec_.key for s in traits):
            raise StudyError(path, f"{where}.name", t["name"], f"a name unique within methodology {methodology}")
        traits.append(spec_)

    bands = dict(DEFAULT_BANDS)
    for metric, over in raw.get("thresholds", {}).items():
        if metric not in bands:
            raise StudyError(path, f"thresholds.{metric}", over, f"one of {', '.join(sorted(bands))}")
        _expect(path, f"thresholds.{metric}", over, dict)
        base = bands[metric]
        for key, value in over.items():
            if key not in ("robust", "broken"):
                raise StudyError(path, f"thresholds.{metric}.{key}", value, "robust or broken")
            _expect(path, f"thresholds.{metric}.{key}", value, (int, float))
        bands[metric] = Band(float(over.get("robust", base.robust)), float(over.get("broken", base.broken)),
                             base.higher_is_better)

    calibration = head.get("calibration")
    return Study(
        path=path, name=head.get("name", path.stem), reference=reference, cards=cards, precisions=precisions,
        traits=tuple(traits), bands=bands, fail_on=FAIL_ON[fail_on_name],
        batch_size=head.get("batch_size", 8), seed=head.get("seed", 0),
        nf4_compute_dtype=head.get("nf4_compute_dtype", "bfloat16"),
        calibration=_resolve(calibration, root) if calibration else None,
        probe_val_fraction=head.get("probe_val_fraction", 0.25), massive_dims_k=head.get("massive_dims_k", 8),
        fail_on_inconclusive=head.get("fail_on_inconclusive", False), bootstrap_n=head.get("bootstrap_n", 1000),
        ci_level=head.get("ci_level", 0.95), replay=head.get("replay", False),
        extra={k: raw[k] for k in EXTRA_SECTIONS if k in raw},
    )


#: Optional top-level tables owned by other modules (they validate their own keys).
EXTRA_SECTIONS: tuple[str, ...] = ("baselines", "judge", "steering", "benchmarks", "sae")
