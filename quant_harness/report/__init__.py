"""Reports: JSON matrices of cell records, baselines, the ranking, the findings page, HTML and plots, shard merges.

Layered bottom to top: ``matrices`` (result files, merged by cell id), ``baselines`` (the ``[baselines]`` table and
per-cell regression checks), ``plots``, ``ranking``, ``findings``, ``html`` (renderers, which read records through
``matrices``), ``derive`` (rebuilds every derived file; the only module that imports the renderers), ``merge``
(shard report folders into one). May import: errors, _util, store (plot images), records
(the typed ``Record``), models.registry, metrics, study (ids, kinds). Nothing here runs a model.

``study.load`` parses the ``[baselines]`` table through ``baselines``, so this ``__init__`` imports nothing: importing
the package must not pull the renderers (and the study grid they read) back into a study that is loading.
"""

__all__ = ["baselines", "derive", "findings", "html", "matrices", "merge", "plots", "ranking"]
