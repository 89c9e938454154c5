"""Per-cell baselines (syrupy's model): one diffable JSON per cell, a tolerant comparison, queued writes.

``cases/baselines/<study>/<kind>/<cell-id>.json`` holds a cell's scalar figures, verdict and library versions
(kind is a folder because a vectors cell and a probes cell share a cell id). A normal run compares each cell's
figures with its baseline and fails the cell whose figure got worse by more than the study's tolerance
(``[baselines]`` table), or whose verdict got worse (robust to anything else, inconclusive included; degraded to
broken); ``--quant-update-baselines`` records the selected cells instead, written once by the controller at session
end, and deletes baselines no cell of the study owns.

Which way is worse: the headline ``metric`` of a record goes the way of the band that judges it (the study's
bands, ``Band.higher_is_better``); every other figure goes the way its kind's registry entry says
(quant_harness.study.kinds, ``KindSpec.directions``); a figure the entry does not name is noted, never failed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant_harness._util import files
from quant_harness.metrics.verdicts import DEFAULT_BANDS, Band
from quant_harness.report.settings import BaselineSettings
from quant_harness.study.kinds import KINDS, figure_base

if TYPE_CHECKING:
    from quant_harness.records import Record

VERSION_KEYS = ("torch", "transformers", "bitsandbytes", "gptqmodel", "lm_eval", "scikit-learn")
_BAND_ORDER = {"robust": 0, "degraded": 1, "broken": 2}

Direction = Callable[[str, str], int]
"""``(kind, figure name) -> +1`` (larger is better), ``-1`` (smaller is better) or ``0`` (no direction: noted, never
failed)."""

class BaselineVersionWarning(UserWarning):
    """A baseline was recorded under other library versions: its figures are compared, but may differ for that."""


def direction(kind: str, name: str) -> int:
    """+1 when a larger figure is better, -1 when smaller is better, 0 when it has no direction (counts, norms,
    standard errors, figures the kind does not register): the kind registry's entry decides."""
    spec = KINDS.get(kind)
    return spec.direction(name) if spec is not None else 0


def headline_direction(kind: str, metric: str, bands: Mapping[str, Band]) -> int | None:
    """The direction of a record's headline ``metric`` from the band that judges it, or None when the metric is not
    a banded figure of its kind (then ``direction`` decides)."""
    spec = KINDS.get(kind)
    return spec.headline_direction(metric, bands) if spec is not None else None


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def snapshot(record: Record) -> dict[str, Any]:
    """What a baseline file holds: scalar figures (rounded for diffs), verdict, and the library versions."""
    figs = {k: round(float(v), 6) for k, v in sorted(record.get("figures", {}).items()) if _number(v)}
    metric, value = record.get("metric"), record.get("value")
    if isinstance(metric, str) and metric not in figs and isinstance(value, (int, float)) and \
            not isinstance(value, bool) and math.isfinite(value):
        figs[metric] = round(float(value), 6)   # the headline is gated even where figures do not repeat it
    vers = record.get("provenance", {}).get("versions", {})
    return {"cell_id": record["cell_id"], "kind": record["kind"], "metric": record.get("metric"),
            "verdict": record.get("verdict"), "figures": figs,
            "versions": {k: vers[k] for k in VERSION_KEYS if k in vers}}


def _worse_verdict(old: str, new: str) -> bool:
    """Robust to anything else (degraded, broken, inconclusive), or one band down (degraded to broken)."""
    if old == "robust":
        return new != "robust"
    a, b = _BAND_ORDER.get(old), _BAND_ORDER.get(new)
    return a is not None and b is not None and b > a


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
    bands: Mapping[str, Band] = field(default_factory=lambda: dict(DEFAULT_BANDS))
    """The study's bands: they give the headline metric's direction."""
    direction: Direction = direction
    """The direction of every other figure."""

    def sign(self, kind: str, metric: str, name: str) -> int:
        """Which way is better for figure ``name`` of a ``kind`` record whose headline is ``metric``."""
        if figure_base(name) == metric:
            head = headline_direction(kind, metric, self.bands)
            if head is not None:
                return head
        return self.direction(kind, name)

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
        kind, metric = str(record["kind"]), str(now.get("metric") or base.get("metric") or "")
        for name, old in base.get("figures", {}).items():
            tol, new, sign = self.settings.for_figure(name), now["figures"].get(name), self.sign(kind, metric, name)
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
        if _worse_verdict(str(base.get("verdict")), str(now["verdict"])):
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
