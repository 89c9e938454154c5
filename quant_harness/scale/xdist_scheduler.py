"""A LoadScope scheduler whose scope is the model x precision group of a cell id, and which knows GPU slots.

xdist's own loadgroup relies on a nodeid rewrite that pytest 9.2 no longer honours (xdist #1386), and it
knows nothing of GPUs. Here a group goes to one worker as a unit, groups that need more GPUs and larger groups
go first, and a group goes only to a worker whose slot holds as many GPUs as its model card asks for.

Two phases per model: a model's quantized groups are handed out only once its reference group has finished (or to
the worker running it, which runs them after it), because the reference group builds the reference side of every
comparison (activations, steering search, A/B sweeps) into the cache. A quantized group then never loads the
reference, so its worker holds one model at a time (quant_harness.runner.ModelPool).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xdist.scheduler import LoadScopeScheduling

from quant_harness.scale.scheduling import shard_key
from quant_harness.study.ids import group_of_id, split_group


def node_gpus(node: Any) -> int | None:
    """GPUs of a worker: its slot from workerinput, else ``--tx ...//env:CUDA_VISIBLE_DEVICES=``; None = unpinned."""
    slot = getattr(node, "workerinput", {}).get("quant_gpu_slot")
    if slot is None:
        env = getattr(getattr(getattr(node, "gateway", None), "spec", None), "env", None) or {}
        slot = env.get("CUDA_VISIBLE_DEVICES")
    if slot is None:
        return None
    return len([d for d in str(slot).split(",") if d.strip()])


class CellGroupScheduling(LoadScopeScheduling):
    """Every cell of one model x precision goes to one worker; groups needing more GPUs go first, then reference
    groups (their activations are what the quantized groups of the model compare against), then larger groups."""

    def __init__(self, config: Any, log: Any = None, model_gpus: Mapping[str, int] | None = None,
                 reference: str = "") -> None:
        super().__init__(config, log)
        self.model_gpus = dict(model_gpus or {})
        self.reference = reference

    def _split_scope(self, nodeid: str) -> str:
        return shard_key(nodeid)

    def _need(self, scope: str) -> int:
        """GPUs a scope needs; 0 (anywhere) for non-cells and for models no worker can hold (they are skipped)."""
        if group_of_id(scope) != scope:
            return 0
        need = self.model_gpus.get(split_group(scope)[0], 1)
        caps = [node_gpus(n) for n in self.nodes]
        if None in caps:
            return need
        return need if caps and need <= max(c for c in caps if c is not None) else 0

    def _fits(self, node: Any, scope: str) -> bool:
        cap = node_gpus(node)
        return cap is None or self._need(scope) <= cap

    def _reference_of(self, scope: str) -> str | None:
        """The reference group a quantized group waits for; None for reference groups and non-cells."""
        if not self.reference or group_of_id(scope) != scope:
            return None
        model, precision = split_group(scope)
        return None if precision == self.reference else f"{model}-{self.reference}"

    def _ready(self, node: Any, scope: str) -> bool:
        """Whether ``scope`` may start on ``node``: its reference group is neither queued nor unfinished on another
        worker (a worker runs its own queue in order, so the one running the reference may take it)."""
        ref = self._reference_of(scope)
        if ref is None:
            return True
        if ref in self.workqueue:
            return False
        return not any(other is not node and not all(work.get(ref, {}).values())
                       for other, work in self.assigned_work.items())

    def _assign_work_unit(self, node: Any) -> bool:  # type: ignore[override]
        """Give ``node`` the first queued group it can hold and may start; False when there is none now."""
        scope = next((s for s in self.workqueue if self._fits(node, s) and self._ready(node, s)), None)
        if scope is None:
            return False
        work_unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        collection = self.registered_collections[node]
        node.send_runtest_some([collection.index(nid) for nid, done in work_unit.items() if not done])
        return True

    def _reschedule(self, node: Any) -> None:
        if node.shutting_down:
            return
        if not self.workqueue:
            node.shutdown()
            return
        if self._pending_of(self.assigned_work[node]) > 2:
            return
        if not self._assign_work_unit(node) and not self._pending_of(self.assigned_work[node]) \
                and not any(self._fits(node, s) for s in self.workqueue):
            node.shutdown()  # what is left needs more GPUs than this worker holds

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        """As LoadScope's; when a reference group has just finished, every idle worker may now take its model's
        quantized groups."""
        nodeid = self.registered_collections[node][item_index]
        scope = self._split_scope(nodeid)
        self.assigned_work[node][scope][nodeid] = True
        others = [n for n in self.nodes if n is not node] if all(self.assigned_work[node][scope].values()) else []
        for n in [node, *others]:
            self._reschedule(n)

    def schedule(self) -> None:
        if self.collection is not None:
            for node in self.nodes:
                self._reschedule(node)
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        self.collection = list(next(iter(self.registered_collections.values())))
        if not self.collection:
            return
        units: dict[str, dict[str, bool]] = {}
        for nodeid in self.collection:
            units.setdefault(self._split_scope(nodeid), {})[nodeid] = False
        order = list(units.items())
        if self.config.option.loadscopereorder:
            order.sort(key=lambda item: (-self._need(item[0]), split_group(item[0])[1] != self.reference,
                                         -len(item[1])))
        self.workqueue.update(order)
        by_capacity = sorted(self.nodes, key=lambda n: -(node_gpus(n) or 0))
        for node in by_capacity:
            if not self.workqueue or (not self._assign_work_unit(node)
                                      and not any(self._fits(node, s) for s in self.workqueue)):
                self.log(f"Shutting down unused node {node}")
                self.assigned_work.pop(node)
                node.shutdown()
        for node in self.nodes:
            self._reschedule(node)
        if not self.workqueue:
            for node in self.nodes:
                node.shutdown()
