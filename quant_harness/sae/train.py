"""A small ReLU SAE trainer: enough to give the embedded model a dictionary on a CPU in seconds.

No library trainer is used: SAELens' trainer drags transformer-lens and wandb into the resolve (see bundle.py), and
the loop that matters fits here. The recipe: inputs scaled so that E||x||^2 = d_model, decoder rows initialised
at norm 0.1 with the encoder tied to them, loss = sum of squared error + ``l1`` x sum_i f_i ||W_dec[i]||, Adam,
then the scale folded back into the weights so the saved bundle reads raw residuals (``W_enc x + b_enc``).
Everything random comes from one ``torch.Generator`` seeded by ``seed``, so the same data and settings give the
same weights in one environment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from quant_harness.errors import CellError
from quant_harness.sae.settings import TrainSettings


def _check_data(x: Tensor, what: str) -> Tensor:
    if x.ndim != 2 or x.shape[0] < 2:
        raise CellError(f"{what}: expected at least two rows of [n, d_model] activations; got shape {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise CellError(f"{what} contains NaN or inf")
    return x.float()


def train_sae(x: Tensor, settings: TrainSettings) -> dict[str, Tensor]:
    """Train on rows of ``x [n_tokens, d_model]``; returns bundle tensors (W_enc, b_enc, W_dec, b_dec) in raw units.

    Runs on one CPU thread: float sums then do not depend on the machine's core count (the same seed gives the same
    weights everywhere), and small matrices train far faster than with threads that spin on a busy machine.
    """
    x = _check_data(x, "SAE training activations")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(x, settings)
    finally:
        torch.set_num_threads(threads)


def _train(x: Tensor, settings: TrainSettings) -> dict[str, Tensor]:
    n, d = x.shape
    gen = torch.Generator().manual_seed(settings.seed)
    scale = float((d / x.pow(2).sum(-1).mean()).sqrt())
    if not scale > 0 or scale == float("inf"):
        raise CellError("SAE training activations are all zero; cannot scale them")
    xs = x * scale
    mean = xs.mean(0)
    w_dec = torch.randn(settings.n_features, d, generator=gen)
    w_dec = 0.1 * w_dec / w_dec.norm(dim=-1, keepdim=True)
    w_dec.requires_grad_(True)
    w_enc = w_dec.detach().clone().requires_grad_(True)
    b_enc = (-(w_enc.detach() @ mean)).requires_grad_(True)
    b_dec = mean.clone().requires_grad_(True)
    params = [w_enc, b_enc, w_dec, b_dec]
    opt = torch.optim.Adam(params, lr=settings.lr)
    for step in range(settings.steps):
        idx = torch.randint(0, n, (min(settings.batch_size, n),), generator=gen)
        batch = xs[idx]
        f = torch.relu(batch @ w_enc.T + b_enc)
        rec = f @ w_dec + b_dec
        l1 = settings.l1 * min(1.0, (step + 1) / max(1, settings.steps // 10))
        loss = (rec - batch).pow(2).sum(-1).mean() + l1 * (f * w_dec.norm(dim=-1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return {"W_enc": (w_enc * scale).detach().clone(), "b_enc": b_enc.detach().clone(),
                "W_dec": (w_dec / scale).detach().clone(), "b_dec": (b_dec / scale).detach().clone()}


def evaluate(tensors: dict[str, Tensor], x: Tensor, *, what: str = "activations") -> dict[str, float]:
    """Reconstruction against the mean baseline, sparsity and dead features of a ReLU dictionary on ``x``.

    ``fvu`` is the fraction of variance unexplained: squared error over the squared error of predicting the mean of
    ``x`` for every row (the mean baseline, whose fvu is 1). ``dead_share``: features active on no row of ``x``.
    """
    x = _check_data(x, what)
    f = torch.relu(x @ tensors["W_enc"].T + tensors["b_enc"])
    rec = f @ tensors["W_dec"] + tensors["b_dec"]
    sse = float((rec - x).pow(2).sum())
    sse_mean = float((x - x.mean(0)).pow(2).sum())
    if sse_mean == 0.0:
        raise CellError(f"{what} are constant: the mean baseline leaves nothing to explain")
    return {"fvu": sse / sse_mean, "mse": sse / x.numel(), "mse_mean_baseline": sse_mean / x.numel(),
            "l0": float((f > 0).sum(-1).float().mean()), "dead_share": float(((f > 0).sum(0) == 0).float().mean()),
            "n_tokens": int(x.shape[0])}
