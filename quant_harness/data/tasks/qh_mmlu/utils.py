"""Local MMLU for lm-eval: rows shaped like HF `cais/mmlu` (question, subject, choices, answer index)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import datasets

from quant_harness.bench.settings import local_data_dir


def _read(path: Path, subject: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected an MMLU CSV (question,A,B,C,D,answer)")
    with path.open(encoding="utf-8", newline="") as f:
        return [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                for r in csv.reader(f)]


def load_mmlu(subject: str, **kwargs: Any) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: `dev` (few-shot pool) and `test` splits of one subject."""
    root = local_data_dir(kwargs, "qh_mmlu", "mmlu/{dev,test}/<subject>_<split>.csv") / "mmlu"
    return datasets.DatasetDict({split: datasets.Dataset.from_list(_read(root / split / f"{subject}_{split}.csv",
                                                                        subject))
                                 for split in ("dev", "test")})
