"""What a run will do, before it does it: cells, model x precision groups, the worker each group goes to, the
estimated GPU memory of each group against the GPUs, and what the activation cache already holds.

Reads the study, the model cards and the cache's meta files only: no model, no forward pass, no CUDA.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quant_harness.models.registry import REGISTRY
from quant_harness.scale import cost
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
    """The most the group holds at once: its own model, or the reference when it must build the reference's side
    first (the pool evicts one before loading the other, so never both)."""
    reference_load: bool = False
    """Whether the group loads the reference itself: no reference group of its model runs in this plan before it and
    the reference's activations are not all cached."""
    capacity_gb: float | None = None
    worker: str = ""
    seconds: float = 0.0
    """Estimated wall time of the group on its worker (quant_harness.scale.cost)."""
    start: float = 0.0
    """When it starts on its worker, in seconds from the start of the run (after its reference group)."""

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
    cell_skips: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(kind, reason) -> cells skipped one by one inside groups that run (e.g. judged cells without a judge key)."""
    unsized: list[str] = field(default_factory=list)
    """Traits whose dataset could not be read here: the estimate counts them at their ``limit`` (else 100)."""

    @property
    def running(self) -> list[GroupPlan]:
        return [g for g in self.groups if not g.skip]

    def load_order(self) -> dict[str, list[str]]:
        """Each worker's groups in the order it loads them."""
        out: dict[str, list[str]] = {w: [] for w, _ in self.workers}
        for g in sorted(self.running, key=lambda g: (g.start, g.group)):
            out[g.worker].append(g.group)
        return out

    @property
    def wall_seconds(self) -> float:
        """The estimated wall time: when the last group ends."""
        return max((g.start + g.seconds for g in self.running), default=0.0)


def _matches(entry: dict[str, Any], study: Study, model: str, precision: str, trait: TraitSpec,
             dataset_hash: str | None) -> bool:
    c = entry.get("components", {})
    card = study.cards[model]
    return (c.get("model") == card.name and c.get("precision") == precision and c.get("format") == trait.format
            and c.get("position") == trait.position
            and set(trait.layers_for(card)) <= set(entry.get("layers") or c.get("layers") or [])
            and c.get("weights") == card.identity
            and (dataset_hash is None or c.get("dataset") == dataset_hash))


def _dataset(trait: TraitSpec) -> tuple[str | None, int]:
    """The content hash a cache key holds and the examples per side, when the data is on this machine (else
    entries match without the hash, and the cost model uses the trait's limit)."""
    if not trait.dataset.exists():
        return None, 0
    from quant_harness.errors import DatasetError
    from quant_harness.extract import datasets

    try:
        contrast = datasets.load(trait.format, trait.dataset, trait.limit)
    except DatasetError:
        return None, 0
    return contrast.content_hash(), max(len(contrast.pos), len(contrast.neg))


def build(study: Study, cells: Sequence[tuple[Cell, str | None]], *, workers: int, slots: Sequence[Slot],
          gpu_mem_gb: float, cache_entries: list[dict[str, Any]], cache_root: Path, other_items: int = 0) -> Plan:
    """Group the selected cells, check the cache, estimate memory and time, and place groups on workers as the
    xdist scheduler does (quant_harness.scale.xdist_scheduler): more GPUs first, reference groups first, a model's
    quantized groups only after its reference group."""
    by_group: dict[str, list[tuple[Cell, str | None]]] = {}
    for cell, reason in cells:
        by_group.setdefault(cell.group, []).append((cell, reason))
    data = {t.key: _dataset(t) for t in study.traits}
    hashes = {k: h for k, (h, _) in data.items()}
    sizes = {k: n for k, (_, n) in data.items() if n}
    runnable = [c for c, r in cells if r is None]
    groups: list[GroupPlan] = []
    for name, members in sorted(by_group.items()):
        model, precision = split_group(name)
        card = study.cards[model]
        reasons = {r for _, r in members}
        keys = sorted({c.trait for c, _ in members if c.trait and any(t.key == c.trait for t in study.traits)})
        g = GroupPlan(name, model, precision, len(members), card.gpus, traits=keys,
                      skip=(reasons.pop() or "") if len(reasons) == 1 and None not in reasons else "")
        specs = [study.trait(k) for k in keys]
        warm = {t.key for t in specs if any(_matches(e, study, model, precision, t, hashes[t.key])
                                            for e in cache_entries)}
        g.warm = len(warm)
        g.reference_warm = sum(any(_matches(e, study, model, study.reference, t, hashes[t.key])
                                   for e in cache_entries) for t in specs)
        g.vram_gb = vram_gb(card.params_b, precision)
        groups.append(g)
        g.seconds = 0.0 if g.skip else cost.group_work(
            study, model, precision, [c for c, r in members if r is None], runnable, sizes, warm).seconds(
            card.params_b, precision, loads=1)
    phase_one = {g.model for g in groups if not g.skip and g.precision == study.reference}
    for g in groups:
        g.reference_load = (not g.skip and g.precision != study.reference and g.model not in phase_one
                            and g.reference_warm < len(g.traits))
        ref_gb = vram_gb(study.cards[g.model].params_b, study.reference)
        g.peak_gb = max(g.vram_gb, ref_gb) if g.reference_load else g.vram_gb
        if g.reference_load:
            g.seconds += cost.Work().seconds(study.cards[g.model].params_b, study.reference, loads=1)
    plan_workers: list[tuple[str, Slot | None]] = (
        [(f"gw{i}", s) for i, s in enumerate(slots)] if slots else [(f"gw{i}", None) for i in range(max(workers, 1))])
    if len(plan_workers) == 1 and not slots:
        plan_workers = [("master", None)]
    _place(study, groups, plan_workers, gpu_mem_gb)
    kinds = Counter(c.kind for c, _ in cells)
    skipped_groups = {g.group for g in groups if g.skip}
    cell_skips = Counter((c.kind, r) for c, r in cells if r is not None and c.group not in skipped_groups)
    return Plan(study, groups, kinds, other_items, plan_workers, gpu_mem_gb, cache_root, len(cache_entries),
                cell_skips, unsized=[t.key for t in study.traits if not sizes.get(t.key)])


def _place(study: Study, groups: list[GroupPlan], workers: list[tuple[str, Slot | None]], gpu_mem_gb: float) -> None:
    """List scheduling in the xdist scheduler's order: the worker free first takes the first queued group it can
    hold whose reference group has ended (or runs on that worker); a group no slot holds is skipped."""
    queue = sorted((g for g in groups if not g.skip),
                   key=lambda g: (-g.gpus, g.precision != study.reference, -g.seconds, g.group))
    for g in [g for g in queue if not any(s is None or len(s) >= g.gpus for _, s in workers)]:
        g.skip = f"{g.model} needs {g.gpus} GPUs; no worker slot holds that many"
        queue.remove(g)
    free = {w: 0.0 for w, _ in workers}
    ends: dict[str, tuple[str, float]] = {}
    """Reference group of a model -> (its worker, when it ends)."""
    slot_of = dict(workers)
    refs = {g.model for g in queue if g.precision == study.reference}
    while queue:
        def ready_at(g: GroupPlan, w: str) -> float | None:
            if g.precision == study.reference or g.model not in refs:
                return 0.0
            if g.model not in ends:
                return None
            where, end = ends[g.model]
            return 0.0 if where == w else end

        options = []
        for w in sorted(free, key=lambda w: (free[w], w)):
            s = slot_of[w]
            for i, g in enumerate(queue):
                at = ready_at(g, w)
                if (s is None or len(s) >= g.gpus) and at is not None:
                    options.append((max(free[w], at), free[w], i, w, g))
        start, _, _, w, g = min(options, key=lambda o: o[:4])
        queue.remove(g)
        s = slot_of[w]
        g.worker, g.start = w, start
        g.capacity_gb = gpu_mem_gb * (len(s) if s is not None else g.gpus) if gpu_mem_gb else None
        free[w] = start + g.seconds
        if g.precision == study.reference:
            ends[g.model] = (w, free[w])


def render(plan: Plan) -> str:
    """The plan as a table a person can check before spending GPU hours."""
    s = plan.study
    run = plan.running
    skipped_cells = sum(g.cells for g in plan.groups if g.skip) + sum(plan.cell_skips.values())
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
        (f"cache: {plan.cache_root}: {plan.cache_entries} activation entries present; warm groups (nothing to "
         f"extract): {sum(1 for g in run if g.warm == len(g.traits) and g.reference_warm == len(g.traits))}"
         f"/{len(run)}"),
        "",
        (f"{'group':<22} {'cells':>5} {'gpus':>4} {'vram GB':>8} {'peak GB':>8} {'fits':>5} {'warm':>7} "
         f"{'ref warm':>8} {'start h':>7} {'est h':>6}  worker"),
    ]
    for g in sorted(run, key=lambda g: (g.worker, g.start, g.group)):
        slot = dict(plan.workers).get(g.worker)
        where = f"{g.worker} [{','.join(slot)}]" if slot else g.worker
        fits = "-" if g.capacity_gb is None else ("ok" if g.fits else "OVER")
        lines.append(f"{g.group:<22} {g.cells:>5} {g.gpus:>4} {g.vram_gb:>8.1f} {g.peak_gb:>8.1f} {fits:>5} "
                     f"{g.warm:>3}/{len(g.traits):<3} {g.reference_warm:>4}/{len(g.traits):<3} "
                     f"{g.start / 3600:>7.1f} {g.seconds / 3600:>6.1f}  {where}")
    lines += ["", ("load order (one model resident per worker; a model's reference group first, its quantized "
                   "groups after it ends):")]
    lines += [f"  {w}: {' -> '.join(order)}" for w, order in plan.load_order().items() if order]
    reloads = [g.group for g in run if g.reference_load]
    if reloads:
        lines += [(f"  reference loaded again (no reference group of the model in this run, reference "
                   f"activations not cached): {', '.join(reloads)}")]
    busy = sum(g.seconds * g.gpus for g in run) / 3600
    lines += ["", (f"estimate: ~{plan.wall_seconds / 3600:.1f} h wall for the selected cells ({busy:.0f} "
                   "GPU-hours); work counted from the study, rates from quant_harness/scale/cost.py RATES "
                   "(assumptions for one 80 GB GPU where not measured; README 'Cost on paper')")]
    if plan.unsized:
        lines += [(f"  counted at their limit (else 100 examples), their datasets not readable here: "
                   f"{', '.join(plan.unsized)}; the estimate changes with their real sizes (set the study's data "
                   "variables, e.g. QUANT_HARNESS_DATA)")]
    skipped = [g for g in plan.groups if g.skip]
    if skipped:
        lines += ["", "skipped groups:"]
        lines += [f"  {g.group} ({g.cells} cells): {g.skip}" for g in skipped]
    if plan.cell_skips:
        lines += ["", "skipped cells in groups that run:"]
        lines += [f"  {kind} ({n} cells): {reason}" for (kind, reason), n in sorted(plan.cell_skips.items())]
    over = [g for g in run if not g.fits]
    if over:
        lines += ["", f"warning: {len(over)} groups may not fit in GPU memory (one model resident at a time; "
                      "give their slots more GPUs): " + ", ".join(g.group for g in over)]
    lines += ["", "plan only: nothing was loaded or run (drop --quant-plan to run)"]
    return "\n".join(lines)
