"""Position specs against hand-counted indices."""

from __future__ import annotations

import pytest

from quant_harness.extract.positions import parse_position


@pytest.mark.parametrize(("spec", "expected"), [
    ("prompt[-1]", [6]), ("prompt[0]", [0]), ("prompt[-3:]", [4, 5, 6]), ("response[:]", [7, 8, 9, 10]),
    ("response[0]", [7]), ("response[-1]", [10]), ("prompt[:2]", [0, 1]),
])
def test_indices_for_a_7_token_prompt_and_4_token_response(spec: str, expected: list[int]) -> None:
    assert parse_position(spec).indices(7, 11) == expected


@pytest.mark.parametrize("spec", ["prompt", "prompt[]", "answer[-1]", "prompt[-1", "prompt[a]"])
def test_unknown_forms_are_errors(spec: str) -> None:
    with pytest.raises(ValueError, match="position"):
        parse_position(spec)


def test_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_position("prompt[-8]").indices(7, 11)
    with pytest.raises(ValueError, match="selects no token"):
        parse_position("response[:]").indices(7, 7)
