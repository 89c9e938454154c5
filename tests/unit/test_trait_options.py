"""Study keys for rollouts and external vectors: accepted values and the errors that name file, key, expectation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from quant_harness import study
from quant_harness.errors import StudyError
from quant_harness.study.kinds import cells

REPO = Path(__file__).resolve().parents[2]


def _pv(extra: str) -> str:
    return f"""
[[traits]]
methodology = "pv"
name = "sycophantic"
dataset = "{REPO}/fixtures/traits/pv_sycophantic.json"
{extra}
"""


def test_rollout_settings_reach_the_trait(make_study: Callable[..., Path]) -> None:
    s = study.load(make_study(traits=_pv("max_new_tokens = 5\nn_per_question = 2\ntemperature = 1\nreplay = true")))
    t = s.trait("pv_sycophantic")
    assert (t.max_new_tokens, t.n_per_question, t.temperature, t.replay, t.position) == (5, 2, 1.0, True,
                                                                                        "response[:]")


@pytest.mark.parametrize(("extra", "message"), [
    ("max_new_tokens = 0", "max_new_tokens = 0: expected an integer >= 1"),
    ("n_per_question = 3", "temperature = 0: expected > 0 when n_per_question > 1"),
    ('methods = ["file"]', "vectors = None: expected a vector file"),
    ('vectors = "nope.pt"\nmethods = ["file"]', "vectors = 'nope.pt': expected an existing .safetensors or .pt"),
    ("sae_features = [[1, 2]]", r"sae_features\[0\] = \[1, 2\]: expected \[layer, feature_id, strength\]"),
])
def test_bad_values_are_study_errors(make_study: Callable[..., Path], extra: str, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        study.load(make_study(traits=_pv(extra)))


def test_rollout_keys_on_a_caa_trait_are_errors(make_study: Callable[..., Path]) -> None:
    trait = f'[[traits]]\nmethodology = "caa"\nname = "s"\ndataset = "{REPO}/fixtures/traits/caa_sycophancy.json"\n' \
            "max_new_tokens = 4\n"
    with pytest.raises(StudyError, match="apply to pv traits only"):
        study.load(make_study(traits=trait))


def test_the_study_replay_key_and_probe_cells_on_every_precision(make_study: Callable[..., Path]) -> None:
    s = study.load(make_study(traits=_pv(""), extra=""))
    assert s.replay is False
    ids = [c.id for c in cells(s, "probes")]
    assert "smollm2-135m-fp32-pv_sycophantic-probe" in ids and "smollm2-135m-nf4-pv_sycophantic-mean_diff" in ids
