"""Local TruthfulQA (MC1/MC2) for lm-eval: rows shaped like HF `truthfulqa/truthful_qa` `multiple_choice`."""

from __future__ import annotations

import json
from typing import Any

import datasets
from lm_eval.tasks.truthfulqa.utils import process_results_mc2  # noqa: F401  the stock MC2 score, used by the YAML

from quant_harness.bench.settings import local_data_dir


def _targets(d: dict[str, int]) -> dict[str, list[Any]]:
    return {"choices": list(d.keys()), "labels": list(d.values())}


def load_truthfulqa(**kwargs: Any) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: the `validation` split (817 questions), answer order as in the JSON file."""
    path = local_data_dir(kwargs, "qh_truthfulqa", "truthfulqa/mc_task.json") / "truthfulqa" / "mc_task.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected TruthfulQA mc_task.json (v0)")
    rows = [{"question": r["question"], "mc1_targets": _targets(r["mc1_targets"]),
             "mc2_targets": _targets(r["mc2_targets"])} for r in json.loads(path.read_text(encoding="utf-8"))]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})
