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


def _h4(rank: dict[str, Any]) -> tuple[str, list[str]]:
    lines = []
    for kind, r in rank.get("by_kind", {}).items():
        models = r.get("models", [])
        if len(models) > 1:
            lines += [f"- {kind}: {m['name']} ({m.get('family') or '?'}): mean degradation "
                      f"{_f(m['mean_degradation'])} (CI {_f(m['ci_low'])}..{_f(m['ci_high'])}, n={m['n']})"
                      for m in models]
    if not lines:
        return ("not measured: one model only; needs cells of gemma3-4b (massive dims ~1500x) and llama-8b "
                "(~100x) at the same precisions"), []
    return "see ranking (models ordered most to least robust)", lines


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


def render(records: list[Record], rank: dict[str, Any], run: dict[str, Any]) -> str:
    """The findings page as Markdown."""
    kinds = _by_kind(records)
    hyps = [
        ("H1", "Quantization changes extracted vector directions (cosine < 1)", _h1(kinds)),
        ("H2", "Steering effectiveness degrades (delta and coherence drop at matched coefficients)", _h2(kinds)),
        ("H3", "Probe extraction degrades less than mean_diff", _paired_section(
            rank, "probe_vs_mean_diff", "probe", "needs cells of both methods on the same model, precision, trait")),
        ("H4", "Families with severe massive dims are more sensitive", _h4(rank)),
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
    out += ["## Caveats", "", *_caveats(records), ""]
    return "\n".join(out)
