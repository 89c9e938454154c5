"""What makes a model's numbers what they are: the components every cache key built from a model run holds.

Activations, PV rollouts, SAE residuals and dictionaries, steering searches and points, A/B sweeps, refusal
generations and benchmark scores all start from ``key_components(card, precision, settings)``, so no cache can
forget one of them:

- ``model_identity``: which weights. A hub id with its revision (the card's ``revision``, else the commit the local
  hub cache resolved ``main`` to, else ``"unpinned"``); a local checkpoint by a digest of its files' names, sizes and
  modification times; the embedded model by its package name and version.
- ``precision`` and ``precision_settings`` (NF4 compute dtype, INT8 threshold, GPTQ source, group size,
  calibration), plus a digest of a local GPTQ checkpoint's files.
- ``numerics``: the device type the model runs on and the dtype of its unquantized parts (float32 on CPU, the
  card's native dtype on a GPU for nf4/int8/gptq), and the batch size where the results depend on it (LLM.int8
  routes a column through fp16 when any row of the batch has an outlier in it).
- ``versions``: torch, transformers, bitsandbytes, gptqmodel, optimum, lm_eval.

Torch is imported only inside ``device_type``; importing this module loads nothing heavy.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quant_harness._util import files
from quant_harness.models.cards import ModelCard
from quant_harness.models.registry import REGISTRY

LIBRARIES = ("torch", "transformers", "bitsandbytes", "gptqmodel", "optimum", "lm_eval")
"""Libraries whose version changes a model run's numbers."""
BATCH_DEPENDENT = frozenset({"int8"})
"""Precisions whose outputs depend on which rows share a batch (LLM.int8's outlier columns)."""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """The versions of LIBRARIES installed here ("absent" for one that is not)."""
    return {name: _version(name) for name in LIBRARIES}


def files_digest(path: str | Path) -> str:
    """A local checkpoint's digest: its files' names, sizes and modification times (quant_harness._util.files)."""
    return files.digest(path)


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def hub_revision(hub_id: str, revision: str = "") -> str:
    """The commit ``revision`` (default ``main``) of ``hub_id`` as the local hub cache resolved it, else the pinned
    name itself, else ``"unpinned"`` (the hub's ``main`` of the day: a key that cannot tell two snapshots apart)."""
    ref = _hub_cache() / f"models--{hub_id.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        commit = ref.read_text().strip()
    except OSError:
        commit = ""
    return commit or revision or "unpinned"


def model_identity(card: ModelCard) -> dict[str, str]:
    """Which full-precision weights ``card`` names (see the module docstring)."""
    if card.path:
        return {"local": str(card.path), "files": files_digest(card.path)}
    if card.embedded:
        return {"embedded": card.embedded, "version": _version(card.embedded)}
    return {"hub_id": card.hub_id, "revision": hub_revision(card.hub_id, getattr(card, "revision", ""))}


def device_type() -> str:
    """Where models run in this process: ``cuda`` when a GPU is visible (the loader puts models there), else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def unquantized_dtype(card: ModelCard, precision: str, device: str) -> str:
    """The dtype of the parts a precision leaves unquantized, as quant_harness.models.precision.load chooses it: the
    precision's own dtype for full precisions; for nf4/int8/gptq float32 on CPU and the card's native dtype on a GPU
    (``precision._compute_dtype``)."""
    spec = REGISTRY.get(precision)
    if spec is not None and spec.kind == "full":
        return str(spec.dtype)
    return "float32" if device == "cpu" else card.native_dtype


def key_components(card: ModelCard, precision: str, precision_settings: Mapping[str, Any], *,
                   batch_size: int | None = None, device: str | None = None) -> dict[str, Any]:
    """The components every artefact built from ``card`` at ``precision`` keys on; each caller adds what shapes its
    own result (data, layers, prompts, ...). ``batch_size`` enters only for BATCH_DEPENDENT precisions."""
    dev = device or device_type()
    numerics: dict[str, Any] = {"device": dev, "unquantized_dtype": unquantized_dtype(card, precision, dev)}
    if batch_size is not None and precision in BATCH_DEPENDENT:
        numerics["batch_size"] = batch_size
    out: dict[str, Any] = {
        "model": card.name, "weights": card.identity, "model_identity": model_identity(card),
        "precision": precision, "precision_settings": dict(precision_settings), "numerics": numerics,
        "versions": library_versions(),
    }
    if precision == "gptq" and card.gptq not in ("none", "quantize") and Path(card.gptq).exists():
        out["gptq_files"] = files_digest(card.gptq)
    return out
