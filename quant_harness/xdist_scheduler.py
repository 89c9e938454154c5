"""A LoadScope scheduler whose scope is the model x precision group of a cell id."""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

from quant_harness.scheduling import group_of_nodeid


class CellGroupScheduling(LoadScopeScheduling):
    """Every cell of one model x precision goes to one worker; larger groups are handed out first."""

    def _split_scope(self, nodeid: str) -> str:
        return group_of_nodeid(nodeid) or nodeid.rsplit("@", 1)[0]
