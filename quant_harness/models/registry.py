"""The precisions a study can name: one entry per precision, and every list of them is read from here.

Loading (``models.precision``), the study's names (``study.load``, ``study.ids``), the order reports list precisions
in (``report.plots``) and the planner's memory estimate (``scale.planner``) all read this table, so a precision is
added, renamed or re-estimated in one place. Plain data: importing it loads nothing (no torch, no quantizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["full", "bnb", "gptq"]


@dataclass(frozen=True)
class PrecisionSpec:
    """One precision."""

    name: str
    """The name studies, cell ids and cache keys use (``nf4``)."""
    kind: Kind
    """How it loads: ``full`` (a torch dtype), ``bnb`` (bitsandbytes quantization on load) or ``gptq``."""
    bytes_per_param: float
    """Weight bytes per parameter, for the planner's GPU memory estimate: 16-bit 2, LLM.int8 ~1 plus outlier
    columns, 4-bit ~0.5 plus scales and zeros."""
    display_order: int
    """Position in reports' tables and plots: fp32, bf16, fp16, then int8, nf4, gptq (unlike the registry order)."""
    needs_cuda: bool = False
    """Whether it cannot run without a CUDA device. None does: bitsandbytes >= 0.46 has CPU kernels for NF4 and
    LLM.int8, and gptqmodel quantizes and runs on CPU (``models.precision.unavailable_reason`` says what else a
    precision needs: its packages, and a newer bitsandbytes on CPU)."""
    dtype: str = ""
    """``full`` precisions: the torch dtype the weights load in."""


REGISTRY: dict[str, PrecisionSpec] = {p.name: p for p in (
    PrecisionSpec("fp32", "full", 4.0, 0, dtype="float32"),
    PrecisionSpec("fp16", "full", 2.0, 2, dtype="float16"),
    PrecisionSpec("bf16", "full", 2.0, 1, dtype="bfloat16"),
    PrecisionSpec("nf4", "bnb", 0.56, 4),
    PrecisionSpec("int8", "bnb", 1.05, 3),
    PrecisionSpec("gptq", "gptq", 0.6, 5),
)}
"""Every precision, in the order studies' error messages list them."""

PRECISIONS: tuple[str, ...] = tuple(REGISTRY)
"""The names, in registry order."""

DISPLAY_ORDER: tuple[str, ...] = tuple(sorted(REGISTRY, key=lambda name: REGISTRY[name].display_order))
"""The names in the order reports show them."""


def display_key(name: str) -> tuple[int, str]:
    """Sort key that puts precisions in report order; unknown names go last, alphabetically."""
    spec = REGISTRY.get(name)
    return (spec.display_order if spec is not None else len(REGISTRY), name)
