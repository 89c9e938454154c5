"""The ``[steering]`` table of a study: which layers, coefficients, traits and methods the steering cells use.

Parsed by ``study.load`` (torch-free, and importing nothing of the study package), so a bad table is a usage error
when the study loads and the grid can ask which vectors get judged steering cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from quant_harness import data
from quant_harness._util import depth
from quant_harness._util.depth import Layer
from quant_harness._util.validate import SectionContext, check_table, resolve
from quant_harness.errors import StudyError

AB_DIR = "fixtures/ab_questions"
REFUSAL_PROMPTS = "fixtures/ab_questions/refusal_prompts.json"
"""The defaults, relative to the study root; where the root has no such file, the copy shipped in quant_harness.data."""


@dataclass(frozen=True)
class SteeringSettings:
    """The study's ``[steering]`` table: kept small so the default study runs on a CPU in minutes."""

    layers: tuple[Layer, ...] = (depth.DEFAULT_FRACTION,)
    """Candidate layers (block outputs) as the study wrote them: block indices (int) or fractions of each model's
    depth (float); ``layers_for`` resolves them for one model. The first one is used for A/B, transfer and refusal
    cells."""
    coefficient: float = 4.0
    """Starting coefficient of the search (a multiple of the raw vector)."""
    search_steps: int = 2
    coherence_min: float = 50.0
    questions: int = 4
    max_new_tokens: int = 24
    ab_coefficients: tuple[float, ...] = (-2.0, 0.0, 2.0)
    ab_questions: int = 10
    ab_dir: str = AB_DIR
    """Folder of ``<trait>_test.json`` held-out A/B files, relative to the study root (``ab_file``)."""
    ab_files: tuple[tuple[str, str], ...] = ()
    """(trait key, file) pairs: a trait's held-out A/B file named outright (e.g. the CAA repository's
    ``test/<behavior>/test_dataset_ab.json``), relative to the study root; it takes the place of ``ab_dir``'s."""
    refusal_prompts: str = REFUSAL_PROMPTS
    """``{harmful: [...], harmless: [...]}`` for the refusal cells, relative to the study root (``refusal_file``)."""
    samples: int = 2
    """Responses kept per condition in each record, for review."""
    method: str = "mean_diff"
    """Whose vectors A/B, transfer and refusal cells use; steering cells use their own cell's method."""
    traits: tuple[str, ...] | None = None
    """Traits that get judged steering cells (None: every CAA and PV trait)."""
    methods: tuple[str, ...] = ("mean_diff",)
    """Methods whose vectors get judged steering cells (e.g. add "file" to steer with external/SAE vectors)."""
    mode: Literal["add", "clamp"] = "add"
    """Steering cells: ``add`` the vector x coefficient, or ``clamp`` the projection on it to coefficient x |v|
    (the SAE seed's clamp, which keeps high scales from blowing up activations)."""
    batch_rows: int = 64
    """Most rows (condition x prompt) one batched ``generate`` or A/B forward pass of a steering cell holds: its
    memory bound. Greedy outputs do not depend on it (except at LLM.int8, where it enters the cache keys)."""

    def layers_for(self, n_layers: int) -> tuple[int, ...]:
        """The candidate layers of a model of ``n_layers`` blocks (``round(f * n_layers)`` for a fraction f)."""
        return depth.resolve_all(self.layers, n_layers)

    def selects(self, trait: str, method: str) -> bool:
        """Whether the vector of (trait, method) gets a judged steering cell."""
        return (self.traits is None or trait in self.traits) and method in self.methods

    def ab_file(self, root: Path, trait: str) -> Path:
        """The held-out A/B file of ``trait``: ``<ab_dir>/<trait>_test.json`` against the study root; with the default
        ``ab_dir``, the file shipped in quant_harness/data/ab_questions when the root has none (it may not exist)."""
        named = dict(self.ab_files).get(trait)
        if named is not None:
            return resolve(named, root)
        name = f"{trait}_test.json"
        f = resolve(self.ab_dir, root) / name
        return data.study_or_shipped(f, "ab_questions", name) if self.ab_dir == AB_DIR else f

    def refusal_file(self, root: Path) -> Path:
        """The refusal cells' prompts against the study root; the shipped ones for the default when the root has none."""
        f = resolve(self.refusal_prompts, root)
        if self.refusal_prompts == REFUSAL_PROMPTS:
            return data.study_or_shipped(f, "ab_questions", "refusal_prompts.json")
        return f


STEER_METHODS = ("mean_diff", "probe", "pca", "file")
"""Methods whose vectors A/B, transfer and refusal cells can use (``[steering] method``)."""
_KEYS: dict[str, Any] = {
    "layers": list, "coefficient": (int, float), "search_steps": int, "coherence_min": (int, float),
    "questions": int, "max_new_tokens": int, "ab_coefficients": list, "ab_questions": int, "ab_dir": str,
    "refusal_prompts": str, "samples": int, "method": str, "mode": str, "traits": list, "methods": list,
    "batch_rows": int, "ab_files": dict,
}


def parse(ctx: SectionContext, table: object) -> SteeringSettings:
    """Validate ``[steering]`` (absent: the defaults); every problem is a StudyError naming file, key and value."""
    path, n_layers = ctx.path, ctx.n_layers
    out: dict[str, Any] = dict(check_table(path, "steering", {} if table is None else table, _KEYS))
    # fractions stay fractions: a study's models differ in depth, so each cell resolves them for its own model
    out["layers"] = depth.parse_layers(path, "steering.layers", out.get("layers", [depth.DEFAULT_FRACTION]), n_layers)
    coefs = out.get("ab_coefficients", [-2.0, 0.0, 2.0])
    if len(coefs) < 2 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coefs):
        raise StudyError(path, "steering.ab_coefficients", coefs, "a list of at least two numbers")
    out["ab_coefficients"] = tuple(float(c) for c in coefs)
    for key in ("search_steps", "questions", "max_new_tokens", "ab_questions", "batch_rows"):
        if key in out and out[key] < 1:
            raise StudyError(path, f"steering.{key}", out[key], "a positive integer")
    known = ctx.trait_keys
    if "ab_files" in out:
        for trait, f in out["ab_files"].items():
            if trait not in known or not isinstance(f, str) or not f:
                raise StudyError(path, f"steering.ab_files.{trait}", f, f"a file path, for a trait among "
                                                                        f"{', '.join(known)}")
        out["ab_files"] = tuple(sorted(out["ab_files"].items()))
    if "traits" in out:
        if not all(t in known for t in out["traits"]):
            raise StudyError(path, "steering.traits", out["traits"], f"trait keys among {', '.join(known)}")
        out["traits"] = tuple(out["traits"])
    if "methods" in out:
        # probe and pca vectors are unit-norm: a coefficient means something else for them, so they do not steer
        if not out["methods"] or not all(m in ("mean_diff", "file") for m in out["methods"]):
            raise StudyError(path, "steering.methods", out["methods"], "a non-empty list of mean_diff, file")
        out["methods"] = tuple(out["methods"])
    if out.get("method", "mean_diff") not in STEER_METHODS:
        raise StudyError(path, "steering.method", out["method"], f"one of {', '.join(STEER_METHODS)}")
    if out.get("mode", "add") not in ("add", "clamp"):
        raise StudyError(path, "steering.mode", out["mode"], "add or clamp")
    for key in ("coefficient", "coherence_min"):
        if key in out:
            out[key] = float(out[key])
    return SteeringSettings(**out)
