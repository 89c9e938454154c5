"""reports/findings.md: the plan's hypotheses H1-H8, each answered from the matrices or marked "not measured"
with what is missing, plus coverage and caveats. Generated; never edited by hand."""

from __future__ import annotations

import statistics
import time
from typing import Any

from quant_harness.records import Record
from quant_harness.report import plots
from quant_harness.study.ids import split_cell_id

_STEERING_KINDS = ("steering", "logit_diff", "refusal")


def _f(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _by_kind(records: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(str(r.get("kind", "?")), []).append(r)
    return out


def _pair_line(kind: str, pair: dict[str, Any], better: str) -> tuple[str, str]:
    """A paired comparison's sentence and its answer (supported / contradicted / inconclusive)."""
    a, b, d = pair["a"], pair["b"], pair["mean_difference_b_minus_a"]
    line = (f"- {kind}: degradation {b} - {a} = {_f(d)} (95% CI {_f(pair['ci_low'])}..{_f(pair['ci_high'])}, "
            f"{pair['n_pairs']} paired conditions)")
    winner = b if pair["b_more_robust"] else a if pair["a_more_robust"] else ""
    if not winner:
        return line, "no difference resolved (interval includes 0)"
    return line, f"{winner} more robust" + ("" if better in ("", winner) else " (against the hypothesis)")


def _paired_section(rank: dict[str, Any], key: str, better: str, missing: str) -> tuple[str, list[str]]:
    lines, answers = [], []
    for kind, r in rank.get("by_kind", {}).items():
        pair = r.get("paired", {}).get(key)
        if pair:
            line, answer = _pair_line(kind, pair, better)
            lines.append(line)
            answers.append(f"{kind}: {answer}")
    if not lines:
        return f"not measured: {missing}", []
    return "; ".join(answers), lines


def _h1(kinds: dict[str, list[Record]]) -> tuple[str, list[str]]:
    recs = kinds.get("vectors", [])
    if not recs:
        return "not measured: no vector cells in vector_comparison.json (run `pytest cases -k vector`)", []
    lines, below = [], 0
    by_prec: dict[str, list[Record]] = {}
    for r in recs:
        by_prec.setdefault(split_cell_id(r["cell_id"], r).precision, []).append(r)
    for p in sorted(by_prec, key=plots.precision_key):
        rs = by_prec[p]
        means = [float(r["value"]) for r in rs]
        mins = [float(r["figures"].get("cosine_min", r["value"])) for r in rs]
        below += sum(m < 0.999 for m in means)
        verdicts = statistics.multimode([r["verdict"] for r in rs])
        lines.append(f"- {p}: mean per-layer cosine {_f(statistics.fmean(means))} over {len(rs)} cells "
                     f"(range {_f(min(means))}..{_f(max(means))}; lowest single layer {_f(min(mins))}; "
                     f"most common verdict {'/'.join(verdicts)})")
    answer = "supported" if below else "not supported"
    return f"{answer}: {below} of {len(recs)} vector cells have a mean cosine below 0.999", lines


_FIGURE = {
    "steering": ("degradation", "degradation of the judged steering delta at the reference's operating point"),
    "refusal": ("degradation", "degradation of the refusal effect"),
    "logit_diff": ("logit_corr", "correlation of per-question A/B steerability slopes with the reference's"),
    "transfer": ("transfer_ratio", "transfer ratio (reference vectors' A/B slope over the own vectors')"),
}
"""Per steering kind, the one figure its findings line states, and what it is."""


def _verdict_counts(recs: list[Record]) -> str:
    counts: dict[str, int] = {}
    for r in recs:
        counts[str(r.get("verdict"))] = counts.get(str(r.get("verdict")), 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _kind_summary(kind: str, recs: list[Record]) -> list[str]:
    """Per precision: the kind's one figure (``_FIGURE``) over the cells that have it, and their verdicts."""
    figure, what = _FIGURE[kind]
    by_prec: dict[str, list[Record]] = {}
    for r in recs:
        by_prec.setdefault(split_cell_id(r["cell_id"], r).precision, []).append(r)
    lines = []
    for p, rs in sorted(by_prec.items(), key=lambda x: plots.precision_key(x[0])):
        vals = [float(v) for r in rs if isinstance(v := r.get("figures", {}).get(figure), (int, float))
                and not isinstance(v, bool)]
        shown = (f"mean {figure} {_f(statistics.fmean(vals))} over {len(vals)} cells" if vals
                 else f"no cell has a {figure}")
        lack = len(rs) - len(vals)
        lines.append(f"- {kind}, {p}: {shown} ({what}); verdicts {_verdict_counts(rs)}"
                     + (f"; {lack} cells without it (the reference shows no effect to compare)" if lack and vals
                        else ""))
    return lines


def _h2(kinds: dict[str, list[Record]]) -> tuple[str, list[str]]:
    recs = [r for k in _STEERING_KINDS for r in kinds.get(k, [])]
    if not recs:
        return ("not measured: steering_comparison.json has no steering records; needs steering cells "
                "(steering delta and coherence from an LLM judge at matched coefficients)"), []
    answers, lines = [], []
    for kind in _STEERING_KINDS:
        rs = kinds.get(kind, [])
        if rs:
            worse = sum(r.get("verdict") in ("degraded", "broken") for r in rs)
            undecided = sum(r.get("verdict") == "inconclusive" for r in rs)
            answers.append(f"{kind}: {worse} of {len(rs)} cells degraded or broken, {undecided} inconclusive")
            lines += _kind_summary(kind, rs)
    return "; ".join(answers), lines


def _massive_ratios(records: list[Record]) -> dict[str, float]:
    """Each model's massive-dim ratio: from its records' card provenance, else its shipped card; 0 when unknown."""
    out: dict[str, float] = {}
    for r in records:
        v = (r.get("provenance", {}).get("model_card") or {}).get("massive_dims_ratio")
        if isinstance(v, (int, float)) and v > 0:
            out[split_cell_id(r["cell_id"], r).model] = float(v)
    from quant_harness import data
    from quant_harness.errors import StudyError
    from quant_harness.models.cards import load_card

    for model in {split_cell_id(r["cell_id"], r).model for r in records} - set(out):
        try:
            out[model] = load_card(model, data.path("model_cards")).massive_dims_ratio
        except StudyError:
            out[model] = 0.0
    return out


def _ratio(x: float) -> str:
    return f"{x:,.0f}x"


def _h4(rank: dict[str, Any], records: list[Record]) -> tuple[str, list[str]]:
    """Per kind, the model with the most severe massive dims against the mildest: more sensitive when its
    degradation interval lies wholly above the other's, less when wholly below, unresolved when they overlap."""
    ratios = _massive_ratios(records)
    lines, answers = [], []
    for kind, r in rank.get("by_kind", {}).items():
        models = r.get("models", [])
        if len(models) < 2:
            continue
        lines += [f"- {kind}: {m['name']} ({m.get('family') or '?'}, massive dims "
                  f"{_ratio(ratios[m['name']]) if ratios.get(m['name']) else 'unknown'}): mean degradation "
                  f"{_f(m['mean_degradation'])} (CI {_f(m['ci_low'])}..{_f(m['ci_high'])}, n={m['n']})"
                  for m in models]
        known = sorted((m for m in models if ratios.get(m["name"], 0.0) > 0), key=lambda m: ratios[m["name"]])
        if len(known) < 2 or ratios[known[0]["name"]] == ratios[known[-1]["name"]]:
            answers.append(f"{kind}: massive-dim ratios unknown or equal (card massive_dims_ratio)")
            continue
        mild, severe = known[0], known[-1]
        if min(mild["n"], severe["n"]) < 2:
            answer = "not resolved (one cell per model: no interval)"
        elif severe["ci_low"] > mild["ci_high"]:
            answer = "supported"
        elif severe["ci_high"] < mild["ci_low"]:
            answer = "contradicted"
        else:
            answer = "not resolved (intervals overlap)"
        answers.append(f"{kind}: {answer}: {severe['name']} ({_ratio(ratios[severe['name']])}) "
                       f"{_f(severe['mean_degradation'])} vs {mild['name']} ({_ratio(ratios[mild['name']])}) "
                       f"{_f(mild['mean_degradation'])}")
    if not lines:
        return ("not measured: no kind has quantized cells of two models; needs cells of gemma3-4b (massive dims "
                "~1500x) and llama-8b "
                "(~100x) at the same precisions, or cases/studies/families.toml (gemma3-270m against "
                "smollm2-135m on CPU)"), []
    return "; ".join(answers), lines


def _h5(rank: dict[str, Any]) -> tuple[str, list[str]]:
    lines = []
    for kind, r in rank.get("by_kind", {}).items():
        for fam, rows in (r.get("size_scaling") or {}).items():
            lines.append(f"- {kind}, {fam}: " + ", ".join(
                f"{x['model']} ({_f(x['params_b'])}B) {_f(x['mean_degradation'])}" for x in rows))
    if not lines:
        return "not measured: needs two sizes of one family (e.g. llama-8b and llama-70b, or gemma2-2b)", []
    return "see figures (degradation by size within a family)", lines


def _h7(kinds: dict[str, list[Record]]) -> tuple[str, list[str]]:
    recs = kinds.get("transfer", [])
    if not recs:
        return ("not measured: no transfer records; needs cells that steer quantized models with "
                "reference-precision vectors"), []
    worse = sum(r.get("verdict") in ("degraded", "broken") for r in recs)
    undecided = sum(r.get("verdict") == "inconclusive" for r in recs)
    return (f"{len(recs) - worse - undecided} of {len(recs)} transfer cells robust, {worse} degraded or broken, "
            f"{undecided} inconclusive"), _kind_summary("transfer", recs)


def _coverage(records: list[Record], run: dict[str, Any]) -> list[str]:
    names = [split_cell_id(r["cell_id"], r) for r in records]
    models = sorted({n.model for n in names})
    precs = sorted({n.precision for n in names}, key=plots.precision_key)
    refs = sorted({str(r.get("provenance", {}).get("reference", "?")) for r in records})
    kinds = _by_kind(records)
    verdicts: dict[str, int] = {}
    for r in records:
        verdicts[str(r.get("verdict"))] = verdicts.get(str(r.get("verdict")), 0) + 1
    subjects = sorted({n.subject for n in names})
    return [
        f"- Cells: {len(records)} ({', '.join(f'{k} {len(v)}' for k, v in sorted(kinds.items()))}); verdicts: "
        + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())),
        f"- Models: {', '.join(models) or 'none'}",
        f"- Precisions compared: {', '.join(precs) or 'none'} against reference {', '.join(refs)}",
        f"- Traits / methods / benchmarks: {', '.join(subjects) or 'none'}",
        f"- Last run: study {run.get('study', '?')}, {run.get('model_loads', '?')} model loads, "
        f"{run.get('forward_passes', '?')} forward passes, {run.get('cache_hits', '?')} cache hits",
    ]


def _caveats(records: list[Record]) -> list[str]:
    notes = sorted({str(n) for r in records for n in r.get("provenance", {}).get("notes") or []})
    out = [f"- {n}" for n in notes]
    judges = sorted({str(r.get("provenance", {}).get("judge")) for k in _STEERING_KINDS
                     for r in records if r.get("kind") == k and r.get("provenance", {}).get("judge")})
    steering = [r for r in records if r.get("kind") in _STEERING_KINDS]
    if judges:
        out.append(f"- Steering was scored by: {', '.join(judges)}")
    elif steering:
        out.append("- Steering records do not name their judge (provenance.judge missing)")
    else:
        out.append("- No steering records, so no LLM judge was involved in these results")
    inconclusive = sum(r.get("verdict") == "inconclusive" for r in records)
    out.append(f"- Verdicts come from 95% seeded bootstrap intervals over the data (contrast examples, the same "
               f"resample at both precisions, for vectors and probes; texts for SAE; questions for steering, "
               f"logit_diff and transfer and prompts for refusal, the same ones at both precisions); {inconclusive} "
               "cells are inconclusive because their interval straddles a band boundary or the reference's own "
               "noise floor (its self-agreement over resamples, its AUROC interval below the 0.6 gate, or for the "
               "steering kinds a reference effect whose interval does not clear 0) cannot decide the band")
    sizes = [int(r["provenance"]["n_pos"]) for r in records if isinstance(r.get("provenance", {}).get("n_pos"), int)]
    if sizes:
        span = str(min(sizes)) if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
        out.append(f"- Contrast sets have {span} positive examples per cell; small sets make "
                   "vectors noisy at every precision, including the reference")
    return out


def _flagged(records: list[Record], rule: str) -> list[tuple[Record, dict[str, Any]]]:
    return [(r, f) for r in records for f in r.get("flags") or [] if f.get("rule") == rule]


def _reference_of(records: list[Record]) -> str:
    refs = {str(r.get("provenance", {}).get("reference")) for r in records if r.get("provenance", {}).get("reference")}
    return refs.pop() if len(refs) == 1 else ""


def _checkpoint(records: list[Record]) -> list[str]:
    """Checkpoint 1: the reference's own figures per model, then the quantized cells whose verdict it withheld."""
    ref = _reference_of(records)
    lines = []
    by_model: dict[str, list[Record]] = {}
    for r in records:
        by_model.setdefault(split_cell_id(r["cell_id"], r).model, []).append(r)
    for model, rs in sorted(by_model.items()):
        probes = [r for r in rs if r.get("kind") == "probes" and split_cell_id(r["cell_id"], r).precision == ref]
        aurocs = [float(v) for r in probes if isinstance(v := r.get("figures", {}).get("auroc_reference"), float)]
        deltas = {split_cell_id(r["cell_id"], r).subject: r["figures"]["delta_reference"] for r in rs
                  if r.get("kind") == "steering" and isinstance(r.get("figures", {}).get("delta_reference"), float)}
        bench = sorted({f"{r['figures'].get('task')} {_f(r['figures'].get('reference_accuracy'))}" for r in rs
                        if r.get("kind") == "benchmarks" and split_cell_id(r["cell_id"], r).precision == ref})
        refusal = [float(v) for r in rs if r.get("kind") == "refusal" and split_cell_id(r["cell_id"], r).precision
                   == ref and isinstance(v := r.get("figures", {}).get("effect"), (int, float))]
        parts = [f"reference AUROC {_f(min(aurocs))}..{_f(max(aurocs))} over {len(aurocs)} extractions"
                 if aurocs else "no reference probe cells",
                 "steering delta at the reference " + ", ".join(f"{k} {v:+.1f}" for k, v in sorted(deltas.items()))
                 if deltas else "no reference steering delta",
                 "benchmarks recorded at the reference: " + ", ".join(bench) if bench else "no reference benchmark",
                 f"refusal ablation effect at the reference {_f(refusal[0])}" if refusal else "no reference refusal"]
        lines.append(f"- {model} ({ref or 'reference'}): " + "; ".join(parts))
    gated = _flagged(records, "checkpoint")
    withheld = {(r.get("kind"), r["cell_id"]) for r, _ in gated}
    checks: dict[str, int] = {}
    for _, f in gated:
        checks[str(f.get("check"))] = checks.get(str(f.get("check")), 0) + 1
    lines += ["", f"**Cells whose verdict the gate withheld (inconclusive, reference baseline failed):** "
                  f"{len(withheld)} of {len(records)}"
              + (f" ({', '.join(f'{k} {n}' for k, n in sorted(checks.items()))})" if checks else "")]
    lines += [""] if gated else []
    lines += [f"- {r.get('kind')} {r['cell_id']}: {f['text']}" for r, f in gated[:_LISTED]]
    if len(gated) > _LISTED:
        lines.append(f"- ... and {len(gated) - _LISTED} more (the records' `flags` in reports/results/*.json)")
    return lines


_LISTED = 40
"""Flag lines listed per section; the rest are counted (every one is in the records)."""


def _flag_section(records: list[Record], rule: str, none: str) -> list[str]:
    found = _flagged(records, rule)
    if not found:
        return [none]
    lines = [f"- {r.get('kind')} {r['cell_id']} ({r.get('verdict')}): {f['text']}" for r, f in found[:_LISTED]]
    if len(found) > _LISTED:
        lines.append(f"- ... and {len(found) - _LISTED} more (the records' `flags` in reports/results/*.json)")
    return lines


def _gates(records: list[Record]) -> list[str]:
    if records and not any("flags" in r for r in records):
        return ["## Plan gates", "", ("Not checked: these records were written before the gates existed (re-run "
                                      "the cells to check them)."), ""]
    out = ["## Plan gates", "", "Checked on every cell by quant_harness.report.gates (the study's `[gates]`).", "",
           "### Checkpoint 1: reference baselines", "", *_checkpoint(records), "",
           "### INVESTIGATE", "",
           *_flag_section(records, "investigate", "- none: no steering delta drop above the threshold, no AUROC, "
                                                  "cosine or HellaSwag figure past the plan's INVESTIGATE limits"),
           "", "### DISCARD (generating garbage)", "",
           *_flag_section(records, "discard", "- none: every steering record kept coherence above the DISCARD "
                                              "floor at some coefficient"), ""]
    return out


def _criteria(records: list[Record], rank: dict[str, Any]) -> list[str]:
    """The plan's success criteria, each ticked or not from what the matrices hold, and which file answers it."""
    kinds = _by_kind(records)
    ref = _reference_of(records)
    names = {r["cell_id"]: split_cell_id(r["cell_id"], r) for r in records}
    groups = {(n.model, n.precision) for n in names.values()}
    models = sorted({m for m, _ in groups})
    quant = {g for g in groups if g[1] != ref}

    def tick(ok: bool, text: str, measured: str, where: str) -> str:
        return f"- [{'x' if ok else ' '}] {text}: {measured} ({where})"

    syc = {names[r["cell_id"]].model: r["figures"].get("delta_reference") for r in kinds.get("steering", [])
           if names[r["cell_id"]].subject.startswith("pv_syc")}
    syc_ok = [m for m, d in syc.items() if isinstance(d, float) and not any(
        f.get("check") == "reference_delta" for r in kinds["steering"] if names[r["cell_id"]].model == m
        for f in r.get("flags") or [])]
    vec = kinds.get("vectors", [])
    vec_groups = {(names[r["cell_id"]].model, names[r["cell_id"]].precision) for r in vec}
    subjects = {names[r["cell_id"]].subject for r in vec}
    vec_have = {(names[r["cell_id"]].model, names[r["cell_id"]].precision, names[r["cell_id"]].subject) for r in vec}
    vec_missing = len(vec_groups) * len(subjects) - len(vec_have)
    steer = kinds.get("steering", [])
    steer_n = sum(isinstance(r.get("figures", {}).get("degradation"), float) for r in steer)
    by_kind = rank.get("by_kind", {})
    methods = [k for k, r in by_kind.items() if r.get("paired", {}).get("probe_vs_mean_diff")]
    families = [k for k, r in by_kind.items() if len(r.get("families", [])) > 1]
    sizes = [k for k, r in by_kind.items() if r.get("size_scaling")]
    transfer = kinds.get("transfer", [])
    transfer_n = sum(isinstance(r.get("figures", {}).get("transfer_ratio"), float) for r in transfer)
    hella = {(names[r["cell_id"]].model, names[r["cell_id"]].precision) for r in kinds.get("benchmarks", [])
             if "hellaswag" in str(r.get("figures", {}).get("task", ""))}
    logit = kinds.get("logit_diff", [])
    logit_n = sum(isinstance(r.get("figures", {}).get("logit_corr"), float) for r in logit)
    return [
        tick(bool(models) and len(syc_ok) == len(models), "Reference baselines work: PV sycophancy moves its trait "
             "on every model", (f"{len(syc_ok)} of {len(models)} models have a PV sycophancy steering delta at the "
                                "reference that passes Checkpoint 1 ("
                                + ", ".join(f"{m} {_f(d)}" for m, d in sorted(syc.items())) + ")") if syc
             else "no PV sycophancy steering cells", "steering_comparison.json"),
        tick(bool(vec) and vec_missing == 0, "Vector cosine measured for every precision x model x trait",
             f"{len(vec)} vector cells over {len(vec_groups)} model x precision groups and {len(subjects)} trait x "
             f"method pairs; {vec_missing} combinations without a record", "vector_comparison.json"),
        tick(bool(steer) and steer_n == len(steer), "Steering delta degradation quantified for every cell",
             f"{steer_n} of {len(steer)} steering cells have a degradation (% drop from the reference)",
             "steering_comparison.json"),
        tick(bool(methods), "Method robustness ranking: probe vs mean_diff",
             f"paired probe - mean_diff degradation in {', '.join(methods)}" if methods else "no paired method "
             "comparison (needs both methods on the same model, precision and trait)", "robustness_ranking.json"),
        tick(bool(families), "Model family robustness ranking",
             f"families ranked in {', '.join(families)}" if families else "one family only",
             "robustness_ranking.json"),
        tick(bool(sizes), "Size scaling characterized (70B vs 2B)",
             f"degradation by size in {', '.join(sizes)}" if sizes else "needs two sizes of one family",
             "robustness_ranking.json"),
        tick(transfer_n > 0, "Cross-precision transfer tested (reference vectors steering quantized models)",
             f"{transfer_n} of {len(transfer)} transfer cells have a transfer ratio", "steering_comparison.json"),
        tick(bool(quant) and {*quant, *(g for g in groups if g[1] == ref)} <= hella,
             "Capability preserved: HellaSwag on every model x precision",
             f"HellaSwag recorded for {len(hella)} of {len(groups)} model x precision groups",
             "benchmark_comparison.json"),
        tick(logit_n > 0, "Logit difference on CAA A/B questions under quantization",
             f"{logit_n} of {len(logit)} logit-difference cells have a correlation with the reference",
             "steering_comparison.json"),
    ]


def render(records: list[Record], rank: dict[str, Any], run: dict[str, Any]) -> str:
    """The findings page as Markdown."""
    kinds = _by_kind(records)
    hyps = [
        ("H1", "Quantization changes extracted vector directions (cosine < 1)", _h1(kinds)),
        ("H2", "Steering effectiveness degrades (delta and coherence drop at matched coefficients)", _h2(kinds)),
        ("H3", "Probe extraction degrades less than mean_diff", _paired_section(
            rank, "probe_vs_mean_diff", "probe", "needs cells of both methods on the same model, precision, trait")),
        ("H4", "Families with severe massive dims are more sensitive", _h4(rank, records)),
        ("H5", "Larger models are more robust", _h5(rank)),
        ("H6", "INT8 degrades less than NF4", _paired_section(
            rank, "int8_vs_nf4", "int8", "needs nf4 and int8 cells of the same model and trait")),
        ("H7", "Reference-precision vectors still steer quantized models", _h7(kinds)),
        ("H8", "NF4 and GPTQ differ", _paired_section(
            rank, "gptq_vs_nf4", "", "needs gptq and nf4 cells of the same model and trait (gptq is skipped "
                                     "where the model has no GPTQ checkpoint)")),
    ]
    out = ["# Findings: quantization sensitivity of trait vectors", "",
           f"Generated by quant_harness from reports/results/*.json on {time.strftime('%Y-%m-%d %H:%M:%S')}; "
           "rebuild with `quant-harness report`. Degradation is 1 - value for cosine/AUROC/correlation/accuracy and "
           "the value itself for drops (robustness_ranking.json).", "", "## Coverage", "", *_coverage(records, run),
           "", "## Hypotheses", ""]
    for key, claim, (answer, lines) in hyps:
        out += [f"### {key}: {claim}", "", f"**Answer:** {answer}", ""]
        out += [*lines, ""] if lines else []
    out += ["## Success criteria (the plan's)", "", *_criteria(records, rank), "", *_gates(records)]
    out += ["## Caveats", "", *_caveats(records), ""]
    return "\n".join(out)
