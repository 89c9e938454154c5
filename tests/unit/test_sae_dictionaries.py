"""SAE bundles, encoders, the oracle round trip and the trainer, on tiny random dictionaries."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from quant_harness.errors import BundleError, StudyError
from quant_harness.sae import oracle
from quant_harness.sae.bundle import activate, feature_direction, load_bundle, save_bundle
from quant_harness.sae.cells import fidelity
from quant_harness.sae.settings import Dictionary, TrainSettings
from quant_harness.sae.train import evaluate, train_sae
from quant_harness.study.kinds import cells

N, D = 12, 6


def _tensors(seed: int = 0, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(N, D, generator=g), "b_enc": torch.randn(N, generator=g),
            "W_dec": torch.randn(N, D, generator=g), "b_dec": torch.randn(D, generator=g), **extra}


def test_relu_encoder_matches_hand_computation(tmp_path: Path) -> None:
    t = _tensors()
    save_bundle(t, tmp_path, 3)
    b = load_bundle(tmp_path, 3)
    x = torch.randn(4, D)
    pre = [[sum(float(t["W_enc"][f, j]) * float(x[r, j]) for j in range(D)) + float(t["b_enc"][f])
            for f in range(N)] for r in range(4)]
    want = torch.tensor([[max(v, 0.0) for v in row] for row in pre])
    assert b.activation == "relu"
    torch.testing.assert_close(b.encode(x), want, atol=1e-5, rtol=0)
    dec = [[sum(float(want[r, f]) * float(t["W_dec"][f, j]) for f in range(N)) + float(t["b_dec"][j])
            for j in range(D)] for r in range(4)]
    torch.testing.assert_close(b.decode(b.encode(x)), torch.tensor(dec), atol=1e-4, rtol=0)


def test_jumprelu_threshold_is_strict(tmp_path: Path) -> None:
    pre = torch.tensor([[0.5, 1.0, 1.5, -2.0]])
    thr = torch.tensor([0.5, 0.9, 2.0, -3.0])
    assert activate(pre, "jumprelu", threshold=thr).tolist() == [[0.0, 1.0, 0.0, -2.0]]
    t = _tensors(threshold=torch.full((N,), 0.25))
    save_bundle(t, tmp_path, 0)
    b = load_bundle(tmp_path, 0)
    assert b.activation == "jumprelu"
    x = torch.zeros(1, D)
    b_enc = t["b_enc"]
    want = torch.where(b_enc > 0.25, b_enc, torch.zeros_like(b_enc))
    torch.testing.assert_close(b.encode(x)[0], want)
    at = activate(torch.full((1, N), 0.25), "jumprelu", threshold=torch.full((N,), 0.25))
    assert float(at.abs().sum()) == 0.0


def test_topk_keeps_k_largest() -> None:
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5, 4.0]])
    assert activate(pre, "topk", k=2).tolist() == [[3.0, 0.0, 0.0, 0.0, 4.0]]
    with pytest.raises(BundleError, match="k="):
        activate(pre, "topk", k=0)


def test_transposed_encoder_names_file_and_tensor(tmp_path: Path) -> None:
    t = _tensors()
    t["W_enc"] = t["W_enc"].T.contiguous()
    save_file(t, str(tmp_path / "layer_5.safetensors"))
    with pytest.raises(BundleError, match=r"layer_5\.safetensors: tensor W_enc has shape \[6, 12\].*transposed"):
        load_bundle(tmp_path, 5)
    b = load_bundle(tmp_path, 5, layout="saelens")
    torch.testing.assert_close(b.W_enc, _tensors()["W_enc"])


def test_misnamed_tensor_names_file_and_tensor(tmp_path: Path) -> None:
    t = _tensors()
    t["W_enc_5"] = t.pop("W_enc")
    save_file(t, str(tmp_path / "layer_5.safetensors"))
    with pytest.raises(BundleError, match=r"layer_5\.safetensors: tensor W_enc missing; found W_dec, W_enc_5"):
        load_bundle(tmp_path, 5)
    t = _tensors(thresholds=torch.zeros(N))
    save_file(t, str(tmp_path / "layer_6.safetensors"))
    with pytest.raises(BundleError, match="tensor thresholds is not expected"):
        load_bundle(tmp_path, 6)


def test_wrong_width_and_missing_file(tmp_path: Path) -> None:
    save_bundle(_tensors(), tmp_path, 1)
    with pytest.raises(BundleError, match=r"tensor W_enc has shape \[12, 6\]; expected \[12, 8\]"):
        load_bundle(tmp_path, 1, d_model=8)
    with pytest.raises(BundleError, match="layer_2.safetensors: no such bundle file; found layer_1.safetensors"):
        load_bundle(tmp_path, 2)


def test_feature_direction_is_decoder_row(tmp_path: Path) -> None:
    save_bundle(_tensors(), tmp_path, 0)
    b = load_bundle(tmp_path, 0)
    torch.testing.assert_close(feature_direction(b, 4), _tensors()["W_dec"][4])
    with pytest.raises(BundleError, match="feature 12 out of range"):
        feature_direction(b, 12)


def test_oracle_round_trip(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    for layer in (0, 2):
        save_bundle(_tensors(layer), good, layer)
        t = _tensors(layer)
        t["b_enc"] = t["b_enc"] + 1e-3
        save_bundle(t, bad, layer)
    out = tmp_path / "oracle.json"
    doc = oracle.write(good, [0, 2], out, seeds=3, top_k=4)
    assert len(doc["cases"]) == 6 and json.loads(out.read_text())["acceptance"]["activation_abs_tolerance"] == 1e-4
    assert oracle.check(good, out) == []
    problems = oracle.check(bad, out)
    assert problems and all("layer" in p for p in problems)
    assert any("> 0.0001" in p or "indices" in p for p in problems)


def test_trainer_is_deterministic_and_beats_mean() -> None:
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(16, 24, generator=g)
    codes = torch.relu(torch.randn(400, 16, generator=g) - 1.0)
    x = codes @ basis + 3.0
    s = TrainSettings(n_features=32, steps=150, batch_size=64, lr=1e-2, l1=0.3, seed=7)
    a, b = train_sae(x, s), train_sae(x, s)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    report = evaluate(a, x)
    assert report["fvu"] < 0.5 and 0.0 <= report["dead_share"] < 1.0
    assert not torch.equal(train_sae(x, TrainSettings(**{**s.as_dict(), "seed": 8}))["W_enc"], a["W_enc"])


def test_fidelity_identical_residuals_overlap_fully(tmp_path: Path) -> None:
    save_bundle(_tensors(), tmp_path, 0)
    b = load_bundle(tmp_path, 0)
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(3))
    same = fidelity(b, x, x.clone(), top_k=3)
    assert float(same["jaccard"].mean()) == 1.0 and same["active_kept"] == 1.0
    assert same["shared_corr"] == pytest.approx(1.0)
    noisy = fidelity(b, x, x + 2.0 * torch.randn(20, D, generator=torch.Generator().manual_seed(4)), top_k=3)
    assert float(noisy["jaccard"].mean()) < 1.0


def test_sae_table_errors_name_key(tmp_path: Path) -> None:
    from quant_harness._util.validate import SectionContext
    from quant_harness.sae.settings import parse

    ctx = SectionContext(tmp_path / "s.toml", tmp_path, 30, ("m",), ())
    with pytest.raises(StudyError, match=r"sae\.layers = \[40\]: expected a non-empty list"):
        parse(ctx, {"layers": [40], "dictionaries": {"tiny": {}}})
    with pytest.raises(StudyError, match=r"sae\.dictionaries\.tiny\.featurs = 8: expected one of"):
        parse(ctx, {"layers": [3], "dictionaries": {"tiny": {"featurs": 8}}})
    with pytest.raises(StudyError, match="lowercase"):
        parse(ctx, {"layers": [3], "dictionaries": {"Bad-Name": {}}})


def test_cli_sae_oracle_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from quant_harness.cli import main

    save_bundle(_tensors(), tmp_path / "b", 1)
    out = str(tmp_path / "o.json")
    assert main(["sae-oracle", "write", str(tmp_path / "b"), out, "--layers", "1", "--top-k", "5"]) == 0
    assert main(["sae-oracle", "check", str(tmp_path / "b"), out]) == 0
    t = _tensors()
    t["W_enc"] = t["W_enc"] * 1.01
    save_bundle(t, tmp_path / "c", 1)
    assert main(["sae-oracle", "check", str(tmp_path / "c"), out]) == 1
    assert "FAILS" in capsys.readouterr().out
    assert main(["sae-oracle", "check", str(tmp_path / "missing"), out]) == 2


def test_saelens_folder_layout(tmp_path: Path) -> None:
    t = _tensors(threshold=torch.full((N,), 0.1))
    t["W_enc"] = t["W_enc"].T.contiguous()
    (tmp_path / "layer_4").mkdir()
    save_file(t, str(tmp_path / "layer_4" / "sae_weights.safetensors"))
    (tmp_path / "layer_4" / "cfg.json").write_text(json.dumps({"architecture": "jumprelu",
                                                                "apply_b_dec_to_input": True}))
    b = load_bundle(tmp_path, 4, layout="saelens")
    assert b.activation == "jumprelu" and b.apply_b_dec_to_input
    x = torch.randn(3, D)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    torch.testing.assert_close(b.encode(x), pre * (pre > 0.1))


def test_decoders_feed_steering_rows(tmp_path: Path) -> None:
    from quant_harness.extract.methods import sae_feature_vectors
    from quant_harness.sae.bundle import decoders

    save_bundle(_tensors(), tmp_path, 2)
    vecs = sae_feature_vectors(decoders(tmp_path, [2]), [[2, 5, 0.5], [2, 1, 2.0]])
    torch.testing.assert_close(vecs[2], 0.5 * _tensors()["W_dec"][5] + 2.0 * _tensors()["W_dec"][1])


def test_oracle_check_at_lower_weight_precision(tmp_path: Path) -> None:
    save_bundle(_tensors(), tmp_path / "b", 0)
    out = tmp_path / "o.json"
    oracle.write(tmp_path / "b", [0], out, seeds=2, top_k=3, tolerance=1e-6)
    assert oracle.check(tmp_path / "b", out) == []
    assert any("> 1e-06" in p for p in oracle.check(tmp_path / "b", out, dtype="bfloat16"))
    assert oracle.check(tmp_path / "b", out, dtype="bfloat16", tolerance=0.1) == []


def test_study_sae_cells_have_model_precision_ids(make_study: Callable[..., Path]) -> None:
    from quant_harness import study
    from quant_harness.study.ids import group_of_id

    extra = """
        [sae]
        layers = [12, 6]
        [sae.dictionaries.mini]
        features = 64
        [sae.dictionaries.other]
        path = "/nowhere"
        models = ["smollm2-135m"]
        """
    s = study.load(make_study(precisions=("fp32", "nf4", "int8"), extra=extra), check_data=False)  # /nowhere
    ids = [c.id for c in cells(s, "sae")]
    assert ids == [f"smollm2-135m-{p}-sae_{layer}-{d}" for p in ("nf4", "int8") for layer in (6, 12)
                   for d in ("mini", "other")]
    assert {group_of_id(i) for i in ids} == {"smollm2-135m-nf4", "smollm2-135m-int8"}


def test_a_trained_dictionary_is_cached_and_a_corrupt_one_retrained(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the artefact store: trained once, read back, retrained once when its bundle file is damaged, and a
    dictionary trained before the store (``<name>-L<layer>-<key[:16]>/``) adopted without training."""
    import shutil
    from types import SimpleNamespace

    from quant_harness.sae import cells as sae_cells
    from quant_harness.store import ArtefactStore, key_of

    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps({"train": ["a b c"], "eval": ["d e f"]}))
    study = SimpleNamespace(cards={"m": SimpleNamespace(name="m", identity="w", hidden_size=D)}, reference="fp32",
                            sae=SimpleNamespace(texts=texts))
    runner = SimpleNamespace(study=study, precision_settings=lambda m, p: {}, cache=SimpleNamespace(root=tmp_path),
                             key_components=lambda m, p: {"model": m, "precision": p})
    trained: list[int] = []

    def train(x: torch.Tensor, settings: TrainSettings) -> dict[str, torch.Tensor]:
        trained.append(1)
        return _tensors()

    monkeypatch.setattr(sae_cells, "residuals", lambda r, m, p, split: (torch.randn(5, 1, D), None, [0]))
    monkeypatch.setattr(sae_cells, "train_sae", train)
    monkeypatch.setattr(sae_cells, "evaluate", lambda t, x, what: {"fvu": 0.5, "dead_share": 0.0})
    d = Dictionary("mini", train=TrainSettings(n_features=N, steps=1))
    bundle, report = sae_cells.dictionary(runner, "m", d, 0)  # type: ignore[arg-type]
    again, _ = sae_cells.dictionary(runner, "m", d, 0)  # type: ignore[arg-type]
    assert trained == [1] and report["eval"]["fvu"] == 0.5 and again.path == bundle.path
    torch.testing.assert_close(again.W_dec, _tensors()["W_dec"])
    bundle.path.write_bytes(b"truncated")
    sae_cells.dictionary(runner, "m", d, 0)  # type: ignore[arg-type]
    assert trained == [1, 1]

    [entry] = ArtefactStore(tmp_path).entries()
    assert entry["kind"] == "sae/dictionaries" and entry["path"].startswith("sae/dictionaries/m/mini-L0/")
    old = tmp_path / "sae" / "dictionaries" / "m" / f"mini-L0-{key_of(entry['components'])[:16]}"
    save_bundle(_tensors(seed=1), old, 0)
    (old / "report.json").write_text(json.dumps({"eval": {"fvu": 0.25}}))
    shutil.rmtree(tmp_path / entry["path"])
    adopted, report = sae_cells.dictionary(runner, "m", d, 0)  # type: ignore[arg-type]
    assert trained == [1, 1] and report == {"eval": {"fvu": 0.25}} and not old.exists()
    torch.testing.assert_close(adopted.W_dec, _tensors(seed=1)["W_dec"])


def test_transcoder_decode_adds_skip_path(tmp_path: Path) -> None:
    t = _tensors(W_skip=torch.randn(D, D, generator=torch.Generator().manual_seed(9)))
    save_bundle(t, tmp_path, 0)
    b = load_bundle(tmp_path, 0)
    x = torch.randn(2, D)
    acts = b.encode(x)
    torch.testing.assert_close(b.decode(acts, x), acts @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T)
    with pytest.raises(BundleError, match="transcoder"):
        b.decode(acts)
    fid = fidelity(b, x, x.clone(), top_k=2)
    assert "fvu_reference" not in fid
