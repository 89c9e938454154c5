"""Tokens one lm-eval benchmark task costs a model, counted from the task's real requests and the model's tokenizer.

The cost model (quant_harness/scale/cost.py ``BENCHMARK_TOKENS``) charges a benchmark cell by tokens read. This
script builds each task's loglikelihood requests with lm-eval exactly as a benchmark cell does (the study's task
folder, the benchmark data in place, the plan's limit) and tokenizes context and continuation with a tokenizer (by
default the llama-8b twin's, the real Llama-3 tokenizer from ``../shared/data/model_twins``). It prints per task:
docs, requests, tokens per doc as lm-eval's HFLM reads them (context + continuation for every request) and as
``SharedPrefixHFLM`` does (each distinct context once, then its continuations), and the ratio of the two.

Usage: QUANT_HARNESS_DATA=../shared/data .venv/bin/python benchmarks/benchmark_tokens.py \
           [--tokenizer ../shared/data/model_twins/llama-8b] [--docs 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASKS = {"qh_hellaswag": 0, "qh_mmlu": 10, "qh_truthfulqa_mc2": 0}
"""Each task with the plan's limit per leaf task (0: every doc), as cases/studies/quant-sensitivity.toml sets."""


def main() -> None:
    from transformers import AutoTokenizer

    from quant_harness.bench import lm_eval as benchmarks
    from quant_harness.bench import settings as benchmark_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=str(REPO.parent / "shared" / "data" / "model_twins" / "llama-8b"))
    ap.add_argument("--docs", type=int, default=200, help="Docs per leaf task tokenized (the mean is per doc)")
    a = ap.parse_args()
    data = os.environ.get(benchmark_settings.DATA_ENV)
    if not data:
        ap.error(f"set {benchmark_settings.DATA_ENV} to the folder holding benchmarks/ (../shared/data)")
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    tm = benchmarks.task_manager((benchmark_settings.TASKS_DIR,), False, Path(data) / "benchmarks")
    print(f"tokenizer {a.tokenizer}; up to {a.docs} docs per leaf task tokenized\n")
    print("| task | docs (plan) | requests per doc | tokens per doc, HFLM | tokens per doc, shared prefix | ratio |")
    print("|---|---|---|---|---|---|")
    for task, limit in TASKS.items():
        docs = requests = 0
        stock: list[int] = []
        shared: list[int] = []
        for _, t in sorted(tm.load([task])["tasks"].items()):
            n = len(t.eval_docs)
            docs += min(limit, n) if limit else n
            t.build_all_requests(limit=min(a.docs, limit or a.docs), rank=0, world_size=1)
            by_doc: dict[int, list[tuple[str, str]]] = {}
            for inst in t.instances:
                by_doc.setdefault(inst.doc_id, []).append(inst.args)
            for pairs in by_doc.values():
                requests += len(pairs)
                ctx = {c: len(tok(c).input_ids) for c, _ in pairs}
                cont = [len(tok(x, add_special_tokens=False).input_ids) for _, x in pairs]
                stock.append(sum(ctx[c] + k for (c, _), k in zip(pairs, cont)))
                shared.append(sum(ctx.values()) + sum(cont))
        per_doc = requests / len(stock)
        s, p = statistics.fmean(stock), statistics.fmean(shared)
        print(f"| {task} | {docs} | {per_doc:.2f} | {s:.0f} | {p:.0f} | {s / p:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
