"""On-disk activation cache: extract once per (model, precision, data, position, layers, settings), reuse forever.

Entries are content-addressed by a hash of named key components. Tensors are stored at half precision (float16,
or bfloat16 when values exceed float16's range) and upcast to float32 on read. Writes go to a temporary folder
that is renamed into place under a file lock, so two xdist workers racing on one key leave one valid entry; a
truncated or mismatched entry is detected by its size, hash and key, reported, and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import Tensor

from quant_harness._util import counters
from quant_harness.errors import CacheError

SCHEMA = 1
TENSORS, META = "tensors.safetensors", "meta.json"
_F16_MAX = 65504.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """A validated cache entry: float32 tensors plus the metadata a user can read in meta.json."""

    key: str
    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]


def key_of(components: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ActivationCache:
    """A folder of entries ``<root>/<namespace>/<key>/{tensors.safetensors, meta.json}``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key

    def get(self, namespace: str, components: dict[str, Any]) -> Entry | None:
        """The entry for ``components``, or None; a corrupt entry is reported, removed and treated as a miss."""
        key = key_of(components)
        d = self._dir(namespace, key)
        if not d.exists():
            return None
        try:
            return self._read(d, key, components)
        except CacheError as e:
            log.warning("quant_harness: cache entry %s is unusable (%s); rebuilding it", d, e)
            from quant_harness._util import progress

            progress.note(f"cache: entry {d} is unusable ({e}); rebuilding")
            shutil.rmtree(d, ignore_errors=True)
            return None

    def _read(self, d: Path, key: str, components: dict[str, Any]) -> Entry:
        try:
            meta = json.loads((d / META).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"{d / META} unreadable: {e}") from e
        if meta.get("schema") != SCHEMA or meta.get("key") != key:
            raise CacheError(f"{d / META}: schema/key mismatch")
        if json.loads(json.dumps(components, sort_keys=True, default=str)) != meta.get("components"):
            raise CacheError(f"{d / META}: key components differ from the request")
        f = d / TENSORS
        if not f.is_file() or f.stat().st_size != meta.get("bytes"):
            raise CacheError(f"{f}: size {f.stat().st_size if f.is_file() else 'missing'} != {meta.get('bytes')}")
        if _sha256(f) != meta.get("sha256"):
            raise CacheError(f"{f}: content hash differs from meta.json")
        try:
            raw = load_file(str(f))
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise CacheError(f"{f}: cannot be read: {e}") from e
        shapes = {k: list(v.shape) for k, v in raw.items()}
        if shapes != meta.get("shapes"):
            raise CacheError(f"{f}: shapes {shapes} != {meta.get('shapes')}")
        return Entry(key, d, {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}, meta)

    def put(self, namespace: str, components: dict[str, Any], tensors: dict[str, Tensor],
            info: dict[str, Any] | None = None) -> Entry:
        """Write an entry atomically (temporary folder, then rename) and return it as read back."""
        key = key_of(components)
        d = self._dir(namespace, key)
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.parent / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            stored = {}
            for name, t in tensors.items():
                t = t.detach().cpu().contiguous()
                if t.is_floating_point():
                    big = t.numel() and float(t.float().abs().max()) > _F16_MAX
                    t = t.to(torch.bfloat16 if big else torch.float16)
                stored[name] = t
            save_file(stored, str(tmp / TENSORS))
            meta = {
                "schema": SCHEMA, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "components": json.loads(json.dumps(components, sort_keys=True, default=str)),
                "shapes": {k: list(v.shape) for k, v in stored.items()},
                "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in stored.items()},
                "bytes": (tmp / TENSORS).stat().st_size, "sha256": _sha256(tmp / TENSORS), "info": info or {},
            }
            (tmp / META).write_text(json.dumps(meta, indent=2))
            if d.exists():
                shutil.rmtree(d)
            os.replace(tmp, d)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self._read(d, key, components)

    def get_or_build(self, namespace: str, components: dict[str, Any],
                     build: Callable[[], tuple[dict[str, Tensor], dict[str, Any]]]) -> Entry:
        """Return the entry, building it under a lock when missing: the first worker builds, the others wait."""
        entry = self.get(namespace, components)
        if entry is not None:
            counters.add("cache_hits")
            return entry
        key = key_of(components)
        (self.root / namespace).mkdir(parents=True, exist_ok=True)
        with FileLock(str(self._dir(namespace, key)) + ".lock"):
            entry = self.get(namespace, components)
            if entry is not None:
                counters.add("cache_hits")
                return entry
            counters.add("cache_misses")
            tensors, info = build()
            return self.put(namespace, components, tensors, info)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry with its size and metadata summary, for ``quant-harness cache list``."""
        out = []
        for meta_file in sorted(self.root.glob(f"**/{META}")):
            d = meta_file.parent
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, json.JSONDecodeError):
                meta = {}
            size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
            out.append({"path": str(d.relative_to(self.root)), "bytes": size, "created": meta.get("created"),
                        "components": meta.get("components", {}), "shapes": meta.get("shapes", {})})
        return out

    def prune(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Delete the entries for which ``keep`` is False; return what was deleted."""
        gone = []
        for e in self.entries():
            if not keep(e):
                shutil.rmtree(self.root / e["path"], ignore_errors=True)
                gone.append(e)
        return gone
