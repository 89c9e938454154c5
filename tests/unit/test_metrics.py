"""Metrics against independent computations (torch, numpy, scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from quant_harness.errors import CellError
from quant_harness.metrics.tensors import auroc, cosine, massive_dim_energy, pearson


def test_cosine_matches_torch() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(576, generator=g), torch.randn(576, generator=g)
    expected = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    assert cosine(a, b) == pytest.approx(expected, abs=1e-6)


def test_zero_and_nan_vectors_are_errors_not_scores() -> None:
    with pytest.raises(CellError, match="all zeros"):
        cosine(torch.ones(4), torch.zeros(4), what="cell x: layer 3 vector")
    with pytest.raises(CellError, match="NaN"):
        cosine(torch.ones(4), torch.tensor([1.0, float("nan"), 0.0, 0.0]))


def test_massive_dim_energy_by_hand() -> None:
    v = torch.tensor([3.0, -4.0, 1.0, 0.0, 2.0])
    assert massive_dim_energy(v, 2) == pytest.approx((9 + 16) / (9 + 16 + 1 + 4))


def test_auroc_matches_sklearn_with_ties() -> None:
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(50, generator=g).round(decimals=1) + 0.5
    neg = torch.randn(40, generator=g).round(decimals=1)
    y = np.r_[np.ones(50), np.zeros(40)]
    expected = roc_auc_score(y, np.r_[pos.numpy(), neg.numpy()])
    assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_auroc_needs_both_classes() -> None:
    with pytest.raises(CellError, match="both classes"):
        auroc(torch.ones(3), torch.ones(0))


def test_pearson_matches_numpy_and_rejects_constants() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, generator=g), torch.randn(30, generator=g)
    assert pearson(x, y) == pytest.approx(float(np.corrcoef(x.numpy(), y.numpy())[0, 1]), abs=1e-9)
    with pytest.raises(CellError, match="constant"):
        pearson(torch.ones(5), x[:5])
