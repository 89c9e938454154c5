"""Hooks that exist only when pytest-xdist is installed: our scheduler, GPU slots per worker, workers' counters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quant_harness.plugin.keys import STATE, STUDY
from quant_harness.plugin.scale import configure_node


class XdistHooks:
    """Registered by the plugin when xdist is present (syrupy's DeferXDist pattern)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        raw = getattr(node, "workeroutput", {}).get("quant_counters")
        if raw:
            self.config.stash[STATE].worker_counters.append(json.loads(raw))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """Give each worker its GPU slot before it starts (it pins CUDA_VISIBLE_DEVICES first thing)."""
        configure_node(self.config, node)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """Group cells by model x precision parsed from our cell ids (xdist's own loadgroup relies on a
        nodeid rewrite that pytest 9.2 no longer honours: xdist #1386), on workers with enough GPUs."""
        if config.getoption("dist") != "loadgroup":
            return None
        from quant_harness.scale.xdist_scheduler import CellGroupScheduling

        study = config.stash.get(STUDY, None)
        gpus = {name: card.gpus for name, card in study.cards.items()} if study is not None else {}
        return CellGroupScheduling(config, log, model_gpus=gpus, reference=study.reference if study else "")
