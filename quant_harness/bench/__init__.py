"""Capability benchmarks through lm-evaluation-harness on the resident (quantized) model.

Owns: ``settings`` (the ``[benchmarks]`` table and the shipped tasks' data lookup; torch- and lm-eval-free),
``lm_eval`` (running a task through HFLM on the resident model, the paired drop and the benchmarks cell kind),
``shared_prefix`` (an HFLM that runs each context once for all its choices). May import: errors, _util, models,
store, extract, metrics, steer.ops, study, records. Only the settings are re-exported here.
"""

from quant_harness.bench.settings import BenchmarkSettings, TaskOptions, local_data_dir

__all__ = ["BenchmarkSettings", "TaskOptions", "local_data_dir"]
