"""Cell results: one versioned, JSON-able record per cell, with provenance, keyed by cell id."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

SCHEMA_VERSION = 1
_PACKAGES = ("torch", "transformers", "bitsandbytes", "gptqmodel", "optimum", "lm_eval", "steering-vectors",
             "scikit-learn", "quant_harness")


@dataclass(frozen=True)
class CellResult:
    """What one cell measured and concluded, whatever its outcome."""

    cell_id: str
    """``{model}-{precision}-{methodology}_{trait}-{method}`` (or ``{model}-{precision}-{benchmark}``)."""
    kind: str
    """Which matrix the record belongs to: vectors, probes, steering, benchmarks, ..."""
    verdict: str
    """robust, degraded or broken (the headline metric's band), or inconclusive when the figure's confidence
    interval straddles a band boundary (quant_harness.confidence)."""
    metric: str
    """Name of the headline figure the verdict was assigned from."""
    value: float
    figures: dict[str, Any]
    """Headline figures; also written to JUnit properties."""
    per_layer: dict[str, list[float]] = field(default_factory=dict)
    """Figure name -> one value per layer in ``layers`` order."""
    layers: list[int] = field(default_factory=list)
    explanation: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    flags: list[dict[str, Any]] = field(default_factory=list)
    """The plan's checks this cell tripped (quant_harness.report.gates): ``rule`` (checkpoint, investigate,
    discard), ``check``, ``figure``, ``value``, ``threshold`` and the sentence ``text``."""

    def to_dict(self) -> Record:
        """The record as matrices store it (``json.dumps`` of this is what reports/results/*.json hold)."""
        return cast(Record, asdict(self))

    def properties(self) -> list[tuple[str, object]]:
        """JUnit properties: verdict first, then the headline figures (rounded for readability)."""
        props: list[tuple[str, object]] = [("verdict", self.verdict), (self.metric, _round(self.value))]
        props += [(k, _round(v)) for k, v in self.figures.items() if k != self.metric and _scalar(v)]
        props += [(f"flag_{f['rule']}", f["text"]) for f in self.flags]
        return props


class _RecordKeys(TypedDict):
    cell_id: str
    kind: str


class Record(_RecordKeys, total=False):
    """A cell record as the report layer reads it: ``CellResult.to_dict()``, or one entry of a JSON matrix.

    A typed view of the plain dict, so matrices are written and read back byte for byte as before; the keys are
    CellResult's fields. Only ``cell_id`` and ``kind`` are required: matrices written by older versions, and records
    built by hand in tests, may leave the others out, so readers use ``.get`` with a default for them.
    """

    verdict: str
    metric: str
    value: float
    figures: dict[str, Any]
    per_layer: dict[str, list[float]]
    layers: list[int]
    explanation: str
    provenance: dict[str, Any]
    schema_version: int
    flags: list[dict[str, Any]]


def as_record(raw: dict[str, Any]) -> Record:
    """A record read from JSON as a Record (the boundary where untyped JSON becomes typed; nothing is copied)."""
    return cast(Record, raw)


def _scalar(v: object) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _round(v: object) -> object:
    return round(v, 6) if isinstance(v, float) else v


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@functools.lru_cache(maxsize=4)
def git_commit(root: str) -> dict[str, Any]:
    """Commit and dirty flag of the checkout the study ran from (empty when not a git checkout)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": dirty} if commit else {}


def provenance(root: Path, **extra: Any) -> dict[str, Any]:
    return {"versions": versions(), "git": git_commit(str(root)), "host": platform.node(), **extra}
