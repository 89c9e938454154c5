"""Process-wide counters of expensive work, written to reports/results/run.json.

They let a user (and CI) see that a warm run loaded no model and ran no forward pass.
"""

from __future__ import annotations

from collections import Counter

NAMES = ("model_loads", "forward_passes", "generated_tokens", "cache_hits", "cache_misses", "judge_calls",
         "judge_unscored")
"""``judge_unscored``: judge answers that gave no score (no answer after the retries, or no number in it)."""

_counts: Counter[str] = Counter()
_loads_by_group: Counter[str] = Counter()
_cache_by_kind: dict[str, Counter[str]] = {}


def add(name: str, n: int = 1) -> None:
    if name not in NAMES:
        raise KeyError(f"unknown counter {name!r}; known: {', '.join(NAMES)}")
    _counts[name] += n


def add_load(group: str) -> None:
    """Count one model load of a model x precision group."""
    _counts["model_loads"] += 1
    _loads_by_group[group] += 1


def add_cache(kind: str, hit: bool) -> None:
    """Count one artefact-store lookup: ``cache_hits`` or ``cache_misses``, and the same per artefact kind."""
    outcome = "hits" if hit else "misses"
    _counts[f"cache_{outcome}"] += 1
    _cache_by_kind.setdefault(kind, Counter())[outcome] += 1


def snapshot() -> dict[str, object]:
    return {**{n: _counts[n] for n in NAMES}, "loads_by_group": dict(sorted(_loads_by_group.items())),
            "cache_by_kind": {k: {"hits": c["hits"], "misses": c["misses"]} for k, c in sorted(_cache_by_kind.items())}}


def merge(parts: list[dict[str, object]]) -> dict[str, object]:
    """Sum the snapshots of several processes (xdist workers)."""
    total: dict[str, object] = {n: sum(int(p.get(n, 0)) for p in parts) for n in NAMES}  # type: ignore[call-overload]
    by_group: Counter[str] = Counter()
    for p in parts:
        by_group.update(p.get("loads_by_group", {}))  # type: ignore[call-overload]
    total["loads_by_group"] = dict(sorted(by_group.items()))
    by_kind: dict[str, Counter[str]] = {}
    for p in parts:
        for kind, counts in dict(p.get("cache_by_kind") or {}).items():  # type: ignore[call-overload]
            by_kind.setdefault(kind, Counter()).update(counts)
    total["cache_by_kind"] = {k: {"hits": c["hits"], "misses": c["misses"]} for k, c in sorted(by_kind.items())}
    return total
