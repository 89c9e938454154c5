"""pytest glue for running at scale: GPU slots per worker, ``--dist loadgroup`` by default, shards, the plan.

The decisions are in quant_harness.scale (slots, shards, placement, the planner); this module
reads the options and calls them. It imports nothing that touches CUDA.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from quant_harness.plugin.keys import PLAN_WORKERS, SLOTS, STUDY
from quant_harness.plugin.options import planning, shard
from quant_harness.scale import scheduling
from quant_harness.scale.scheduling import Slot
from quant_harness.study.spec import Cell


def gpu_slots(config: pytest.Config) -> list[Slot]:
    """The GPU slots of ``--quant-gpus`` / ini ``quant_gpus``, resolved once against the caller's visible devices.

    A worker reads the controller's resolution from workerinput: its own CUDA_VISIBLE_DEVICES is already pinned.
    """
    if SLOTS not in config.stash:
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None and "quant_gpu_slots" in workerinput:
            config.stash[SLOTS] = [tuple(s.split(",")) for s in workerinput["quant_gpu_slots"].split(";") if s]
            return config.stash[SLOTS]
        spec = str(config.getoption("quant_gpus", None) or config.getini("quant_gpus") or "").strip()
        try:
            config.stash[SLOTS] = scheduling.resolve_slots(scheduling.gpu_slots_arg(spec))
        except argparse.ArgumentTypeError as e:
            raise pytest.UsageError(str(e)) from e
    return config.stash[SLOTS]


def gpu_mem_gb(config: pytest.Config) -> float:
    raw = config.getoption("quant_gpu_mem", None) or config.getini("quant_gpu_mem") or 0
    try:
        return float(raw)
    except ValueError:
        raise pytest.UsageError(f"Could not parse quant_gpu_mem {raw!r}: expected GB per GPU, e.g. 80") from None


def _distributed(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput") or bool(config.getoption("numprocesses", None)) or (
        planning(config) and config.stash.get(PLAN_WORKERS, 1) > 1)


def _dist_given(config: pytest.Config) -> bool:
    args = [str(a) for a in config.invocation_params.args]
    args += shlex.split(os.environ.get("PYTEST_ADDOPTS", "")) + [str(a) for a in config.getini("addopts")]
    return any(a.startswith("--dist") or a == "-d" for a in args)


def cmdline_main(config: pytest.Config) -> None:
    """Before anything touches CUDA: pin a worker to its slot; pick loadgroup for ``-n``; make a plan run nothing."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        slot = workerinput.get("quant_gpu_slot")
        if slot is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = slot
        return
    n = config.getoption("numprocesses", None)
    if planning(config):
        slots = gpu_slots(config)
        count = len(slots) if slots else (os.cpu_count() or 1) if n in ("auto", "logical") else int(n or 1)
        config.stash[PLAN_WORKERS] = count
        if n is not None:
            config.option.numprocesses, config.option.dist, config.option.tx = 0, "no", []
        config.option.xmlpath = os.devnull  # a plan writes no report, and must not replace the last one
        if hasattr(config.option, "htmlpath"):
            config.option.htmlpath, config.option.self_contained_html = os.devnull, True
        return
    study_set = config.getoption("quant_study", None) or config.getini("quant_study")
    if n and study_set and not _dist_given(config):
        config.option.dist = "loadgroup"
    if not n and not config.getoption("tx", None):
        slots = gpu_slots(config)
        if slots:
            scheduling.pin(os.environ, scheduling.union(slots))


def auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` with GPU slots: one worker per slot."""
    return len(gpu_slots(config)) or None


def configure_node(config: pytest.Config, node: Any) -> None:
    """Controller side: hand each worker its slot through workerinput (the worker pins itself at start-up)."""
    slots = gpu_slots(config)
    if slots:
        node.workerinput["quant_gpu_slots"] = ";".join(",".join(s) for s in slots)
        node.workerinput["quant_gpu_slot"] = ",".join(scheduling.slot_for_worker(slots, node.gateway.id))


def placement_skip(config: pytest.Config, model: str, gpus: int) -> str | None:
    """Skip reason for a model that no worker slot can hold."""
    return scheduling.unfit_reason(model, gpus, gpu_slots(config), _distributed(config))


def selected_cells(items: list[pytest.Item]) -> list[Cell]:
    """The cells of ``items`` that will compute (no skip mark), in run order."""
    out = []
    for item in items:
        cell = item.callspec.params.get("cell") if hasattr(item, "callspec") else None
        if isinstance(cell, Cell) and item.get_closest_marker("skip") is None:
            out.append(cell)
    return out


def select_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep this shard's model x precision groups; report the rest as deselected."""
    sh = shard(config)
    if sh is None:
        return
    keep, drop = [], []
    for item in items:
        (keep if scheduling.in_shard(item.nodeid, sh) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def run_plan(session: pytest.Session, cache_root: Path) -> bool | None:
    """``--quant-plan``: print the plan of the collected cells and run nothing."""
    config = session.config
    if not planning(config):
        return None
    from quant_harness.scale import planner
    from quant_harness.store.activations import ActivationCache

    study = config.stash.get(STUDY, None)
    if study is None:
        raise pytest.UsageError("--quant-plan needs a study: pass --quant-study PATH or set ini quant_study")
    cells, other = [], 0
    for item in session.items:
        cell = item.callspec.params.get("cell") if hasattr(item, "callspec") else None
        if not isinstance(cell, Cell):
            other += 1
            continue
        mark = item.get_closest_marker("skip")
        cells.append((cell, (mark.kwargs.get("reason") or (mark.args[0] if mark.args else "skipped")) if mark else None))
    entries = ActivationCache(cache_root).entries() if cache_root.is_dir() else []
    plan = planner.build(study, cells, workers=config.stash.get(PLAN_WORKERS, 1), slots=gpu_slots(config),
                         gpu_mem_gb=gpu_mem_gb(config), cache_entries=entries, cache_root=cache_root,
                         other_items=other)
    config.get_terminal_writer().line("\n" + planner.render(plan))
    return True
