"""Cells that steer: judged steering delta, A/B logit difference, cross-precision transfer, refusal (Arditi).

Each ``<kind>(runner, cell)`` returns a CellResult (the kind registry, quant_harness.study.kinds). Vectors come from the runner's cached activations;
generations with their judge scores are cached as JSON under ``<cache>/steering/`` by everything that shapes them
(model, precision, vector bytes, layer, coefficient, prompts, judge), so a warm re-run generates and judges nothing.
Verdicts come from quant_harness.steer.stats: paired bootstrap intervals over the questions (prompts for refusal)
and the gates that make a cell inconclusive when the reference shows no effect.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from quant_harness._util import progress
from quant_harness.errors import CellError
from quant_harness.extract.datasets import Prompt, load_caa
from quant_harness.judge import client as judges
from quant_harness.metrics.verdicts import undefined
from quant_harness.models import identity
from quant_harness.records import CellResult
from quant_harness.steer import ops as steering
from quant_harness.steer import stats
from quant_harness.steer.settings import SteeringSettings
from quant_harness.store import JSON, ArtefactStore, key_of, legacy_json
from quant_harness.study.spec import Cell, Study, TraitSpec

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


def _layers(runner: CellRunner, cell: Cell) -> tuple[int, ...]:
    """The ``[steering]`` layers for the cell's model: fractions of depth resolved with its own number of blocks."""
    return runner.study.steering.layers_for(runner.study.cards[cell.model].layers)


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
    # the question alone: ab_logits scores the answers "(A"/"(B" as continuations, however the tokenizer spells them
    return [(Prompt(p.messages), p.prefill[-1]) for p in ab.pos]


def _open_questions(runner: CellRunner, s: SteeringSettings, trait: TraitSpec) -> tuple[list[str], str]:
    """Open-ended prompts and the trait judge template: PV's own questions and eval prompt; for CAA the A/B test
    questions with their choices stripped (as CAA's open-ended set is built) and the judge prompt <trait>."""
    if trait.methodology == "pv":
        c = runner.contrast(trait)
        return list(c.questions[: s.questions]), c.eval_prompt or judges.load_prompt(trait.key)
    ab = load_caa(_test_file(runner.study, s, trait), s.questions)
    qs = [p.messages[-1][1].split("\n\nChoices:")[0].strip() for p in ab.pos]
    return qs, judges.load_prompt(trait.key)


def _check_unscored(runner: CellRunner, scores: Sequence[judges.Score]) -> None:
    """More unscored answers in one judged run than ``[judge] max_unscored`` allows is a cell error (raised before
    the run is cached, so a re-run asks the missing ones again; the answers received are in the judge cache)."""
    bad = [x for x in scores if x.value is None]
    limit = runner.study.judge.max_unscored
    if scores and len(bad) > limit * len(scores):
        who = judges.describe(runner.study.judge, runner.pool.model_dir)
        raise CellError(f"judge {who}: {len(bad)} of {len(scores)} answers unscored, more than [judge] max_unscored "
                        f"= {limit:g} of them; expected a number 0-100 in each answer; first: {bad[0].raw[:160]!r}")


def _judged(runner: CellRunner, template: str, questions: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    j = judges.study_judge(runner)
    coherence_t = judges.load_prompt("coherence")
    scores = j.score_many([t.format(question=q, answer=a) for t in (template, coherence_t)
                           for q, a in zip(questions, answers)], desc="judging steered answers")
    trait_s, coh_s = scores[:len(answers)], scores[len(answers):]
    _check_unscored(runner, [*trait_s, *coh_s])
    return {"trait": [x.value for x in trait_s], "coherence": [x.value for x in coh_s],
            "modes": sorted({x.mode for x in trait_s + coh_s}), "raw_unscored": [x.raw for x in trait_s + coh_s
                                                                               if x.value is None][:4]}


def search_runs(layers: Sequence[int], s: SteeringSettings, n_questions: int,
                generate: Callable[[list[steering.Condition]], list[list[str]]],
                judge: Callable[[list[str]], dict[str, Any]]) -> list[dict[str, Any]]:
    """The baseline, then per layer ``search_steps`` runs of the coefficient search (double while mean coherence
    >= ``coherence_min``, else halve), in the order of the one-run-at-a-time search, from few ``generate`` calls.

    Doubling and halving commute, so the coefficients ``d`` steps can reach from ``c`` are the ``2d - 1`` values
    ``c * 2**m`` with ``|m| < d``: a wave generates them for every layer at once, for the largest ``d`` (at least 1,
    at most the steps left) whose new rows fit in ``batch_rows``, then walks ``d`` steps judging only the runs the
    search takes. Texts not taken are dropped; those taken are the one-at-a-time search's (greedy, same rows).
    """
    texts: dict[tuple[int | None, float], list[str]] = {}
    current = {L: s.coefficient for L in layers}
    by_layer: dict[int, list[dict[str, Any]]] = {L: [] for L in layers}
    base: dict[str, Any] | None = None
    done = 0

    def wanted(d: int) -> list[tuple[int | None, float]]:
        keys: list[tuple[int | None, float]] = [] if base is not None else [(None, 0.0)]
        keys += [(L, current[L] * 2.0 ** m) for L in layers for m in range(1 - d, d)]
        return [k for k in dict.fromkeys(keys) if k not in texts]

    while done < s.search_steps:
        d = 1
        while d < s.search_steps - done and len(wanted(d + 1)) * n_questions <= s.batch_rows:
            d += 1
        todo = wanted(d)
        texts.update(zip(todo, generate([steering.Condition(L, c) for L, c in todo])))
        if base is None:
            base = {"layer": None, "coefficient": 0.0, "texts": texts[(None, 0.0)], **judge(texts[(None, 0.0)])}
        for _ in range(d):
            for L in layers:
                c = current[L]
                run = {"layer": L, "coefficient": c, "texts": texts[(L, c)], **judge(texts[(L, c)])}
                by_layer[L].append(run)
                coh = [x for x in run["coherence"] if x is not None]
                current[L] = c * 2 if coh and statistics.fmean(coh) >= s.coherence_min else c / 2
            done += 1
    assert base is not None
    return [base, *(r for L in layers for r in by_layer[L])]


def _batch_key(runner: CellRunner, precision: str) -> dict[str, Any]:
    """What batching adds to a steering artefact's key: nothing where rows of a batch do not interact (outputs are
    the one-condition-at-a-time path's), ``batch_rows`` at precisions whose outputs depend on the batch."""
    return {"batch_rows": runner.study.steering.batch_rows} if precision in identity.BATCH_DEPENDENT else {}


def _settings_key(s: SteeringSettings) -> dict[str, Any]:
    """The ``[steering]`` settings a search's outputs depend on (``batch_rows`` only where ``_batch_key`` says).

    ``ab_files`` only names A/B files, whose sweeps key on the questions they hold, so it stays out: a study that
    names its held-out files keeps its cached searches."""
    return {k: v for k, v in asdict(s).items() if k not in ("batch_rows", "ab_files")}


def _steer_search(runner: CellRunner, cell: Cell, precision: str, vec_precision: str) -> dict[str, Any]:
    """Baseline, then per candidate layer a coefficient search (double while coherent, halve when not):
    ``search_runs``, batched."""
    study, s = runner.study, runner.study.steering
    trait = study.trait(cell.trait)
    vecs = runner.vectors(cell.model, vec_precision, trait, cell.method)
    layers = list(dict.fromkeys(_near(vecs, L) for L in _layers(runner, cell)))
    questions, template = _open_questions(runner, s, trait)
    prompts = [Prompt((("user", q),)) for q in questions]
    jset = study.judge
    comps = {**runner.key_components(cell.model, precision), "vectors": {L: _vhash(vecs[L]) for L in layers},
             "questions": questions, "template": template, "settings": _settings_key(s),
             "judge": judges.describe(jset, runner.pool.model_dir), "judge_model": jset.model,
             **_batch_key(runner, precision)}

    def build() -> dict[str, Any]:
        lm = runner.pool.get(cell.model, precision)
        progress.note(f"steering {cell.model}/{precision} {trait.key}: baseline + search")

        def gen(conds: list[steering.Condition]) -> list[list[str]]:
            return [g.texts for g in steering.generate_batched(
                lm.model, lm.tokenizer, prompts, conds, vectors={L: vecs[L] for L in layers}, mode=s.mode,
                max_new_tokens=s.max_new_tokens, max_rows=s.batch_rows)]

        runs = search_runs(layers, s, len(prompts), gen, lambda texts: _judged(runner, template, questions, texts))
        return {"runs": runs}

    return _json_cached(runner, f"search/{cell.model}/{precision}", comps, build)  # type: ignore[no-any-return]


Point = tuple[int | None, float]


def _point_comps(runner: CellRunner, cell: Cell, precision: str, point: Point) -> tuple[dict[str, Any],
                                                                                         Tensor | None]:
    """The cache key of one operating point's judged run, and the vector it steers with (None: the baseline)."""
    study, s = runner.study, runner.study.steering
    trait = study.trait(cell.trait)
    layer, coefficient = point
    vec = None
    if layer is not None:
        vecs = runner.vectors(cell.model, precision, trait, cell.method)
        if layer not in vecs:
            raise CellError(f"cell {cell.id}: the reference's operating layer {layer} has no {precision} vector "
                            f"(layers {sorted(vecs)})")
        vec = vecs[layer]
    questions, template = _open_questions(runner, s, trait)
    jset = study.judge
    comps = {**runner.key_components(cell.model, precision), "point": {"layer": layer, "coefficient": coefficient},
             "vectors": {} if vec is None else {layer: _vhash(vec)}, "questions": questions, "template": template,
             "generation": {"max_new_tokens": s.max_new_tokens, "mode": s.mode},
             "judge": judges.describe(jset, runner.pool.model_dir), "judge_model": jset.model}
    return comps, vec


def _steer_point(runner: CellRunner, cell: Cell, precision: str, layer: int | None, coefficient: float,
                 together: Sequence[Point] = ()) -> dict[str, Any]:
    """One judged run on every open question at one operating point (``layer=None``: the unsteered baseline), with
    the cell's own vectors at ``precision``: the quantized side of a steering cell, at the point the reference's
    search chose. When it must be generated, the points of ``together`` not yet cached are generated in the same
    batched call, judged and cached too (their own ``_steer_point`` then reads them), except at batch-dependent
    precisions, where each point is generated alone, so its key needs nothing about the batch."""
    study, s = runner.study, runner.study.steering
    trait = study.trait(cell.trait)
    questions, template = _open_questions(runner, s, trait)
    prompts = [Prompt((("user", q),)) for q in questions]
    ns = f"point/{cell.model}/{precision}"
    comps = _point_comps(runner, cell, precision, (layer, coefficient))[0]

    def judged(point: Point, texts: list[str]) -> dict[str, Any]:
        return {"layer": point[0], "coefficient": point[1], "texts": texts,
                **_judged(runner, template, questions, texts)}

    def build() -> dict[str, Any]:
        lm = runner.pool.get(cell.model, precision)
        where = "baseline" if layer is None else f"layer {layer} x{coefficient:g}"
        progress.note(f"steering {cell.model}/{precision} {trait.key}: {where}")
        points: list[Point] = [(layer, coefficient)]
        if precision not in identity.BATCH_DEPENDENT:
            points += [p for p in dict.fromkeys(together) if p != (layer, coefficient)
                       and not _stored(runner, ns, _point_comps(runner, cell, precision, p)[0])]
        specs = [_point_comps(runner, cell, precision, p) for p in points]
        vectors = {p[0]: v for p, (_, v) in zip(points, specs) if p[0] is not None and v is not None}
        gens = steering.generate_batched(lm.model, lm.tokenizer, prompts,
                                         [steering.Condition(L, c if L is not None else 0.0) for L, c in points],
                                         vectors=vectors, mode=s.mode, max_new_tokens=s.max_new_tokens,
                                         max_rows=s.batch_rows)
        for p, (c, _), g in zip(points[1:], specs[1:], gens[1:]):
            _json_cached(runner, ns, c, functools.partial(judged, p, g.texts))
        return judged((layer, coefficient), gens[0].texts)

    return _json_cached(runner, ns, comps, build)  # type: ignore[no-any-return]


def _stored(runner: CellRunner, namespace: str, components: dict[str, Any]) -> bool:
    what, _, under = namespace.partition("/")
    return ArtefactStore(Path(runner.cache.root)).folder(f"steering/{what}", components, under).exists()


def _mean_at(values: Sequence[float | None], questions: Sequence[int]) -> float | None:
    vals = [float(x) for q in questions if (x := values[q]) is not None]
    return statistics.fmean(vals) if vals else None


def steering_delta(runner: CellRunner, cell: Cell) -> CellResult:
    """Judged trait delta over the unsteered baseline at the reference's operating point, and its degradation vs
    the reference, with a paired bootstrap over questions.

    The operating point (layer, coefficient) is chosen on the reference precision's search only, and never on the
    questions it scores: the questions are split into two seeded halves, the point chosen on one half (largest
    mean delta among runs that keep mean coherence >= ``coherence_min`` there) scores the other half, at the
    reference and at the quantized precision alike (2-fold cross-fitting). Choosing the best of several runs by
    the same scores that then measure it would inflate the reference's delta by the selection alone, and a
    quantized cell compared at its own best point would compare two maxima of noise.
    """
    study, s = runner.study, runner.study.steering
    band = study.bands["steering_degradation"]
    search = _steer_search(runner, cell, study.reference, study.reference)
    base, *runs = search["runs"]
    n = len(base["trait"])
    halves = [h for h in stats.folds(n, study.seed) if h]
    plan = [(chosen_on, scored_on) for chosen_on, scored_on in zip(halves, halves[::-1])] if len(halves) == 2 else []
    judge_name = judges.describe(study.judge, runner.pool.model_dir)
    tried = [(r["layer"], r["coefficient"]) for r in runs]
    figures: dict[str, Any] = {"n_questions_total": n, "judge_score_modes": ""}
    points = []
    for chosen_on, scored_on in plan:
        p = stats.choose_point(runs, base, chosen_on, s.coherence_min)
        if p is None:
            cohs = [c for c in (_mean_at(r["coherence"], chosen_on) for r in runs) if c is not None]
            best = max(cohs, default=0.0)
            j = undefined("coherence_reference", best, band, study.fail_on, study.fail_on_inconclusive,
                          f"no (layer, coefficient) of the reference {study.reference}'s search {tried} kept mean "
                          f"coherence >= {s.coherence_min:g} on the selection questions {chosen_on} (best "
                          f"{best:.1f}), so there is no operating point to compare the quantized model at; judge: "
                          f"{judge_name}")
            ci = stats.best_mean_interval([[r["coherence"][q] for q in chosen_on] for r in runs], seed=study.seed,
                                          n_boot=study.bootstrap_n, level=study.ci_level,
                                          what="best reference coherence")
            if ci is not None:
                figures.update(ci.figures("coherence_reference"))
            return _record(runner, cell, "steering", j, figures, "coherence_reference", best)
        points.append((chosen_on, scored_on, p))
    if not points:
        j = undefined("n_questions_total", float(n), band, study.fail_on, study.fail_on_inconclusive,
                      f"{n} open question: an operating point chosen on some questions needs others to score it")
        # a count, not an estimate: its interval is the count itself
        figures.update(n_questions_total_ci_low=float(n), n_questions_total_ci_high=float(n))
        return _record(runner, cell, "steering", j, figures, "n_questions_total", float(n))
    together: list[Point] = [(None, 0.0), *((p["layer"], p["coefficient"]) for _, _, p in points)]
    q_base = _steer_point(runner, cell, cell.precision, None, 0.0, together)
    ref_steered: list[float | None] = [None] * n
    q_steered: list[float | None] = [None] * n
    ref_coh: list[float | None] = [None] * n
    q_coh: list[float | None] = [None] * n
    q_runs = []
    for chosen_on, scored_on, p in points:
        ref_run = next(r for r in runs if (r["layer"], r["coefficient"]) == (p["layer"], p["coefficient"]))
        q_run = _steer_point(runner, cell, cell.precision, p["layer"], p["coefficient"], together)
        q_runs.append((ref_run, q_run))
        for qi in scored_on:
            ref_steered[qi], q_steered[qi] = ref_run["trait"][qi], q_run["trait"][qi]
            ref_coh[qi], q_coh[qi] = ref_run["coherence"][qi], q_run["coherence"][qi]
    out = stats.steering_degradation(base["trait"], ref_steered, q_base["trait"], q_steered, band, seed=study.seed,
                                     n_boot=study.bootstrap_n, level=study.ci_level, fail_on=study.fail_on,
                                     fail_on_inconclusive=study.fail_on_inconclusive)
    everything = [*search["runs"], q_base, *(q for _, q in q_runs)]
    k = s.samples
    figures.update(out.figures)
    figures.update({
        "operating_points": [{"layer": p["layer"], "coefficient": p["coefficient"], "chosen_on": chosen_on,
                              "scored_on": scored_on, "reference_delta_on_chosen": p["delta"]}
                             for chosen_on, scored_on, p in points],
        "coherence": _mean_at(q_coh, range(n)), "coherence_reference": _mean_at(ref_coh, range(n)),
        "baseline_coherence": _mean_at(q_base["coherence"], range(n)),
        "baseline_coherence_reference": _mean_at(base["coherence"], range(n)),
        "unscored": sum(x is None for r in everything for x in r["trait"] + r["coherence"]),
        "judge_score_modes": ",".join(sorted({m for r in everything for m in r["modes"]})),
        "samples": {"baseline": q_base["texts"][:k], "steered": q_runs[0][1]["texts"][:k],
                    "reference_steered": q_runs[0][0]["texts"][:k]},
    })
    figures = {key: v for key, v in figures.items() if v is not None}
    metric = "degradation" if "degradation" in out.figures else out.judgement.metric
    return _record(runner, cell, "steering", out.judgement, figures, metric,
                   float(figures.get(metric, out.judgement.value)), notes=[f"judge: {judge_name}"])


def _ab_sweep(runner: CellRunner, cell: Cell, precision: str, vec_precision: str) -> dict[str, list[list[float]]]:
    """Logit differences and p(match) of the A/B questions at every ``ab_coefficients``: ``ops.ab_sweep``."""
    study, s = runner.study, runner.study.steering
    trait = study.trait(cell.trait)
    vecs = runner.vectors(cell.model, vec_precision, trait, s.method)
    layer = _near(vecs, _layers(runner, cell)[0])
    v = vecs[layer]
    qs = _ab_questions(study, s, trait)
    comps = {**runner.key_components(cell.model, precision), "vector": _vhash(v), "layer": layer,
             "coefficients": s.ab_coefficients, "questions": [[p.messages, m] for p, m in qs],
             "readout": "prompt-kv-cache",   # the prompt run once per question: sweeps before it differ in float rounding
             **_batch_key(runner, precision)}

    def build() -> dict[str, list[list[float]]]:
        lm = runner.pool.get(cell.model, precision)
        sweep = steering.ab_sweep(lm.model, lm.tokenizer, qs, s.ab_coefficients, vectors={layer: v},
                                  max_rows=s.batch_rows)
        return {"logit_diff": [r.logit_diff for r in sweep], "p_match": [r.p_match for r in sweep],
                "layer": [[float(layer)]]}

    return _json_cached(runner, f"ab/{cell.model}/{precision}", comps, build)  # type: ignore[no-any-return]


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def logit_diff(runner: CellRunner, cell: Cell) -> CellResult:
    """Per-question agreement of the A/B steering response: the correlation across questions of each question's
    steerability slope at the quantized precision with the reference's, with a paired bootstrap over questions
    (quant_harness.steer.stats.logit_agreement)."""
    study, s = runner.study, runner.study.steering
    ref = _ab_sweep(runner, cell, study.reference, study.reference)
    quant = _ab_sweep(runner, cell, cell.precision, cell.precision)
    zero = s.ab_coefficients.index(0.0) if 0.0 in s.ab_coefficients else None
    coefs = list(s.ab_coefficients)
    out = stats.logit_agreement(ref["logit_diff"], quant["logit_diff"], coefs, study.bands["logit_corr"],
                                seed=study.seed, n_boot=study.bootstrap_n, level=study.ci_level,
                                fail_on=study.fail_on, fail_on_inconclusive=study.fail_on_inconclusive)
    figures: dict[str, Any] = {
        **out.figures, "layer": int(quant["layer"][0][0]),
        "p_match_slope": _slope(coefs, [statistics.fmean(r) for r in quant["p_match"]]),
        "unscored": 0,
        "by_coefficient": {f"{c:g}": {"logit_diff": statistics.fmean(q), "logit_diff_reference": statistics.fmean(r),
                                      "p_match": statistics.fmean(p), "p_match_reference": statistics.fmean(pr)}
                           for c, q, r, p, pr in zip(coefs, quant["logit_diff"], ref["logit_diff"],
                                                      quant["p_match"], ref["p_match"])},
    }
    if zero is not None:
        figures["logit_corr_unsteered"] = figures["logit_corr_by_coefficient"].get(f"{coefs[zero]:g}")
    figures = {key: v for key, v in figures.items() if v is not None}
    return _record(runner, cell, "logit_diff", out.judgement, figures, "logit_corr",
                   float(figures.get("logit_corr", out.judgement.value)))


def steerability(coefficients: Sequence[float], logit_diff: list[list[float]]) -> tuple[float, float]:
    """The A/B steerability slope (logit difference per unit coefficient, averaged over questions) and its standard
    error across questions; ``logit_diff[c][q]`` is question q at coefficient c."""
    per_question = [_slope(coefficients, [row[q] for row in logit_diff]) for q in range(len(logit_diff[0]))]
    if len(per_question) < 2:
        raise CellError(f"{len(per_question)} A/B question: a steerability's standard error needs at least two")
    return statistics.fmean(per_question), statistics.stdev(per_question) / len(per_question) ** 0.5


def transfer(runner: CellRunner, cell: Cell) -> CellResult:
    """The reference's vectors on the quantized model vs the quantized model's own vectors (A/B steerability).

    The ratio of the two mean slopes keeps its sign, so it is meaningful even where a small model's vector steers
    the wrong way; a ratio of 1 is perfect transfer, and the verdict is on the interval of ``1 - ratio`` over
    bootstrap resamples of the questions (quant_harness.steer.stats.transfer_ratio). Where the own vector's slope
    interval includes 0 the ratio would divide by noise: the cell is inconclusive.
    """
    study = runner.study
    s = study.steering
    own = _ab_sweep(runner, cell, cell.precision, cell.precision)
    moved = _ab_sweep(runner, cell, cell.precision, study.reference)
    coefs = list(s.ab_coefficients)
    out = stats.transfer_ratio(own["logit_diff"], moved["logit_diff"], coefs, study.bands["steering_degradation"],
                               seed=study.seed, n_boot=study.bootstrap_n, level=study.ci_level,
                               fail_on=study.fail_on, fail_on_inconclusive=study.fail_on_inconclusive)
    figures: dict[str, Any] = {
        **out.figures, "logit_corr_own_vs_reference_vectors": stats.pearson(
            stats.slopes(coefs, own["logit_diff"]), stats.slopes(coefs, moved["logit_diff"])),
        "layer": int(own["layer"][0][0]), "unscored": 0}
    if len(own["logit_diff"][0]) >= 2:
        figures["steerability_own_se"] = steerability(coefs, own["logit_diff"])[1]
        figures["steerability_reference_vectors_se"] = steerability(coefs, moved["logit_diff"])[1]
    figures = {key: v for key, v in figures.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    metric = "transfer_ratio" if "transfer_ratio" in out.figures else out.judgement.metric
    return _record(runner, cell, "transfer", out.judgement, figures, metric,
                   float(figures.get(metric, out.judgement.value)))


def _refusal_rates(runner: CellRunner, cell: Cell, precision: str) -> dict[str, Any]:
    """One precision's refusal texts (cached) and which of them refuse, with the layer of its r."""
    study, s = runner.study, runner.study.steering
    data = json.loads(s.refusal_file(_root(study)).read_text())
    harmful = [Prompt((("user", q),)) for q in data["harmful"]]
    harmless = [Prompt((("user", q),)) for q in data["harmless"]]
    trait = study.trait(cell.trait)
    vecs = runner.vectors(cell.model, precision, trait, "mean_diff")
    layer = _near(vecs, _layers(runner, cell)[0])
    r = vecs[layer]
    comps = {**runner.key_components(cell.model, precision), "r": _vhash(r), "layer": layer,
             "prompts": data, "max_new_tokens": s.max_new_tokens, **_batch_key(runner, precision)}

    def build() -> dict[str, Any]:
        lm = runner.pool.get(cell.model, precision)

        def gen(ps: list[Prompt], conds: list[steering.Condition], **kw: Any) -> list[list[str]]:
            return [g.texts for g in steering.generate_batched(lm.model, lm.tokenizer, ps, conds,
                                                               max_new_tokens=s.max_new_tokens,
                                                               max_rows=s.batch_rows, **kw)]

        # each group's prompts with and without its intervention in one call: ablation, or +r at every position
        out: dict[str, list[str]] = {}
        out["harmful"], out["harmful_ablated"] = gen(
            harmful, [steering.Condition(), steering.Condition(ablate=True)], direction=r)
        out["harmless"], out["harmless_actadd"] = gen(
            harmless, [steering.Condition(), steering.Condition(layer, 1.0)], vectors={layer: r},
            from_instruction_end=False)
        return out

    texts = _json_cached(runner, f"refusal/{cell.model}/{precision}", comps, build)
    return {"refused": {k: [float(judges.is_refusal(t)) for t in v] for k, v in texts.items()},
            "texts": texts, "layer": layer}


def reference_side(runner: CellRunner, cell: Cell) -> None:
    """What a quantized steering-kind cell reads of the reference (KindSpec.reference_side): the steering search,
    the A/B sweep with the reference's vectors, the reference vectors a transfer cell moves, the refusal runs."""
    ref = runner.study.reference
    if cell.kind == "steering":
        _steer_search(runner, cell, ref, ref)
    elif cell.kind == "logit_diff":
        _ab_sweep(runner, cell, ref, ref)
    elif cell.kind == "transfer":
        study, method = runner.study, runner.study.steering.method
        # the early stop (gates.early_stop_cosine) reads every trait's cosine before a transfer cell runs
        traits = [t for t in study.traits if method in t.methods] if study.gates.early_stop_cosine is not None \
            else [study.trait(cell.trait)]
        for trait in traits:
            runner.vectors(cell.model, ref, trait, method)
    elif cell.kind == "refusal":
        _refusal_rates(runner, cell, ref)


def refusal(runner: CellRunner, cell: Cell) -> CellResult:
    """Refusal rates (12 substrings) on harmful prompts with and without ablation at every layer, and on harmless
    prompts with and without +r added at the selected layer; the effect's degradation vs the reference."""
    study, s = runner.study, runner.study.steering
    quant = _refusal_rates(runner, cell, cell.precision)
    ref = quant if cell.precision == study.reference else _refusal_rates(runner, cell, study.reference)
    out = stats.refusal_degradation(ref["refused"], quant["refused"], study.bands["steering_degradation"],
                                    seed=study.seed, n_boot=study.bootstrap_n, level=study.ci_level,
                                    fail_on=study.fail_on, fail_on_inconclusive=study.fail_on_inconclusive)
    k = s.samples
    rate = {c: statistics.fmean(v) for c, v in quant["refused"].items()}
    rate_ref = {c: statistics.fmean(v) for c, v in ref["refused"].items()}
    figures = {
        "refusal_harmful": rate["harmful"], "refusal_harmful_ablated": rate["harmful_ablated"],
        "refusal_harmless": rate["harmless"], "refusal_harmless_actadd": rate["harmless_actadd"],
        **{f"refusal_{c}_reference": v for c, v in rate_ref.items()},
        **out.figures, "layer": quant["layer"],
        "unscored": 0, "samples": {name: texts[:k] for name, texts in quant["texts"].items()},
    }
    metric = "degradation" if "degradation" in out.figures else out.judgement.metric
    return _record(runner, cell, "refusal", out.judgement, figures, metric, float(figures[metric]))


def _record(runner: CellRunner, cell: Cell, kind: str, j: Any, figures: dict[str, Any], metric: str,
            value: float, notes: Sequence[str] = ()) -> CellResult:
    study = runner.study
    trait = study.trait(cell.trait)
    prov = runner.provenance(cell, trait)
    jset = study.judge
    prov.update(steering=asdict(study.steering),
                vector_method=cell.method if kind == "steering" else study.steering.method,
                steer_positions="CAA/PV: last instruction token and every generated token; refusal: ablation at all "
                                "layers (every block's input and output, and what each block writes to the residual "
                                "stream: attention and MLP outputs, or their post-norms where the block has them), "
                                "addition at all positions")
    if kind == "steering":
        prov["judge"] = judges.describe(jset, runner.pool.model_dir)
    return CellResult(cell_id=cell.id, kind=kind, verdict=j.verdict.label, metric=metric, value=value,
                      figures=figures, layers=list(_layers(runner, cell)),
                      explanation="; ".join([j.explain(), *notes]), provenance=prov)
