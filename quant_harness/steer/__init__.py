"""Steering: adding, clamping and ablating directions in the residual stream, and the cells that steer.

Owns: ``settings`` (the ``[steering]`` table, torch-free, parsed by ``study.load``), ``ops`` (hooks, batched
steered generation, A/B logit readout, directional ablation), ``cells`` (the steering, logit_diff, transfer and
refusal kinds). May import: errors, _util, models, store, extract, metrics, judge, study, records. This ``__init__``
re-exports only the settings, so the study grid loads without torch; ``ops`` and ``cells`` are imported by path.
"""

from quant_harness.steer.settings import SteeringSettings

__all__ = ["SteeringSettings"]
