"""Where study paths resolve: the package's own data ships in quant_harness/data; a study's data is under its root.

Defaults that name ``fixtures/...`` (model cards, A/B questions, refusal prompts) use the study root's copy when it
has one, else the shipped one; everything a study names resolves against its root, never the checkout.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from quant_harness import data, study
from quant_harness.bench.settings import TASKS_DIR
from quant_harness.errors import StudyError
from quant_harness.judge.client import PROMPTS_DIR
from tests.studies import study_text

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "quant_harness"
CAA = '[{"question": "Q?\\n\\nChoices:\\n (A) yes\\n (B) no", "answer_matching_behavior": "(A)", ' \
      '"answer_not_matching_behavior": "(B)"}]'


def _project(root: Path, extra: str = "", model: str = "smollm2-135m") -> Path:
    """A study in its own folder (the root), away from the checkout: one CAA trait over its own dataset."""
    (root / "x.json").write_text(CAA)
    p = root / "study.toml"
    p.write_text(study_text({"reference": "fp32", "precisions": ["fp32", "nf4"]}, {model: model},
                            [{"methodology": "caa", "name": "x", "dataset": "x.json"}]) + textwrap.dedent(extra))
    return p


def test_the_shipped_data_lives_in_the_package() -> None:
    for folder in (data.path("model_cards"), PROMPTS_DIR, TASKS_DIR, data.path("ab_questions")):
        assert folder.is_dir() and folder.is_relative_to(PACKAGE), folder
    assert (TASKS_DIR / "qh_sanity" / "qh_sanity.yaml").is_file() and (PROMPTS_DIR / "coherence.txt").is_file()


def test_cards_default_to_the_root_s_own_then_the_shipped_ones(tmp_path: Path) -> None:
    s = study.load(_project(tmp_path))
    assert Path(s.cards["smollm2-135m"].source_file) == data.path("model_cards", "smollm2-135m.toml")
    own = tmp_path / "fixtures" / "model_cards"
    own.mkdir(parents=True)
    text = data.path("model_cards", "smollm2-135m.toml").read_text().replace("layers = 30", "layers = 20")
    (own / "smollm2-135m.toml").write_text(text)
    s = study.load(_project(tmp_path))
    assert s.cards["smollm2-135m"].layers == 20 and Path(s.cards["smollm2-135m"].source_file).parent == own
    s = study.load(_project(tmp_path, model="llama-8b"))
    assert s.cards["llama-8b"].source_file == str(data.path("model_cards", "llama-8b.toml")), "shipped, not shadowed"


def test_an_explicit_cards_dir_is_the_only_place_looked_at(tmp_path: Path) -> None:
    (tmp_path / "cards").mkdir()
    p = _project(tmp_path)
    p.write_text(p.read_text().replace("[study]\n", '[study]\ncards_dir = "cards"\n'))
    with pytest.raises(StudyError) as err:
        study.load(p)
    assert err.value.key == "models.smollm2-135m.card" and str(tmp_path / "cards") in err.value.expected


def test_steering_defaults_fall_back_to_the_shipped_files(tmp_path: Path) -> None:
    s = study.load(_project(tmp_path))
    assert s.steering.ab_file(tmp_path, "caa_sycophancy") == data.path("ab_questions", "caa_sycophancy_test.json")
    assert s.steering.refusal_file(tmp_path) == data.path("ab_questions", "refusal_prompts.json")
    missing = s.steering.ab_file(tmp_path, "caa_x")
    assert missing == tmp_path / "fixtures" / "ab_questions" / "caa_x_test.json", "the message names the study's path"
    own = tmp_path / "fixtures" / "ab_questions"
    own.mkdir(parents=True)
    (own / "caa_sycophancy_test.json").write_text(CAA)
    assert s.steering.ab_file(tmp_path, "caa_sycophancy") == own / "caa_sycophancy_test.json"


def test_named_paths_resolve_against_the_root_only(tmp_path: Path) -> None:
    extra = """\
        [steering]
        ab_dir = "ab"
        refusal_prompts = "refusal.json"
        [sae]
        texts = "texts.json"
        [sae.dictionaries.mine]
        path = "saes/mine"
        """
    s = study.load(_project(tmp_path, extra), check_data=False)  # none of the named files exists
    assert s.steering.ab_file(tmp_path, "caa_sycophancy") == tmp_path / "ab" / "caa_sycophancy_test.json"
    assert s.steering.refusal_file(tmp_path) == tmp_path / "refusal.json"
    assert s.sae is not None and s.sae.texts == tmp_path / "texts.json"
    assert s.sae.dictionaries[0].path == tmp_path / "saes" / "mine"


def test_the_shipped_tasks_stay_on_the_include_path(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    s = study.load(_project(tmp_path, '[benchmarks]\ntasks = ["qh_sanity"]\ninclude_path = ["tasks"]\n'))
    assert s.benchmarks.include_path == (TASKS_DIR, tmp_path / "tasks")
    s = study.load(_project(tmp_path, '[benchmarks]\ntasks = ["qh_sanity"]\n'))
    assert s.benchmarks.include_path == (TASKS_DIR,)
