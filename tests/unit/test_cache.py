"""The artefact store and the activation cache on it: readable metadata, hit/miss counts, damaged or tampered entries
detected and rebuilt under the lock, racing processes building once, partial writes never read, older layouts still
hitting, list/prune of every kind."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from quant_harness._util import counters
from quant_harness.cli import main as cli_main
from quant_harness.store import JSON, ArtefactStore, JsonCodec, legacy_json
from quant_harness.store.activations import META, TENSORS, ActivationCache, key_of

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
    assert meta["info"] == {"n_pos": 4} and len(meta["files"][TENSORS]["sha256"]) == 64 and meta["kind"] == "activations"
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


# --- the artefact store under every cache ---------------------------------------------------------------------------

SEARCH = {"model": "tiny", "precision": "nf4", "layers": [3, 12], "settings": {"coefficient": 4.0}}


def _counting(calls: list[int], value: object = None):  # type: ignore[no-untyped-def]
    def build() -> object:
        calls.append(1)
        return {"runs": [1.5, 2.5]} if value is None else value
    return build


def _counts(kind: str) -> tuple[int, int, dict[str, int]]:
    snap = counters.snapshot()
    by_kind = snap["cache_by_kind"].get(kind, {"hits": 0, "misses": 0})  # type: ignore[attr-defined]
    return int(snap["cache_hits"]), int(snap["cache_misses"]), dict(by_kind)  # type: ignore[call-overload]


def test_hits_and_misses_are_counted_overall_and_per_kind(tmp_path: Path) -> None:
    store, calls = ArtefactStore(tmp_path), list[int]()
    hits, misses, kind = _counts("steering/search")
    first = store.get_or_build("steering/search", SEARCH, _counting(calls), JSON, under="tiny/nf4")
    again = store.get_or_build("steering/search", SEARCH, _counting(calls), JSON, under="tiny/nf4")
    assert calls == [1] and (first.hit, again.hit) == (False, True) and first.value == again.value
    assert _counts("steering/search") == (hits + 1, misses + 1, {"hits": kind["hits"] + 1,
                                                                 "misses": kind["misses"] + 1})
    assert first.path == tmp_path / "steering" / "search" / "tiny" / "nf4" / first.key
    meta = json.loads((first.path / META).read_text())
    assert meta["components"] == SEARCH and meta["kind"] == "steering/search" and meta["codec"] == "json"
    merged = counters.merge([counters.snapshot(), {"cache_by_kind": {"steering/search": {"hits": 2}}}])
    assert merged["cache_by_kind"] == {**counters.snapshot()["cache_by_kind"],  # type: ignore[dict-item]
                                       "steering/search": {"hits": kind["hits"] + 3, "misses": kind["misses"] + 1}}


def test_a_changed_component_is_a_miss(tmp_path: Path) -> None:
    store, calls = ArtefactStore(tmp_path), list[int]()
    store.get_or_build("steering/search", SEARCH, _counting(calls), JSON)
    changed = {**SEARCH, "settings": {"coefficient": 8.0}}
    rebuilt = store.get_or_build("steering/search", changed, _counting(calls, {"runs": []}), JSON)
    assert calls == [1, 1] and not rebuilt.hit and rebuilt.value == {"runs": []}
    assert store.get("steering/search", SEARCH, JSON) is not None, "the first entry is still there"


def test_a_tampered_components_file_is_detected_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, calls = ArtefactStore(tmp_path), list[int]()
    entry = store.get_or_build("steering/search", SEARCH, _counting(calls), JSON)
    meta = json.loads((entry.path / META).read_text())
    meta["components"]["settings"]["coefficient"] = 8.0
    (entry.path / META).write_text(json.dumps(meta))
    rebuilt = store.get_or_build("steering/search", SEARCH, _counting(calls), JSON)
    assert calls == [1, 1] and not rebuilt.hit
    assert any("key components differ" in r.getMessage() and "components.settings.coefficient = 8.0: expected 4.0"
               in r.getMessage() for r in caplog.records)
    assert json.loads((entry.path / META).read_text())["components"] == SEARCH


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_meta"])
def test_a_damaged_artefact_is_removed_and_rebuilt_only_under_the_lock(tmp_path: Path, damage: str) -> None:
    """While another process holds the entry's lock, a reader neither deletes the damaged entry nor builds."""
    import threading

    from filelock import FileLock

    store, calls = ArtefactStore(tmp_path), list[int]()
    entry = store.get_or_build("steering/search", SEARCH, _counting(calls), JSON)
    f = entry.path / JsonCodec.FILE
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-3])
    elif damage == "flip":
        f.write_bytes(f.read_bytes().replace(b"1.5", b"9.5"))
    else:
        (entry.path / META).unlink()
    held = FileLock(f"{entry.path}.lock")
    held.acquire()
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(
        store.get_or_build("steering/search", SEARCH, _counting(calls), JSON).value))
    reader.start()
    reader.join(0.5)
    assert reader.is_alive() and f.exists() and calls == [1], "nothing deleted or built outside the lock"
    held.release()
    reader.join(10)
    assert calls == [1, 1] and got == [{"runs": [1.5, 2.5]}]
    assert store.get("steering/search", SEARCH, JSON) is not None


RACER = """
import json, sys, time
from pathlib import Path
from quant_harness.store import JSON, ArtefactStore

root, go = Path(sys.argv[1]), Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)

def build():
    with (root / "builds.log").open("a") as f:
        f.write(sys.argv[3] + "\\n")
    time.sleep(1.0)
    return {"built_by": sys.argv[3]}

got = ArtefactStore(root / "cache").get_or_build("steering/search", {"k": 1}, build, JSON, under="m/p")
print(json.dumps(got.value))
"""


def test_processes_racing_on_one_key_build_it_exactly_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    script, go = tmp_path / "racer.py", tmp_path / "go"
    script.write_text(RACER)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(go), str(i)], stdout=subprocess.PIPE,
                              text=True) for i in range(3)]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    builders = (tmp_path / "builds.log").read_text().split()
    assert len(builders) == 1, f"built {len(builders)} times"
    assert {o.strip() for o in outs} == {json.dumps({"built_by": builders[0]})}
    folder = tmp_path / "cache" / "steering" / "search" / "m" / "p"
    assert [p.name for p in folder.iterdir() if p.is_dir()] == [key_of({"k": 1})]


WRITER = """
import sys, time
from pathlib import Path
from quant_harness.store import ArtefactStore

class Slow:
    name = "json"
    def write(self, value, folder):
        with (folder / "value.json").open("w") as f:
            f.write('{"runs": [1, 2')
            f.flush()
            (Path(sys.argv[2])).touch()
            time.sleep(60)
        return {}
    def read(self, folder, meta):
        raise AssertionError("never read")

ArtefactStore(Path(sys.argv[1])).get_or_build("steering/search", {"k": 1}, lambda: None, Slow())
"""


def test_a_partial_write_is_never_read_as_complete(tmp_path: Path) -> None:
    """A writer killed half-way through leaves a hidden temporary folder that nothing reads, lists or keeps."""
    import subprocess
    import sys

    script, started = tmp_path / "writer.py", tmp_path / "started"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(started)])
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    store, calls = ArtefactStore(tmp_path / "cache"), list[int]()
    folder = store.folder("steering/search", {"k": 1})
    assert [p.name for p in folder.parent.glob(".*.tmp")], "the killed writer left its temporary folder"
    assert store.get("steering/search", {"k": 1}, JSON) is None and store.entries() == []
    built = store.get_or_build("steering/search", {"k": 1}, _counting(calls), JSON)
    assert calls == [1] and built.value == {"runs": [1.5, 2.5]}


def test_a_codec_failing_mid_write_leaves_no_entry(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path)
    with pytest.raises(TypeError):
        store.get_or_build("plots", {"k": 1}, lambda: {"png": object()}, JsonCodec[Any](encode=json.dumps))
    assert not any(tmp_path.rglob(META)) and not list(tmp_path.rglob(".*.tmp"))


def test_a_value_that_no_longer_decodes_is_a_miss(tmp_path: Path) -> None:
    store, calls = ArtefactStore(tmp_path), list[int]()
    store.get_or_build("benchmarks", {"k": 1}, _counting(calls, {"accuracy": 0.5}), JSON)
    strict: JsonCodec[float] = JsonCodec(encode=lambda v: {"acc": v}, decode=lambda d: float(d["acc"]))
    assert store.get_or_build("benchmarks", {"k": 1}, lambda: 0.25, strict).value == 0.25


def test_entries_written_before_the_store_still_hit(tmp_path: Path) -> None:
    """A schema-1 activation entry (the layout before the store) is read as it is; a JSON result of an older layout
    is adopted instead of built, counted as a hit, and its old file removed."""
    import hashlib

    from safetensors.torch import save_file

    d = tmp_path / "activations" / "tiny" / "fp32" / key_of(COMPONENTS)
    d.mkdir(parents=True)
    save_file({"pos": torch.ones(2, 3, dtype=torch.float16)}, str(d / TENSORS))
    data = (d / TENSORS).read_bytes()
    (d / META).write_text(json.dumps({
        "schema": 1, "key": d.name, "created": "2025-01-01T00:00:00", "components": COMPONENTS,
        "shapes": {"pos": [2, 3]}, "dtypes": {"pos": "float16"}, "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "info": {"n_pos": 2}}))
    entry = ActivationCache(tmp_path).get_or_build("activations/tiny/fp32", COMPONENTS,
                                                   lambda: pytest.fail("rebuilt"))
    assert entry.tensors["pos"].dtype == torch.float32 and entry.meta["info"] == {"n_pos": 2}

    old = tmp_path / "steering" / "search" / "tiny" / "nf4" / f"{key_of(SEARCH)}.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"components": SEARCH, "value": {"runs": [7.0]}}))
    hits = counters.snapshot()["cache_hits"]
    store = ArtefactStore(tmp_path)
    got = store.get_or_build("steering/search", SEARCH, lambda: pytest.fail("searched again"), JSON, under="tiny/nf4",
                             legacy=lambda: legacy_json(old, SEARCH, "value"))
    assert got.value == {"runs": [7.0]} and got.hit and not old.exists()
    assert counters.snapshot()["cache_hits"] == hits + 1  # type: ignore[operator]
    other = {**SEARCH, "precision": "int8"}
    old.write_text(json.dumps({"components": SEARCH, "value": {"runs": [7.0]}}))
    assert legacy_json(old, other, "value") is None, "an old file for other components is not adopted"


def test_cache_list_shows_every_kind_and_prune_takes_a_kind(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    ActivationCache(tmp_path).get_or_build("activations/tiny/fp32", COMPONENTS, _build([]))
    store = ArtefactStore(tmp_path)
    store.get_or_build("steering/search", SEARCH, _counting([]), JSON, under="tiny/nf4")
    store.get_or_build("judge", {"model": "gpt", "messages": []}, _counting([]), JSON, under="ab")
    assert [e["kind"] for e in ActivationCache(tmp_path).entries()] == ["activations"]
    assert cli_main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 entries" in out and "activations 1, judge 1, steering/search 1" in out and "tiny/nf4" in out
    assert cli_main(["cache", "prune", "--cache-dir", str(tmp_path), "--kind", "steering"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["deleted"] == 1
    assert sorted(e["kind"] for e in store.entries()) == ["activations", "judge"]


def test_judge_answers_go_through_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from quant_harness.judge import client
    from quant_harness.judge.settings import JudgeSettings

    judge = client.Judge(JudgeSettings(), tmp_path, api_key="test")
    asked: list[dict[str, object]] = []

    def call(req: dict[str, object]) -> tuple[str, None]:
        asked.append(req)
        return "73", None

    monkeypatch.setattr(judge, "_call", call)
    assert judge.score("rate this").value == 73.0 and judge.score("rate this").value == 73.0 and len(asked) == 1
    [entry] = ArtefactStore(tmp_path).entries()
    assert entry["kind"] == "judge" and entry["components"] == {"endpoint": judge.base_url, "request": asked[0]}
    req = judge._request("answered before the store")
    h = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()
    old = tmp_path / "judge" / h[:2] / f"{h}.json"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(json.dumps({"model": judge.model, "content": "41", "logprobs": None}))
    assert judge.score("answered before the store").value == 41.0 and len(asked) == 1 and not old.exists()


def test_a_bad_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected relative folder names"):
        ArtefactStore(tmp_path).folder("../outside", {"k": 1})
