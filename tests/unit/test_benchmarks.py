"""The [benchmarks] study table, benchmark cell ids, our task YAMLs, and the drop verdict (no model needed)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from quant_harness import study
from quant_harness.bench import lm_eval as benchmarks
from quant_harness.bench import settings as benchmark_settings
from quant_harness.errors import StudyError
from quant_harness.metrics.verdicts import DEFAULT_BANDS, Verdict
from quant_harness.study import ids
from quant_harness.study.kinds import cells

REPO = Path(__file__).resolve().parents[2]


def _study(tmp_path: Path, bench: str, traits: str = "") -> Path:
    p = tmp_path / "b.toml"
    p.write_text(f'[study]\nroot = "{REPO}"\nreference = "fp32"\nprecisions = ["fp32", "nf4"]\n'
                 f'[models.smollm2-135m]\ncard = "smollm2-135m"\n{traits}\n[benchmarks]\n{bench}\n')
    return p


def test_default_study_has_a_sanity_cell_per_precision_reference_included() -> None:
    s = study.load(REPO / "cases/studies/default.toml")
    assert [c.id for c in cells(s, "benchmarks")] == [
        f"smollm2-135m-{p}-sanity" for p in ("fp32", "nf4", "int8", "gptq")]
    assert {c.group for c in cells(s, "benchmarks")} == {f"smollm2-135m-{p}" for p in ("fp32", "nf4", "int8", "gptq")}
    assert all(ids.group_of_id(c.id) == c.group for c in cells(s, "benchmarks")), "xdist groups by this"


def test_benchmarks_study_names_hellaswag_mmlu_truthfulqa() -> None:
    s = study.load(REPO / "cases/studies/benchmarks.toml", check_data=False)  # the data folder may be elsewhere
    ids = [c.id for c in cells(s, "benchmarks")]
    assert "smollm2-135m-gptq-hellaswag" in ids and "smollm2-135m-int8-mmlu" in ids
    opts = s.benchmarks.options
    assert opts["qh_hellaswag"].samples >= 500 and opts["qh_mmlu"].limit >= 5 and opts["qh_hellaswag"].limit == 0
    assert opts["qh_truthfulqa_mc2"].shared_prefix and not opts["qh_hellaswag"].shared_prefix


def test_shared_prefix_keys_only_the_runs_that_use_it() -> None:
    stock = benchmark_settings.TaskOptions(0, 500, None, "")
    assert "shared_prefix" not in benchmarks._keyed_options(stock), "results cached before the option still hit"
    assert benchmarks._keyed_options(benchmark_settings.TaskOptions(0, 500, None, "", True))["shared_prefix"]


@pytest.mark.parametrize(("bench", "key", "expected"), [
    ('tasks = ["qh_sanity"]\nlimt = 3', "benchmarks.limt", "one of"),
    ('tasks = []', "benchmarks.tasks", "non-empty list"),
    ('tasks = ["qh_sanity"]\nlimit = 3\nsamples = 5', "benchmarks.samples", "limit or samples"),
    ('tasks = ["qh_sanity"]\nlimit = "3"', "benchmarks.limit", "an integer"),
    ('tasks = ["qh_sanity"]\n[benchmarks.per_task.qh_sanity]\nshared_prefix = 1',
     "benchmarks.per_task.qh_sanity.shared_prefix", "a boolean"),
    ('tasks = ["qh_sanity"]\n[benchmarks.per_task.qh_mmlu]\nlimit = 3', "benchmarks.per_task.qh_mmlu", "a task of"),
    ('tasks = ["qh_sanity"]\n[benchmarks.steered]\ntrait = "caa_nope"\nmethod = "mean_diff"\nlayer = 3\n'
     'coefficient = 4.0', "benchmarks.steered.trait", "a trait of the study"),
])
def test_bad_benchmarks_table_names_key_and_expectation(tmp_path: Path, bench: str, key: str, expected: str) -> None:
    with pytest.raises(StudyError) as e:
        study.load(_study(tmp_path, bench))
    assert e.value.key == key and expected in e.value.expected and "b.toml" in str(e.value)


def test_steered_cells_follow_the_plain_ones(tmp_path: Path) -> None:
    trait = (f'[[traits]]\nmethodology = "caa"\nname = "sycophancy"\n'
             f'dataset = "{REPO}/fixtures/traits/caa_sycophancy.json"\nlayers = [10]\n')
    s = study.load(_study(tmp_path, 'tasks = ["qh_sanity", "qh_hellaswag"]\n[benchmarks.steered]\n'
                          'trait = "caa_sycophancy"\nmethod = "mean_diff"\nlayer = 10\ncoefficient = 4.0\n'
                          'tasks = ["qh_sanity"]', trait), check_data=False)
    ids = [c.id for c in cells(s, "benchmarks") if c.precision == "nf4"]
    assert ids == ["smollm2-135m-nf4-sanity", "smollm2-135m-nf4-hellaswag", "smollm2-135m-nf4-sanity_steered"]
    assert s.benchmarks.task_of("sanity_steered") == ("qh_sanity", True)


def test_shipped_task_yamls_all_load() -> None:
    files = benchmarks.validate_tasks(benchmark_settings.TASKS_DIR)
    names = {f.name for f in files}
    assert {"qh_sanity.yaml", "qh_hellaswag.yaml", "qh_truthfulqa_mc2.yaml", "qh_mmlu_anatomy.yaml"} <= names
    assert sum(n.startswith("qh_mmlu_") for n in names) == 57


def test_an_unparsable_task_yaml_is_an_error_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("task: qh_broken\ndoc_to_text: [unclosed\n")
    with pytest.raises(StudyError, match="broken.yaml"):
        benchmarks.validate_tasks(tmp_path)


def test_drop_interval_from_combined_stderrs_decides_the_verdict() -> None:
    band = DEFAULT_BANDS["accuracy_drop"]
    d = benchmarks.judge_drop(0.40, 0.01, 0.36, 0.01, band, Verdict.BROKEN)
    assert d.drop == pytest.approx(0.04) and d.stderr == pytest.approx(0.01 * 2 ** 0.5)
    assert d.significant is True and d.verdict is Verdict.INCONCLUSIVE   # 0.04 +- 0.028 straddles 0.03
    d = benchmarks.judge_drop(0.40, 0.05, 0.39, 0.05, band, Verdict.BROKEN)
    assert d.significant is False and d.verdict is Verdict.INCONCLUSIVE
    d = benchmarks.judge_drop(0.60, 0.002, 0.50, 0.002, band, Verdict.BROKEN)
    assert d.significant is True and d.verdict is Verdict.BROKEN and not d.judgement.allowed
    d = benchmarks.judge_drop(0.40, 0.001, 0.40, 0.001, band, Verdict.BROKEN)
    assert d.significant is False and d.verdict is Verdict.ROBUST
    d = benchmarks.judge_drop(0.40, None, 0.385, None, band, Verdict.BROKEN)
    assert d.significant is None and d.verdict is Verdict.DEGRADED


def _score(per_doc: dict[str, list[float]]) -> benchmarks.TaskScore:
    docs = [x for t in sorted(per_doc) for x in per_doc[t]]
    return benchmarks.TaskScore("t", "acc,none", sum(docs) / len(docs), None, {}, len(docs), len(docs), "", "", {},
                                0.0, per_doc=per_doc)


def test_paired_stderr_is_the_paired_t_tests_standard_error() -> None:
    from scipy import stats

    rng = random.Random(0)
    ref = {"a": [float(rng.random() < 0.4) for _ in range(300)], "b": [rng.random() for _ in range(200)]}
    quant = {t: [x if rng.random() < 0.9 else 1.0 - x for x in v] for t, v in ref.items()}
    se = benchmarks.paired_stderr(_score(ref), _score(quant))
    flat_r, flat_q = [x for t in "ab" for x in ref[t]], [x for t in "ab" for x in quant[t]]
    t = stats.ttest_rel(flat_r, flat_q)
    drop = sum(flat_r) / 500 - sum(flat_q) / 500
    assert se == pytest.approx(drop / t.statistic, rel=1e-9)
    unpaired = math.hypot(stats.sem(flat_r), stats.sem(flat_q))
    assert se < unpaired / 2   # 90% of answers kept: pairing removes most of the docs' own variance


def test_paired_stderr_refuses_runs_that_do_not_pair() -> None:
    a = _score({"x": [1.0, 0.0, 1.0]})
    assert benchmarks.paired_stderr(a, _score({"x": [1.0, 0.0]})) is None             # different doc counts
    assert benchmarks.paired_stderr(a, _score({"y": [1.0, 0.0, 1.0]})) is None        # different leaf tasks
    macro = benchmarks.TaskScore("t", "acc,none", 0.9, None, {}, 3, 3, "", "", {}, 0.0, per_doc={"x": [0.0] * 3})
    assert benchmarks.paired_stderr(a, macro) is None                                  # headline not the doc mean


def test_a_paired_stderr_makes_a_small_consistent_drop_conclusive() -> None:
    band = DEFAULT_BANDS["accuracy_drop"]
    unpaired = benchmarks.judge_drop(0.380, 0.0217, 0.366, 0.0216, band, Verdict.BROKEN)
    paired = benchmarks.judge_drop(0.380, 0.0217, 0.366, 0.0216, band, Verdict.BROKEN, paired_se=0.002)
    assert unpaired.verdict is Verdict.INCONCLUSIVE and not unpaired.paired
    assert paired.verdict is Verdict.DEGRADED and paired.paired and paired.significant
    same = benchmarks.judge_drop(0.4, 0.02, 0.4, 0.02, band, Verdict.BROKEN, paired_se=0.0)  # same answer everywhere
    assert same.verdict is Verdict.ROBUST and same.stderr is None
