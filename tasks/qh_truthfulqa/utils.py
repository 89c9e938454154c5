"""Local TruthfulQA (MC1/MC2) for lm-eval: rows shaped like HF `truthfulqa/truthful_qa` `multiple_choice`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
from lm_eval.tasks.truthfulqa.utils import process_results_mc2  # noqa: F401  the stock MC2 score, used by the YAML


def data_dir(kwargs: dict[str, Any]) -> Path:
    """The benchmark data folder: task metadata `qh_data_dir` (set by quant_harness), else $QUANT_HARNESS_DATA."""
    where = kwargs.get("qh_data_dir") or os.environ.get("QUANT_HARNESS_DATA")
    if not where:
        raise FileNotFoundError("qh_truthfulqa needs the benchmark data folder: set QUANT_HARNESS_DATA or pass "
                                "metadata qh_data_dir (a folder holding truthfulqa/mc_task.json)")
    return Path(where)


def _targets(d: dict[str, int]) -> dict[str, list[Any]]:
    return {"choices": list(d.keys()), "labels": list(d.values())}


def load_truthfulqa(**kwargs: Any) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: the `validation` split (817 questions), answer order as in the JSON file."""
    path = data_dir(kwargs) / "truthfulqa" / "mc_task.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected TruthfulQA mc_task.json (v0)")
    rows = [{"question": r["question"], "mc1_targets": _targets(r["mc1_targets"]),
             "mc2_targets": _targets(r["mc2_targets"])} for r in json.loads(path.read_text(encoding="utf-8"))]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})
