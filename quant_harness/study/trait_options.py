"""Validation of the per-trait keys that belong to extraction: PV rollout settings and external vector files.

Kept apart from ``study`` so the study grid stays about cells, and free of torch so a study loads before any worker
pins its GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from quant_harness.errors import StudyError


def trait_options(path: Path, where: str, t: dict[str, Any], methods: list[str], root: Path,
                  check_data: bool = True) -> dict[str, Any]:
    """The TraitSpec fields for rollouts and the ``file`` method; every problem names file, key and expectation."""
    out: dict[str, Any] = {}
    for key, low in (("max_new_tokens", 1), ("n_per_question", 1)):
        if key in t:
            if t[key] < low:
                raise StudyError(path, f"{where}.{key}", t[key], f"an integer >= {low}")
            out[key] = t[key]
    if "temperature" in t:
        if not 0.0 <= float(t["temperature"]) <= 5.0:
            raise StudyError(path, f"{where}.temperature", t["temperature"], "a number in 0..5 (0 = greedy)")
        out["temperature"] = float(t["temperature"])
    if out.get("n_per_question", 1) > 1 and out.get("temperature", 0.0) == 0.0:
        raise StudyError(path, f"{where}.temperature", 0, "> 0 when n_per_question > 1 (greedy repeats are identical)")
    if "replay" in t:
        out["replay"] = t["replay"]
    if "judge_filter" in t:
        if not 0.0 <= float(t["judge_filter"]) <= 100.0:
            raise StudyError(path, f"{where}.judge_filter", t["judge_filter"], "a judge score threshold in 0..100")
        out["judge_filter"] = float(t["judge_filter"])
    if t.get("methodology") != "pv":
        for key in ("max_new_tokens", "n_per_question", "temperature", "replay", "judge_filter"):
            if key in t:
                raise StudyError(path, f"{where}.{key}", t[key], "no value: rollout settings apply to pv traits only")
    if "vectors" in t:
        p = Path(os.path.expandvars(t["vectors"])).expanduser()
        p = p if p.is_absolute() else root / p
        if check_data and not p.is_file():
            raise StudyError(path, f"{where}.vectors", t["vectors"], f"an existing .safetensors or .pt file (looked at {p})")
        out["vectors"] = p
    rows = t.get("sae_features", [])
    for i, row in enumerate(rows):
        ok = isinstance(row, list) and len(row) == 3 and all(isinstance(x, (int, float)) for x in row) \
            and float(row[0]).is_integer() and float(row[1]).is_integer()
        if not ok:
            raise StudyError(path, f"{where}.sae_features[{i}]", row, "[layer, feature_id, strength]")
    if rows:
        out["sae_features"] = tuple(tuple(float(x) for x in r) for r in rows)
    if "file" in methods and "vectors" not in out:
        raise StudyError(path, f"{where}.vectors", None, "a vector file (required by method 'file')")
    if "vectors" in out and "file" not in methods:
        raise StudyError(path, f"{where}.methods", methods, "a list that includes 'file' when 'vectors' is given")
    return out
