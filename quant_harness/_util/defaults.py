"""Default folders, shared by the pytest options and the ``quant-harness`` command so the two never disagree."""

CACHE_DIR = ".quant_cache"
"""Artefact store (activations, rollouts, judge answers, steering searches, benchmark results, plots)."""
MODELS_SUBDIR = "models"
"""Model store inside the cache folder (embedded model, GPTQ quantized on load)."""
REPORT_DIR = "reports"
BASELINES_DIR = "cases/baselines"
