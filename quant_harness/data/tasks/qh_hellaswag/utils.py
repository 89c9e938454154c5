"""Local HellaSwag for lm-eval: rows shaped like HF `Rowan/hellaswag`, preprocessing reused from lm-eval."""

from __future__ import annotations

import json
from typing import Any

import datasets
from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401  the stock preprocessing, used by the YAML

from quant_harness.bench.settings import local_data_dir


def load_hellaswag(**kwargs: Any) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: the `validation` split; labels as strings, as in the HF copy."""
    path = local_data_dir(kwargs, "qh_hellaswag", "hellaswag/hellaswag_val.jsonl") / "hellaswag/hellaswag_val.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected HellaSwag validation JSONL")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append({"ind": row["ind"], "activity_label": row["activity_label"], "ctx_a": row["ctx_a"],
                         "ctx_b": row["ctx_b"], "ctx": row["ctx"], "endings": row["endings"],
                         "source_id": row["source_id"], "split": row["split"], "split_type": row["split_type"],
                         "label": str(row["label"])})
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})
