"""Metrics and verdicts: tensor figures, confidence intervals and the Robust / Degraded / Broken bands.

Owns: ``tensors`` (cosine, massive-dim energy, correlations; torch), ``confidence`` (bootstrap intervals and the
interval rule), ``verdicts`` (Band, Verdict, Judgement). May import: errors, _util. Only the torch-free names are
re-exported here.
"""

from quant_harness.metrics.confidence import Interval, bootstrap_ci, judge_interval
from quant_harness.metrics.verdicts import DEFAULT_BANDS, Band, Judgement, Verdict, is_allowed

__all__ = ["DEFAULT_BANDS", "Band", "Interval", "Judgement", "Verdict", "bootstrap_ci", "is_allowed",
           "judge_interval"]
