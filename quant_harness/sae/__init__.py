"""SAE and transcoder dictionaries: bundles and encoders, a small trainer, encoder oracles, fidelity cells.

The cells themselves (``quant_harness.sae.cells``) import the runner and load lazily through kinds.COMPUTE.
"""

from quant_harness.sae.bundle import Bundle, activate, feature_direction, load_bundle, save_bundle
from quant_harness.sae.settings import SaeSettings, cell_names, sae_settings
from quant_harness.sae.train import TrainSettings, evaluate, train_sae

__all__ = ["Bundle", "SaeSettings", "TrainSettings", "activate", "cell_names", "evaluate", "feature_direction",
           "load_bundle", "sae_settings", "save_bundle", "train_sae"]
