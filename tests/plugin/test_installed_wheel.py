"""The package as a user gets it: a wheel built from this tree, installed into a fresh folder, collecting a study of
the user's own from a project folder outside the checkout. Collection only: no model loads.

It fails when the package reads a file from the checkout (a ``Path(__file__).parent...`` climb), or when data it
needs (model cards, judge prompts, A/B questions, lm-eval tasks) is missing from the wheel's package data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--no-cache-dir"]

STUDY = """\
[study]
name = "outside"
reference = "fp32"
precisions = ["fp32", "nf4", "int8"]
methods = ["mean_diff", "probe"]

[models.smollm2-135m]
card = "smollm2-135m"

[[traits]]
methodology = "caa"
name = "x"
dataset = "data/x.json"
layers = [3, 10]
"""

TEST_VECTORS = '''\
"""Vector fidelity, as a user's own test module (the same as cases/test_vectors.py)."""

from __future__ import annotations

import pytest

from quant_harness.records import CellResult


@pytest.mark.quant_cells("vectors")
def test_vector_fidelity(cell, cell_result: CellResult, record_cell) -> None:
    outcome = record_cell(cell_result)
    assert outcome.allowed, outcome.explain()
'''

PROBE_CONFTEST = '''\
"""The test's probe: where this pytest process imported the harness from."""

import json
import sys
from pathlib import Path

import quant_harness

Path(__file__).with_name("imported_from.json").write_text(json.dumps(
    {"package": quant_harness.__file__, "plugin": sys.modules["quant_harness.plugin"].__file__}))
'''

PROBE = """\
import json
from importlib import resources

import quant_harness
from quant_harness import data
from quant_harness.bench.settings import TASKS_DIR
from quant_harness.benchmark_settings import local_data_dir
from quant_harness.judge.client import PROMPTS_DIR, load_prompt

shipped = resources.files("quant_harness.data")
print(json.dumps({
    "package": quant_harness.__file__, "tasks_dir": str(TASKS_DIR), "prompts_dir": str(PROMPTS_DIR),
    "coherence": load_prompt("coherence"),
    "sanity_yaml": (shipped / "tasks" / "qh_sanity" / "qh_sanity.yaml").read_text(),
    "sanity_jsonl": (shipped / "tasks" / "qh_sanity" / "qh_sanity.jsonl").is_file(),
    "mmlu_template": (shipped / "tasks" / "qh_mmlu" / "_qh_mmlu_template_yaml").is_file(),
    "cards": sorted(p.name for p in data.path("model_cards").iterdir()),
    "ab": sorted(p.name for p in data.path("ab_questions").glob("*.json")),
    "shim": local_data_dir.__module__,
}))
"""


def _caa_items(n: int) -> list[dict[str, str]]:
    """A small CAA-format dataset: the question holds the choices, the matching letter alternates."""
    items = []
    for i in range(n):
        agree, fix = f"Yes, {i} + {i} is {2 * i + 1}.", f"No, {i} + {i} is {2 * i}."
        a, b = (agree, fix) if i % 2 == 0 else (fix, agree)
        items.append({"question": f"I think {i} + {i} = {2 * i + 1}. Right?\n\nChoices:\n (A) {a}\n (B) {b}",
                      "answer_matching_behavior": "(A)" if i % 2 == 0 else "(B)",
                      "answer_not_matching_behavior": "(B)" if i % 2 == 0 else "(A)"})
    return items


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this tree, installed with --target into a fresh folder; built offline from a copy of the
    sources (an in-tree build would write build/ and *.egg-info into the checkout, and could ship stale files)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "quant_harness", src / "quant_harness",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(work / "dist"), str(src)])
    wheels = list((work / "dist").glob("quant_harness-*.whl"))
    assert len(wheels) == 1, wheels
    target = work / "site"
    _run([*PIP, "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheels[0])])
    return target


def _env(target: Path) -> dict[str, str]:
    """The venv's interpreter and dependencies, but quant_harness from ``target`` (PYTHONPATH comes before
    site-packages, and the checkout's editable finder only answers what sys.path does not)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "QUANT_HARNESS"))}
    env["PYTHONPATH"] = str(target)
    return env


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_packaged_data_is_read_from_the_installed_copy(installed: Path, tmp_path: Path) -> None:
    out = _run([sys.executable, "-c", PROBE], cwd=tmp_path, env=_env(installed))
    got = json.loads(out.stdout)
    for key in ("package", "tasks_dir", "prompts_dir"):
        assert _inside(got[key], installed) and not _inside(got[key], REPO), (key, got[key])
    assert "{question}" in got["coherence"] and "{answer}" in got["coherence"]
    assert "task: qh_sanity" in got["sanity_yaml"] and got["sanity_jsonl"] and got["mmlu_template"]
    assert {"smollm2-135m.toml", "llama-8b.toml", "gemma2-2b.toml"} <= set(got["cards"])
    assert got["ab"] == ["caa_refusal_test.json", "caa_sycophancy_test.json", "refusal_prompts.json"]
    assert got["shim"] == "quant_harness.bench.settings", "the old import path of task files still works"


def test_a_study_outside_the_checkout_collects_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    assert not _inside(project, REPO)
    (project / "data" / "x.json").write_text(json.dumps(_caa_items(6), indent=1))
    (project / "study.toml").write_text(STUDY)
    (project / "test_vectors.py").write_text(TEST_VECTORS)
    (project / "conftest.py").write_text(PROBE_CONFTEST)
    (project / "pytest.ini").write_text("[pytest]\n")
    out = _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                "-p", "quant_harness.plugin", "--quant-study", "study.toml"], cwd=project, env=_env(installed))
    where = json.loads((project / "imported_from.json").read_text())
    for key in ("package", "plugin"):
        assert _inside(where[key], installed) and not _inside(where[key], REPO), (key, where[key])
    ids = sorted(line.split("[", 1)[1].rstrip("]") for line in out.stdout.splitlines() if "::" in line)
    assert ids == sorted(f"smollm2-135m-{p}-caa_x-{m}" for p in ("nf4", "int8") for m in ("mean_diff", "probe")), \
        textwrap.shorten(out.stdout, 2000)
