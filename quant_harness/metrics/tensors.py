"""Pure metric functions on tensors. No model, no pytest: each one is tested against an independent computation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from quant_harness.errors import CellError


def check_vector(v: Tensor, what: str) -> Tensor:
    """A NaN or zero vector cannot be scored: raise instead of letting cosine return NaN or 0."""
    v = v.float()
    if not torch.isfinite(v).all():
        raise CellError(f"{what} contains NaN or inf; refusing to score it")
    if float(v.norm()) == 0.0:
        raise CellError(f"{what} is all zeros; refusing to score it")
    return v


def cosine(a: Tensor, b: Tensor, what: str = "vector") -> float:
    a, b = check_vector(a, f"{what} (reference)"), check_vector(b, what)
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def massive_dim_energy(v: Tensor, k: int) -> float:
    """Share of the squared norm that sits in the vector's k largest-magnitude dimensions."""
    v = check_vector(v, "vector").double()
    sq = v.pow(2)
    return float(sq.topk(min(k, len(sq))).values.sum() / sq.sum())


def auroc(scores_pos: Tensor, scores_neg: Tensor) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic (ties count one half)."""
    p, n = scores_pos.double().flatten(), scores_neg.double().flatten()
    if len(p) == 0 or len(n) == 0:
        raise CellError(f"AUROC needs both classes; got {len(p)} positive and {len(n)} negative scores")
    if not (torch.isfinite(p).all() and torch.isfinite(n).all()):
        raise CellError("AUROC scores contain NaN or inf")
    diff = p[:, None] - n[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation; a constant input has no defined correlation and is an error, not 0."""
    x, y = x.double().flatten(), y.double().flatten()
    if len(x) != len(y) or len(x) < 2:
        raise CellError(f"correlation needs two equal series of length >= 2; got {len(x)} and {len(y)}")
    xc, yc = x - x.mean(), y - y.mean()
    denom = float(xc.norm() * yc.norm())
    if denom == 0.0 or math.isnan(denom):
        raise CellError("correlation of a constant series is undefined")
    return float((xc * yc).sum()) / denom
