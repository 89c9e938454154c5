"""Extract once: activation entries keyed by what determines the values, so a request for a subset of the cached
layers, or for a prefix of a dataset that grew by appending, is a hit served by slicing the cached superset with no
model work; entries of the layout that keyed on the layer list still serve; ``cache list`` says what a study reuses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from quant_harness._util import counters
from quant_harness.cli import main as cli_main
from quant_harness.store import ArtefactStore, TensorCodec, Tensors
from quant_harness.store.activations import META, ActivationCache

REPO = Path(__file__).resolve().parents[2]
NS = "activations/tiny/fp32"
BASE = {"model": "tiny", "precision": "fp32", "dataset": "d-all", "position": "prompt[-1]", "extraction": {"v": 1}}
ALL = list(range(6))
HASHES = {"pos": [f"p{i}" for i in range(5)], "neg": [f"n{i}" for i in range(5)]}


def _acts(layers: list[int], n: int = 5) -> dict[str, torch.Tensor]:
    """Values that depend only on (side, example, layer), as real activations do: a slice equals a re-extraction."""
    def side(s: int) -> torch.Tensor:
        return torch.tensor([[[s + 0.5 * i + 0.25 * layer + 0.125 * k for k in range(4)] for layer in layers]
                             for i in range(n)])
    return {"pos": side(0), "neg": side(1)}


class Builds:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, layers: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        self.calls.append(list(layers))
        return _acts(layers), {"n_pos": 5, "n_neg": 5}


def _hits() -> int:
    return int(counters.snapshot()["cache_hits"])  # type: ignore[call-overload]


def test_a_layer_subset_is_served_from_the_all_layer_entry(tmp_path: Path) -> None:
    cache, builds = ActivationCache(tmp_path), Builds()
    whole = cache.covering(NS, BASE, ALL, builds, HASHES)
    hits = _hits()
    sub = ActivationCache(tmp_path).covering(NS, BASE, [5, 1, 3], builds, HASHES)
    assert builds.calls == [ALL] and _hits() == hits + 1
    assert sub.meta["components"]["layers"] == [5, 1, 3] and sub.meta["served_from"]["layers"] == ALL
    for side in ("pos", "neg"):
        torch.testing.assert_close(sub.tensors[side], whole.tensors[side][:, [5, 1, 3]])
        torch.testing.assert_close(sub.tensors[side], _acts([5, 1, 3])[side], rtol=1e-3, atol=1e-3)
    meta = json.loads((whole.path / META).read_text())
    assert "layers" not in meta["components"] and meta["info"]["layers"] == ALL
    assert meta["info"]["examples"]["pos"] == {"n": 5, "hashes": HASHES["pos"]}


def test_a_prefix_of_a_grown_dataset_is_served_from_the_larger_entry(tmp_path: Path) -> None:
    cache, builds = ActivationCache(tmp_path), Builds()
    whole = cache.covering(NS, BASE, ALL, builds, HASHES)
    small = {**BASE, "dataset": "d-first-3"}
    prefix = {side: h[:3] for side, h in HASHES.items()}
    sub = cache.covering(NS, small, [2, 4], builds, prefix)
    assert builds.calls == [ALL] and sub.meta["info"]["n_pos"] == 3 and sub.meta["served_from"]["rows"] == \
        {"pos": 3, "neg": 3}
    torch.testing.assert_close(sub.tensors["neg"], whole.tensors["neg"][:3, [2, 4]])
    assert cache.find(NS, small, [2, 4], prefix) == {
        "path": f"{NS}/{whole.key}", "layers": ALL, "examples": {"neg": 5, "pos": 5}, "rows": {"pos": 3, "neg": 3},
        "reuse": "superset"}
    other = {side: ["x", *h[1:3]] for side, h in HASHES.items()}   # an edited first example is not a prefix
    cache.covering(NS, {**BASE, "dataset": "d-edited"}, [2], builds, other)
    assert builds.calls == [ALL, [2]]


def test_layers_beyond_the_entry_rebuild_it_with_the_union(tmp_path: Path) -> None:
    cache, builds = ActivationCache(tmp_path), Builds()
    cache.covering(NS, BASE, [1, 2], builds, HASHES)
    misses = int(counters.snapshot()["cache_misses"])  # type: ignore[call-overload]
    grown = cache.covering(NS, BASE, [4], builds, HASHES)
    assert builds.calls == [[1, 2], [1, 2, 4]] and int(counters.snapshot()["cache_misses"]) == misses + 1  # type: ignore[call-overload]
    torch.testing.assert_close(grown.tensors["pos"], _acts([4])["pos"], rtol=1e-3, atol=1e-3)
    assert len(list((tmp_path / NS).glob(f"*/{META}"))) == 1
    cache.covering(NS, BASE, [1, 4], builds, HASHES)
    assert len(builds.calls) == 2


def test_an_old_layout_entry_keyed_on_its_layers_still_serves(tmp_path: Path) -> None:
    old = {**BASE, "layers": ALL}
    ArtefactStore(tmp_path).get_or_build("activations", old, lambda: Tensors(_acts(ALL), {"n_pos": 5}), TensorCodec(),
                                         under="tiny/fp32")
    builds = Builds()
    sub = ActivationCache(tmp_path).covering(NS, BASE, [0, 5], builds, HASHES)
    assert builds.calls == [] and sub.meta["served_from"]["layers"] == ALL
    torch.testing.assert_close(sub.tensors["pos"], _acts([0, 5])["pos"], rtol=1e-3, atol=1e-3)
    ActivationCache(tmp_path).covering(NS, {**BASE, "dataset": "d-first-3"}, [0], builds,
                                       {side: h[:3] for side, h in HASHES.items()})
    assert builds.calls == [[0]]   # it holds no example hashes: a prefix request is a clean miss


def test_the_runner_serves_a_study_subset_without_loading_a_model(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A trait cached at every layer and every example; a study asking for layers [5, 10, 15] of its first 4
    examples gets them from the cache: a hit, no load, values equal to slicing the superset."""
    from quant_harness import study
    from quant_harness.runner import StudyRunner

    s = study.load(REPO / "cases/studies/default.toml")
    trait = next(t for t in s.traits if t.key == "caa_sycophancy")
    runner = StudyRunner(s, tmp_path / "cache", tmp_path / "models")
    namespace, components, layers, examples = runner.activation_request("smollm2-135m", "fp32", trait)
    assert "layers" not in components and layers == list(range(30)) and examples is not None
    n = len(examples["pos"])
    g = torch.Generator().manual_seed(0)
    full = {side: torch.randn(n, 30, 8, generator=g) for side in ("pos", "neg")}
    runner.cache.covering(namespace, components, layers, lambda at: (full, {"n_pos": n, "n_neg": n}), examples)

    def no_model(*_: Any) -> Any:
        raise AssertionError("the model loader was called")

    subset = StudyRunner(s, tmp_path / "cache", tmp_path / "models")
    monkeypatch.setattr(subset.pool, "get", no_model)
    monkeypatch.setattr("quant_harness.runner.load", no_model)
    hits, loads = _hits(), counters.snapshot()["model_loads"]
    entry = subset.activations("smollm2-135m", "fp32", dataclasses.replace(trait, layers=(5, 10, 15), limit=4))
    assert _hits() == hits + 1 and counters.snapshot()["model_loads"] == loads
    for side in ("pos", "neg"):
        torch.testing.assert_close(entry.tensors[side], full[side][:4, [5, 10, 15]], rtol=1e-3, atol=1e-3)
    vectors = subset.vectors("smollm2-135m", "fp32", dataclasses.replace(trait, layers=(5, 10, 15), limit=4),
                             "mean_diff")
    assert sorted(vectors) == [5, 10, 15]


def test_cache_list_says_what_entries_hold_and_what_a_study_reuses(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from quant_harness import study
    from quant_harness.runner import StudyRunner

    src = REPO / "cases/studies/default.toml"
    s = study.load(src)
    runner = StudyRunner(s, tmp_path, tmp_path / "models")
    trait = next(t for t in s.traits if t.key == "caa_sycophancy")
    namespace, components, layers, examples = runner.activation_request("smollm2-135m", "fp32", trait)
    n = len(examples["pos"]) if examples else 0
    runner.cache.covering(namespace, components, layers,
                          lambda at: ({side: torch.zeros(n, len(at), 4) for side in ("pos", "neg")}, {}), examples)
    assert cli_main(["cache", "list", "--cache-dir", str(tmp_path), "--study", str(src)]) == 0
    out = capsys.readouterr().out
    assert f"layers 0-29; examples neg {n} pos {n} (example hashes: prefix reuse)" in out
    reuse = [line for line in out.splitlines() if line.strip().startswith("reuse")]
    hit = runner.cache.find(namespace, components, layers, examples)
    assert hit is not None and hit["reuse"] == "exact"
    assert reuse == [f"  reuse   smollm2-135m/fp32 caa_sycophancy layers 0-29 <- {hit['path']} (exact: layers 0-29)"]
    assert "  extract smollm2-135m/nf4 caa_sycophancy layers 0-29" in out
    total = [line for line in out.splitlines() if "activation requests served" in line]
    assert len(total) == 1 and total[0].startswith("1/")
