"""Generation benchmarks of the steering kinds on a study (default: the default study), printed as ratios (not a
timed test: figures vary by machine).

Each part runs the sequential path (one ``generate`` or forward pass per condition, as the cells did before issue
18) and the batched one (quant_harness.steer.ops.generate_batched / ab_sweep, as the cells do now), interleaved,
checks that their outputs are equal, and prints the speed-up and the tokens per second of both paths and of a bare
``model.generate`` (forward pass for A/B) of the batched path's own batches with no hooks: the limit.

1. steering: the reference's baseline + coefficient search (``cells.search_runs``; judging left out, every run
   judged coherent, which is the path the default study's search takes: x4 then x8) and, at each quantized
   precision, its baseline and operating points (every (layer, coefficient) of the search);
2. A/B sweeps: every CAA trait's ``ab_coefficients`` x ``ab_questions`` at every precision (the sweep runs each
   prompt once into a KV cache: its logit differences are the sequential path's within ``AB_TOLERANCE``, and its
   limit is the same passes with no hooks);
3. refusal: harmful / harmless prompts with and without ablation / +r at every precision.

Vectors come from the study's cache (``--cache``: a copy of a default-study run's cache saves the extraction).
Greedy outputs at LLM.int8 may differ (its outlier columns depend on the batch; cells key its batched artefacts on
``[steering] batch_rows``): its equality is printed, not required.

Usage: .venv/bin/python benchmarks/generation.py [--study cases/studies/default.toml] [--cache DIR]
           [--precisions fp32,nf4,int8,gptq] [--questions N] [--parts steering,ab,refusal]
           [--ab-coefficients -2,-1,0,1,2 --ab-questions 50]   (the plan's A/B sweep; default: the study's)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Tally:
    """Wall seconds and tokens (generated, or read by a forward pass) of one path, summed over a part's calls."""

    seconds: float = 0.0
    tokens: int = 0

    def add(self, seconds: float, tokens: int) -> None:
        self.seconds += seconds
        self.tokens += tokens

    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


class Part:
    """One benchmark part: the sequential, batched and bare tallies and whether every output matched."""

    def __init__(self, name: str, unit: str) -> None:
        self.name, self.unit = name, unit
        self.seq, self.bat, self.bare = Tally(), Tally(), Tally()
        self.equal: dict[str, bool] = {}

    def add(self, key: str, seq: tuple[float, int], bat: tuple[float, int], bare: tuple[float, int],
            equal: bool) -> None:
        """One (trait, precision)'s (seconds, tokens) of each path, and whether its outputs matched."""
        self.seq.add(*seq)
        self.bat.add(*bat)
        self.bare.add(*bare)
        self.equal[key] = equal

    def row(self) -> str:
        eq = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in self.equal.items())
        return (f"| {self.name} | {self.seq.seconds:.1f} | {self.bat.seconds:.1f} | "
                f"{self.seq.seconds / self.bat.seconds:.2f}x | {self.seq.rate():.2f} | {self.bat.rate():.2f} | "
                f"{self.bare.rate():.2f} | {self.bat.rate() / self.bare.rate():.2f} | {eq} |")


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _generated(fn: Any) -> tuple[float, int, Any]:
    """Seconds, generated tokens (quant_harness's own count: each row up to its stop token) and result of ``fn``."""
    from quant_harness._util import counters

    before = counters.snapshot()["generated_tokens"]
    seconds, out = _timed(fn)
    return seconds, int(counters.snapshot()["generated_tokens"]) - int(before), out  # type: ignore[call-overload]


@torch.no_grad()
def _bare_generate(model: Any, tok: Any, prompts: list[Any], n_conditions: int, max_new_tokens: int,
                   max_rows: int) -> tuple[float, int]:
    """A bare ``model.generate`` of the batches ``generate_batched`` makes for ``n_conditions`` x ``prompts``."""
    from quant_harness.extract import batching
    from quant_harness.extract.activations import encode
    from quant_harness.steer import ops

    encoded = [encode(tok, p)[0] for p in prompts]
    pad, stop = batching.pad_id(tok), batching.stop_ids(model, tok)
    seconds, tokens = 0.0, 0
    for chunk in ops.condition_chunks(n_conditions, len(prompts), max_rows):
        ids, mask, _ = batching.left_pad(encoded * len(chunk), pad)
        s, out = _timed(lambda: model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                               max_new_tokens=max_new_tokens, pad_token_id=pad, temperature=None,
                                               top_p=None, top_k=None))
        seconds += s
        tokens += batching.generated_tokens(out[:, ids.shape[1]:], stop)
    return seconds, tokens


def steering(runner: Any, model_name: str, precisions: list[str], part: Part, n_questions: int | None) -> None:
    from quant_harness.extract.datasets import Prompt
    from quant_harness.steer import cells, ops

    study = runner.study
    s = study.steering
    ref = study.reference
    for trait in [t for t in study.traits if t.methodology in ("caa", "pv") and s.selects(t.key, "mean_diff")]:
        questions, _ = cells._open_questions(runner, s, trait)
        questions = questions[:n_questions] if n_questions else questions
        prompts = [Prompt((("user", q),)) for q in questions]
        wanted = s.layers_for(study.cards[model_name].layers)
        gen_kw = {"mode": s.mode, "max_new_tokens": s.max_new_tokens}
        judge = {"trait": [50.0] * len(prompts), "coherence": [100.0] * len(prompts)}  # always coherent: x2 a step
        for precision in precisions:
            lm = runner.pool.get(model_name, precision)
            m, tok = lm.model, lm.tokenizer
            vecs = runner.vectors(model_name, precision, trait, "mean_diff")
            layers = list(dict.fromkeys(cells._near(vecs, L) for L in wanted))
            vectors = {L: vecs[L] for L in layers}
            # the reference: the search's baseline and runs; a quantized cell: its baseline and operating points
            conds = [ops.Condition()] + [ops.Condition(L, s.coefficient * 2.0 ** k) for L in layers
                                         for k in range(s.search_steps)]
            seq_s, seq_t, seq = _generated(lambda: [ops.generate(
                m, tok, prompts, vectors=None if c.layer is None else {c.layer: vectors[c.layer]},
                coefficient=c.coefficient, **gen_kw).texts for c in conds])
            calls: list[int] = []

            def gen(cs: list[ops.Condition]) -> list[list[str]]:
                calls.append(len(cs))
                return [g.texts for g in ops.generate_batched(m, tok, prompts, cs, vectors=vectors,
                                                              max_rows=s.batch_rows, **gen_kw)]

            if precision == ref:
                bat_s, bat_t, runs = _generated(lambda: cells.search_runs(layers, s, len(prompts), gen,
                                                                          lambda texts: dict(judge)))
                got = [r["texts"] for r in runs]
            else:
                bat_s, bat_t, got = _generated(lambda: gen(conds))
            bare_s, bare_t = 0.0, 0
            for n_conds in calls:
                x, y = _bare_generate(m, tok, prompts, n_conds, s.max_new_tokens, s.batch_rows)
                bare_s, bare_t = bare_s + x, bare_t + y
            part.add(f"{trait.key}@{precision}", (seq_s, seq_t), (bat_s, bat_t), (bare_s, bare_t), got == seq)
            print(f"  steering {trait.key} @ {precision}: {len(conds)} conditions x {len(prompts)} questions; "
                  f"sequential {seq_s:.1f} s ({len(conds)} calls), batched {bat_s:.1f} s ({len(calls)} calls of "
                  f"{calls} conditions), bare {bare_s:.1f} s; tok/s {seq_t / seq_s:.0f} / {bat_t / bat_s:.0f} / "
                  f"{bare_t / bare_s:.0f}; equal {got == seq}", flush=True)


AB_TOLERANCE = 1e-4
"""The sweep runs each prompt once into a KV cache, the sequential path one full forward per coefficient: float
rounding apart (tests/unit/test_batched_generation.py holds them to the same bound)."""


@torch.no_grad()
def ab(runner: Any, model_name: str, precisions: list[str], part: Part) -> None:
    from quant_harness.steer import cells, ops

    study = runner.study
    s = study.steering
    for trait in [t for t in study.traits if t.methodology == "caa"]:
        qs = cells._ab_questions(study, s, trait)
        for precision in precisions:
            lm = runner.pool.get(model_name, precision)
            m, tok = lm.model, lm.tokenizer
            vecs = runner.vectors(model_name, precision, trait, s.method)
            layer = cells._near(vecs, s.layers_for(study.cards[model_name].layers)[0])
            v = {layer: vecs[layer]}
            seq_s, seq = _timed(lambda: [ops.ab_logits(m, tok, qs, vectors=v, coefficient=c)
                                         for c in s.ab_coefficients])
            bat_s, got = _timed(lambda: ops.ab_sweep(m, tok, qs, s.ab_coefficients, vectors=v,
                                                     max_rows=s.batch_rows))
            # the limit: the same passes with no hooks (every coefficient 0: nothing is steered)
            bare_s, _ = _timed(lambda: ops.ab_sweep(m, tok, qs, [0.0] * len(s.ab_coefficients), vectors=v,
                                                    max_rows=s.batch_rows))
            tokens = sum(len(x) for x in ops._ab_rows(tok, qs).seqs) * len(s.ab_coefficients)
            gap = max(abs(a - b) for g, w in zip(got, seq) for a, b in zip(g.logit_diff, w.logit_diff))
            equal = gap <= AB_TOLERANCE
            part.add(f"{trait.key}@{precision}", (seq_s, tokens), (bat_s, tokens), (bare_s, tokens), equal)
            print(f"  A/B {trait.key} @ {precision}: {len(s.ab_coefficients)} coefficients x {len(qs)} questions; "
                  f"sequential {seq_s:.1f} s, batched {bat_s:.1f} s, bare {bare_s:.1f} s; tok/s {tokens / seq_s:.0f} / "
                  f"{tokens / bat_s:.0f} / {tokens / bare_s:.0f}; largest logit-difference gap {gap:.1e} "
                  f"(equal within {AB_TOLERANCE:g}: {equal})", flush=True)


def refusal(runner: Any, model_name: str, precisions: list[str], part: Part) -> None:
    import json

    from quant_harness.extract.datasets import Prompt
    from quant_harness.steer import cells, ops

    study = runner.study
    s = study.steering
    data = json.loads(s.refusal_file(cells._root(study)).read_text())
    harmful = [Prompt((("user", q),)) for q in data["harmful"]]
    harmless = [Prompt((("user", q),)) for q in data["harmless"]]
    for trait in [t for t in study.traits if t.methodology == "arditi"]:
        for precision in precisions:
            lm = runner.pool.get(model_name, precision)
            m, tok = lm.model, lm.tokenizer
            vecs = runner.vectors(model_name, precision, trait, "mean_diff")
            layer = cells._near(vecs, s.layers_for(study.cards[model_name].layers)[0])
            r = vecs[layer]
            kw = {"max_new_tokens": s.max_new_tokens}

            def sequential() -> list[list[str]]:
                out = [ops.generate(m, tok, harmful, **kw).texts]
                with ops.ablation(m, r):
                    out.append(ops.generate(m, tok, harmful, **kw).texts)
                out.append(ops.generate(m, tok, harmless, **kw).texts)
                out.append(ops.generate(m, tok, harmless, vectors={layer: r}, coefficient=1.0,
                                        from_instruction_end=False, **kw).texts)
                return out

            def batched() -> list[list[str]]:
                a = ops.generate_batched(m, tok, harmful, [ops.Condition(), ops.Condition(ablate=True)],
                                         direction=r, max_rows=s.batch_rows, **kw)
                b = ops.generate_batched(m, tok, harmless, [ops.Condition(), ops.Condition(layer, 1.0)],
                                         vectors={layer: r}, from_instruction_end=False, max_rows=s.batch_rows,
                                         **kw)
                return [g.texts for g in (*a, *b)]

            seq_s, seq_t, seq = _generated(sequential)
            bat_s, bat_t, got = _generated(batched)
            bare = [_bare_generate(m, tok, ps, 2, s.max_new_tokens, s.batch_rows) for ps in (harmful, harmless)]
            part.add(f"{trait.key}@{precision}", (seq_s, seq_t), (bat_s, bat_t),
                     (sum(x for x, _ in bare), sum(y for _, y in bare)), got == seq)
            print(f"  refusal {trait.key} @ {precision}: sequential {seq_s:.1f} s (4 calls), batched {bat_s:.1f} s "
                  f"(2 calls), bare {sum(x for x, _ in bare):.1f} s; equal {got == seq}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(REPO / "cases" / "studies" / "default.toml"))
    ap.add_argument("--cache", default=str(REPO / ".quant_cache"), help="The study's cache (vectors come from it)")
    ap.add_argument("--model-dir", default=str(REPO / ".quant_cache" / "models"))
    ap.add_argument("--precisions", default="", help="Comma-separated. Default: every precision of the study")
    ap.add_argument("--questions", type=int, default=0, help="Open questions of the steering part. Default: the "
                                                              "study's [steering] questions")
    ap.add_argument("--parts", default="steering,ab", help="Comma-separated, of steering, ab, refusal")
    ap.add_argument("--ab-coefficients", default="", help="Comma-separated. Default: the study's ab_coefficients")
    ap.add_argument("--ab-questions", type=int, default=0, help="Default: the study's ab_questions")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    from quant_harness.runner import StudyRunner
    from quant_harness.study.load import load

    study = load(args.study)
    if args.ab_coefficients or args.ab_questions:
        s = study.steering
        study = dataclasses.replace(study, steering=dataclasses.replace(
            s, ab_coefficients=[float(c) for c in args.ab_coefficients.split(",")] if args.ab_coefficients
            else s.ab_coefficients, ab_questions=args.ab_questions or s.ab_questions))
    runner = StudyRunner(study, Path(args.cache), Path(args.model_dir))
    model_name = next(iter(study.cards))
    precisions = args.precisions.split(",") if args.precisions else list(study.precisions[model_name])
    print(f"study {Path(args.study).name}, model {model_name}, precisions {precisions}, torch threads "
          f"{torch.get_num_threads()}, [steering] batch_rows {study.steering.batch_rows}", flush=True)
    chosen = args.parts.split(",")
    if unknown := set(chosen) - {"steering", "ab", "refusal"}:
        ap.error(f"--parts {args.parts}: unknown {sorted(unknown)}; expected steering, ab, refusal")
    parts = []
    if "steering" in chosen:
        parts.append(Part("steering search + points", "generated tokens"))
        steering(runner, model_name, precisions, parts[-1], args.questions or None)
    if "ab" in chosen:
        parts.append(Part("A/B sweep", "prompt tokens"))
        ab(runner, model_name, precisions, parts[-1])
    if "refusal" in chosen:
        parts.append(Part("refusal", "generated tokens"))
        refusal(runner, model_name, precisions, parts[-1])
    print("\n| part | sequential s | batched s | speed-up | sequential tok/s | batched tok/s | bare tok/s | "
          "batched / bare | outputs equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in parts:
        print(p.row())
    print("\ntok/s: generated tokens (steering, refusal: each row up to its stop token) or tokens read (A/B) per "
          "second; bare: model.generate / forward of the batched path's own batches with no hooks (the limit)")


if __name__ == "__main__":
    main()
