"""lm-eval scoring through SharedPrefixHFLM vs lm-eval's own HFLM, on the embedded model, printed as a ratio.

Runs one lm-eval task on the same docs both ways (stock first, then shared prefix) and prints each wall time, the
speed-up, the largest absolute difference between the two runs' per-choice log-likelihoods and both accuracies.
TruthfulQA (a six-shot preamble before every choice) is where sharing pays; needs the benchmark data folder.

Usage: QUANT_HARNESS_DATA=/path/to/benchmarks .venv/bin/python benchmarks/shared_prefix.py \
           [--task qh_truthfulqa_mc2] [--limit 10] [--precision fp32]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    from quant_harness.bench import lm_eval as benchmarks
    from quant_harness.bench import settings as benchmark_settings
    from quant_harness.models.cards import load_card
    from quant_harness.models.precision import load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="qh_truthfulqa_mc2")
    ap.add_argument("--limit", type=int, default=10, help="The first N docs of the task. Default: 10")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    data = os.environ.get(benchmark_settings.DATA_ENV)
    data_dir = Path(data) if data else None
    card = load_card("smollm2-135m", REPO / "quant_harness" / "data" / "model_cards")
    lm = load(card, a.precision, model_dir=REPO / ".quant_cache" / "models", nf4_compute_dtype="float32")
    tm = benchmarks.task_manager((benchmark_settings.TASKS_DIR,), False, data_dir)
    runs = {}
    for shared in (False, True):
        opts = benchmark_settings.TaskOptions(a.limit, 0, None, "", shared_prefix=shared)
        s = benchmark_settings.BenchmarkSettings((a.task,), data_dir, (benchmark_settings.TASKS_DIR,), False, 0, a.batch, 0,
                                        {a.task: opts}, None)
        t0 = time.perf_counter()
        runs[shared] = benchmarks.run_task(lm, a.task, opts, s, tm, tag=f"shared_prefix={shared}")
        runs[shared]["wall"] = time.perf_counter() - t0
    stock, fast = runs[False], runs[True]
    diff = max(abs(x - y) for t in stock["logliks"] for r, q in zip(stock["logliks"][t], fast["logliks"][t])
               for x, y in zip(r, q))
    print(f"{a.task} at {a.precision}, {stock['n']} docs: HFLM {stock['wall']:.1f} s, SharedPrefixHFLM "
          f"{fast['wall']:.1f} s = {stock['wall'] / fast['wall']:.2f}x; max |loglik diff| {diff:.2e}; "
          f"{stock['metric']} {stock['accuracy']:.4f} vs {fast['accuracy']:.4f}")


if __name__ == "__main__":
    main()
