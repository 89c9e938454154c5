"""What a run will do, before it does it: cells, model x precision groups, the worker each group goes to, the
estimated GPU memory of each group against the GPUs, and what the activation cache already holds.

Reads the study, the model cards and the cache's meta files only: no model, no forward pass, no CUDA.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from quant_harness.models.registry import REGISTRY
from quant_harness.scale.scheduling import Slot
from quant_harness.study.ids import split_group
from quant_harness.study.spec import Cell, Study, TraitSpec

BYTES_PER_PARAM = {name: spec.bytes_per_param for name, spec in REGISTRY.items()}
"""Weight bytes per parameter (the registry's ``bytes_per_param``): 16-bit 2, LLM.int8 ~1 plus outlier columns,
4-bit ~0.5 plus scales and zeros."""
OVERHEAD_GB = 1.5
"""CUDA context, allocator slack and the activations of one extraction batch."""
OVERHEAD_FRACTION = 0.10
"""Memory that grows with the model: non-quantized embeddings and norms, dequantization buffers."""


def vram_gb(params_b: float, precision: str) -> float:
    """Estimated GPU memory (GB) of one resident copy of a ``params_b``-billion model at ``precision``."""
    weights = params_b * BYTES_PER_PARAM.get(precision, 2.0)
    return weights * (1 + OVERHEAD_FRACTION) + OVERHEAD_GB


@dataclass
class GroupPlan:
    """One model x precision group: loaded once by the worker it goes to."""

    group: str
    model: str
    precision: str
    cells: int
    gpus: int
    skip: str = ""
    """Why every cell of the group is skipped (no GPTQ checkpoint, too few GPUs, ...); empty when it runs."""
    traits: list[str] = field(default_factory=list)
    warm: int = 0
    """Activation entries of this precision already in the cache (of ``len(traits)``)."""
    reference_warm: int = 0
    vram_gb: float = 0.0
    peak_gb: float = 0.0
    """With the reference precision resident too, when its activations still have to be extracted."""
    capacity_gb: float | None = None
    worker: str = ""
    cost: float = 0.0

    @property
    def fits(self) -> bool:
        return self.capacity_gb is None or self.peak_gb <= self.capacity_gb


@dataclass
class Plan:
    study: Study
    groups: list[GroupPlan]
    kinds: Counter[str]
    other_items: int
    workers: list[tuple[str, Slot | None]]
    gpu_mem_gb: float
    cache_root: Path
    cache_entries: int

    @property
    def running(self) -> list[GroupPlan]:
        return [g for g in self.groups if not g.skip]


def _matches(entry: dict[str, Any], study: Study, model: str, precision: str, trait: TraitSpec,
             dataset_hash: str | None) -> bool:
    c = entry.get("components", {})
    card = study.cards[model]
    return (c.get("model") == card.name and c.get("precision") == precision and c.get("format") == trait.format
            and c.get("position") == trait.position and c.get("layers") == list(trait.layers_for(card))
            and c.get("weights") == card.identity
            and (dataset_hash is None or c.get("dataset") == dataset_hash))


def _dataset_hash(trait: TraitSpec) -> str | None:
    """The content hash a cache key holds, when the data is on this machine (else entries match without it)."""
    if not trait.dataset.exists():
        return None
    from quant_harness.extract import datasets
    from quant_harness.errors import DatasetError

    try:
        return datasets.load(trait.format, trait.dataset, trait.limit).content_hash()
    except DatasetError:
        return None


def build(study: Study, cells: Sequence[tuple[Cell, str | None]], *, workers: int, slots: Sequence[Slot],
          gpu_mem_gb: float, cache_entries: list[dict[str, Any]], cache_root: Path, other_items: int = 0) -> Plan:
    """Group the selected cells, check the cache, estimate memory, and place groups on workers (largest first)."""
    by_group: dict[str, list[tuple[Cell, str | None]]] = {}
    for cell, reason in cells:
        by_group.setdefault(cell.group, []).append((cell, reason))
    hashes = {t.key: _dataset_hash(t) for t in study.traits}
    groups: list[GroupPlan] = []
    for name, members in sorted(by_group.items()):
        model, precision = split_group(name)
        card = study.cards[model]
        reasons = {r for _, r in members}
        keys = sorted({c.trait for c, _ in members if c.trait})
        g = GroupPlan(name, model, precision, len(members), card.gpus, traits=keys,
                      skip=reasons.pop() if len(reasons) == 1 and None not in reasons else "")
        specs = [study.trait(k) for k in keys]
        g.warm = sum(any(_matches(e, study, model, precision, t, hashes[t.key]) for e in cache_entries)
                     for t in specs)
        g.reference_warm = sum(any(_matches(e, study, model, study.reference, t, hashes[t.key])
                                   for e in cache_entries) for t in specs)
        g.vram_gb = vram_gb(card.params_b, precision)
        needs_reference = precision != study.reference and g.reference_warm < len(specs)
        g.peak_gb = g.vram_gb + (vram_gb(card.params_b, study.reference) - OVERHEAD_GB if needs_reference else 0.0)
        missing = (len(specs) - g.warm) + (len(specs) - g.reference_warm if needs_reference else 0)
        g.cost = 0.0 if g.skip else max(card.params_b, 0.1) * (missing + (1 if missing else 0)) + 0.01 * g.cells
        groups.append(g)
    plan_workers: list[tuple[str, Slot | None]] = (
        [(f"gw{i}", s) for i, s in enumerate(slots)] if slots else [(f"gw{i}", None) for i in range(max(workers, 1))])
    if len(plan_workers) == 1 and not slots:
        plan_workers = [("master", None)]
    load: dict[str, float] = {w: 0.0 for w, _ in plan_workers}
    for g in sorted((g for g in groups if not g.skip),
                    key=lambda g: (-g.gpus, g.precision != study.reference, -g.cost, g.group)):
        fitting = [(w, s) for w, s in plan_workers if s is None or len(s) >= g.gpus]
        if not fitting:
            g.skip = f"{g.model} needs {g.gpus} GPUs; no worker slot holds that many"
            continue
        w, s = min(fitting, key=lambda ws: (load[ws[0]], ws[0]))
        g.worker = w
        g.capacity_gb = gpu_mem_gb * (len(s) if s is not None else g.gpus) if gpu_mem_gb else None
        load[w] += g.cost
    kinds = Counter(c.kind for c, _ in cells)
    return Plan(study, groups, kinds, other_items, plan_workers, gpu_mem_gb, cache_root, len(cache_entries))


def render(plan: Plan) -> str:
    """The plan as a table a person can check before spending GPU hours."""
    s = plan.study
    run = plan.running
    skipped_cells = sum(g.cells for g in plan.groups if g.skip)
    total = sum(g.cells for g in plan.groups)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(plan.kinds.items()))
    slots = " | ".join(",".join(sl) if sl else "-" for _, sl in plan.workers if sl is not None)
    lines = [
        f"quant_harness plan: study {s.name} ({s.path}), reference {s.reference}",
        f"cells: {total} ({kinds}); to run {total - skipped_cells}, skipped {skipped_cells}"
        + (f"; other tests: {plan.other_items}" if plan.other_items else ""),
        f"groups: {len(run)} to run, {len(plan.groups) - len(run)} skipped; one model load per group",
        f"workers: {len(plan.workers)}" + (f" (GPU slots {slots})" if slots else " (no GPU slots: --quant-gpus not set)")
        + (f"; GPU memory {plan.gpu_mem_gb:g} GB each" if plan.gpu_mem_gb else ""),
        f"cache: {plan.cache_root}: {plan.cache_entries} activation entries present; warm groups (nothing to "
        f"extract): {sum(1 for g in run if g.warm == len(g.traits) and g.reference_warm == len(g.traits))}/{len(run)}",
        "",
        f"{'group':<22} {'cells':>5} {'gpus':>4} {'vram GB':>8} {'peak GB':>8} {'fits':>5} {'warm':>7} "
        f"{'ref warm':>8}  worker",
    ]
    for g in sorted(run, key=lambda g: (g.worker, g.group)):
        slot = dict(plan.workers).get(g.worker)
        where = f"{g.worker} [{','.join(slot)}]" if slot else g.worker
        fits = "-" if g.capacity_gb is None else ("ok" if g.fits else "OVER")
        lines.append(f"{g.group:<22} {g.cells:>5} {g.gpus:>4} {g.vram_gb:>8.1f} {g.peak_gb:>8.1f} {fits:>5} "
                     f"{g.warm:>3}/{len(g.traits):<3} {g.reference_warm:>4}/{len(g.traits):<3}  {where}")
    skipped = [g for g in plan.groups if g.skip]
    if skipped:
        lines += ["", "skipped groups:"]
        lines += [f"  {g.group} ({g.cells} cells): {g.skip}" for g in skipped]
    over = [g for g in run if not g.fits]
    if over:
        lines += ["", f"warning: {len(over)} groups may not fit in GPU memory (peak counts the reference model "
                      "resident while its activations are extracted; run the reference first or add GPUs): "
                      + ", ".join(g.group for g in over)]
    lines += ["", "plan only: nothing was loaded or run (drop --quant-plan to run)"]
    return "\n".join(lines)
