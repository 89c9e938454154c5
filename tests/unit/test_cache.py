"""The activation cache: readable metadata, damaged entries detected and rebuilt, racing workers, list/prune."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from quant_harness._util import counters
from quant_harness.store.activations import META, TENSORS, ActivationCache, key_of
from quant_harness.cli import main as cli_main

COMPONENTS = {"model": "tiny", "precision": "fp32", "dataset": "abc", "position": "response[:]", "layers": [1, 2],
              "generation": {"max_new_tokens": 8, "n_per_question": 1, "temperature": 0.0}}


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"pos": torch.randn(4, 2, 8, generator=g), "neg": torch.randn(4, 2, 8, generator=g)}


def _build(calls: list[int]):  # type: ignore[no-untyped-def]
    def build() -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        calls.append(1)
        return _tensors(), {"n_pos": 4}
    return build


def test_metadata_is_readable_and_tensors_round_trip(tmp_path: Path) -> None:
    cache = ActivationCache(tmp_path)
    entry = cache.get_or_build("activations/tiny/fp32", COMPONENTS, _build([]))
    meta = json.loads((entry.path / META).read_text())
    assert meta["components"]["generation"]["max_new_tokens"] == 8
    assert meta["shapes"] == {"neg": [4, 2, 8], "pos": [4, 2, 8]} and meta["dtypes"]["pos"] == "float16"
    assert meta["info"] == {"n_pos": 4} and len(meta["sha256"]) == 64
    torch.testing.assert_close(entry.tensors["pos"], _tensors()["pos"], rtol=1e-3, atol=1e-3)


def test_generation_settings_are_part_of_the_key() -> None:
    other = {**COMPONENTS, "generation": {**COMPONENTS["generation"], "max_new_tokens": 9}}  # type: ignore[dict-item]
    assert key_of(other) != key_of(COMPONENTS)


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta_key"])
def test_a_damaged_entry_is_detected_reported_and_rebuilt(tmp_path: Path, damage: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache, calls = ActivationCache(tmp_path), []
    entry = cache.get_or_build("activations/tiny/fp32", COMPONENTS, _build(calls))
    f = entry.path / TENSORS
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        meta = json.loads((entry.path / META).read_text())
        meta["components"]["layers"] = [1, 3]
        (entry.path / META).write_text(json.dumps(meta))
    misses = counters.snapshot()["cache_misses"]
    rebuilt = cache.get_or_build("activations/tiny/fp32", COMPONENTS, _build(calls))
    assert len(calls) == 2 and counters.snapshot()["cache_misses"] == misses + 1  # type: ignore[operator]
    reason = {"truncate": "size", "flip": "content hash", "meta_key": "key components differ"}[damage]
    assert any("unusable" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert cache.get("activations/tiny/fp32", COMPONENTS) is not None
    torch.testing.assert_close(rebuilt.tensors["neg"], entry.tensors["neg"])


def test_list_and_prune_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ActivationCache(tmp_path).get_or_build("activations/tiny/fp32", COMPONENTS, _build([]))
    assert cli_main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tiny/fp32" in out and "1 entries" in out
    assert cli_main(["cache", "prune", "--cache-dir", str(tmp_path), "--model", "other"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["deleted"] == 0
    assert cli_main(["cache", "prune", "--cache-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out.strip())["deleted"] == 1


RACE = """
import time
from pathlib import Path

import pytest
import torch

from quant_harness.store.activations import ActivationCache

ROOT = Path({root!r})


@pytest.mark.parametrize("who", ["a", "b"])
def test_race(who):
    def build():
        (ROOT / f"built-{{who}}").write_text("1")
        time.sleep(2.0)
        return {{"pos": torch.ones(3, 2)}}, {{"by": who}}

    entry = ActivationCache(ROOT / "cache").get_or_build("activations/m/p", {{"k": 1}}, build)
    assert entry.tensors["pos"].sum() == 6
"""


def test_two_xdist_workers_racing_on_one_key_leave_one_valid_entry(pytester: pytest.Pytester,
                                                                    tmp_path: Path) -> None:
    pytester.makepyfile(test_race=textwrap.dedent(RACE.format(root=str(tmp_path))))
    result = pytester.runpytest_subprocess("-n", "2", "-v", "-p", "no:cacheprovider", "-p", "no:quant_harness.plugin")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines_random(["*[[]gw0[]]*PASSED*test_race*", "*[[]gw1[]]*PASSED*test_race*"])
    assert len(list(tmp_path.glob("built-*"))) == 1
    entries = [p for p in (tmp_path / "cache" / "activations" / "m" / "p").iterdir() if p.is_dir()]
    assert len(entries) == 1 and not list(entries[0].parent.glob(".*.tmp"))
    assert ActivationCache(tmp_path / "cache").get("activations/m/p", {"k": 1}) is not None
