"""The three loaders against the peers' own data, read in place from ../shared/data/peers (never copied)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quant_harness.errors import DatasetError
from quant_harness.extract.datasets import load_arditi, load_caa, load_pv

PEERS = Path(__file__).resolve().parents[3] / "shared" / "data" / "peers"
pytestmark = pytest.mark.skipif(not PEERS.is_dir(), reason=f"peer datasets not present at {PEERS} "
                                                            "(../shared/data/peers is read in place, never copied)")
CAA = PEERS / "CAA" / "datasets" / "generate"


def test_caa_sycophancy_prompts_end_at_the_answer_letter() -> None:
    path = CAA / "sycophancy" / "generate_dataset.json"
    raw = json.loads(path.read_text())
    c = load_caa(path)
    assert len(c.pos) == len(c.neg) == len(raw) == 1000 and c.paired and not c.skipped
    first = raw[0]
    assert c.pos[0].messages == (("user", first["question"].strip()),)
    assert c.pos[0].prefill == first["answer_matching_behavior"].strip()[:2]
    assert c.neg[0].prefill == first["answer_not_matching_behavior"].strip()[:2]
    assert {p.prefill for p in c.pos} == {"(A", "(B"}


def test_caa_survival_instinct_reports_its_non_ab_items_and_never_scores_them() -> None:
    path = CAA / "survival-instinct" / "generate_dataset.json"
    raw = json.loads(path.read_text())
    non_ab = [i for i, r in enumerate(raw) if r["answer_matching_behavior"].strip() not in ("(A)", "(B)")]
    c = load_caa(path)
    assert len(non_ab) == 88 and len(c.skipped) == 88 and len(c.pos) == 903 - 88
    assert [int(re.match(r"record (\d+)", s).group(1)) for s in c.skipped] == non_ab  # type: ignore[union-attr]
    assert all("not (A)/(B)" in s for s in c.skipped)
    assert {p.prefill for p in c.pos} | {p.prefill for p in c.neg} == {"(A", "(B"}


def test_arditi_splits_read_the_train_files() -> None:
    splits = PEERS / "refusal_direction" / "dataset" / "splits"
    c = load_arditi(splits)
    harmful = json.loads((splits / "harmful_train.json").read_text())
    assert len(c.pos) == len(harmful) == 260 and len(c.neg) == 18793 and not c.paired
    assert c.pos[0].messages == (("user", harmful[0]["instruction"].strip()),) and c.pos[0].prefill == ""
    assert len(load_arditi(splits, limit=16).neg) == 16


@pytest.mark.parametrize("trait", ["evil", "sycophantic", "hallucinating"])
def test_pv_trait_files_give_five_instructions_by_twenty_questions(trait: str) -> None:
    path = PEERS / "persona_vectors" / "data_generation" / "trait_data_extract" / f"{trait}.json"
    raw = json.loads(path.read_text())
    c = load_pv(path)
    assert len(c.pos) == len(c.neg) == 5 * 20 and c.paired and c.trait == trait
    assert c.eval_prompt == raw["eval_prompt"] and c.questions == tuple(raw["questions"])
    article = "an" if trait[0] in "aeiou" else "a"
    assert c.pos[0].messages == (("system", f"You are {article} {trait} assistant. {raw['instruction'][0]['pos']}"),
                                 ("user", raw["questions"][0]))
    assert c.neg[21].messages[0] == ("system", f"You are a helpful assistant. {raw['instruction'][1]['neg']}")
    assert len(load_pv(path, limit=3).pos) == 15


def test_a_bad_record_names_file_record_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "answer_matching_behavior": "(A)"}]))
    with pytest.raises(DatasetError, match=r"bad.json: record 0: field 'answer_not_matching_behavior' missing"):
        load_caa(bad)
