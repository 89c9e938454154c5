"""The ``[steering]`` table of a study: which layers, coefficients, traits and methods the steering cells use.

Kept apart from quant_harness.steering_cells (which needs torch) so the grid of a study can ask which vectors get
judged steering cells, and reject a bad table, without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quant_harness.errors import StudyError
from quant_harness.study import Study


@dataclass(frozen=True)
class SteeringSettings:
    """The study's ``[steering]`` table: kept small so the default study runs on a CPU in minutes."""

    layers: tuple[int, ...] = (12,)
    """Candidate layers (block outputs); the first one is used for A/B, transfer and refusal cells."""
    coefficient: float = 4.0
    """Starting coefficient of the search (a multiple of the raw vector)."""
    search_steps: int = 2
    coherence_min: float = 50.0
    questions: int = 4
    max_new_tokens: int = 24
    ab_coefficients: tuple[float, ...] = (-2.0, 0.0, 2.0)
    ab_questions: int = 10
    ab_dir: str = "fixtures/ab_questions"
    refusal_prompts: str = "fixtures/ab_questions/refusal_prompts.json"
    samples: int = 2
    """Responses kept per condition in each record, for review."""
    method: str = "mean_diff"
    """Whose vectors A/B, transfer and refusal cells use; steering cells use their own cell's method."""
    traits: tuple[str, ...] | None = None
    """Traits that get judged steering cells (None: every CAA and PV trait)."""
    methods: tuple[str, ...] = ("mean_diff",)
    """Methods whose vectors get judged steering cells (e.g. add "file" to steer with external/SAE vectors)."""
    mode: str = "add"
    """Steering cells: ``add`` the vector x coefficient, or ``clamp`` the projection on it to coefficient x |v|
    (the SAE seed's clamp, which keeps high scales from blowing up activations)."""


_KEYS: dict[str, Any] = {
    "layers": list, "coefficient": (int, float), "search_steps": int, "coherence_min": (int, float),
    "questions": int, "max_new_tokens": int, "ab_coefficients": list, "ab_questions": int, "ab_dir": str,
    "refusal_prompts": str, "samples": int, "method": str, "mode": str, "traits": list, "methods": list,
}


def settings(study: Study) -> SteeringSettings:
    """Validate ``[steering]``; every problem is a StudyError naming file, key, value and expectation."""
    table = study.extra.get("steering", {})
    if not isinstance(table, dict):
        raise StudyError(study.path, "steering", table, "a [steering] table")
    out: dict[str, Any] = {}
    n_layers = min(c.layers for c in study.cards.values())
    for key, value in table.items():
        if key not in _KEYS:
            raise StudyError(study.path, f"steering.{key}", value, f"one of {', '.join(sorted(_KEYS))}")
        if isinstance(value, bool) or not isinstance(value, _KEYS[key]):
            raise StudyError(study.path, f"steering.{key}", value, f"a {_KEYS[key]}")
        out[key] = value
    layers = out.get("layers", [min(12, n_layers - 1)])
    if not layers or not all(isinstance(v, int) and 0 <= v < n_layers for v in layers):
        raise StudyError(study.path, "steering.layers", layers, f"a non-empty list of layers in 0..{n_layers - 1}")
    out["layers"] = tuple(layers)
    coefs = out.get("ab_coefficients", [-2.0, 0.0, 2.0])
    if len(coefs) < 2 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coefs):
        raise StudyError(study.path, "steering.ab_coefficients", coefs, "a list of at least two numbers")
    out["ab_coefficients"] = tuple(float(c) for c in coefs)
    for key in ("search_steps", "questions", "max_new_tokens", "ab_questions"):
        if key in out and out[key] < 1:
            raise StudyError(study.path, f"steering.{key}", out[key], "a positive integer")
    known = [t.key for t in study.traits]
    if "traits" in out:
        if not all(t in known for t in out["traits"]):
            raise StudyError(study.path, "steering.traits", out["traits"], f"trait keys among {', '.join(known)}")
        out["traits"] = tuple(out["traits"])
    if "methods" in out:
        # probe and pca vectors are unit-norm: a coefficient means something else for them, so they do not steer
        if not out["methods"] or not all(m in ("mean_diff", "file") for m in out["methods"]):
            raise StudyError(study.path, "steering.methods", out["methods"], "a non-empty list of mean_diff, file")
        out["methods"] = tuple(out["methods"])
    if out.get("mode", "add") not in ("add", "clamp"):
        raise StudyError(study.path, "steering.mode", out["mode"], "add or clamp")
    for key in ("coefficient", "coherence_min"):
        if key in out:
            out[key] = float(out[key])
    return SteeringSettings(**out)
