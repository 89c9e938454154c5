"""An SAE fidelity cell end to end on the embedded model: nf4 against fp32 through a tiny trained dictionary."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from registry_check import unregistered_figures


@pytest.mark.slow
def test_nf4_sae_cell_trains_dictionary_and_records(pytester: pytest.Pytester, tmp_path: Path,
                                                    make_study: Callable[..., Path],
                                                    run_args: Callable[..., list[str]]) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps({
        "train": ["The cat sat on the warm mat and watched the birds outside the window all afternoon.",
                  "To bake bread, mix flour, water, salt and yeast, then let the dough rise for two hours.",
                  "The council approved the new bridge, which will open to traffic next spring.",
                  "def square(x):\n    return x * x\n\nprint(square(4))"],
        "eval": ["Rain fell on the quiet village while the baker lit the ovens before dawn.",
                 "The budget grew by five percent, mostly because of higher energy prices."]}))
    extra = f"""
        [sae]
        layers = [6]
        top_k = 5
        texts = "{texts}"
        [sae.dictionaries.mini]
        features = 64
        steps = 40
        batch_size = 32
        """
    study = make_study(precisions=("fp32", "nf4"), methods=("mean_diff",), extra=extra)
    result = pytester.runpytest_subprocess(*run_args(study, "-k", "test_sae_feature_fidelity"))
    result.assert_outcomes(passed=1)
    records = json.loads((pytester.path / "reports/results/sae_comparison.json").read_text())["records"]
    record = records["smollm2-135m-nf4-sae_6-mini"]
    assert unregistered_figures(pytester.path / "reports/results") == []
    assert record["kind"] == "sae" and record["layers"] == [6]
    f = record["figures"]
    assert 0.0 <= f["topk_jaccard"] <= 1.0 and 0.0 <= f["active_kept"] <= 1.0
    assert f["n_features"] == 64 and f["n_tokens"] > 0 and f["sae_eval_fvu"] > 0.0
    assert record["verdict"] in ("robust", "degraded", "broken", "inconclusive")
    training = record["provenance"]["dictionary"]["training"]
    assert training["settings"]["n_features"] == 64 and 0.0 <= training["train"]["dead_share"] <= 1.0
