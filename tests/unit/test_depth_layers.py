"""Steering and SAE layers as block indices or fractions of depth, resolved per model; the card/config check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from quant_harness._util import depth
from quant_harness._util.validate import SectionContext
from quant_harness.errors import StudyError
from quant_harness.sae import settings as sae_settings
from quant_harness.steer.settings import SteeringSettings
from quant_harness.study import load


@pytest.mark.parametrize(("n_layers", "block"), [(30, 12), (26, 10), (28, 11), (32, 13), (34, 14), (80, 32)])
def test_a_fraction_is_resolved_with_each_models_depth(n_layers: int, block: int) -> None:
    assert SteeringSettings(layers=(0.4,)).layers_for(n_layers) == (block,)


def test_integers_stay_block_indices_and_the_default_is_block_12_of_smollm2(
        make_study: Callable[..., Path]) -> None:
    s = load(make_study(extra="[steering]\nlayers = [3, 9]\n")).steering
    assert s.layers == (3, 9) and s.layers_for(30) == (3, 9) and s.layers_for(80) == (3, 9)
    default = load(make_study(extra="")).steering
    assert default.layers == (depth.DEFAULT_FRACTION,) and default.layers_for(30) == (12,)  # min(12, 29) before
    mixed = load(make_study(extra="[steering]\nlayers = [0.5, 3, 1.0]\n")).steering
    assert mixed.layers_for(30) == (15, 3, 29) and mixed.layers_for(4) == (2, 3)


@pytest.mark.parametrize("bad", ["[1.5]", "[-0.1]", "[true]", "[]", "[30]"])
def test_a_bad_layer_names_file_key_and_value(make_study: Callable[..., Path], bad: str) -> None:
    path = make_study(extra=f"[steering]\nlayers = {bad}\n")
    with pytest.raises(StudyError, match=r"steering\.layers = .*fractions of the model's depth") as err:
        load(path)
    assert str(path) in str(err.value)


def test_sae_layers_as_fractions_name_cells_per_model(tmp_path: Path) -> None:
    ctx = SectionContext(tmp_path / "s.toml", tmp_path, 26, ("m",), ())
    s = sae_settings.parse(ctx, {"layers": [0.4, 12], "dictionaries": {"tiny": {}}})
    assert s is not None and s.layers == (0.4, 12)
    assert sae_settings.cell_names(s, "m", 30) == ["sae_12-tiny"]
    assert sae_settings.cell_names(s, "m", 26) == ["sae_10-tiny", "sae_12-tiny"]


def test_card_and_checkpoint_config_must_agree(tmp_path: Path) -> None:
    from transformers import Gemma3Config, LlamaConfig

    from quant_harness.models.cards import ModelCard
    from quant_harness.models.precision import check_config

    card = ModelCard(name="m", hub_id="x/m", layers=26, hidden_size=2304, source_file=str(tmp_path / "m.toml"))
    check_config(card, LlamaConfig(num_hidden_layers=26, hidden_size=2304), "x/m")
    with pytest.raises(StudyError) as err:
        check_config(card, LlamaConfig(num_hidden_layers=32, hidden_size=2304), "TheBloke/m-GPTQ")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'm.toml'}: layers = 26: expected 32") and "TheBloke/m-GPTQ" in msg
    with pytest.raises(StudyError, match="hidden_size = 2304: expected 4096"):
        check_config(card, LlamaConfig(num_hidden_layers=26, hidden_size=4096), "x/m")
    multimodal = Gemma3Config(text_config={"num_hidden_layers": 26, "hidden_size": 2304})   # read via text_config
    check_config(card, multimodal, "google/gemma-3-4b-it")
