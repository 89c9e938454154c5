"""The old import path of ``local_data_dir``, kept for lm-eval task files (``tasks/*/utils.py``) written against it;
new code imports it from quant_harness.bench.settings."""

from quant_harness.bench.settings import local_data_dir

__all__ = ["local_data_dir"]
