"""Tiny random-weight twins of the seven study models, built from their real configs and tokenizers.

``../shared/data/model_twins/<name>/`` holds each model's real ``config.json``, tokenizer files and chat template (no
weights). A twin keeps the config's class and architecture flags (sliding windows, soft-caps, embedding scale, norm
placement, tied embeddings, RoPE scaling) and the whole vocabulary, and shrinks the rest: ``LAYERS`` blocks (three:
a first, a middle and a last one; bitsandbytes' CPU kernels cost ~10 ms per quantized Linear call, so every block
counts), hidden 64, intermediate 128, 4 heads, 2 KV heads, head_dim 16. Gemma-3's multimodal config is built from
its ``text_config`` (a text-only ``Gemma3ForCausalLM``) with sliding and full attention layers alternating, as its
5:1 pattern truncated to a few layers would give sliding ones only; Gemma-2's truncation alternates already.

Weights are seeded; every norm weight gets a random per-dimension offset, because a uniform norm weight hides
post-norm leaks (a norm with the same scale on every dimension keeps a vector orthogonal to r orthogonal).

A twin is a local checkpoint (``save_pretrained`` plus the real tokenizer files copied beside it) in
``<cache>/<name>-<key>/`` with ``key`` a hash of the source config, the tokenizer files and ``BUILDER_VERSION``, so it
is built once (seconds) and reused by later runs; a card TOML beside it points at it, in the format of
``quant_harness/data/model_cards``. The conformance tests (tests/conformance) and the CPU rehearsal of a study
(quant_harness.scale.rehearsal) both build their twins here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TWINS = ("gemma2-2b", "gemma3-4b", "llama-8b", "llama-70b", "mistral-7b", "olmo-7b", "qwen-7b")
BUILDER_VERSION = "1"
"""Bump when the builder changes what it writes: every cached twin is rebuilt."""
LAYERS = 3
PRECISIONS = ("fp32", "nf4", "int8")
"""What the conformance tests load each twin at (bitsandbytes runs NF4 and LLM.int8 on CPU since 0.46)."""
SHRINK = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 16}
SEED = 0
_SKIP_FILES = {"config.json", "SOURCE.md"}
"""Source files not copied into the checkpoint (its own config.json is the shrunk one)."""


@dataclass(frozen=True)
class Twin:
    """One built twin: its checkpoint, its card and where it came from."""

    name: str
    source: Path
    """The folder of real config and tokenizer files."""
    path: Path
    """The checkpoint folder (``from_pretrained`` loads it offline)."""
    card_dir: Path
    """A folder holding ``<name>.toml`` (``quant_harness.models.cards.load_card(name, card_dir)``)."""
    model_class: str
    layers: int
    hidden_size: int


def data_dir(repo: Path) -> Path:
    """The twins' source folders: ``$QUANT_HARNESS_DATA/model_twins`` when that variable is set, else
    ``../shared/data/model_twins`` beside the checkout ``repo`` (as every test finds ``../shared/data``)."""
    data = os.environ.get("QUANT_HARNESS_DATA")
    if data:
        return Path(data).expanduser().resolve() / "model_twins"
    return repo.parent / "shared" / "data" / "model_twins"


def _source_files(source: Path) -> list[Path]:
    return sorted(p for p in source.iterdir() if p.is_file() and p.name not in _SKIP_FILES
                  and not p.name.endswith(".jinja"))


def key(source: Path) -> str:
    """Hash of what a twin is built from: the real config, the tokenizer files' bytes, the builder."""
    h = hashlib.sha256(f"builder {BUILDER_VERSION} layers {LAYERS} shrink {sorted(SHRINK.items())} "
                       f"seed {SEED}".encode())
    for p in [source / "config.json", *_source_files(source)]:
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:12]


def tiny_config(source: Path) -> Any:
    """The real config with widths shrunk and ``LAYERS`` blocks; Gemma-3 through its ``text_config``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(source))
    if getattr(config, "text_config", None) is not None and config.model_type == "gemma3":
        text = config.text_config
        text.architectures = ["Gemma3ForCausalLM"]
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(text, k, None) is None and getattr(config, k, None) is not None:
                setattr(text, k, getattr(config, k))
        config = text
    for k, v in SHRINK.items():
        if k != "head_dim" or hasattr(config, "head_dim"):
            setattr(config, k, v)
    config.num_hidden_layers = LAYERS
    if getattr(config, "layer_types", None) is not None:
        if config.model_type.startswith("gemma3"):
            config.layer_types = (["sliding_attention", "full_attention"] * LAYERS)[:LAYERS]
        else:
            config.layer_types = list(config.layer_types[:LAYERS])
        assert len(config.layer_types) == LAYERS
    if hasattr(config, "max_window_layers"):
        config.max_window_layers = LAYERS
    return config


def _randomize_norms(model: Any, seed: int) -> None:
    """A random per-dimension offset in [-0.5, 0.5) on every norm weight (Gemma's ``1 + w`` and Llama's ``w`` alike)."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if "norm" in type(module).__name__.lower() and isinstance(weight, torch.nn.Parameter) and weight.ndim == 1:
            with torch.no_grad():
                weight.add_(torch.rand(weight.shape, generator=g) - 0.5)


def build(name: str, source: Path, target: Path) -> None:
    """Write the twin's checkpoint into ``target`` (a temp folder renamed into place: never half-written)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(source)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    _randomize_norms(model, SEED)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    model.save_pretrained(tmp)
    for f in _source_files(source):
        shutil.copyfile(f, tmp / f.name)
    (tmp / "twin.json").write_text(json.dumps({"name": name, "source": str(source), "class": type(model).__name__,
                                               "builder": BUILDER_VERSION}, indent=2))
    try:
        os.replace(tmp, target)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)


def card_text(twin_name: str, path: Path, layers: int, hidden: int, family: str) -> str:
    """A model card for the twin (gptq = "none": a twin has no pre-quantized checkpoint)."""
    return (f'name = "{twin_name}"\nhub_id = "twin/{twin_name}"\nfamily = "{family}"\nparams_b = 0.02\n'
            f"layers = {layers}\nhidden_size = {hidden}\n"
            f'path = "{path}"\nnative_dtype = "float32"\ngptq = "none"\n')


def ensure(name: str, source: Path, cache: Path) -> Twin:
    """The twin of ``name``: built into ``cache`` unless a twin with the same key is there already."""
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{name}-{key(source)}"
    with FileLock(str(target) + ".lock"):
        if not (target / "twin.json").is_file():
            build(name, source, target)
    config = json.loads((target / "config.json").read_text())
    meta = json.loads((target / "twin.json").read_text())
    card_dir = cache / "cards"
    card_dir.mkdir(exist_ok=True)
    family = name.split("-")[0]
    card = card_dir / f"{name}.toml"
    tmp = card.with_name(f".{card.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(card_text(name, target, config["num_hidden_layers"], config["hidden_size"], family))
    os.replace(tmp, card)   # a reader in another process never sees half a card
    return Twin(name, source, target, card_dir, meta["class"], config["num_hidden_layers"], config["hidden_size"])
