"""quant_harness: does quantizing a model break its steering vectors? A pytest plugin and its library."""

from __future__ import annotations

__version__ = "0.1.0"

from quant_harness.errors import (
           CacheError,
           CellError,
           DatasetError,
           PrecisionUnavailable,
           QuantHarnessError,
           StudyError,
)
from quant_harness.metrics.verdicts import Band, Verdict

__all__ = ["Band", "CacheError", "CellError", "DatasetError", "PrecisionUnavailable", "QuantHarnessError",
           "StudyError", "Verdict", "__version__"]
