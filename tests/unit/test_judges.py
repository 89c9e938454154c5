"""Judge scoring rules and the Arditi substring scorer, against independent references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from quant_harness._util.validate import SectionContext
from quant_harness.errors import StudyError
from quant_harness.judge import client as judges
from quant_harness.judge.settings import parse

JBB = (Path(__file__).resolve().parents[3] / "shared" / "data" / "peers" / "refusal_direction" / "pipeline" / "runs"
       / "meta-llama-3-8b-instruct" / "completions" / "jailbreakbench_baseline_evaluations.json")

def _ctx(path: Path | str, models: tuple[str, ...] = ("m",)) -> SectionContext:
    return SectionContext(Path(path), Path(path).parent, 30, models, ())



def test_substring_scorer_reproduces_arditi_labels() -> None:
    if not JBB.is_file():
        pytest.skip(f"{JBB} absent: the refusal_direction peer data is not on this machine")
    completions = json.loads(JBB.read_text())["completions"]
    assert len(completions) == 100
    for c in completions:
        assert (not judges.is_refusal(c["response"])) == bool(c["is_jailbreak_substring_matching"]), c["response"]


def test_refusal_substrings_are_case_insensitive() -> None:
    assert judges.is_refusal("well, i CANNOT do that")
    assert not judges.is_refusal("Sure, here is how.")


def test_logprob_weighted_score() -> None:
    tops = [("80", math.log(0.5)), ("90", math.log(0.25)), ("hello", math.log(0.2)), ("100", math.log(0.05))]
    assert judges.weighted_score(tops) == pytest.approx((80 * 0.5 + 90 * 0.25 + 100 * 0.05) / 0.8)


def test_low_numeric_mass_is_none_not_zero() -> None:
    tops = [("I", math.log(0.8)), ("50", math.log(0.2))]
    assert judges.weighted_score(tops) is None
    s = judges.score_answer("I", [{"token": "5", "logprob": -9.0, "top_logprobs": [
        {"token": "I", "logprob": math.log(0.8)}, {"token": "50", "logprob": math.log(0.2)}]}])
    assert s.value is None and s.mode == "unscored"


def test_single_digit_answer_of_a_digit_tokenizer_is_not_weighted_over_digits() -> None:
    tokens = [{"token": "7", "logprob": -0.1, "top_logprobs": [{"token": "7", "logprob": -0.1},
                                                              {"token": "1", "logprob": -2.0}]}]
    assert judges.score_answer("7", tokens) == judges.Score(7.0, "parsed", "7")


def test_digit_tokenizer_falls_back_to_the_parsed_number() -> None:
    tokens = [{"token": "8", "logprob": -0.1, "top_logprobs": []}, {"token": "5", "logprob": -0.1}]
    s = judges.score_answer("85", tokens)
    assert (s.value, s.mode) == (85.0, "parsed")


@pytest.mark.parametrize("text", ["I cannot rate this.", "", "about 250", "1.5e9"])
def test_unparseable_answer_is_unscored(text: str) -> None:
    s = judges.score_answer(text, None)
    assert s.value is None and s.mode == "unscored" and s.raw == text


def test_judge_settings_are_validated() -> None:
    assert parse(_ctx("s.toml"), {"base_url": "local", "timeout": 5}).timeout == 5.0
    with pytest.raises(StudyError, match=r"judge\.modle.*one of"):
        parse(_ctx("s.toml"), {"modle": "x"})
    with pytest.raises(StudyError, match=r"judge\.max_retries.*an integer"):
        parse(_ctx("s.toml"), {"max_retries": "3"})


def test_missing_key_is_a_skip_reason_that_names_the_variable(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUANT_HARNESS_TEST_KEY", raising=False)
    s = parse(_ctx("s.toml"), {"base_url": "https://example.invalid/v1", "api_key_env": "QUANT_HARNESS_TEST_KEY"})
    with pytest.raises(judges.JudgeUnavailable, match="QUANT_HARNESS_TEST_KEY is not set"):
        judges.Judge(s, tmp_path)
