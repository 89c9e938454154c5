"""Calibration of the vector and probe verdicts on synthetic activations (numpy/torch only, no model).

Each check runs many seeded replicate cells of the statistic the cells run (quant_harness.metrics.resample) on data
the size of the real contrast sets (24 pairs, d = 32):

(a) a null: the quantized activations are the reference's, rescaled and offset, plus small noise that does not move
    the underlying direction: at most 5% of cells may be degraded or broken;
(b) a known change is detected in its band: the true direction rotated to cos 0.9 is degraded and to cos 0.7 broken
    (vectors); the probe's signal removed is broken, a 0.1 AUROC drop degraded (probes), in at least 95% of cells
    where the data can resolve it;
(c) labels shuffled (no direction at all): the cell is inconclusive, never robust or broken.

The rates measured are printed (``pytest -s``) and asserted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from quant_harness.extract import methods
from quant_harness.extract.probes import split
from quant_harness.metrics import resample
from quant_harness.metrics.verdicts import DEFAULT_BANDS

N, LAYERS, D, SIGNAL = 24, 3, 32, 10.0
KAPPA_01 = 0.2563
"""Share of the signal kept for a 0.1 AUROC drop: pos and neg scores along u each have variance 2 (content +
noise), so AUROC = Phi(kappa * SIGNAL / 2) = 0.9 from a reference at Phi(5) = 1."""
REPLICATES, N_BOOT = 200, 300
COSINE, DROP, AUROC = DEFAULT_BANDS["cosine"], DEFAULT_BANDS["auroc_drop"], DEFAULT_BANDS["auroc"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _t(x: np.ndarray) -> Tensor:
    return torch.from_numpy(x)


def contrast(seed: int, *, n: int = N, signal: float = SIGNAL, shuffled: bool = False,
             paired: bool = True) -> tuple[np.random.Generator, np.ndarray, Tensor, Tensor]:
    """Reference activations ``[n, layers, d]``: pos = shared content + signal * u + noise, neg = content + noise.

    ``shuffled`` swaps pos and neg in exactly half the pairs (a balanced shuffle leaves no signed direction; an
    unbalanced one would leave a real 2:1 majority along u). Unpaired sets draw their content independently.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(LAYERS, D))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    base = rng.normal(size=(n, LAYERS, D))
    pos = base + signal * u + rng.normal(size=(n, LAYERS, D))
    neg = (base if paired else rng.normal(size=(n, LAYERS, D))) + rng.normal(size=(n, LAYERS, D))
    if shuffled:
        flip = rng.permutation(n) < n // 2
        pos[flip], neg[flip] = neg[flip].copy(), pos[flip].copy()
    return rng, u, _t(pos), _t(neg)


def null_quantized(rng: np.random.Generator, x: Tensor, noise: float = 0.3) -> Tensor:
    """Rescaled, offset and noisy, with the direction unmoved (noise 0.3 of the examples' own spread)."""
    return 1.1 * x + 0.5 + noise * _t(rng.normal(size=tuple(x.shape)))


def rotation(rng: np.random.Generator, u: np.ndarray, cos: float) -> Tensor:
    """Per layer, the rotation by the angle whose cosine is ``cos`` in the plane of u and a random direction."""
    out = np.zeros((LAYERS, D, D))
    s = np.sqrt(1.0 - cos * cos)
    for layer in range(LAYERS):
        a = u[layer]
        b = rng.normal(size=D)
        b -= (b @ a) * a
        b /= np.linalg.norm(b)
        out[layer] = np.eye(D) + (cos - 1.0) * (np.outer(a, a) + np.outer(b, b)) + s * (np.outer(b, a) - np.outer(a, b))
    return _t(out)


def rotated(rng: np.random.Generator, r: Tensor, x: Tensor) -> Tensor:
    """Every activation rotated by ``r`` (one matrix per layer), plus small noise."""
    return torch.einsum("lij,nlj->nli", r, x) + 0.1 * _t(rng.normal(size=tuple(x.shape)))


def vector_verdicts(make: Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]], method: resample.BatchedMethod,
                    *, replicates: int = REPLICATES, paired: bool = True, align: bool = False,
                    n_boot: int = N_BOOT) -> Counter[str]:
    out: Counter[str] = Counter()
    for seed in range(replicates):
        rp, rn, qp, qn = make(seed)
        a = resample.vector_agreement(rp, rn, qp, qn, method, COSINE, seed=seed, n_boot=n_boot, paired=paired,
                                      align_to_mean_diff=align)
        out[a.judgement.verdict.label] += 1
    return out


def _null(paired: bool = True, n: int = N) -> Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]]:
    def make(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rng, _, rp, rn = contrast(seed, paired=paired, n=n)
        return rp, rn, null_quantized(rng, rp), null_quantized(rng, rn)
    return make


def _rotation(cos: float, paired: bool = True, n: int = N) -> Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]]:
    def make(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rng, u, rp, rn = contrast(seed, paired=paired, n=n)
        r = rotation(rng, u, cos)
        return rp, rn, rotated(rng, r, rp), rotated(rng, r, rn)
    return make


def _shuffled(paired: bool = True, n: int = N) -> Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]]:
    def make(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rng, _, rp, rn = contrast(seed, shuffled=True, paired=paired, n=n)
        return rp, rn, null_quantized(rng, rp), null_quantized(rng, rn)
    return make


def _report(what: str, counts: Counter[str], total: int) -> None:
    print(f"\n{what}: " + ", ".join(f"{k} {v}/{total} ({v / total:.1%})" for k, v in sorted(counts.items())))


# --- vectors ------------------------------------------------------------------------------------------------------

def test_the_rotation_is_orthogonal_and_turns_u_by_the_stated_angle() -> None:
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.normal(size=(D, D)))[0][:LAYERS]
    r = rotation(rng, u, 0.7).numpy()
    for layer in range(LAYERS):
        assert np.allclose(r[layer] @ r[layer].T, np.eye(D), atol=1e-12)
        assert float(u[layer] @ r[layer] @ u[layer]) == pytest.approx(0.7, abs=1e-12)


def test_vector_null_is_rarely_degraded_or_broken() -> None:
    counts = vector_verdicts(_null(), methods.mean_diff_resampled)
    _report("vectors (a) null, mean_diff", counts, REPLICATES)
    assert counts["degraded"] + counts["broken"] <= 0.05 * REPLICATES
    assert counts["robust"] >= 0.9 * REPLICATES   # the data can decide here: strong signal, 24 pairs


@pytest.mark.parametrize(("cos", "band"), [(0.9, "degraded"), (0.7, "broken")])
def test_vector_rotation_is_detected_in_its_band(cos: float, band: str) -> None:
    counts = vector_verdicts(_rotation(cos), methods.mean_diff_resampled)
    _report(f"vectors (b) rotation to cos {cos}, mean_diff", counts, REPLICATES)
    assert counts[band] >= 0.95 * REPLICATES


def test_vector_with_shuffled_labels_is_inconclusive() -> None:
    counts = vector_verdicts(_shuffled(), methods.mean_diff_resampled)
    _report("vectors (c) shuffled labels, mean_diff", counts, REPLICATES)
    assert counts["inconclusive"] == REPLICATES


@pytest.mark.parametrize("paired", [True, False])
def test_vector_calibration_holds_for_pca(paired: bool) -> None:
    """PCA (paired; on unpaired sets, PCA of every difference, 16 + 16 examples like the Arditi set), signed to the
    reference's mean difference."""
    method = methods.pca_resampled if paired else methods.pca_unpaired_resampled
    n, size = 40, N if paired else 16

    def run(make: Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]]) -> Counter[str]:
        return vector_verdicts(make, method, replicates=n, paired=paired, align=True, n_boot=200)
    null, rot, shuf = run(_null(paired, size)), run(_rotation(0.7, paired, size)), run(_shuffled(paired, size))
    for what, c in (("null", null), ("cos 0.7", rot), ("shuffled", shuf)):
        _report(f"vectors pca paired={paired} {what}", c, n)
    assert null["degraded"] + null["broken"] <= 0.05 * n and rot["broken"] >= 0.95 * n
    assert shuf["robust"] == 0 and shuf["broken"] == 0


@pytest.mark.parametrize(("label", "method", "paired", "replicates", "n_boot", "rotations", "null"), [
    ("unpaired mean_diff", methods.mean_diff_resampled, False, 100, N_BOOT, {0.9: "degraded"}, True),
    # the logistic-regression probe direction (a batched exact solver, refit on every resample): fewer replicates
    ("probe", methods.probe_resampled, True, 10, 200, {0.9: "degraded", 0.7: "broken"}, False),
])
def test_vector_calibration_holds_for_other_methods(label: str, method: resample.BatchedMethod, paired: bool,
                                                    replicates: int, n_boot: int, rotations: dict[float, str],
                                                    null: bool) -> None:
    """Rotations land in their band in at least 95% of replicate cells, shuffled labels are never robust or broken,
    and (where run) the null is rarely degraded or broken."""
    def run(make: Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]]) -> Counter[str]:
        return vector_verdicts(make, method, replicates=replicates, paired=paired, n_boot=n_boot)

    for cos, band in rotations.items():
        rot = run(_rotation(cos, paired))
        _report(f"vectors {label} cos {cos}", rot, replicates)
        assert rot[band] >= 0.95 * replicates, (cos, rot)
    shuf = run(_shuffled(paired))
    _report(f"vectors {label} shuffled", shuf, replicates)
    assert shuf["robust"] == shuf["broken"] == 0
    if null:
        counts = run(_null(paired))
        _report(f"vectors {label} null", counts, replicates)
        assert counts["degraded"] + counts["broken"] <= 0.05 * replicates


# --- probes -------------------------------------------------------------------------------------------------------

def probe_verdicts(make: Callable[[int], tuple[Tensor, Tensor, Tensor | None, Tensor | None]], *,
                   n: int = N, replicates: int = REPLICATES) -> tuple[Counter[str], int]:
    """Verdicts of replicate probe cells (mean_diff direction, layer chosen by CV on the train split) and how many
    passed the reference gate."""
    out: Counter[str] = Counter()
    gates = 0
    for seed in range(replicates):
        rp, rn, qp, qn = make(seed)
        s = split(n, n, paired=True, val_fraction=0.25, seed=seed)
        layer, _ = resample.select_layer(rp, rn, s, methods.mean_diff_resampled, paired=True, normalize=False,
                                         seed=seed)
        pd = resample.probe_drop(rp, rn, qp, qn, s, layer, methods.mean_diff_resampled, DROP, seed=seed,
                                 n_boot=N_BOOT, reference_band=AUROC)
        out[pd.judgement.verdict.label] += 1
        gates += pd.gate_passed
    return out, gates


def _signal_lost(kappa: float, n: int = N) -> Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The quantized positives keep ``kappa`` of the signal along u (0: the trait is unreadable after quantization)."""
    def make(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rng, u, rp, rn = contrast(seed, n=n)
        qp = rp - (1.0 - kappa) * SIGNAL * _t(u)[None] + 0.1 * _t(rng.normal(size=tuple(rp.shape)))
        return rp, rn, qp, rn + 0.1 * _t(rng.normal(size=tuple(rn.shape)))
    return make


def test_probe_null_is_rarely_degraded_or_broken() -> None:
    counts, gates = probe_verdicts(_null())
    _report(f"probes (a) null (gate passed {gates})", counts, REPLICATES)
    assert counts["degraded"] + counts["broken"] <= 0.05 * REPLICATES and counts["robust"] >= 0.9 * REPLICATES


def test_probe_with_shuffled_labels_is_inconclusive_and_fails_the_reference_gate() -> None:
    counts, gates = probe_verdicts(_shuffled())
    ref, ref_gates = probe_verdicts(lambda seed: (*_shuffled()(seed)[:2], None, None))
    _report(f"probes (c) shuffled labels (gate passed {gates})", counts, REPLICATES)
    _report(f"probes (c) shuffled labels, reference cells (gate passed {ref_gates})", ref, REPLICATES)
    assert counts["robust"] == counts["broken"] == 0 and ref["robust"] == ref["broken"] == 0
    assert gates <= 0.01 * REPLICATES


def test_probe_reference_cell_with_signal_passes_its_gate() -> None:
    ref, gates = probe_verdicts(lambda seed: (*contrast(seed)[2:], None, None), replicates=50)
    assert gates == 50 and ref["robust"] == 50


def test_probe_signal_lost_is_broken_where_the_validation_split_can_show_it() -> None:
    """At 24 pairs the validation split is 6 + 6: even a total loss of the signal is broken in only about half the
    cells (the quantized AUROC of a direction fit on noise spans most of 0..1 there), never robust; at 48 pairs
    (12 + 12) it is broken in at least 95%."""
    small, _ = probe_verdicts(_signal_lost(0.0))
    _report("probes (b) signal lost, 24 pairs", small, REPLICATES)
    assert small["robust"] == small["degraded"] == 0 and small["broken"] >= 0.35 * REPLICATES
    big, _ = probe_verdicts(_signal_lost(0.0, n=48), n=48, replicates=100)
    _report("probes (b) signal lost, 48 pairs", big, 100)
    assert big["broken"] >= 95


def test_probe_small_drop_is_degraded_with_enough_validation_examples() -> None:
    """A drop of about 0.1 (quantized AUROC ~0.9): at 24 pairs never broken (mostly inconclusive); at 1200 pairs
    (300 + 300 validation) degraded in at least 95%."""
    small, _ = probe_verdicts(_signal_lost(KAPPA_01))
    _report("probes (b) 0.1 drop, 24 pairs", small, REPLICATES)
    assert small["broken"] <= 0.05 * REPLICATES
    n = 1200
    big, _ = probe_verdicts(_signal_lost(KAPPA_01, n=n), n=n, replicates=40)
    _report("probes (b) 0.1 drop, 1200 pairs", big, 40)
    assert big["degraded"] >= 38
