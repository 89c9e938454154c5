"""Study files: the grid, the ids, and the errors a bad file gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant_harness import study
from quant_harness.errors import StudyError
from quant_harness.study.kinds import cells

REPO = Path(__file__).resolve().parents[2]


def test_default_study_grid_and_ids() -> None:
    s = study.load(REPO / "cases/studies/default.toml")
    assert s.reference == "fp32"
    assert s.precisions["smollm2-135m"][:4] == ("fp32", "nf4", "int8", "gptq")
    ids = [c.id for c in cells(s, "vectors")]
    assert "smollm2-135m-nf4-caa_sycophancy-mean_diff" in ids
    assert not any("-fp32-" in i for i in ids), "the reference is what vector cells compare against"
    assert ids == [c.id for c in cells(study.load(REPO / "cases/studies/default.toml"), "vectors")]
    assert {c.group for c in cells(s, "vectors")} >= {"smollm2-135m-nf4", "smollm2-135m-int8", "smollm2-135m-gptq"}


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(f'[study]\nroot = "{REPO}"\n' + body)
    return p


GOOD_MODEL = '[models.smollm2-135m]\ncard = "smollm2-135m"\n'


@pytest.mark.parametrize(("body", "key", "expected"), [
    ('precisions = ["fp32", "fp8"]\n' + GOOD_MODEL, "study.precisions[1]", "expected one of fp32"),
    ('fail_on = "sometimes"\n' + GOOD_MODEL, "study.fail_on", "expected one of degraded, broken, never"),
    ("batch_size = \"eight\"\n" + GOOD_MODEL, "study.batch_size", "expected an integer"),
    ('colour = 1\n' + GOOD_MODEL, "study.colour", "expected one of"),
    ('[models.nosuch]\ncard = "nosuch"\n', "card", "known cards: "),
    (GOOD_MODEL + '[[traits]]\nmethodology = "repe"\nname = "x"\ndataset = "fixtures/traits/caa_refusal.json"\n',
     "traits[0].methodology", "expected one of caa, pv, arditi"),
    (GOOD_MODEL + '[[traits]]\nmethodology = "caa"\nname = "x"\ndataset = "fixtures/traits/none.json"\n',
     "traits[0].dataset", "expected an existing file"),
    (GOOD_MODEL + '[[traits]]\nmethodology = "caa"\nname = "x"\ndataset = "fixtures/traits/caa_refusal.json"\n'
     'position = "prompt[last]"\n', "traits[0].position", "unknown position"),
    (GOOD_MODEL + '[[traits]]\nmethodology = "caa"\nname = "x"\ndataset = "fixtures/traits/caa_refusal.json"\n'
     "layers = [3, 99]\n", "traits[0].layers", "a layer index in 0..29"),
    (GOOD_MODEL + "[thresholds.cosine]\nrobust = \"high\"\n", "thresholds.cosine.robust", "expected a number"),
])
def test_bad_study_names_file_key_and_expectation(tmp_path: Path, body: str, key: str, expected: str) -> None:
    with pytest.raises(StudyError) as err:
        study.load(_write(tmp_path, body))
    msg = str(err.value)
    assert "bad.toml" in msg and key in msg and expected in msg


def test_relative_paths_resolve_against_the_study_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QH_TEST_FIXTURES", str(REPO / "fixtures"))
    p = _write(tmp_path, GOOD_MODEL + '[[traits]]\nmethodology = "caa"\nname = "x"\n'
                         'dataset = "$QH_TEST_FIXTURES/traits/caa_refusal.json"\nlayers = [1, 2]\n')
    s = study.load(p)
    assert s.traits[0].dataset == REPO / "fixtures/traits/caa_refusal.json"
    assert s.traits[0].layers_for(s.cards["smollm2-135m"]) == (1, 2)


@pytest.mark.parametrize(("content", "expected"), [
    ("[]", "no usable A/B record"),
    ("[{", "invalid JSON"),
    ('[{"question": "q", "answer_matching_behavior": "yes", "answer_not_matching_behavior": "(B)"}]',
     "expected \"(A)\"-style letters"),
    ('{"question": "q"}', "expected a JSON list of CAA records"),
])
def test_a_bad_dataset_is_a_study_error_at_load(tmp_path: Path, content: str, expected: str) -> None:
    """Datasets are read when the study loads: a broken one stops the run before any model loads."""
    (tmp_path / "d.json").write_text(content)
    body = GOOD_MODEL + f'[[traits]]\nmethodology = "caa"\nname = "x"\ndataset = "{tmp_path / "d.json"}"\n'
    with pytest.raises(StudyError) as err:
        study.load(_write(tmp_path, body))
    assert err.value.key == "traits[0].dataset" and "usable caa dataset" in err.value.expected
    assert expected in err.value.expected and "d.json" in err.value.expected


def test_every_table_is_checked_at_load(tmp_path: Path) -> None:
    """A typo in any section is found when the study loads, not inside the cells that read it."""
    for table, key in (("[judge]\nbase_ur = \"local\"\n", "judge.base_ur"), ("[steering]\nlayer = [3]\n", "steering.layer"),
                       ("[benchmarks]\ntask = [\"qh_sanity\"]\n", "benchmarks.task"),
                       ("[sae]\nlayers = [3]\ndictionaries = {tiny = {featurs = 8}}\n", "sae.dictionaries.tiny.featurs"),
                       ("[baselines]\ntolerence = 0.1\n", "baselines.tolerence")):
        with pytest.raises(StudyError) as err:
            study.load(_write(tmp_path, GOOD_MODEL + table))
        assert err.value.key == key and "expected one of" in str(err.value), table
