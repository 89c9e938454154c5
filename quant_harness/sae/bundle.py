"""Dictionary bundles (SAEs and transcoders) on disk, and their encoders.

A bundle is a folder of ``layer_{L}.safetensors`` files, one per layer (the PLT/transcoder convention of seed 002),
each holding ``W_enc [n_features, d_model]``, ``b_enc [n_features]``, ``W_dec [n_features, d_model]``,
``b_dec [d_model]`` and optionally ``W_skip [d_model, d_model]`` (transcoders' linear skip path) and
``threshold [n_features]`` (JumpReLU). SAELens and GemmaScope store ``W_enc`` as ``[d_model, n_features]``: load
those with ``layout="saelens"``, which transposes it. Names, shapes and orientation are checked on load and every
problem names the file and the tensor, because a transposed or misnamed tensor otherwise encodes silently wrong.

The safetensors header metadata may carry ``activation`` (relu, jumprelu, topk), ``k`` (TopK) and
``apply_b_dec_to_input`` ("true" subtracts ``b_dec`` before encoding, as some SAELens SAEs do).

SAELens saves one folder per SAE (``cfg.json`` + ``sae_weights.safetensors``): with ``layout="saelens"`` a bundle
folder may hold ``layer_{L}/`` folders of that kind, and ``cfg.json``'s ``architecture`` (standard, jumprelu, topk),
``k`` and ``apply_b_dec_to_input`` stand in for the header metadata.

SAELens itself (``sae-lens``) is not a dependency. sae-lens 6.54.12 does resolve here next to torch 2.14.1 and
transformers 5.23 without moving them (``pip install --dry-run``), but it adds about 45 packages (transformer-lens,
wandb, plotly, statsmodels, opentelemetry, ...) to read what is a dict of tensors and a JSON file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from quant_harness.errors import BundleError
from quant_harness.sae.settings import LAYOUTS

REQUIRED = ("W_enc", "b_enc", "W_dec", "b_dec")
OPTIONAL = ("W_skip", "threshold")
ACTIVATIONS = ("relu", "jumprelu", "topk")


@dataclass(frozen=True)
class Bundle:
    """One layer's dictionary in float32, oriented ``[n_features, d_model]`` whatever its file's layout."""

    path: Path
    layer: int
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    W_skip: Tensor | None = None
    threshold: Tensor | None = None
    activation: str = "relu"
    k: int = 0
    apply_b_dec_to_input: bool = False
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.W_enc.shape[1])

    def pre_activations(self, x: Tensor) -> Tensor:
        """``W_enc x + b_enc`` for each row of ``x [..., d_model]`` (minus ``b_dec`` first when the bundle says)."""
        x = x.float()
        if x.shape[-1] != self.d_model:
            raise BundleError(f"{self.path}: input has width {x.shape[-1]}; the dictionary expects d_model "
                              f"{self.d_model}")
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc.T + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations ``[..., n_features]`` under the bundle's activation function."""
        return activate(self.pre_activations(x), self.activation, threshold=self.threshold, k=self.k)

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """``acts W_dec + b_dec`` (+ ``W_skip x`` for a transcoder, which then needs its input ``x``)."""
        out = acts.float() @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise BundleError(f"{self.path}: a transcoder (W_skip present) decodes from its input too; pass x")
            out = out + x.float() @ self.W_skip.T
        return out


def activate(pre: Tensor, activation: str, *, threshold: Tensor | None = None, k: int = 0) -> Tensor:
    """ReLU; JumpReLU ``pre * (pre > threshold)`` (a value equal to its threshold is off); TopK of the ReLU."""
    if activation == "relu":
        return torch.relu(pre)
    if activation == "jumprelu":
        if threshold is None:
            raise BundleError("jumprelu needs a threshold tensor")
        return pre * (pre > threshold)
    if activation == "topk":
        if not 0 < k <= pre.shape[-1]:
            raise BundleError(f"topk needs 0 < k <= n_features ({pre.shape[-1]}); got k={k}")
        values, idx = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(values))
    raise BundleError(f"activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")


def layer_file(folder: Path, layer: int) -> Path:
    return Path(folder) / f"layer_{layer}.safetensors"


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def load_bundle(folder: str | Path, layer: int, *, layout: str = "features_first",
                d_model: int | None = None) -> Bundle:
    """Read and validate ``<folder>/layer_{layer}.safetensors``; ``d_model`` (the model's width) is checked if given."""
    from safetensors import safe_open

    if layout not in LAYOUTS:
        raise BundleError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    f = layer_file(Path(folder), layer)
    cfg: dict[str, str] = {}
    saelens_file = Path(folder) / f"layer_{layer}" / "sae_weights.safetensors"
    if layout == "saelens" and not f.is_file() and saelens_file.is_file():
        f = saelens_file
        cfg = _saelens_cfg(f.parent / "cfg.json")
    if not f.is_file():
        found = sorted(p.name for p in Path(folder).glob("layer_*.safetensors")) if Path(folder).is_dir() else []
        raise BundleError(f"{f}: no such bundle file; found {', '.join(found) or 'none'} in {folder}")
    try:
        with safe_open(str(f), framework="pt") as sf:
            raw = {name: sf.get_tensor(name).float() for name in sf.keys()}
            meta = {**dict(sf.metadata() or {}), **cfg}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise BundleError(f"{f}: cannot be read as safetensors: {e}") from e
    missing = [n for n in REQUIRED if n not in raw]
    unknown = sorted(n for n in raw if n not in REQUIRED + OPTIONAL)
    if missing or unknown:
        raise BundleError(f"{f}: tensor {(missing or unknown)[0]} {'missing' if missing else 'is not expected'}; "
                          f"found {', '.join(sorted(raw))}; expected {', '.join(REQUIRED)} "
                          f"(+ optional {', '.join(OPTIONAL)})")
    w_enc = raw["W_enc"].T.contiguous() if layout == "saelens" else raw["W_enc"]
    n = int(raw["b_enc"].numel())
    width = d_model if d_model is not None else int(raw["b_dec"].numel())

    def check(name: str, t: Tensor, want: list[int], hint: str = "") -> None:
        if _shape(t) != want:
            raise BundleError(f"{f}: tensor {name} has shape {_shape(t)}; expected {want}{hint}")

    for name in ("b_enc", "b_dec", "threshold"):
        if name in raw and raw[name].ndim != 1:
            raise BundleError(f"{f}: tensor {name} has shape {_shape(raw[name])}; expected a vector")
    flipped = (" (it looks transposed: SAELens/GemmaScope store W_enc as [d_model, n_features]; load with "
               "layout='saelens')") if layout == "features_first" and _shape(w_enc) == [width, n] else ""
    check("W_enc", w_enc, [n, width], flipped or " [n_features, d_model]")
    check("W_dec", raw["W_dec"], [n, width], " (it looks transposed)" if _shape(raw["W_dec"]) == [width, n]
          else " [n_features, d_model]")
    check("b_dec", raw["b_dec"], [width], " [d_model]")
    if "W_skip" in raw:
        check("W_skip", raw["W_skip"], [width, width], " [d_model, d_model]")
    if "threshold" in raw:
        check("threshold", raw["threshold"], [n], " [n_features]")
    for name, t in raw.items():
        if not torch.isfinite(t).all():
            raise BundleError(f"{f}: tensor {name} contains NaN or inf")
    activation = meta.get("activation", "jumprelu" if "threshold" in raw else "relu")
    if activation not in ACTIVATIONS:
        raise BundleError(f"{f}: metadata activation={activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    if activation == "jumprelu" and "threshold" not in raw:
        raise BundleError(f"{f}: metadata activation=jumprelu but tensor threshold is missing")
    try:
        k = int(meta.get("k", "0"))
    except ValueError as e:
        raise BundleError(f"{f}: metadata k={meta['k']!r}; expected an integer") from e
    if activation == "topk" and not 0 < k <= n:
        raise BundleError(f"{f}: metadata k={k}; expected 0 < k <= n_features ({n}) for topk")
    return Bundle(f, layer, w_enc, raw["b_enc"], raw["W_dec"], raw["b_dec"], raw.get("W_skip"),
                  raw.get("threshold"), activation, k, meta.get("apply_b_dec_to_input", "false") == "true", meta)


def _saelens_cfg(path: Path) -> dict[str, str]:
    """SAELens' cfg.json as our metadata keys (architecture "standard" is a ReLU SAE)."""
    import json

    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: cannot be read as JSON: {e}") from e
    out = {}
    if "architecture" in cfg:
        out["activation"] = {"standard": "relu"}.get(cfg["architecture"], cfg["architecture"])
    if "k" in cfg:
        out["k"] = str(cfg["k"])
    if "apply_b_dec_to_input" in cfg:
        out["apply_b_dec_to_input"] = "true" if cfg["apply_b_dec_to_input"] else "false"
    return out


def save_bundle(bundle_tensors: dict[str, Tensor], folder: str | Path, layer: int,
                metadata: dict[str, str] | None = None) -> Path:
    """Write one layer in the features-first layout (float32, so oracle magnitudes survive the round trip)."""
    from safetensors.torch import save_file

    f = layer_file(Path(folder), layer)
    f.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in bundle_tensors.items()}, str(f),
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    return f


def tensors_of(bundle: Bundle) -> dict[str, Tensor]:
    """The bundle's tensors by file name, features-first."""
    out = {"W_enc": bundle.W_enc, "b_enc": bundle.b_enc, "W_dec": bundle.W_dec, "b_dec": bundle.b_dec}
    if bundle.W_skip is not None:
        out["W_skip"] = bundle.W_skip
    if bundle.threshold is not None:
        out["threshold"] = bundle.threshold
    return out


def decoders(folder: str | Path, layers: list[int], *, layout: str = "features_first") -> dict[int, Tensor]:
    """Validated ``W_dec`` per layer, the input quant_harness.methods.sae_feature_vectors takes for SAE steering."""
    return {layer: load_bundle(folder, layer, layout=layout).W_dec for layer in layers}


def feature_direction(bundle: Bundle, feature_id: int) -> Tensor:
    """The decoder row of one feature, the direction SAE steering adds (seed 001's ``[layer, feature_id, strength]``).

    quant_harness.methods.sae_feature_vectors builds whole steering vectors from rows; this is for a single feature
    of a loaded, validated bundle.
    """
    if not 0 <= feature_id < bundle.n_features:
        raise BundleError(f"{bundle.path}: feature {feature_id} out of range 0..{bundle.n_features - 1}")
    return bundle.W_dec[feature_id].clone()
