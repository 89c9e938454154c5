"""Loading a model card at a precision: fp32/fp16/bf16, bitsandbytes NF4 and INT8, GPTQ 4-bit.

bitsandbytes and gptqmodel touch CUDA when imported, so they are imported only inside the loaders: a worker must be
able to set CUDA_VISIBLE_DEVICES before that happens.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from quant_harness.errors import PrecisionUnavailable, StudyError
from quant_harness.models import base_model
from quant_harness.models.cards import ModelCard
from quant_harness.models.embedded import materialize, save_checkpoint
from quant_harness.models.registry import PRECISIONS, REGISTRY

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FULL = {p.name: p.dtype for p in REGISTRY.values() if p.kind == "full"}
"""Full precisions -> the torch dtype they load in (from the registry)."""
GPTQ_BITS = 4
log = logging.getLogger(__name__)

_DEFAULT_CALIBRATION = [
    "The committee met on Tuesday to review the budget and agreed to postpone the vote until spring.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "She opened the window, and the smell of rain on warm stone filled the small kitchen.",
    "To install the package, run the installer and follow the prompts on the screen.",
    "In 1969, two astronauts walked on the Moon while a third orbited above them.",
    "Q: What is the capital of Japan? A: The capital of Japan is Tokyo.",
    "Regular exercise improves cardiovascular health and can reduce stress levels.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "The market rallied after the central bank held interest rates steady.",
    "Please summarize the following paragraph in two sentences for a general audience.",
    "Honesty matters more than agreement: a good assistant corrects mistaken claims politely.",
    "I'm sorry, but I can't help with that request because it could cause harm.",
    "The recipe calls for two cups of flour, one egg, and a pinch of salt.",
    "Mountains form when tectonic plates collide and push the crust upward over millions of years.",
    "User: Can you help me plan a trip to Lisbon? Assistant: Of course! Here is a three-day plan.",
    "The theorem states that every bounded monotone sequence of real numbers converges.",
]


@dataclass
class LoadedModel:
    """A resident model at one precision, with what reports need to describe it."""

    model: PreTrainedModel
    """The causal LM (``AutoModelForCausalLM``), in eval mode, quantized as ``precision`` says."""
    tokenizer: PreTrainedTokenizerBase
    model_name: str
    precision: str
    source: str
    """Path or hub id the weights came from."""
    load_seconds: float
    device: str
    notes: list[str] = field(default_factory=list)


def unavailable_reason(precision: str) -> str | None:
    """Why ``precision`` cannot run here, or None. Checks packages without importing them (no CUDA touch)."""
    spec = REGISTRY.get(precision)
    if spec is None:
        return None
    if spec.needs_cuda and not _cuda_available():
        return f"{precision} needs a CUDA device"
    if spec.kind == "bnb":
        if importlib.util.find_spec("bitsandbytes") is None:
            return f"{precision} needs bitsandbytes; install with: pip install 'bitsandbytes>=0.46.1'"
        version = importlib.metadata.version("bitsandbytes")
        major, minor = (int(x) for x in version.split(".")[:2])
        if (major, minor) < (0, 46) and not _cuda_available():
            return f"{precision} on CPU needs bitsandbytes>=0.46 (found {version}) or a CUDA device"
    if spec.kind == "gptq":
        missing = [p for p in ("gptqmodel", "optimum") if importlib.util.find_spec(p) is None]
        if missing:
            return f"gptq needs {' and '.join(missing)}; install with: pip install {' '.join(missing)}"
    return None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _device_map(gpus: int) -> Any:
    if not _cuda_available():
        return "cpu"
    return "auto" if gpus > 1 else {"": 0}


def _compute_dtype(native: str) -> Any:
    """Dtype of the unquantized parts: float32 on CPU (bf16/fp16 matmuls are slow or missing there)."""
    import torch

    return torch.float32 if not _cuda_available() else getattr(torch, native)


def calibration_hash(texts: list[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]


def load(
    card: ModelCard,
    precision: str,
    *,
    model_dir: Path,
    nf4_compute_dtype: str = "bfloat16",
    calibration: list[str] | None = None,
) -> LoadedModel:
    """Load ``card`` at ``precision``; raises PrecisionUnavailable with the reason when it cannot run here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if precision not in PRECISIONS:
        raise PrecisionUnavailable(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    reason = unavailable_reason(precision)
    if reason:
        raise PrecisionUnavailable(reason)
    source = weights_source(card, model_dir)
    kwargs: dict[str, Any] = {"device_map": _device_map(card.gpus)}
    if card.revision and source == card.hub_id:
        kwargs["revision"] = card.revision  # the pinned hub snapshot the cache keys name (models.identity)
    notes: list[str] = []
    t0 = time.perf_counter()
    if precision in FULL:
        kwargs["dtype"] = getattr(torch, FULL[precision])
    elif precision == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["dtype"] = _compute_dtype(card.native_dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, nf4_compute_dtype))
        notes.append(f"NF4 double-quant, compute dtype {nf4_compute_dtype}")
    elif precision == "int8":
        from transformers import BitsAndBytesConfig

        kwargs["dtype"] = _compute_dtype(card.native_dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
        notes.append("LLM.int8, outlier threshold 6.0")
    else:
        kwargs["dtype"] = _compute_dtype(card.native_dtype)
        kwargs.pop("revision", None)  # the base model's revision is not the GPTQ checkpoint's
        if card.gptq == "none":
            raise PrecisionUnavailable(f"{card.name} has no GPTQ checkpoint (card {card.source_file}: gptq = none)")
        if card.gptq == "quantize":
            source = str(quantize_gptq(card, source, model_dir, calibration or _DEFAULT_CALIBRATION))
            notes.append(f"GPTQ {GPTQ_BITS}-bit g{card.gptq_group_size}, quantized on load by gptqmodel")
        else:
            source = card.gptq
            if card.gptq_revision:
                kwargs["revision"] = card.gptq_revision
            notes.append(f"pre-quantized GPTQ checkpoint {card.gptq}")
    log.warning("quant_harness: loading %s at %s from %s", card.name, precision, source)
    try:
        revision = {"revision": kwargs["revision"]} if "revision" in kwargs else {}
        check_config(card, AutoConfig.from_pretrained(source, **revision), source)
        tokenizer = AutoTokenizer.from_pretrained(source, **revision)
        base_model.apply_template(card, tokenizer)  # a base card's plain-text prompts, whatever the checkpoint ships
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise PrecisionUnavailable(f"cannot load {card.name} at {precision} from {source}: {e}") from e
    model.eval()
    device = str(next(model.parameters()).device)
    return LoadedModel(model, tokenizer, card.name, precision, source, time.perf_counter() - t0, device, notes)


CARD_FIELDS = {"layers": "num_hidden_layers", "hidden_size": "hidden_size"}
"""Card fields every loaded checkpoint's (text) config must agree with: layer indices and vector widths of cells,
cache keys and SAE dictionaries are read off the card before any model loads."""


def check_config(card: ModelCard, config: Any, source: str) -> None:
    """The card's ``layers`` and ``hidden_size`` against the checkpoint's config (a multimodal config's text part);
    a disagreement (a wrong card, a GPTQ checkpoint of another model) is a StudyError naming the card file, the field
    and both values, raised before any weight loads."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field_name, attr in CARD_FIELDS.items():
        have, want = getattr(text, attr, None), getattr(card, field_name)
        if have is not None and int(have) != int(want):
            raise StudyError(card.source_file or card.name, field_name, want,
                             f"{have}, the {attr} of the checkpoint {source} it loads (card and weights disagree)")


def weights_source(card: ModelCard, model_dir: Path) -> str:
    """Where the full-precision weights come from: a local path, the embedded package, or the hub id."""
    if card.path:
        return str(card.path)
    if card.embedded:
        return str(materialize(card.embedded, model_dir))
    return str(card.hub_id)


def quantize_gptq(card: ModelCard, source: str, model_dir: Path, calibration: list[str]) -> Path:
    """Quantize ``source`` to GPTQ 4-bit with gptqmodel once per calibration set, and keep the checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig

    from quant_harness.models import identity

    # the quantized checkpoint is a function of the base weights, the calibration, gptqmodel and the device it ran on
    made_from = identity.model_identity(card) | {"gptqmodel": identity.library_versions()["gptqmodel"],
                                                 "device": identity.device_type()}
    built = hashlib.sha256(repr(sorted(made_from.items())).encode()).hexdigest()[:8]
    target = model_dir / (f"{card.name}-gptq{GPTQ_BITS}-g{card.gptq_group_size}-{calibration_hash(calibration)}"
                          f"-{built}")
    if (target / "config.json").is_file():
        return target
    model_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(4, os.cpu_count() or 1))))
        log.warning("quant_harness: quantizing %s to GPTQ %d-bit g%d on %d calibration texts (once; about a "
                    "minute for 135M on CPU)", card.name, GPTQ_BITS, card.gptq_group_size, len(calibration))
        tok = AutoTokenizer.from_pretrained(source)
        config = GPTQConfig(bits=GPTQ_BITS, group_size=card.gptq_group_size, dataset=list(calibration),
                            tokenizer=tok, desc_act=False)
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=config,
                                                     device_map=_device_map(card.gpus),
                                                     dtype=_compute_dtype(card.native_dtype))
        save_checkpoint(model, tok, target)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return target
