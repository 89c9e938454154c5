"""Encoder oracle files (seed 002's method): seeded residuals, the top-k features a bundle gives them, a tolerance.

``write`` encodes a few seeded random residuals per layer with a bundle and stores the residuals themselves (so a
checker needs no RNG of ours), the top-k feature indices and their activations, the encoder formula and the
acceptance bar. ``check`` re-encodes the stored residuals with another bundle, implementation or precision: the
top-k index sets must match exactly and every magnitude must be within the file's tolerance.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from quant_harness.errors import BundleError
from quant_harness.sae.bundle import Bundle, load_bundle

FORMULAS = {"relu": "ReLU(W_enc @ x + b_enc)", "jumprelu": "pre * (pre > threshold), pre = W_enc @ x + b_enc",
            "topk": "TopK_k(ReLU(W_enc @ x + b_enc))"}


def top_features(bundle: Bundle, x: torch.Tensor, k: int) -> tuple[list[int], list[float], int]:
    """Indices and activations of the (at most k) largest active features of one residual, and the active count."""
    acts = bundle.encode(x.float().unsqueeze(0))[0]
    n_active = int((acts > 0).sum())
    values, idx = acts.topk(min(k, n_active)) if n_active else (acts[:0], acts[:0].long())
    return [int(i) for i in idx], [float(v) for v in values], n_active


def write(folder: str | Path, layers: Sequence[int], out: str | Path, *, seeds: int = 3, top_k: int = 10,
          tolerance: float = 1e-4, layout: str = "features_first") -> dict[str, Any]:
    """Write the oracle JSON for ``layers`` of the bundle in ``folder``; returns what was written."""
    cases = []
    shapes: dict[str, list[int]] = {}
    for layer in layers:
        bundle = load_bundle(folder, layer, layout=layout)
        shapes[str(layer)] = [bundle.n_features, bundle.d_model]
        for i in range(seeds):
            seed = 100 * i + layer
            x = torch.randn(bundle.d_model, generator=torch.Generator().manual_seed(seed))
            idx, values, n_active = top_features(bundle, x, top_k)
            cases.append({"layer": layer, "seed": seed, "residual": x.tolist(), "n_active": n_active,
                          "top": [{"index": i_, "activation": v} for i_, v in zip(idx, values)],
                          "activation": bundle.activation, "formula": FORMULAS[bundle.activation]})
    doc = {"bundle": str(Path(folder).resolve()), "layout": layout, "top_k": top_k,
           "acceptance": {"indices": "top-k index sets equal", "activation_abs_tolerance": tolerance},
           "shapes": shapes, "torch": torch.__version__, "platform": platform.platform(), "cases": cases}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1))
    return doc


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _rounded(bundle: Bundle, dtype: str) -> Bundle:
    """The bundle with its weights stored at ``dtype`` (encoding still runs in float32)."""
    if dtype not in DTYPES:
        raise BundleError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    r = {k: getattr(bundle, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip", "threshold")}
    r = {k: None if v is None else v.to(DTYPES[dtype]).float() for k, v in r.items()}
    return replace(bundle, **r)


def check(folder: str | Path, oracle: str | Path, *, layout: str | None = None,
          tolerance: float | None = None, dtype: str = "float32") -> list[str]:
    """Mismatches of the bundle in ``folder`` against an oracle file (empty list: it passes).

    ``dtype`` stores the bundle's weights at a lower precision first: does the dictionary survive fp16 or bf16?
    """
    path = Path(oracle)
    try:
        doc = json.loads(path.read_text())
        tol = float(tolerance if tolerance is not None else doc["acceptance"]["activation_abs_tolerance"])
        k, cases = int(doc["top_k"]), doc["cases"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{path}: not an oracle file ({e}); expected top_k, acceptance, cases") from e
    if not cases:
        raise BundleError(f"{path}: no cases; an empty oracle cannot pass anything")
    bundles: dict[int, Bundle] = {}
    problems = []
    for c in cases:
        layer = int(c["layer"])
        if layer not in bundles:
            bundles[layer] = _rounded(load_bundle(folder, layer, layout=layout or doc.get("layout", "features_first")),
                                      dtype)
        x = torch.tensor(c["residual"], dtype=torch.float32)
        idx, values, _ = top_features(bundles[layer], x, k)
        want = {int(t["index"]): float(t["activation"]) for t in c["top"]}
        got = dict(zip(idx, values))
        where = f"layer {layer} seed {c['seed']}"
        if set(got) != set(want):
            problems.append(f"{where}: top-{k} indices {sorted(got)} != oracle {sorted(want)}")
            continue
        worst = max((abs(got[i] - want[i]), i) for i in want) if want else (0.0, -1)
        if not worst[0] <= tol:
            problems.append(f"{where}: feature {worst[1]} activation {got[worst[1]]:.6g} vs oracle "
                            f"{want[worst[1]]:.6g} (|diff| {worst[0]:.3g} > {tol:g})")
    return problems
