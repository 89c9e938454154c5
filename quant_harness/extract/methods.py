"""Vector methods: contrast activations of one layer (pos [N, d], neg [M, d]) -> a trait vector [d].

They read activations from the cache, never from a model, so every method is a pure function of two tensors.
The ``file`` method reads no activations at all: external vectors (per-layer vectors, or SAE decoder rows chosen by
``[layer, feature_id, strength]``) are loaded by ``load_vectors`` and compared on every precision's activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

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


def pca_sign_check(v_ref: Tensor, v_quant: Tensor, mean_diff_ref: Tensor) -> tuple[float, float]:
    """``(cos(v_ref, mean_diff_ref), cos(v_ref, v_quant signed to mean_diff_ref))`` at one layer: how much of the
    reference's PCA axis is its mean difference, and the cosine the two precisions' PCA vectors would have if each
    were signed to the reference's mean difference on its own.

    Why the second figure can be negative without the axes disagreeing: for unit vectors signed so that
    ``v_ref . m >= 0`` and ``v_quant . m >= 0`` (m the unit mean difference), write ``v_quant = cos t (+-v_ref) +
    sin t w`` with t the angle between the axes. The two signs can differ only if ``tan t >= |v_ref . m|``: the
    quantized axis turned further than the mean difference's share of the reference axis. So a negative cosine of
    mean-difference-signed PCA vectors is always the same axis (|cos| apart) whose sign the mean difference does not
    pin (PC1 nearly orthogonal to it, e.g. CAA's answer-letter axis, which the balanced letters leave without a mean),
    never a quantized vector pointing against the trait. Vector cells therefore compare a quantized PCA vector signed
    to the reference's PCA vector (quant_harness.metrics.resample.vector_agreement) and record, per layer, these two
    figures, so the layers where the mean difference alone would have flipped the sign stay visible.
    """
    v_ref, v_quant, m = v_ref.double(), v_quant.double(), mean_diff_ref.double()
    for name, v in (("reference PCA vector", v_ref), ("quantized PCA vector", v_quant), ("mean difference", m)):
        if float(v.norm()) == 0.0 or not bool(torch.isfinite(v).all()):
            raise CellError(f"pca sign check: the {name} is zero or not finite")
    signed = v_quant if float(v_quant @ m) >= 0 else -v_quant
    return (float(v_ref @ m / (v_ref.norm() * m.norm())),
            float(v_ref @ signed / (v_ref.norm() * signed.norm())))


METHODS: dict[str, Method] = {"mean_diff": mean_diff, "probe": probe, "pca": pca}
"""Methods computed from contrast activations; ``file`` is the fourth method and goes through ``load_vectors``."""

BatchedMethod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""A method over bootstrap resamples: ``(pos [N, d], neg [M, d], pos_idx [B, N'], neg_idx [B, M']) -> [B, d]``
(float64), one vector per row of indices, as if the method ran on ``pos[pos_idx[b]]`` and ``neg[neg_idx[b]]``.
Paired resamples pass the same indices for both classes."""


def _counts(idx: Tensor, n: int) -> Tensor:
    """How often each of ``n`` rows is drawn in each resample: ``[B, n]`` float64."""
    idx = idx.long()
    return torch.zeros(idx.shape[0], n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(idx.shape, dtype=torch.float64))


def _unit(v: Tensor, what: str) -> Tensor:
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()) or not bool(torch.isfinite(v).all()):
        raise CellError(f"{what}: a resample gives a zero or non-finite vector")
    out: Tensor = v / norm
    return out


def mean_diff_resampled(pos: Tensor, neg: Tensor, pos_idx: Tensor, neg_idx: Tensor) -> Tensor:
    """``mean_diff`` on every resample at once (a count-weighted mean of the rows)."""
    pos, neg = _check(pos, neg)
    wp = _counts(pos_idx, len(pos)) / pos_idx.shape[1]
    wn = _counts(neg_idx, len(neg)) / neg_idx.shape[1]
    return wp @ pos.double() - wn @ neg.double()


def _top_eigvec(gram: Tensor) -> Tensor:
    """The eigenvector of the largest eigenvalue of each symmetric ``[B, n, n]`` matrix."""
    _, vecs = torch.linalg.eigh(gram)
    top: Tensor = vecs[..., -1]
    return top


def _signed(v: Tensor, toward: Tensor) -> Tensor:
    sign = torch.where((v * toward).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(v.dtype)
    return v * sign


def pca_resampled(pos: Tensor, neg: Tensor, pos_idx: Tensor, neg_idx: Tensor) -> Tensor:
    """``pca`` (paired) on every resample of pairs: the top eigenvector of ``sum_b Delta_b Delta_b^T`` found through
    the ``[N, N]`` Gram matrix of the differences, signed to agree with the resample's mean difference."""
    pos, neg = _check(pos, neg)
    if len(pos) != len(neg) or pos_idx.shape != neg_idx.shape or not torch.equal(pos_idx, neg_idx):
        raise CellError("pca needs paired examples resampled by pair (the same indices for both classes)")
    delta = (pos - neg).double()
    c = _counts(pos_idx, len(pos))
    s = c.sqrt()
    u = _top_eigvec(s[:, :, None] * (delta @ delta.T)[None] * s[:, None, :])
    v = (s * u) @ delta
    return _unit(_signed(v, (c / pos_idx.shape[1]) @ delta), "pca")


def pca_unpaired_resampled(pos: Tensor, neg: Tensor, pos_idx: Tensor, neg_idx: Tensor) -> Tensor:
    """``pca_unpaired`` on every resample (each class resampled on its own); see ``pca_unpaired``."""
    pos, neg = _check(pos, neg)
    n, m = len(pos), len(neg)
    x = torch.cat([pos, neg]).double()
    wp, wn = _counts(pos_idx, n) / pos_idx.shape[1], _counts(neg_idx, m) / neg_idx.shape[1]
    omega = torch.cat([wp, wn], dim=1)                                   # [B, n+m]: each row's weight
    e = torch.cat([torch.zeros_like(wp), wn], dim=1)                     # neg mean = e @ x
    # Rows minus the neg mean are (I - 1 e^T) x; their Gram is K - 1 (Ke)^T - (Ke) 1^T + (e^T K e) 1 1^T.
    k = x @ x.T
    ke = e @ k
    eke = (ke * e).sum(-1)
    centred = k[None] - ke[:, None, :] - ke[:, :, None] + eke[:, None, None]
    s = omega.sqrt()
    su = s * _top_eigvec(s[:, :, None] * centred * s[:, None, :])
    coef = su - e * su.sum(-1, keepdim=True)                              # (I - 1 e^T)^T (s u)
    v = coef @ x
    return _unit(_signed(v, torch.cat([wp, -wn], dim=1) @ x), "pca (unpaired)")


def pca_unpaired(pos: Tensor, neg: Tensor) -> Tensor:
    """PCA of unpaired contrast sets without pairing rows by file order: the top eigenvector of the mean outer
    product of *every* difference ``pos_i - neg_j`` (all N x M of them), signed to agree with the mean difference.

    That second moment is ``mean_i (pos_i - nbar)(pos_i - nbar)^T + mean_j (neg_j - nbar)(neg_j - nbar)^T`` (the
    cross terms vanish), so it is found from N + M rows. On paired data ``pca`` averages over the real pairs instead.
    """
    return pca_unpaired_resampled(pos, neg, torch.arange(len(pos))[None], torch.arange(len(neg))[None])[0].float()


def _logistic_dual(gram: np.ndarray, y: np.ndarray, C: float, *, iterations: int = 100) -> np.ndarray:
    """Damped Newton for ``min 1/2 w.w + C sum log(1 + exp(-y (x.w + b)))`` with ``w = X^T alpha``, per batch row.

    ``gram`` is ``[B, r, r]`` (= X X^T of each resample's rows), ``y`` is +-1 ``[r]``; returns alpha ``[B, r]``.
    This is sklearn's L2 logistic regression (intercept not penalized) solved in the span of the rows. At the optimum
    ``alpha = -C g(f)`` with ``f = K alpha + b`` and ``sum alpha = 0`` (the intercept's condition); linearizing
    ``g`` gives, per step, the symmetric system ``(D^-1 + C K) alpha' = C (K alpha - g / D) - C db 1`` with ``db`` set
    by ``sum alpha' = 0``. Each step is halved until the objective does not increase (a pure Newton step can
    overshoot), so it converges from zero for every resample. numpy: its batched solve is several times faster than
    torch's for these small systems.
    """
    B, r, _ = gram.shape
    alpha, b = np.zeros((B, r)), np.zeros(B)
    rhs = np.ones((B, r, 2))
    diag = np.arange(r)

    def objective(a: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k_a = np.einsum("bij,bj->bi", gram, a)
        return 0.5 * (a * k_a).sum(-1) + C * np.logaddexp(0.0, -y * (k_a + bias[:, None])).sum(-1), k_a

    value, k_alpha = objective(alpha, b)
    for _ in range(iterations):
        f = np.clip(k_alpha + b[:, None], -500.0, 500.0)
        g = -y / (1.0 + np.exp(y * f))
        d = np.maximum(1.0 / (2.0 + np.exp(f) + np.exp(-f)), 1e-12)
        a = C * gram
        a[:, diag, diag] += 1.0 / d
        rhs[..., 0] = C * (k_alpha - g / d)
        u = np.linalg.solve(a, rhs)
        db = u[..., 0].sum(-1) / (C * u[..., 1].sum(-1))
        d_alpha = u[..., 0] - C * db[:, None] * u[..., 1] - alpha
        t = np.ones(B)
        for _ in range(40):
            trial, k_trial = objective(alpha + t[:, None] * d_alpha, b + t * db)
            worse = trial > value + 1e-12 * np.abs(value)
            if not worse.any():
                break
            t = np.where(worse, t / 2.0, t)
        else:
            trial, k_trial = objective(alpha + t[:, None] * d_alpha, b + t * db)
        step = np.maximum(np.abs(t[:, None] * d_alpha).max(-1), np.abs(t * db))
        alpha, b, value, k_alpha = alpha + t[:, None] * d_alpha, b + t * db, trial, k_trial
        if float(step.max()) < 1e-10:
            solution: np.ndarray = alpha
            return solution
    raise CellError(f"probe: logistic regression did not converge in {iterations} Newton steps")


def probe_resampled(pos: Tensor, neg: Tensor, pos_idx: Tensor, neg_idx: Tensor, *, C: float = 1.0) -> Tensor:
    """``probe`` on every resample at once: the same regularized logistic regression on row-normalized rows,
    solved exactly by Newton's method in the span of the resample's rows (sklearn's lbfgs stops at a tolerance)."""
    pos, neg = _check(pos, neg)
    n = len(pos)
    x = torch.cat([pos, neg]).double()
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rows = torch.cat([pos_idx.long(), n + neg_idx.long()], dim=1)                 # [B, r]
    y = torch.cat([torch.ones(pos_idx.shape[1]), -torch.ones(neg_idx.shape[1])]).double()
    k = (xn @ xn.T).numpy()
    r = rows.numpy()
    alpha = torch.from_numpy(_logistic_dual(k[r[:, :, None], r[:, None, :]], y.numpy(), C))
    coef = torch.zeros(rows.shape[0], len(x), dtype=torch.float64).scatter_add_(1, rows, alpha)
    return _unit(coef @ xn, "probe")


def fixed_direction(v: Tensor) -> BatchedMethod:
    """A vector that does not depend on the examples (method ``file``), as a BatchedMethod."""
    v = v.double()

    def run(pos: Tensor, neg: Tensor, pos_idx: Tensor, neg_idx: Tensor) -> Tensor:
        return v.expand(pos_idx.shape[0], -1)
    return run


def looped(fn: Method) -> BatchedMethod:
    """Any per-split method as a BatchedMethod, one call per resample (slow; for methods with no batched form)."""
    def run(pos: Tensor, neg: Tensor, pos_idx: Tensor, neg_idx: Tensor) -> Tensor:
        return torch.stack([fn(pos[a], neg[b]).double() for a, b in zip(pos_idx.long(), neg_idx.long())])
    return run


def resampled(method: str | Method, *, paired: bool) -> BatchedMethod:
    """The batched form of a method (a name of METHODS or one of its functions); ``pca`` of unpaired data is
    ``pca_unpaired``, since pairing harmful[i] with harmless[i] by file order means nothing. Other functions run
    once per resample."""
    fn = METHODS.get(method) if isinstance(method, str) else method
    if fn is None:
        raise CellError(f"unknown vector method {method!r}; expected one of {', '.join(METHODS)}")
    if fn is pca:
        return pca_resampled if paired else pca_unpaired_resampled
    fast: dict[Method, BatchedMethod] = {mean_diff: mean_diff_resampled, probe: probe_resampled,
                                         pca_unpaired: pca_unpaired_resampled}
    return fast.get(fn) or looped(fn)


def for_contrast(method: str, *, paired: bool) -> Method:
    """The per-split function of ``method`` for a contrast set: ``pca`` of unpaired data is ``pca_unpaired``."""
    if method == "pca" and not paired:
        return pca_unpaired
    return METHODS[method]

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
