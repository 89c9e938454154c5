"""Per-cell baselines (syrupy's model): one diffable JSON per cell, a tolerant comparison, queued writes.

``cases/baselines/<study>/<kind>/<cell-id>.json`` holds a cell's scalar figures, verdict and library versions
(kind is a folder because a vectors cell and a probes cell share a cell id). A normal run compares each cell's
figures with its baseline and fails the cell whose figure got worse by more than the study's tolerance
(``[baselines]`` table); ``--quant-update-baselines`` records the selected cells instead, written once by the
controller at session end, and deletes baselines no cell of the study owns.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from quant_harness._util import files
from quant_harness._util.validate import SectionContext
from quant_harness.errors import StudyError

if TYPE_CHECKING:
    from quant_harness.records import Record

VERSION_KEYS = ("torch", "transformers", "bitsandbytes", "gptqmodel", "lm_eval", "scikit-learn")
_LOWER_IS_BETTER = ("degradation", "drop", "error", "loss")
_HIGHER_IS_BETTER = ("cosine", "auroc", "corr", "overlap", "fidelity", "accuracy", "acc", "delta")
_BAND_ORDER = {"robust": 0, "degraded": 1, "broken": 2}


class BaselineVersionWarning(UserWarning):
    """A baseline was recorded under other library versions: its figures are compared, but may differ for that."""


@dataclass(frozen=True)
class Tolerance:
    """How far a figure may move the wrong way: absolute, or relative to the baseline (``"5%"``)."""

    value: float
    relative: bool = False

    def allows(self, baseline: float, now: float) -> bool:
        limit = abs(baseline) * self.value if self.relative else self.value
        return abs(now - baseline) <= limit + 1e-12

    def describe(self) -> str:
        return f"{self.value:.0%} relative" if self.relative else f"{self.value:g} absolute"


@dataclass(frozen=True)
class BaselineSettings:
    """The study's ``[baselines]`` table: ``tolerance`` (default 0.02 absolute) and per-figure overrides."""

    tolerance: Tolerance = Tolerance(0.02)
    figures: dict[str, Tolerance] = field(default_factory=dict)

    def for_figure(self, name: str) -> Tolerance:
        return self.figures.get(name, self.tolerance)


def _tolerance(path: Path, key: str, value: object) -> Tolerance:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return Tolerance(float(value))
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = float(value[:-1])
        except ValueError:
            pct = -1.0
        if pct >= 0:
            return Tolerance(pct / 100.0, relative=True)
    raise StudyError(path, key, value, 'a non-negative number (absolute) or a percentage string like "5%"')


def parse(ctx: SectionContext, table: object) -> BaselineSettings:
    """Validate a study's ``[baselines]`` table; a bad key is a StudyError naming file, key and expectation."""
    study_path = ctx.path
    if table is None:
        return BaselineSettings()
    if not isinstance(table, dict):
        raise StudyError(study_path, "baselines", table, "a table")
    for key in table:
        if key not in ("tolerance", "figures"):
            raise StudyError(study_path, f"baselines.{key}", table[key], "one of tolerance, figures")
    per = table.get("figures", {})
    if not isinstance(per, dict):
        raise StudyError(study_path, "baselines.figures", per, "a table of figure = tolerance")
    return BaselineSettings(_tolerance(study_path, "baselines.tolerance", table.get("tolerance", 0.02)),
                    {k: _tolerance(study_path, f"baselines.figures.{k}", v) for k, v in per.items()})


def direction(name: str) -> int:
    """+1 when a larger figure is better, -1 when smaller is better, 0 when it has no direction (counts, norms)."""
    if name.startswith("n_") or name.endswith(("_layer", "_index", "_count")):
        return 0
    if any(k in name for k in _LOWER_IS_BETTER):
        return -1
    return 1 if any(k in name for k in _HIGHER_IS_BETTER) else 0


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def snapshot(record: Record) -> dict[str, Any]:
    """What a baseline file holds: scalar figures (rounded for diffs), verdict, and the library versions."""
    figs = {k: round(float(v), 6) for k, v in sorted(record.get("figures", {}).items()) if _number(v)}
    vers = record.get("provenance", {}).get("versions", {})
    return {"cell_id": record["cell_id"], "kind": record["kind"], "metric": record.get("metric"),
            "verdict": record.get("verdict"), "figures": figs,
            "versions": {k: vers[k] for k in VERSION_KEYS if k in vers}}


@dataclass
class Check:
    """The outcome of comparing one cell with its baseline."""

    status: str
    """ok, regressed, missing (no baseline file) or updating."""
    regressions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Baselines:
    """The baselines of one study in one process; the controller's ``finish`` writes and reports."""

    folder: Path
    settings: BaselineSettings
    update: bool = False

    def path(self, kind: str, cell_id: str) -> Path:
        return self.folder / kind / f"{cell_id}.json"

    def check(self, record: Record) -> Check:
        """Compare a cell's figures with its baseline; warns (BaselineVersionWarning) when versions differ."""
        if self.update:
            return Check("updating")
        path = self.path(record["kind"], record["cell_id"])
        if not path.is_file():
            return Check("missing", notes=[f"{path} does not exist; re-run with --quant-update-baselines"])
        try:
            base = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            return Check("regressed", [f"{path}: unreadable baseline ({e}); re-run with --quant-update-baselines"])
        now = snapshot(record)
        changed = {k: (v, now["versions"].get(k)) for k, v in base.get("versions", {}).items()
                   if now["versions"].get(k) != v}
        if changed:
            warnings.warn(BaselineVersionWarning(
                f"{path} was recorded under other library versions ("
                + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(changed.items()))
                + "); figures compared anyway; re-run with --quant-update-baselines to re-record"), stacklevel=2)
        out = Check("ok")
        for name, old in base.get("figures", {}).items():
            tol, new, sign = self.settings.for_figure(name), now["figures"].get(name), direction(name)
            if not _number(old):
                continue
            if new is None or not math.isfinite(float(new)):
                out.notes.append(f"{name}: in the baseline ({old}) but not measured now")
                continue
            if tol.allows(old, new):
                continue
            if sign == 0:
                out.notes.append(f"{name} changed: baseline {old:g}, now {new:g} (tolerance {tol.describe()})")
            elif (new - old) * sign < 0:
                out.regressions.append(f"{name} got worse: baseline {old:.6g}, now {new:.6g}, "
                                       f"tolerance {tol.describe()}")
        old_v, new_v = _BAND_ORDER.get(str(base.get("verdict"))), _BAND_ORDER.get(str(now["verdict"]))
        if old_v is not None and new_v is not None and new_v > old_v:
            out.regressions.append(f"verdict got worse: baseline {base['verdict']}, now {now['verdict']}")
        if out.regressions:
            out.status = "regressed"
            out.regressions.append(f"(baseline {path}; if this change is intended, re-run with "
                                   "--quant-update-baselines)")
        return out

    def stored(self) -> list[Path]:
        return sorted(self.folder.glob("*/*.json")) if self.folder.is_dir() else []

    def unused(self, cells: Iterable[tuple[str, str]]) -> list[Path]:
        """Baseline files no cell of the study owns (kind, cell id); ``-k`` does not change the grid."""
        owned = {self.path(kind, cid) for kind, cid in cells}
        return [p for p in self.stored() if p not in owned]

    def write(self, records: Iterable[Record]) -> list[Path]:
        written = []
        for r in records:
            path = self.path(r["kind"], r["cell_id"])
            files.write_text(path, json.dumps(snapshot(r), indent=2, sort_keys=True) + "\n")
            written.append(path)
        return written

    def finish(self, records: list[Record], cells: Iterable[tuple[str, str]]) -> tuple[list[str], bool]:
        """At session end on the controller: flush queued writes (update) or report unused/missing baselines.

        Returns the summary lines and whether the run must fail (unused baselines outside an update).
        """
        unused = self.unused(cells)
        if self.update:
            written = self.write(records)
            for p in unused:
                p.unlink()
            lines = [f"{len(written)} baselines written to {self.folder}"]
            if unused:
                lines.append(f"{len(unused)} unused baselines deleted: " + ", ".join(p.name for p in unused))
            return lines, False
        lines = []
        missing = [r["cell_id"] for r in records if not self.path(r["kind"], r["cell_id"]).is_file()]
        if missing:
            lines.append(f"{len(missing)} cells have no baseline in {self.folder}; re-run with "
                         "--quant-update-baselines to record them")
        if unused:
            lines.append(f"{len(unused)} baselines unused; re-run with --quant-update-baselines to delete: "
                         + ", ".join(str(p.relative_to(self.folder)) for p in unused))
        return lines, bool(unused)
