"""The `file` method: external per-layer vectors and SAE decoder rows, in our layer convention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from quant_harness.errors import CellError
from quant_harness.extract.methods import load_vectors


def _mat(rows: int, d: int = 8) -> torch.Tensor:
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(0))


def test_per_layer_keys_in_safetensors(tmp_path: Path) -> None:
    m = _mat(4)
    save_file({f"layer_{i}": m[i].contiguous() for i in range(4)}, str(tmp_path / "v.safetensors"))
    out = load_vectors(tmp_path / "v.safetensors", [1, 3], n_layers=4)
    assert sorted(out) == [1, 3]
    torch.testing.assert_close(out[3], m[3])


def test_pv_hidden_states_layout_is_shifted_by_one(tmp_path: Path) -> None:
    m = _mat(5)   # [n_layers + 1, d]: row 0 = embeddings, row L + 1 = output of block L
    torch.save(m, tmp_path / "pv.pt")
    torch.testing.assert_close(load_vectors(tmp_path / "pv.pt", [0, 3], n_layers=4)[3], m[4])
    torch.save({"vectors": m[:4]}, tmp_path / "ours.pt")
    torch.testing.assert_close(load_vectors(tmp_path / "ours.pt", [3], n_layers=4)[3], m[3])


def test_sae_rows_sum_strength_times_decoder_rows(tmp_path: Path) -> None:
    w = _mat(16)
    save_file({"W_dec": w}, str(tmp_path / "sae.safetensors"))
    out = load_vectors(tmp_path / "sae.safetensors", [2], n_layers=4, sae_features=[[2, 5, 0.5], [2, 7, -2.0]])
    torch.testing.assert_close(out[2], 0.5 * w[5] - 2.0 * w[7])


def test_errors_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    save_file({"W_dec": _mat(16)}, str(tmp_path / "sae.safetensors"))
    with pytest.raises(CellError, match=r"sae.safetensors: sae_features\[0\] feature 99 not in a decoder"):
        load_vectors(tmp_path / "sae.safetensors", [2], n_layers=4, sae_features=[[2, 99, 1.0]])
    with pytest.raises(CellError, match="no vector for layer 1"):
        load_vectors(tmp_path / "sae.safetensors", [1], n_layers=4, sae_features=[[2, 3, 1.0]])
    save_file({"layer_0": torch.zeros(8)}, str(tmp_path / "zero.safetensors"))
    with pytest.raises(CellError, match="not a finite non-zero"):
        load_vectors(tmp_path / "zero.safetensors", [0], n_layers=4)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CellError, match="cannot be read"):
        load_vectors(tmp_path / "junk.safetensors", [0], n_layers=4)
