"""Probe validation against independent code: sklearn's roc_auc_score, and no train/validation leakage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from quant_harness.errors import CellError
from quant_harness.extract.probes import layer_aurocs, split


def _acts(n: int = 40, layers: int = 3, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    neg = torch.randn(n, layers, d, generator=g)
    pos = torch.randn(n, layers, d, generator=g)
    pos[:, 1, 2] += 0.8   # layer 1 separates a little, layer 2 well, layer 0 not at all
    pos[:, 2, 2] += 3.0
    return pos, neg


def test_paired_split_keeps_pairs_together_and_is_seeded() -> None:
    s = split(20, 20, paired=True, val_fraction=0.25, seed=1)
    assert s.train_pos == s.train_neg and s.val_pos == s.val_neg and len(s.val_pos) == 5
    assert not set(s.train_pos) & set(s.val_pos) and sorted(s.train_pos + s.val_pos) == list(range(20))
    assert split(20, 20, paired=True, val_fraction=0.25, seed=1) == s != split(20, 20, paired=True,
                                                                               val_fraction=0.25, seed=2)


def test_unpaired_split_splits_each_class() -> None:
    s = split(16, 30, paired=False, val_fraction=0.25, seed=0)
    assert len(s.val_pos) == 4 and len(s.val_neg) == 8 and len(s.train_neg) == 22


def test_a_stratified_split_keeps_each_answer_letter_in_proportion() -> None:
    letters = ["A"] * 12 + ["B"] * 4   # an unbalanced CAA set: a plain split could validate on A only
    s = split(16, 16, paired=True, val_fraction=0.25, seed=3, strata=letters)
    assert sorted(s.train_pos + s.val_pos) == list(range(16)) and s.val_pos == s.val_neg
    assert [letters[i] for i in s.val_pos].count("A") == 3 and [letters[i] for i in s.val_pos].count("B") == 1
    for seed in range(20):   # every seed validates on both letters
        v = split(16, 16, paired=True, val_fraction=0.25, seed=seed, strata=letters).val_pos
        assert {letters[i] for i in v} == {"A", "B"}


def test_a_stratum_too_small_to_split_is_an_error_naming_it() -> None:
    with pytest.raises(CellError, match="'B'"):
        split(6, 6, paired=True, val_fraction=0.25, seed=0, strata=["A"] * 5 + ["B"])


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.25), (10, 0.0), (10, 1.0)])
def test_an_empty_split_is_an_error(n: int, fraction: float) -> None:
    with pytest.raises(CellError):
        split(n, n, paired=True, val_fraction=fraction, seed=0)


def test_mean_diff_auroc_per_layer_matches_sklearn() -> None:
    pos, neg = _acts()
    s = split(40, 40, paired=True, val_fraction=0.25, seed=0)
    ours = layer_aurocs(pos, neg, s, "mean_diff")
    for i, value in enumerate(ours):
        w = pos[s.train_pos, i].mean(0) - neg[s.train_neg, i].mean(0)
        scores = torch.cat([pos[s.val_pos, i], neg[s.val_neg, i]]) @ w
        y = np.r_[np.ones(len(s.val_pos)), np.zeros(len(s.val_neg))]
        assert value == pytest.approx(roc_auc_score(y, scores.numpy()), abs=1e-12)
    assert ours[2] > 0.95 and ours[0] < ours[2]


def test_probe_auroc_matches_an_sklearn_probe_on_normalized_rows() -> None:
    pos, neg = _acts()
    s = split(40, 40, paired=True, val_fraction=0.25, seed=0)
    ours = layer_aurocs(pos, neg, s, "probe")
    for i, value in enumerate(ours):
        x = torch.cat([pos[s.train_pos, i], neg[s.train_neg, i]]).double()
        x = (x / x.norm(dim=1, keepdim=True)).numpy()
        clf = LogisticRegression(max_iter=2000, random_state=0).fit(x, np.r_[np.ones(30), np.zeros(30)])
        v = torch.cat([pos[s.val_pos, i], neg[s.val_neg, i]]).double()
        v = (v / v.norm(dim=1, keepdim=True)).numpy()
        expected = roc_auc_score(np.r_[np.ones(10), np.zeros(10)], v @ clf.coef_[0])
        assert value == pytest.approx(expected, abs=1e-6)


def test_a_fixed_direction_is_scored_without_training() -> None:
    pos, neg = _acts()
    s = split(40, 40, paired=True, val_fraction=0.25, seed=0)
    e2 = torch.zeros(12)
    e2[2] = 1.0
    fixed = layer_aurocs(pos, neg, s, "file", {5: e2, 6: e2, 7: -e2}, [5, 6, 7])
    assert fixed[2] < 0.05 and fixed[1] > 0.5
