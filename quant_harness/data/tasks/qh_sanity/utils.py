"""Reader for the shipped sanity task: its JSONL lives next to this file, so no data folder is needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

DATA = Path(__file__).with_name("qh_sanity.jsonl")


def load_sanity(**kwargs: Any) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: one `test` split of {question, choices, answer}."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
