"""SAE feature-fidelity cells: encode the reference's and a quantized model's residuals with one dictionary.

Residuals are read per token (not averaged) on the ``[sae]`` texts, written raw (no chat template, a BOS first where
the tokenizer adds one to plain text), with the first token left out: it is the attention sink, whose norm dwarfs
every other token's. They go through the runner's activation cache like every other activation, so a warm re-run
loads no model. Trained dictionaries are artefacts of the store (bundle folders under ``<cache>/sae/dictionaries/``),
keyed by everything that shapes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from quant_harness._util import counters, progress
from quant_harness.errors import BundleError, CellError, DatasetError
from quant_harness.extract import activations, batching
from quant_harness.metrics import resample
from quant_harness.metrics import tensors as metrics
from quant_harness.metrics.confidence import judge_interval
from quant_harness.models import adapter
from quant_harness.records import CellResult, provenance
from quant_harness.runner import embedded_note
from quant_harness.sae.bundle import Bundle, load_bundle, save_bundle, tensors_of
from quant_harness.sae.settings import Dictionary, SaeSettings
from quant_harness.sae.train import evaluate, train_sae
from quant_harness.store import ArtefactStore, DirectoryCodec, key_of
from quant_harness.study.spec import Cell, Study

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner

SKIP_FIRST = 1
"""Tokens left out at the start of every text (the attention sink): the BOS where the tokenizer adds one to plain
text (Gemma, Llama, Mistral), else the text's first token (Qwen, OLMo, SmolLM2)."""
TOKENS = f"raw text (no chat template), BOS first where the tokenizer adds one, first {SKIP_FIRST} token(s) dropped"


def _settings(study: Study) -> SaeSettings:
    if study.sae is None:
        raise CellError("the study has no [sae] table")
    settings: SaeSettings = study.sae
    return settings


def load_texts(path: Path) -> dict[str, list[str]]:
    """``{"train": [...], "eval": [...]}``, each a non-empty list of non-empty strings."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read as JSON: {e}") from e
    out = {}
    for split in ("train", "eval"):
        items = raw.get(split) if isinstance(raw, dict) else None
        if not isinstance(items, list) or not items:
            raise DatasetError(f"{path}: field {split!r} must be a non-empty list of texts")
        for i, t in enumerate(items):
            if not isinstance(t, str) or not t.strip():
                raise DatasetError(f"{path}: {split}[{i}] must be a non-empty string")
        out[split] = items
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def token_activations(model: Any, tokenizer: Any, texts: Sequence[str], layers: Sequence[int],
                      batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """Per-token block outputs ``[n_tokens, n_layers, d_model]`` (float32) and each token's text index."""
    blocks = activations.decoder_layers(model)
    ids = [adapter.text_ids(tokenizer, t) for t in texts]  # a BOS first where the tokenizer adds one (not Qwen, OLMo)
    short = [i for i, x in enumerate(ids) if len(x) <= SKIP_FIRST]
    if short:
        raise DatasetError(f"text {short[0]} has {len(ids[short[0]])} token(s); needs more than {SKIP_FIRST}")
    device = next(model.parameters()).device
    pad = batching.pad_id(tokenizer)
    captured: dict[int, Tensor] = {}

    def hook(layer: int) -> Any:
        def fn(_module: Any, _inputs: Any, output: Any) -> None:
            captured[layer] = output[0] if isinstance(output, tuple) else output
        return fn

    rows: list[Tensor] = []
    owner: list[int] = []
    handles = [blocks[layer].register_forward_hook(hook(layer)) for layer in layers]
    try:
        for start in progress.bar(range(0, len(ids), batch_size), desc="sae residuals", unit="batch"):
            batch = ids[start:start + batch_size]
            input_ids, mask, _ = batching.right_pad(batch, pad)
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
            counters.add("forward_passes")
            for r, x in enumerate(batch):
                rows.append(torch.stack([captured[L][r, SKIP_FIRST:len(x)].float().cpu() for L in layers], dim=1))
                owner += [start + r] * (len(x) - SKIP_FIRST)
            captured.clear()
    finally:
        for h in handles:
            h.remove()
    return torch.cat(rows), torch.tensor(owner, dtype=torch.long)


def residuals(runner: CellRunner, model: str, precision: str, split: str) -> tuple[Tensor, Tensor, list[int]]:
    """Cached per-token residuals of one split at every ``[sae]`` layer: (acts, text index per token, layers)."""
    s = _settings(runner.study)
    texts = load_texts(s.texts)[split]
    card = runner.study.cards[model]
    layers = list(s.layers_for(card.layers))
    components = {
        **runner.key_components(model, precision), "texts": _hash(texts), "layers": layers, "tokens": TOKENS,
        "layer_convention": activations.LAYER_CONVENTION, "extraction": activations.EXTRACTION_VERSION,
    }

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        lm = runner.pool.get(model, precision)
        acts, owner = token_activations(lm.model, lm.tokenizer, texts, layers, runner.study.batch_size)
        return {"acts": acts, "text": owner}, {"source": lm.source, "device": lm.device, "notes": lm.notes}

    entry = runner.cache.get_or_build(f"sae_residuals/{model}/{precision}/{split}", components, build)
    return entry.tensors["acts"], entry.tensors["text"].long(), layers


def dictionary(runner: CellRunner, model: str, d: Dictionary, layer: int) -> tuple[Bundle, dict[str, Any]]:
    """The dictionary's bundle for one layer (trained and cached on first use) and its training report."""
    card = runner.study.cards[model]
    if d.path is not None:
        return load_bundle(d.path, layer, layout=d.layout, d_model=card.hidden_size), {"path": str(d.path)}
    train = d.train
    if train is None:
        raise CellError(f"dictionary {d.name} has neither a path nor training settings")
    ref = runner.study.reference
    acts, _, layers = residuals(runner, model, ref, "train")
    components = {**runner.key_components(model, ref), "layer": layer,
                  "texts": _hash(load_texts(_settings(runner.study).texts)["train"]), "skip_first": SKIP_FIRST,
                  "train": train.as_dict(), "extraction": activations.EXTRACTION_VERSION}
    cfg = {"activation": "relu", "model": model, "layer": str(layer), "hook": activations.LAYER_CONVENTION,
           "trainer": "quant_harness"}

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        progress.note(f"quant_harness: training SAE {d.name} on {model}/{ref} layer {layer} ...")
        x = acts[:, layers.index(layer)]
        tensors = train_sae(x, train)
        eval_acts, _, _ = residuals(runner, model, ref, "eval")
        report: dict[str, Any] = {
            "train": evaluate(tensors, x, what="train residuals"),
            "eval": evaluate(tensors, eval_acts[:, layers.index(layer)], what="eval residuals"),
            "settings": train.as_dict(), "model": model, "precision": ref, "layer": layer}
        progress.note(f"quant_harness: SAE {d.name} L{layer}: eval fvu {report['eval']['fvu']:.3f} "
                      f"(mean baseline 1), dead {report['train']['dead_share']:.1%}")
        return tensors, report

    def before() -> tuple[tuple[dict[str, Tensor], dict[str, Any]], Path] | None:
        """A dictionary trained before the artefact store (``<name>-L<layer>-<key[:16]>/``): adopted, not retrained."""
        old = Path(runner.cache.root, "sae", "dictionaries", model, f"{d.name}-L{layer}-{key_of(components)[:16]}")
        try:
            return (tensors_of(load_bundle(old, layer, d_model=card.hidden_size)),
                    json.loads((old / _REPORT).read_text())), old
        except (BundleError, OSError, json.JSONDecodeError):
            return None

    def save(value: tuple[dict[str, Tensor], dict[str, Any]], folder: Path) -> None:
        save_bundle(value[0], folder, layer, cfg)
        (folder / _REPORT).write_text(json.dumps(value[1], indent=2))

    def load(folder: Path) -> tuple[Bundle, dict[str, Any]]:
        return load_bundle(folder, layer, d_model=card.hidden_size), json.loads((folder / _REPORT).read_text())

    codec = DirectoryCodec("sae_dictionary", save, load, damaged=(BundleError, OSError, ValueError))
    store = ArtefactStore(Path(runner.cache.root))
    return store.get_or_build("sae/dictionaries", components, build, codec, under=f"{model}/{d.name}-L{layer}",
                              legacy=before).value


_REPORT = "report.json"
"""The training report beside a trained dictionary's bundle."""


def fidelity(bundle: Bundle, ref: Tensor, quant: Tensor, top_k: int) -> dict[str, Any]:
    """Per-token feature agreement of ``quant`` with ``ref`` (rows of residuals) under one dictionary."""
    if ref.shape != quant.shape:
        raise CellError(f"reference residuals {list(ref.shape)} and quantized {list(quant.shape)} differ in shape")
    f_r, f_q = bundle.encode(ref), bundle.encode(quant)
    for name, f in (("reference", f_r), ("quantized", f_q)):
        if not torch.isfinite(f).all():
            raise CellError(f"{name} feature activations contain NaN or inf")
    k = min(top_k, bundle.n_features)

    def top(f: Tensor) -> Tensor:
        values, idx = f.topk(k, dim=-1)
        return torch.zeros_like(f, dtype=torch.bool).scatter(-1, idx, values > 0)

    t_r, t_q = top(f_r), top(f_q)
    union = (t_r | t_q).sum(-1)
    keep = union > 0
    if not bool(keep.any()):
        raise CellError("no token has an active feature at either precision; overlap is undefined")
    jaccard = (t_r & t_q).sum(-1)[keep].float() / union[keep].float()
    a_r, a_q = f_r > 0, f_q > 0
    both = a_r & a_q
    out = {"jaccard": jaccard, "kept": keep, "features_reference": f_r,
           "active_kept": float(both.sum() / a_r.sum()) if a_r.any() else None,
           "shared_corr": metrics.pearson(f_r[both], f_q[both]) if int(both.sum()) >= 2 else None,
           "l0_reference": float(a_r.sum(-1).float().mean()), "l0": float(a_q.sum(-1).float().mean())}
    if out["active_kept"] is None:
        raise CellError("the reference activates no feature on any token; the active share is undefined")
    if bundle.W_skip is None:
        for name, x, f in (("reference", ref, f_r), ("quantized", quant, f_q)):
            sse_mean = float((x - x.mean(0)).pow(2).sum())
            if sse_mean == 0.0:
                raise CellError(f"{name} residuals are constant; reconstruction error is undefined")
            out[f"fvu_{name}"] = float((bundle.decode(f) - x).pow(2).sum()) / sse_mean
    return out


def reference_side(runner: CellRunner, cell: Cell) -> None:
    """What a quantized SAE cell reads of the reference: its dictionary, then the residuals of both splits.

    The dictionary comes first so that a bad bundle file (missing tensors, NaN, wrong orientation) is that cell's
    error before any model loads, as it is when the cell runs on its own."""
    layer_part, _, name = cell.trait.partition("-")
    d = next(x for x in _settings(runner.study).dictionaries if x.name == name)
    dictionary(runner, cell.model, d, int(layer_part.removeprefix("sae_")))
    for split in ("train", "eval"):
        residuals(runner, cell.model, runner.study.reference, split)


def sae_comparison(runner: CellRunner, cell: Cell) -> CellResult:
    """The cell's verdict: mean top-k Jaccard over eval tokens, banded by ``sae_overlap`` with a bootstrap CI.

    The interval resamples the eval *texts* (a text's tokens are not independent), and each replicate is the same
    statistic as the point: the token-weighted mean Jaccard over the drawn texts' tokens. Beside it, the reference's
    own noise floor over the same kind of resample: how stable its dataset-level top-k features (highest mean
    activation) are when the texts are redrawn. The floor is recorded, not gated on: the per-token Jaccard compares
    the two precisions on the same tokens, so resampling texts moves it only through which texts are in, and that
    is already the interval."""
    study = runner.study
    s: SaeSettings = _settings(study)
    layer_part, _, name = cell.trait.partition("-")
    layer = int(layer_part.removeprefix("sae_"))
    d = next(x for x in s.dictionaries if x.name == name)
    bundle, report = dictionary(runner, cell.model, d, layer)
    ref, text_r, layers = residuals(runner, cell.model, study.reference, "eval")
    quant, text_q, _ = residuals(runner, cell.model, cell.precision, "eval")
    if not torch.equal(text_r, text_q):
        raise CellError("reference and quantized runs tokenized the eval texts differently")
    i = layers.index(layer)
    fid = fidelity(bundle, ref[:, i], quant[:, i], s.top_k)
    owner = text_r[fid["kept"]]
    ci, n_texts = resample.grouped_mean(fid["jaccard"], owner, seed=study.seed, n_boot=study.bootstrap_n,
                                        level=study.ci_level, what=f"cell {cell.id}: top-{s.top_k} Jaccard")
    value = ci.point
    self_med, self_low = resample.topk_self_overlap(fid["features_reference"], text_r, s.top_k, seed=study.seed,
                                                    n_boot=study.bootstrap_n, level=study.ci_level)
    j = judge_interval("sae_overlap", ci, study.bands["sae_overlap"], study.fail_on, study.fail_on_inconclusive)
    figures: dict[str, Any] = {
        "topk_jaccard": value, "active_kept": fid["active_kept"], "shared_corr": fid["shared_corr"],
        "l0_reference": fid["l0_reference"], "l0": fid["l0"], "n_tokens": int(fid["kept"].sum()),
        "n_texts": n_texts, "top_k": s.top_k, "n_features": bundle.n_features,
        "self_overlap_reference": self_med, "self_overlap_reference_low": self_low, "n_boot": ci.n,
        "ci_level": ci.level, "resampled": f"{ci.n} bootstrap resamples of the {n_texts} eval texts (all tokens of a "
                                          f"drawn text, the same texts at both precisions)",
        **{k: fid[k] for k in ("fvu_reference", "fvu_quantized") if k in fid}, **ci.figures("topk_jaccard"),
    }
    if "train" in report:
        figures.update(sae_eval_fvu=report["eval"]["fvu"], sae_dead_share=report["train"]["dead_share"])
    card = study.cards[cell.model]
    prov = provenance(study.path.parent, study=study.name, reference=study.reference, model=cell.model,
                      precision=cell.precision, layer_convention=activations.LAYER_CONVENTION_TEXT,
                      precision_settings=runner.precision_settings(cell.model, cell.precision),
                      dictionary={"name": d.name, "bundle": str(bundle.path), "activation": bundle.activation,
                                  "training": report}, texts=str(s.texts),
                      tokens=f"eval texts: {TOKENS}",
                      notes=[embedded_note(card.embedded)] if card.embedded else [])
    return CellResult(cell_id=cell.id, kind="sae", verdict=j.verdict.label, metric="topk_jaccard", value=value,
                      figures=figures, per_layer={"topk_jaccard": [value]}, layers=[layer],
                      explanation=f"{j.explain()}; resampled: {figures['resampled']}; the reference's dataset-level "
                                  f"top-{s.top_k} features agree with themselves on resampled texts at Jaccard "
                                  f"{self_med:.3f} (median; {self_low:.3f} low quantile), recorded as its noise floor",
                      provenance=prov)

