"""Vector methods against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from steering_vectors import mean_aggregator

from quant_harness.errors import CellError
from quant_harness.extract.methods import mean_diff, pca, probe


def _pair(n: int = 40, d: int = 16, shift: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    neg = torch.randn(n, d, generator=g)
    direction = torch.zeros(d)
    direction[3] = shift
    return neg + direction + 0.1 * torch.randn(n, d, generator=g), neg


def test_mean_diff_matches_steering_vectors_mean_aggregator() -> None:
    pos, neg = _pair()
    torch.testing.assert_close(mean_diff(pos, neg), mean_aggregator()(pos, neg), rtol=1e-6, atol=1e-6)


def test_pca_matches_numpy_svd_up_to_sign_and_agrees_with_mean() -> None:
    pos, neg = _pair()
    deltas = (pos - neg).double().numpy()
    _, _, vt = np.linalg.svd(np.concatenate([deltas, -deltas]), full_matrices=False)
    ours = pca(pos, neg).double().numpy()
    assert abs(abs(float(ours @ vt[0])) - 1.0) < 1e-6
    assert float(ours @ deltas.mean(0)) > 0


def test_probe_is_unit_and_finds_the_separating_direction() -> None:
    pos, neg = _pair(shift=3.0)
    w = probe(pos, neg)
    assert abs(float(w.norm()) - 1.0) < 1e-5
    assert int(w.abs().argmax()) == 3 and float(w[3]) > 0


def test_probe_ignores_row_scale() -> None:
    pos, neg = _pair(shift=3.0)
    scale = torch.linspace(0.5, 50.0, len(pos))[:, None]
    torch.testing.assert_close(probe(pos * scale, neg), probe(pos, neg), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", [mean_diff, probe, pca])
def test_empty_split_is_an_error(method: object) -> None:
    with pytest.raises(CellError, match="empty contrast split"):
        method(torch.zeros(0, 4), torch.ones(3, 4))  # type: ignore[operator]


def test_nan_activations_are_an_error() -> None:
    pos, neg = _pair()
    pos[0, 0] = float("nan")
    with pytest.raises(CellError, match="NaN"):
        mean_diff(pos, neg)
