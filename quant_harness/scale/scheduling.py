"""Which cells run together and where: model x precision groups, GPU slots per worker, shards of a run.

Pure functions of strings and lists, shared by the xdist controller, the workers, the planner and the shard
selection. Nothing here touches CUDA: a worker must be able to set CUDA_VISIBLE_DEVICES before anything does.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, MutableMapping, Sequence
from typing import NamedTuple

from quant_harness.study.ids import group_of_nodeid

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
Slot = tuple[str, ...]
"""One worker's GPUs, as entries of the caller's CUDA_VISIBLE_DEVICES (indices or UUIDs)."""


def by_group(groups: Sequence[str | None], lead: Sequence[str] = ()) -> list[int]:
    """Indices that put equal groups together: the ``lead`` groups first (the reference precision's, which every
    comparison reads), then the others in order of first appearance, members in their own order. One process then
    loads each model x precision once, not once per test module (None: not a cell, kept as a group of its own)."""
    first: dict[str | None, int] = {g: i for i, g in enumerate(lead)}
    for g in groups:
        first.setdefault(g, len(first))
    return sorted(range(len(groups)), key=lambda i: first[groups[i]])


# --- GPU slots -------------------------------------------------------------------------------------------

def parse_gpu_slots(text: str) -> list[tuple[int, ...]]:
    """``"0;1;2;3;4,5;6,7"`` -> one tuple of device indices per worker slot (indices into the visible list)."""
    slots: list[tuple[int, ...]] = []
    seen: set[int] = set()
    for part in text.split(";"):
        try:
            slot = tuple(int(x) for x in part.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"Could not parse --quant-gpus {text!r}: expected slots separated by ';', each a comma list of "
                "device indices, e.g. '0;1;2,3' (or 'auto': one slot per visible GPU)") from None
        dup = sorted((seen & set(slot)) | {i for i in slot if slot.count(i) > 1})
        if dup or any(i < 0 for i in slot):
            raise argparse.ArgumentTypeError(
                f"Could not parse --quant-gpus {text!r}: device {dup[0] if dup else min(slot)} is "
                f"{'in two slots' if dup else 'negative'}; expected each device index >= 0 in one slot only")
        seen.update(slot)
        slots.append(slot)
    return slots


def gpu_slots_arg(text: str) -> str:
    """argparse ``type=`` for --quant-gpus: validate now, resolve against the devices later."""
    if text.strip() not in ("", "auto"):
        parse_gpu_slots(text)
    return text.strip()


def visible_devices(env: Mapping[str, str] | None = None) -> list[str] | None:
    """The caller's own CUDA_VISIBLE_DEVICES as a list, or None when it is not set (every device visible)."""
    raw = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [d.strip() for d in raw.split(",") if d.strip()]


def count_devices() -> int:
    """GPUs on this machine, from ``nvidia-smi -L`` (never from CUDA itself: the controller must not init it)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def resolve_slots(spec: str, env: Mapping[str, str] | None = None, device_count: int | None = None) -> list[Slot]:
    """Slots as CUDA_VISIBLE_DEVICES entries, indexing into the caller's visible list (not range(count)).

    ``spec`` empty: no pinning (a plain run). ``auto``: one slot per visible GPU; none on a machine without one.
    """
    visible = visible_devices(env)
    if not spec:
        return []
    if spec == "auto":
        if visible is None:
            visible = [str(i) for i in range(count_devices() if device_count is None else device_count)]
        return [(d,) for d in visible]
    slots = parse_gpu_slots(spec)
    if visible is None:
        return [tuple(str(i) for i in slot) for slot in slots]
    out: list[Slot] = []
    for slot in slots:
        bad = [i for i in slot if i >= len(visible)]
        if bad:
            raise argparse.ArgumentTypeError(
                f"--quant-gpus {spec!r}: index {bad[0]} is outside CUDA_VISIBLE_DEVICES={','.join(visible)!r} "
                f"({len(visible)} devices); expected indices 0..{len(visible) - 1} into that list")
        out.append(tuple(visible[i] for i in slot))
    return out


def worker_index(worker_id: str) -> int:
    """``gw3`` -> 3."""
    digits = worker_id.removeprefix("gw")
    if not digits.isdigit():
        raise ValueError(f"worker id {worker_id!r}: expected gw<N>")
    return int(digits)


def slot_for_worker(slots: Sequence[Slot], worker_id: str) -> Slot:
    """The slot of xdist worker ``gwN``: slot N (wrapping when there are more workers than slots)."""
    return slots[worker_index(worker_id) % len(slots)]


def union(slots: Sequence[Slot]) -> Slot:
    """Every device of the slots once, in order: what a non-distributed run is pinned to."""
    return tuple(dict.fromkeys(d for slot in slots for d in slot))


def pin(env: MutableMapping[str, str], slot: Slot) -> None:
    """Restrict a process to ``slot``; must run before the first CUDA call (``import bitsandbytes`` is one)."""
    env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)


def capacity(slots: Sequence[Slot], distributed: bool) -> int | None:
    """GPUs one model can get: the largest slot under xdist, all slots otherwise; None when nothing is pinned."""
    if not slots:
        return None
    return max(len(s) for s in slots) if distributed else len(union(slots))


def unfit_reason(model: str, gpus: int, slots: Sequence[Slot], distributed: bool) -> str | None:
    """Why a model's cells cannot run with these slots (a skip reason), or None when they fit."""
    cap = capacity(slots, distributed)
    if cap is None or gpus <= cap:
        return None
    where = "the largest slot of" if distributed else "all of"
    return (f"{model} needs {gpus} GPUs (model card gpus = {gpus}); {where} --quant-gpus "
            f"{';'.join(','.join(s) for s in slots)!r} has {cap}")


# --- shards ----------------------------------------------------------------------------------------------

class Shard(NamedTuple):
    """Shard ``index`` of ``count``: a deterministic share of the groups, the same on every machine."""

    index: int
    count: int

    @property
    def label(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def parse_shard(text: str) -> Shard:
    """argparse ``type=`` for --quant-shard: ``"1/4"`` -> Shard(1, 4)."""
    m = _SHARD.match(text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise argparse.ArgumentTypeError(f"Could not parse {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_of(key: str, count: int) -> int:
    """Stable shard of a group key (sha256, never Python's salted hash()): the same on every machine."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


def shard_key(nodeid: str) -> str:
    """What a test is sharded and xdist-scheduled by: its model x precision group, so one process loads each model
    once (a non-cell test is its own key; xdist's ``@group`` suffix is dropped)."""
    return group_of_nodeid(nodeid) or nodeid.rsplit("@", 1)[0]


def in_shard(nodeid: str, shard: Shard) -> bool:
    return shard_of(shard_key(nodeid), shard.count) == shard.index
