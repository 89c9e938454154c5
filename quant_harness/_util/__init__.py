"""Private helpers every layer may use: atomic writes, run counters, progress, table validation, default folders.

Owns: ``files`` (atomic text writes), ``counters`` (model loads, forward passes, cache hits: run.json),
``progress`` (bars a person can follow, written past pytest's capture), ``validate`` (the one way a study table is
checked), ``defaults`` (folders shared by the plugin and the CLI), ``depth`` (layers as block indices or fractions
of depth, resolved per model). May import: ``quant_harness.errors`` only.
"""

__all__ = ["counters", "defaults", "depth", "files", "progress", "validate"]
