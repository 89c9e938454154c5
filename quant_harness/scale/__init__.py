"""Running at scale: model x precision groups, GPU slots per worker, shards of a run, the plan, the xdist scheduler.

Owns: ``scheduling`` (pure functions of ids and slot strings), ``planner`` (``--quant-plan``: groups, workers,
memory estimates, warm cache entries), ``xdist_scheduler`` (groups cells by model x precision on workers with enough
GPUs; the one module outside ``plugin`` that imports xdist, which the plugin registers). May import: errors, _util,
models (cards, precision names), study, store. Nothing here touches CUDA.
"""

from quant_harness.scale.scheduling import Shard, Slot, by_group, parse_shard

__all__ = ["Shard", "Slot", "by_group", "parse_shard"]
