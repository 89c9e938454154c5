"""Vector methods: contrast activations of one layer (pos [N, d], neg [M, d]) -> a trait vector [d].

They read activations from the cache, never from a model, so every method is a pure function of two tensors.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from quant_harness.errors import CellError

Method = Callable[[Tensor, Tensor], Tensor]


def _check(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise CellError(f"contrast activations must be [N, d] and [M, d]; got {tuple(pos.shape)} and {tuple(neg.shape)}")
    if len(pos) == 0 or len(neg) == 0:
        raise CellError(f"empty contrast split: {len(pos)} positive and {len(neg)} negative examples")
    pos, neg = pos.float(), neg.float()
    if not (torch.isfinite(pos).all() and torch.isfinite(neg).all()):
        raise CellError("activations contain NaN or inf; refusing to build a vector from them")
    return pos, neg


def mean_diff(pos: Tensor, neg: Tensor) -> Tensor:
    """Difference of the class means (= mean of per-pair differences when pairs are 1:1)."""
    pos, neg = _check(pos, neg)
    return pos.mean(0) - neg.mean(0)


def probe(pos: Tensor, neg: Tensor, *, seed: int = 0, C: float = 1.0) -> Tensor:
    """Unit weight vector of a logistic regression on row-normalized activations.

    Row normalization removes the per-token scale (massive dims, quantization noise in the norm) so the probe
    reads direction only; the plan's H3 asks whether that makes probes more robust than mean_diff.
    """
    from sklearn.linear_model import LogisticRegression

    pos, neg = _check(pos, neg)
    x = torch.cat([pos, neg])
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(x.numpy().astype(np.float64), y)
    w = torch.from_numpy(clf.coef_[0]).float()
    return w / w.norm().clamp_min(1e-12)


def pca(pos: Tensor, neg: Tensor) -> Tensor:
    """First principal component of the paired differences, signed to agree with the mean difference."""
    pos, neg = _check(pos, neg)
    if len(pos) != len(neg):
        raise CellError(f"pca needs paired examples; got {len(pos)} positive and {len(neg)} negative")
    deltas = (pos - neg).double()
    _, _, vh = torch.linalg.svd(torch.cat([deltas, -deltas]), full_matrices=False)
    v = vh[0].float()
    return v if torch.dot(v, deltas.mean(0).float()) >= 0 else -v


METHODS: dict[str, Method] = {"mean_diff": mean_diff, "probe": probe, "pca": pca}
