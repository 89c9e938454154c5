"""Vector methods: contrast activations of one layer (pos [N, d], neg [M, d]) -> a trait vector [d].

They read activations from the cache, never from a model, so every method is a pure function of two tensors.
The ``file`` method reads no activations at all: external vectors (per-layer vectors, or SAE decoder rows chosen by
``[layer, feature_id, strength]``) are loaded by ``load_vectors`` and compared on every precision's activations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

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
"""Methods computed from contrast activations; ``file`` is the fourth method and goes through ``load_vectors``."""

_DECODER_KEYS = ("W_dec", "w_dec", "decoder", "W_D")


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # safetensors raises its own error types
            raise CellError(f"{path}: cannot be read as safetensors: {e}") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise CellError(f"{path}: cannot be read as a torch file: {e}") from e
    if isinstance(obj, Tensor):
        return {"vectors": obj}
    if isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    raise CellError(f"{path}: expected a tensor or a dict of tensors, got {type(obj).__name__}")


def load_vectors(path: Path, layers: Sequence[int], n_layers: int,
                 sae_features: Sequence[Sequence[float]] = ()) -> dict[int, Tensor]:
    """External vectors for ``layers`` (our convention: layer L = output of block L).

    Accepted layouts: keys ``"<L>"`` / ``"layer_<L>"`` / ``"layers.<L>"`` holding ``[d]`` vectors; one 2-D tensor with
    ``n_layers`` rows (row L = layer L) or ``n_layers + 1`` rows (PV's hidden_states layout: row L+1 = layer L); or an
    SAE decoder ``W_dec [n_features, d]`` (one for all layers, or ``W_dec.<L>`` per layer) with ``sae_features`` rows
    ``[layer, feature_id, strength]`` summed per layer.
    """
    tensors = _read_tensors(Path(path))
    if sae_features:
        out = _sae_vectors(path, tensors, sae_features)
    else:
        out = _layer_vectors(path, tensors, n_layers)
    missing = [L for L in layers if L not in out]
    if missing:
        raise CellError(f"{path}: no vector for layer {missing[0]}; it holds layers {sorted(out)}")
    vecs = {L: out[L].float() for L in layers}
    for L, v in vecs.items():
        if v.ndim != 1 or not torch.isfinite(v).all() or float(v.norm()) == 0.0:
            raise CellError(f"{path}: layer {L} vector is not a finite non-zero [d] vector (shape {tuple(v.shape)})")
    return vecs


def _layer_vectors(path: Path, tensors: dict[str, Tensor], n_layers: int) -> dict[int, Tensor]:
    out: dict[int, Tensor] = {}
    for key, t in tensors.items():
        tail = key.rsplit("_", 1)[-1].rsplit(".", 1)[-1]
        if tail.isdigit() and t.ndim == 1:
            out[int(tail)] = t
    if out:
        return out
    mats = [t for t in tensors.values() if t.ndim == 2]
    if len(mats) == 1 and len(mats[0]) in (n_layers, n_layers + 1):
        m = mats[0]
        shift = 1 if len(m) == n_layers + 1 else 0
        return {L: m[L + shift] for L in range(n_layers)}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    raise CellError(f"{path}: tensors {shapes}; expected per-layer [d] vectors keyed by layer, one [{n_layers}, d] "
                    f"or [{n_layers + 1}, d] matrix, or an SAE decoder with sae_features rows")


def _sae_vectors(path: Path, tensors: dict[str, Tensor], rows: Sequence[Sequence[float]]) -> dict[int, Tensor]:
    decoders: dict[int, Tensor] = {}
    for i, row in enumerate(rows):
        layer = int(row[0])
        w = next((tensors[k] for k in (f"{d}.{layer}" for d in _DECODER_KEYS) if k in tensors), None)
        if w is None:
            w = next((tensors[k] for k in _DECODER_KEYS if k in tensors), None)
        if w is None:
            raise CellError(f"{path}: no SAE decoder ({', '.join(_DECODER_KEYS)}) for sae_features[{i}]; "
                            f"found {', '.join(sorted(tensors))}")
        decoders[layer] = w
    try:
        return sae_feature_vectors(decoders, rows)
    except ValueError as e:
        raise CellError(f"{path}: {e}") from e


def sae_feature_vectors(decoder: Tensor | dict[int, Tensor], rows: Sequence[Sequence[float]]) -> dict[int, Tensor]:
    """Steering vectors from SAE features: each ``[layer, feature_id, strength]`` row adds ``strength x W_dec[feature]``
    to its layer's vector. ``decoder`` is one ``[n_features, d_model]`` matrix for every layer, or one per layer."""
    out: dict[int, Tensor] = {}
    for i, row in enumerate(rows):
        if len(row) != 3:
            raise ValueError(f"sae_features[{i}] = {list(row)!r}: expected [layer, feature_id, strength]")
        layer, feature, strength = int(row[0]), int(row[1]), float(row[2])
        w = decoder[layer] if isinstance(decoder, dict) else decoder
        if w.ndim != 2 or not 0 <= feature < w.shape[0]:
            raise ValueError(f"sae_features[{i}] feature {feature} not in a decoder of shape {tuple(w.shape)}")
        out[layer] = out.get(layer, torch.zeros(w.shape[1])) + strength * w[feature].detach().float()
    if not out:
        raise ValueError("no SAE rows: expected at least one [layer, feature_id, strength]")
    return out
