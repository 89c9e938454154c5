"""SAE and transcoder feature fidelity: the ``[sae]`` table, bundles and encoders, a small trainer, encoder oracles
and the fidelity cells.

Owns: ``settings`` (torch-free, parsed by ``study.load``), ``bundle`` (reading and encoding dictionaries), ``train``,
``oracle`` (independent encoders for tests) and ``cells`` (the ``sae`` kind). May import: errors, _util, store, study,
runner, extract, metrics, records. This ``__init__`` re-exports only the torch-free settings, so a study loads without
torch; the engine is imported by module path (``quant_harness.sae.bundle``).
"""

from quant_harness.sae.settings import LAYOUTS, Dictionary, SaeSettings, TrainSettings, cell_names, parse

__all__ = ["LAYOUTS", "Dictionary", "SaeSettings", "TrainSettings", "cell_names", "parse"]
