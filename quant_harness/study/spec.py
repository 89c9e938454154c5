"""What a study is: its traits, cells and settings as typed, frozen values (no parsing here: ``study.load``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quant_harness.bench.settings import BenchmarkSettings
from quant_harness.judge.settings import JudgeSettings
from quant_harness.metrics.verdicts import Band, Verdict
from quant_harness.models.cards import ModelCard
from quant_harness.report.gates import GateSettings
from quant_harness.report.settings import BaselineSettings
from quant_harness.sae.settings import SaeSettings
from quant_harness.steer.settings import SteeringSettings
from quant_harness.study.ids import cell_id

METHODOLOGIES = {"caa": "caa", "pv": "pv", "arditi": "arditi"}
"""Methodology -> the dataset format it reads by default."""
FORMATS = ("caa", "pv", "arditi")
METHODS = ("mean_diff", "probe", "pca", "file")


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
        return cell_id(self.model, self.precision, self.trait, self.method)

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
    steering: SteeringSettings = SteeringSettings()
    judge: JudgeSettings = JudgeSettings()
    benchmarks: BenchmarkSettings = field(default_factory=BenchmarkSettings.empty)
    sae: SaeSettings | None = None
    baselines: BaselineSettings = BaselineSettings()
    gates: GateSettings = GateSettings()
    """The plan's Checkpoint 1 gates, INVESTIGATE / DISCARD flags and early stop (``[gates]``)."""
    root: Path | None = None
    """Where the study's relative paths resolve (``[study] root``; default the study file's folder)."""

    def trait(self, key: str) -> TraitSpec:
        return next(t for t in self.traits if t.key == key)
