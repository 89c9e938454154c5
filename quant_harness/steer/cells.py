"""Cells that steer: judged steering delta, A/B logit difference, cross-precision transfer, refusal (Arditi).

Each ``<kind>(runner, cell)`` returns a CellResult (the kind registry, quant_harness.study.kinds). Vectors come from the runner's cached activations;
generations with their judge scores are cached as JSON under ``<cache>/steering/`` by everything that shapes them
(model, precision, vector bytes, layer, coefficient, prompts, judge), so a warm re-run generates and judges nothing.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from quant_harness._util import progress
from quant_harness.judge import client as judges
from quant_harness.metrics import tensors as metrics
from quant_harness.steer import ops as steering
from quant_harness.extract.datasets import Prompt, load_caa
from quant_harness.errors import CellError
from quant_harness.records import CellResult
from quant_harness.store import JSON, ArtefactStore, key_of, legacy_json
from quant_harness.steer.settings import SteeringSettings
from quant_harness.study.spec import Cell, Study, TraitSpec
from quant_harness.metrics.verdicts import judge as classify
from quant_harness.metrics.verdicts import undefined

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner


def _json_cached(runner: CellRunner, namespace: str, components: dict[str, Any], build: Callable[[], Any]) -> Any:
    """A JSON result from the artefact store (kind ``steering/<what>``, under ``<model>/<precision>``), built by one
    worker while the others wait for it: the reference's search is needed by every quantized cell of a model."""
    what, _, under = namespace.partition("/")
    store = ArtefactStore(Path(runner.cache.root))
    before = store.root / "steering" / namespace / f"{key_of(components)}.json"
    return store.get_or_build(f"steering/{what}", components, build, JSON, under=under,
                              legacy=lambda: legacy_json(before, components, "value")).value


def _near(vecs: dict[int, Tensor], wanted: int) -> int:
    """The study's layer when the trait has a vector there, else the trait's nearest layer (traits differ)."""
    return wanted if wanted in vecs else min(vecs, key=lambda L: (abs(L - wanted), L))


def _vhash(v: Tensor) -> str:
    return hashlib.sha256(v.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]


def _root(study: Study) -> Path:
    """Where this table's paths resolve: the study's root (a Study built in code may have none: its file's folder)."""
    return study.root or Path(study.path).parent


def _test_file(study: Study, s: SteeringSettings, trait: TraitSpec) -> Path:
    f = s.ab_file(_root(study), trait.key)
    if not f.is_file():
        raise CellError(f"trait {trait.key}: no held-out A/B file {f}; write one (CAA schema) or set [steering] ab_dir")
    return f


def _ab_questions(study: Study, s: SteeringSettings, trait: TraitSpec) -> list[tuple[Prompt, str]]:
    ab = load_caa(_test_file(study, s, trait), s.ab_questions)
    out = []
    for p in ab.pos:
        out.append((Prompt(p.messages, "("), p.prefill[-1]))
    return out


def _open_questions(runner: CellRunner, s: SteeringSettings, trait: TraitSpec) -> tuple[list[str], str]:
    """Open-ended prompts and the trait judge template: PV's own questions and eval prompt; for CAA the A/B test
    questions with their choices stripped (as CAA's open-ended set is built) and the judge prompt <trait>."""
    if trait.methodology == "pv":
        c = runner.contrast(trait)
        return list(c.questions[: s.questions]), c.eval_prompt or judges.load_prompt(trait.key)
    ab = load_caa(_test_file(runner.study, s, trait), s.questions)
    qs = [p.messages[-1][1].split("\n\nChoices:")[0].strip() for p in ab.pos]
    return qs, judges.load_prompt(trait.key)


def _judged(runner: CellRunner, template: str, questions: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    j = judges.study_judge(runner)
    coherence_t = judges.load_prompt("coherence")
    trait_s = [j.score(template.format(question=q, answer=a)) for q, a in zip(questions, answers)]
    coh_s = [j.score(coherence_t.format(question=q, answer=a)) for q, a in zip(questions, answers)]
    return {"trait": [x.value for x in trait_s], "coherence": [x.value for x in coh_s],
            "modes": sorted({x.mode for x in trait_s + coh_s}), "raw_unscored": [x.raw for x in trait_s + coh_s
                                                                               if x.value is None][:4]}


def _mean(xs: Sequence[float | None], what: str) -> float:
    vals = [x for x in xs if x is not None]
    if not vals:
        raise CellError(f"{what}: every judge answer was unscored; refusing to score")
    return statistics.fmean(vals)


def _steer_search(runner: CellRunner, cell: Cell, precision: str, vec_precision: str) -> dict[str, Any]:
    """Baseline, then per candidate layer a coefficient search (double while coherent, halve when not)."""
    study, s = runner.study, runner.study.steering
    trait = study.trait(cell.trait)
    vecs = runner.vectors(cell.model, vec_precision, trait, cell.method)
    layers = list(dict.fromkeys(_near(vecs, L) for L in s.layers))
    questions, template = _open_questions(runner, s, trait)
    prompts = [Prompt((("user", q),)) for q in questions]
    jset = study.judge
    comps = {"model": cell.model, "precision": precision, "vectors": {L: _vhash(vecs[L]) for L in layers},
             "questions": questions, "template": template, "settings": asdict(s),
             "judge": judges.describe(jset, runner.pool.model_dir), "judge_model": jset.model}

    def build() -> dict[str, Any]:
        lm = runner.pool.get(cell.model, precision)
        progress.note(f"steering {cell.model}/{precision} {trait.key}: baseline + search")
        base = steering.generate(lm.model, lm.tokenizer, prompts, max_new_tokens=s.max_new_tokens).texts
        runs = [{"layer": None, "coefficient": 0.0, "texts": base, **_judged(runner, template, questions, base)}]
        for layer in layers:
            c = s.coefficient
            for _ in range(s.search_steps):
                texts = steering.generate(lm.model, lm.tokenizer, prompts, vectors={layer: vecs[layer]},
                                          coefficient=c, mode=s.mode, max_new_tokens=s.max_new_tokens).texts
                run = {"layer": layer, "coefficient": c, "texts": texts, **_judged(runner, template, questions, texts)}
                runs.append(run)
                coh = [x for x in run["coherence"] if x is not None]
                c = c * 2 if coh and statistics.fmean(coh) >= s.coherence_min else c / 2
        return {"runs": runs}

    return _json_cached(runner, f"search/{cell.model}/{precision}", comps, build)  # type: ignore[no-any-return]


def _best(search: dict[str, Any], s: SteeringSettings, what: str) -> dict[str, Any]:
    base, *runs = search["runs"]
    baseline = _mean(base["trait"], f"{what} baseline trait")
    best = None
    unscored = sum(x is None for r in search["runs"] for x in r["trait"] + r["coherence"])
    for r in runs:
        coh = [x for x in r["coherence"] if x is not None]
        tr = [x for x in r["trait"] if x is not None]
        if not coh or not tr or statistics.fmean(coh) < s.coherence_min:
            continue
        delta = statistics.fmean(tr) - baseline
        if best is None or delta > best["delta"]:
            best = {"layer": r["layer"], "coefficient": r["coefficient"], "delta": delta,
                    "coherence": statistics.fmean(coh), "texts": r["texts"]}
    if best is None:
        tried = [(r["layer"], r["coefficient"]) for r in runs]
        raise CellError(f"{what}: no (layer, coefficient) in {tried} kept mean coherence >= {s.coherence_min:g}")
    return {**best, "baseline": baseline, "baseline_coherence": _mean(base["coherence"], f"{what} coherence"),
            "baseline_texts": base["texts"], "unscored": unscored, "modes": sorted({m for r in search["runs"]
                                                                                    for m in r["modes"]})}


def steering_delta(runner: CellRunner, cell: Cell) -> CellResult:
    """Best judged trait delta over the unsteered baseline (coherence kept), and its degradation vs reference."""
    study, s = runner.study, runner.study.steering
    ref = _best(_steer_search(runner, cell, study.reference, study.reference), s, f"{cell.model}/{study.reference}")
    quant = _best(_steer_search(runner, cell, cell.precision, cell.precision), s, f"cell {cell.id}")
    k = s.samples
    figures = {
        "delta": quant["delta"], "delta_reference": ref["delta"],
        "best_layer": quant["layer"], "best_coefficient": quant["coefficient"], "coherence": quant["coherence"],
        "baseline_trait": quant["baseline"], "baseline_coherence": quant["baseline_coherence"],
        "reference_best_layer": ref["layer"], "reference_best_coefficient": ref["coefficient"],
        "unscored": quant["unscored"] + ref["unscored"], "judge_score_modes": ",".join(quant["modes"]),
        "samples": {"baseline": quant["baseline_texts"][:k], "steered": quant["texts"][:k],
                    "reference_steered": ref["texts"][:k]},
    }
    band = study.bands["steering_degradation"]
    if ref["delta"] <= 0:
        judge_name = judges.describe(study.judge, runner.pool.model_dir)
        j = undefined("delta", quant["delta"], band, study.fail_on, study.fail_on_inconclusive,
                      f"the reference {study.reference} is not steered by its own vector (best judged delta "
                      f"{ref['delta']:.2f} <= 0 over a baseline of {ref['baseline']:.1f}), so there is no effect to "
                      f"degrade; judge: {judge_name}")
        return _record(runner, cell, "steering", j, figures, "delta", quant["delta"])
    degradation = (ref["delta"] - quant["delta"]) / ref["delta"]
    figures["degradation"] = degradation
    j = classify("steering_degradation", max(0.0, degradation), band, study.fail_on)
    return _record(runner, cell, "steering", j, figures, "degradation", degradation)


def _ab_sweep(runner: CellRunner, cell: Cell, precision: str, vec_precision: str) -> dict[str, list[list[float]]]:
    study, s = runner.study, runner.study.steering
    trait = study.trait(cell.trait)
    vecs = runner.vectors(cell.model, vec_precision, trait, s.method)
    layer = _near(vecs, s.layers[0])
    v = vecs[layer]
    qs = _ab_questions(study, s, trait)
    comps = {"model": cell.model, "precision": precision, "vector": _vhash(v), "layer": layer,
             "coefficients": s.ab_coefficients, "questions": [[p.messages, m] for p, m in qs]}

    def build() -> dict[str, list[list[float]]]:
        lm = runner.pool.get(cell.model, precision)
        out: dict[str, list[list[float]]] = {"logit_diff": [], "p_match": []}
        for c in s.ab_coefficients:
            r = steering.ab_logits(lm.model, lm.tokenizer, qs, vectors={layer: v}, coefficient=c)
            out["logit_diff"].append(r.logit_diff)
            out["p_match"].append(r.p_match)
        return out | {"layer": [[float(layer)]]}

    return _json_cached(runner, f"ab/{cell.model}/{precision}", comps, build)  # type: ignore[no-any-return]


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _flat(rows: list[list[float]]) -> Tensor:
    return torch.tensor([x for row in rows for x in row], dtype=torch.float64)


def logit_diff(runner: CellRunner, cell: Cell) -> CellResult:
    """Correlation of per-question (x coefficient) A/B logit differences between reference and quantized."""
    study, s = runner.study, runner.study.steering
    ref = _ab_sweep(runner, cell, study.reference, study.reference)
    quant = _ab_sweep(runner, cell, cell.precision, cell.precision)
    corr = metrics.pearson(_flat(ref["logit_diff"]), _flat(quant["logit_diff"]))
    zero = s.ab_coefficients.index(0.0) if 0.0 in s.ab_coefficients else None
    coefs = list(s.ab_coefficients)
    figures: dict[str, Any] = {
        "logit_corr": corr, "layer": int(quant["layer"][0][0]), "n_questions": len(ref["logit_diff"][0]),
        "steerability": _slope(coefs, [statistics.fmean(r) for r in quant["logit_diff"]]),
        "steerability_reference": _slope(coefs, [statistics.fmean(r) for r in ref["logit_diff"]]),
        "p_match_slope": _slope(coefs, [statistics.fmean(r) for r in quant["p_match"]]),
        "unscored": 0,
        "by_coefficient": {f"{c:g}": {"logit_diff": statistics.fmean(q), "logit_diff_reference": statistics.fmean(r),
                                      "p_match": statistics.fmean(p), "p_match_reference": statistics.fmean(pr)}
                           for c, q, r, p, pr in zip(coefs, quant["logit_diff"], ref["logit_diff"],
                                                      quant["p_match"], ref["p_match"])},
    }
    if zero is not None:
        figures["logit_corr_unsteered"] = metrics.pearson(torch.tensor(ref["logit_diff"][zero]),
                                                          torch.tensor(quant["logit_diff"][zero]))
    j = classify("logit_corr", corr, study.bands["logit_corr"], study.fail_on)
    return _record(runner, cell, "logit_diff", j, figures, "logit_corr", corr)


def steerability(coefficients: Sequence[float], logit_diff: list[list[float]]) -> tuple[float, float]:
    """The A/B steerability slope (logit difference per unit coefficient, averaged over questions) and its standard
    error across questions; ``logit_diff[c][q]`` is question q at coefficient c."""
    per_question = [_slope(coefficients, [row[q] for row in logit_diff]) for q in range(len(logit_diff[0]))]
    if len(per_question) < 2:
        raise CellError(f"{len(per_question)} A/B question: a steerability's standard error needs at least two")
    return statistics.fmean(per_question), statistics.stdev(per_question) / len(per_question) ** 0.5


def transfer(runner: CellRunner, cell: Cell) -> CellResult:
    """The reference's vectors on the quantized model vs the quantized model's own vectors (A/B steerability).

    The ratio of the two slopes keeps its sign, so it is meaningful even where a small model's vector steers the
    wrong way; a ratio of 1 is perfect transfer, and the verdict is on ``max(0, 1 - ratio)``. Where the own vector's
    slope is within two standard errors of 0 the ratio would divide by noise: the cell is inconclusive.
    """
    study = runner.study
    s = study.steering
    own = _ab_sweep(runner, cell, cell.precision, cell.precision)
    moved = _ab_sweep(runner, cell, cell.precision, study.reference)
    coefs = list(s.ab_coefficients)
    slope_own, se_own = steerability(coefs, own["logit_diff"])
    slope_moved, se_moved = steerability(coefs, moved["logit_diff"])
    figures = {"steerability_own": slope_own, "steerability_own_se": se_own,
               "steerability_reference_vectors": slope_moved, "steerability_reference_vectors_se": se_moved,
               "logit_corr_own_vs_reference_vectors": metrics.pearson(_flat(own["logit_diff"]),
                                                                      _flat(moved["logit_diff"])),
               "layer": int(own["layer"][0][0]), "unscored": 0}
    band = study.bands["steering_degradation"]
    if abs(slope_own) <= 2 * se_own:
        j = undefined("steerability_own", slope_own, band, study.fail_on, study.fail_on_inconclusive,
                      f"the quantized model's own vector does not move its A/B logit difference distinguishably from "
                      f"0 (slope {slope_own:.3g} +/- {se_own:.2g} per unit coefficient at layer {figures['layer']}), "
                      f"so a transfer ratio would divide by noise")
        return _record(runner, cell, "transfer", j, figures, "steerability_own", slope_own)
    ratio = slope_moved / slope_own
    figures["transfer_ratio"] = ratio
    j = classify("steering_degradation", max(0.0, 1.0 - ratio), band, study.fail_on)
    return _record(runner, cell, "transfer", j, figures, "transfer_ratio", ratio)


def refusal(runner: CellRunner, cell: Cell) -> CellResult:
    """Refusal rates (12 substrings) on harmful prompts with and without ablation at every layer, and on harmless
    prompts with and without +r added at the selected layer; the effect's degradation vs the reference."""
    study, s = runner.study, runner.study.steering
    data = json.loads(s.refusal_file(_root(study)).read_text())
    harmful = [Prompt((("user", q),)) for q in data["harmful"]]
    harmless = [Prompt((("user", q),)) for q in data["harmless"]]

    def rates(precision: str) -> dict[str, Any]:
        trait = study.trait(cell.trait)
        vecs = runner.vectors(cell.model, precision, trait, "mean_diff")
        layer = _near(vecs, s.layers[0])
        r = vecs[layer]
        comps = {"model": cell.model, "precision": precision, "r": _vhash(r), "layer": layer,
                 "prompts": data, "max_new_tokens": s.max_new_tokens}

        def build() -> dict[str, Any]:
            lm = runner.pool.get(cell.model, precision)

            def gen(ps: list[Prompt], **kw: Any) -> list[str]:
                return steering.generate(lm.model, lm.tokenizer, ps, max_new_tokens=s.max_new_tokens, **kw).texts

            out = {"harmful": gen(harmful), "harmless": gen(harmless)}
            with steering.ablation(lm.model, r):
                out["harmful_ablated"] = gen(harmful)
            out["harmless_actadd"] = gen(harmless, vectors={layer: r}, coefficient=1.0,
                                         from_instruction_end=False)
            return out

        texts = _json_cached(runner, f"refusal/{cell.model}/{precision}", comps, build)
        return {k: sum(map(judges.is_refusal, v)) / len(v) for k, v in texts.items()} | {"texts": texts,
                                                                                          "layer": layer}

    quant = rates(cell.precision)
    ref = quant if cell.precision == study.reference else rates(study.reference)

    def effect(x: dict[str, Any]) -> float:
        return float((x["harmful"] - x["harmful_ablated"]) + (x["harmless_actadd"] - x["harmless"]))

    k = s.samples
    figures = {
        "refusal_harmful": quant["harmful"], "refusal_harmful_ablated": quant["harmful_ablated"],
        "refusal_harmless": quant["harmless"], "refusal_harmless_actadd": quant["harmless_actadd"],
        "effect": effect(quant), "effect_reference": effect(ref), "layer": quant["layer"],
        "unscored": 0, "samples": {name: texts[:k] for name, texts in quant["texts"].items()},
    }
    band = study.bands["steering_degradation"]
    if effect(ref) <= 0:
        j = undefined("effect", effect(quant), band, study.fail_on, study.fail_on_inconclusive,
                      f"the reference {study.reference} shows no refusal effect to degrade: it refuses "
                      f"{ref['harmful']:.0%} of harmful prompts ({ref['harmful_ablated']:.0%} with the direction "
                      f"ablated) and {ref['harmless_actadd']:.0%} of harmless ones with +r ({ref['harmless']:.0%} "
                      f"without)")
        return _record(runner, cell, "refusal", j, figures, "effect", effect(quant))
    degradation = (effect(ref) - effect(quant)) / effect(ref)
    figures["degradation"] = degradation
    j = classify("steering_degradation", max(0.0, degradation), band, study.fail_on)
    return _record(runner, cell, "refusal", j, figures, "degradation", degradation)


def _record(runner: CellRunner, cell: Cell, kind: str, j: Any, figures: dict[str, Any], metric: str,
            value: float) -> CellResult:
    study = runner.study
    trait = study.trait(cell.trait)
    prov = runner.provenance(cell, trait)
    jset = study.judge
    prov.update(steering=asdict(study.steering),
                vector_method=cell.method if kind == "steering" else study.steering.method,
                steer_positions="CAA/PV: last instruction token and every generated token; refusal: ablation at all "
                                "layers (block 0 input, attention and MLP outputs), addition at all positions")
    if kind == "steering":
        prov["judge"] = judges.describe(jset, runner.pool.model_dir)
    return CellResult(cell_id=cell.id, kind=kind, verdict=j.verdict.label, metric=metric, value=value,
                      figures=figures, layers=list(study.steering.layers), explanation=j.explain(), provenance=prov)
