"""The study: its file format, its typed settings, the grid of cells and the cell-id grammar.

Owns: ``spec`` (Study, TraitSpec, Cell), ``load`` (parsing and validating every table of a study file, datasets
included), ``kinds`` (the registry of cell kinds and the grid), ``ids`` (cell ids), ``trait_options``. May import:
errors, _util, models.cards and models.precision (torch-free), metrics.verdicts and the torch-free settings modules
of the feature packages (steer, bench, sae, judge, report.baselines), which never import this package.
"""

from quant_harness.study.ids import CellName, cell_id, split_cell_id
from quant_harness.study.kinds import KINDS, KindSpec, all_cells, cells
from quant_harness.study.load import load
from quant_harness.study.spec import FORMATS, METHODOLOGIES, METHODS, Cell, Study, TraitSpec

__all__ = ["FORMATS", "KINDS", "METHODOLOGIES", "METHODS", "Cell", "CellName", "KindSpec", "Study", "TraitSpec",
           "all_cells", "cell_id", "cells", "load", "split_cell_id"]
