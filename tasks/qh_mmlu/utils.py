"""Local MMLU for lm-eval: rows shaped like HF `cais/mmlu` (question, subject, choices, answer index)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import datasets


def data_dir(kwargs: dict[str, Any]) -> Path:
    """The benchmark data folder: task metadata `qh_data_dir` (set by quant_harness), else $QUANT_HARNESS_DATA."""
    where = kwargs.get("qh_data_dir") or os.environ.get("QUANT_HARNESS_DATA")
    if not where:
        raise FileNotFoundError("qh_mmlu needs the benchmark data folder: set QUANT_HARNESS_DATA or pass "
                                "metadata qh_data_dir (a folder holding mmlu/{dev,test}/<subject>_<split>.csv)")
    return Path(where)


def _read(path: Path, subject: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected an MMLU CSV (question,A,B,C,D,answer)")
    with path.open(encoding="utf-8", newline="") as f:
        return [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                for r in csv.reader(f)]


def load_mmlu(subject: str, **kwargs: Any) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: `dev` (few-shot pool) and `test` splits of one subject."""
    root = data_dir(kwargs) / "mmlu"
    return datasets.DatasetDict({split: datasets.Dataset.from_list(_read(root / split / f"{subject}_{split}.csv",
                                                                        subject))
                                 for split in ("dev", "test")})
