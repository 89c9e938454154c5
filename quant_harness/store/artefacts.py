"""The one artefact store: every result that costs a model load, a generation or an API call is built once, by one
process, and then read back forever.

An entry is a folder ``<root>/<kind>/<under>/<key>/`` holding the artefact's files and ``meta.json``, which names the
key components in full, the codec, and the size and sha256 of every file. ``key`` is ``key_of(components)``. A read
checks all of it, so a hash collision, a hand-edited ``meta.json``, a truncated or flipped file is a miss that is
reported and rebuilt, never a silently wrong result. A build happens under a per-entry file lock with the entry
checked again once the lock is held (double-checked locking), so concurrent xdist workers or processes build it
exactly once; damaged entries are only ever deleted under that lock. Files are written into a hidden temporary
folder beside the entry and renamed into place after ``meta.json``, so a crash leaves nothing a reader takes for
complete. Every ``get_or_build`` counts one ``cache_hits`` or ``cache_misses`` in run.json, and the same per kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from filelock import FileLock

from quant_harness._util import counters, progress
from quant_harness.errors import CacheError

SCHEMA = 2
"""Schema 1 is the activation cache's first layout (one ``tensors.safetensors``); it is still read."""
META = "meta.json"
_LEGACY_TENSORS = "tensors.safetensors"
_CREATED = "%Y-%m-%dT%H:%M:%S"
log = logging.getLogger(__name__)

In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)
V = TypeVar("V")
R = TypeVar("R")


class Codec(Protocol[In_contra, Out_co]):
    """How one kind of artefact becomes files in an entry folder and comes back.

    ``write`` puts files into ``folder`` (never ``meta.json``) and returns extra fields for ``meta.json``; ``read``
    gets the folder and that ``meta.json`` once the store has checked every file's size and hash, and raises
    CacheError when the files still cannot be used.
    """

    @property
    def name(self) -> str: ...

    def write(self, value: In_contra, folder: Path) -> dict[str, Any]: ...

    def read(self, folder: Path, meta: Mapping[str, Any]) -> Out_co: ...


@dataclass(frozen=True)
class Artefact(Generic[R]):
    """A checked entry: the value as read back from disk, where it lives, and whether this lookup built it."""

    key: str
    path: Path
    value: R
    meta: dict[str, Any]
    hit: bool


def canonical(components: Mapping[str, Any]) -> Any:
    """Components as ``meta.json`` holds them (JSON types, sorted keys): what a read compares with the request."""
    return json.loads(json.dumps(components, sort_keys=True, default=str))


def key_of(components: Mapping[str, Any]) -> str:
    """The entry key: sha256 of the components' canonical JSON, 24 hex digits (the activation cache's key since its
    first version, so entries written before the store still hit)."""
    return hashlib.sha256(json.dumps(components, sort_keys=True, default=str).encode()).hexdigest()[:24]


def legacy_json(path: Path, components: Mapping[str, Any] | None, field: str | None) -> tuple[Any, Path] | None:
    """A result in a JSON file of a layout from before the store, for ``get_or_build(legacy=...)``: the file's
    ``field`` when its ``components`` equal the request's (or the whole file when there are none to compare), else
    None (absent, unreadable or for other components: built anew)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or (components is not None and data.get("components") != canonical(components)):
        return None
    if field is None:
        return data, path
    return (data[field], path) if field in data else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_difference(stored: Any, wanted: Any, where: str = "components") -> tuple[str, Any, Any]:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for k in sorted(set(stored) | set(wanted)):
            if stored.get(k) != wanted.get(k):
                return _first_difference(stored.get(k), wanted.get(k), f"{where}.{k}")
    return where, stored, wanted


def _files_of(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The entry's files with their sizes and hashes (schema 1 held one tensor file's at the top level)."""
    files = meta.get("files")
    if files is None and meta.get("schema") == 1:
        return {_LEGACY_TENSORS: {"bytes": meta.get("bytes"), "sha256": meta.get("sha256")}}
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return None
    return files


def _is_key(name: str) -> bool:
    return len(name) == 24 and all(c in "0123456789abcdef" for c in name)


class ArtefactStore:
    """A folder of checked, locked, atomically written entries ``<root>/<kind>/<under>/<key>/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, kind: str, components: Mapping[str, Any], under: str = "") -> Path:
        """Where the entry for ``components`` lives (whether or not it exists)."""
        parts = Path(kind, under).parts
        if not kind or Path(kind).is_absolute() or Path(under).is_absolute() or ".." in parts:
            raise ValueError(f"artefact kind = {kind!r}, under = {under!r}: expected relative folder names")
        return self.root.joinpath(*parts, key_of(components))

    def get(self, kind: str, components: Mapping[str, Any], codec: Codec[Any, R], *,
            under: str = "") -> Artefact[R] | None:
        """The entry, or None when there is none; a damaged one is reported and removed (under its lock)."""
        d = self.folder(kind, components, under)
        try:
            return self._read(d, components, codec, hit=True)
        except FileNotFoundError:
            return None
        except CacheError:
            pass
        with self._lock(d):
            return self._checked(d, components, codec)

    def get_or_build(self, kind: str, components: Mapping[str, Any], build: Callable[[], V], codec: Codec[V, R], *,
                     under: str = "", legacy: Callable[[], tuple[V, Path] | None] | None = None,
                     accept: Callable[[Artefact[R]], bool] | None = None) -> Artefact[R]:
        """The entry, built by ``build`` when missing or damaged: the first process to take the lock builds it, the
        others wait for the lock and then read what it wrote.

        ``legacy`` finds the same result in a layout from before the store (the value and its old file or folder):
        it is adopted instead of built, counted as a hit, and the old copy removed once the entry is written.
        ``accept`` says whether a sound entry is enough for this request (an activation entry holding too few
        layers is not): one it rejects is replaced by what ``build`` makes, under the lock, as a miss.
        """
        d = self.folder(kind, components, under)
        try:
            found = self._read(d, components, codec, hit=True)
            if accept is not None and not accept(found):
                raise FileNotFoundError(d)
        except (FileNotFoundError, CacheError):
            with self._lock(d):
                checked = self._checked(d, components, codec)
                if checked is None or (accept is not None and not accept(checked)):
                    return self._build(d, kind, components, build, codec, legacy)
                found = checked
        counters.add_cache(kind, hit=True)
        return found

    def _build(self, d: Path, kind: str, components: Mapping[str, Any], build: Callable[[], V], codec: Codec[V, R],
               legacy: Callable[[], tuple[V, Path] | None] | None) -> Artefact[R]:
        """Under the entry's lock: adopt the older layout's copy when there is one, else build; then write."""
        old = legacy() if legacy is not None else None
        counters.add_cache(kind, hit=old is not None)
        if old is None:
            return self._write(d, kind, components, build(), codec)
        value, before = old
        adopted = replace(self._write(d, kind, components, value, codec), hit=True)
        if before.is_dir():
            shutil.rmtree(before)
        else:
            before.unlink(missing_ok=True)
        progress.note(f"cache: {before} moved into the artefact store as {d}")
        return adopted

    @contextlib.contextmanager
    def _lock(self, d: Path) -> Iterator[None]:
        """The entry's file lock, held for the block; a folder where no lock can be made (read-only, full) is a
        CacheError naming it, not an OSError from inside filelock."""
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(f"{d}.lock")
            lock.acquire()
        except OSError as e:
            raise CacheError(f"{d.parent}: cannot lock a cache entry there ({e.strerror or e}); expected a writable "
                             f"cache folder with free space (--quant-cache-dir)") from e
        try:
            yield
        finally:
            lock.release()

    def _checked(self, d: Path, components: Mapping[str, Any], codec: Codec[Any, R]) -> Artefact[R] | None:
        """Under the entry's lock: the entry, or None after reporting and deleting a damaged one."""
        try:
            return self._read(d, components, codec, hit=True)
        except FileNotFoundError:
            return None
        except CacheError as e:
            log.warning("quant_harness: cache entry %s is unusable (%s); rebuilding it", d, e)
            progress.note(f"cache: entry {d} is unusable ({e}); rebuilding")
            shutil.rmtree(d, ignore_errors=True)
            return None

    def _read(self, d: Path, components: Mapping[str, Any], codec: Codec[Any, R], *, hit: bool) -> Artefact[R]:
        """The checked entry; FileNotFoundError when there is no entry folder, CacheError when it is damaged."""
        if not d.is_dir():
            raise FileNotFoundError(d)
        f = d / META
        try:
            meta = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"{f} unreadable: {e}") from e
        if not isinstance(meta, dict) or meta.get("schema") not in (1, SCHEMA):
            raise CacheError(f"{f}: schema = {meta.get('schema') if isinstance(meta, dict) else meta!r}: "
                             f"expected 1 or {SCHEMA}")
        if meta.get("key") != d.name:
            raise CacheError(f"{f}: key = {meta.get('key')!r}: expected {d.name} (its folder)")
        wanted = canonical(components)
        if meta.get("components") != wanted:
            where, stored, asked = _first_difference(meta.get("components"), wanted)
            raise CacheError(f"{f}: key components differ from the request: {where} = {stored!r}: expected {asked!r}")
        stored_codec = meta.get("codec", "tensors" if meta["schema"] == 1 else None)
        if stored_codec != codec.name:
            raise CacheError(f"{f}: codec = {stored_codec!r}: expected {codec.name!r}")
        files = _files_of(meta)
        if files is None:
            raise CacheError(f"{f}: files = {meta.get('files')!r}: expected the entry's files with sizes and hashes")
        for name, info in files.items():
            p = d / name
            size = p.stat().st_size if p.is_file() else None
            if size is None or size != info.get("bytes"):
                raise CacheError(f"{p}: size = {size if size is not None else 'missing'}: "
                                 f"expected {info.get('bytes')} ({META})")
            if _sha256(p) != info.get("sha256"):
                raise CacheError(f"{p}: content hash differs from {META}")
        return Artefact(d.name, d, codec.read(d, meta), meta, hit)

    def _write(self, d: Path, kind: str, components: Mapping[str, Any], value: V, codec: Codec[V, R]) -> Artefact[R]:
        """Write the entry into a hidden temporary folder, ``meta.json`` last, rename it into place, read it back."""
        tmp = d.parent / f".{d.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            self._write_into(tmp, d, kind, components, value, codec)
        except OSError as e:
            raise CacheError(f"{d}: cannot write the {kind} artefact ({e.strerror or e}); expected a writable cache "
                             f"folder with free space (--quant-cache-dir)") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            return self._read(d, components, codec, hit=False)
        except (FileNotFoundError, CacheError) as e:
            raise CacheError(f"{d}: the {kind} artefact just built cannot be read back: {e}") from e

    def _write_into(self, tmp: Path, d: Path, kind: str, components: Mapping[str, Any], value: V,
                    codec: Codec[V, R]) -> None:
        """Write the files and meta.json into ``tmp``, then rename it into place as ``d``."""
        tmp.mkdir(parents=True)
        extra = codec.write(value, tmp)
        if (tmp / META).exists():
            raise CacheError(f"{tmp / META}: codec {codec.name} wrote the store's own file")
        files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        meta = {**extra, "schema": SCHEMA, "kind": kind, "key": d.name, "codec": codec.name,
                "created": time.strftime(_CREATED), "components": canonical(components), "files": files}
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)

    def entries(self, codec: str | None = None) -> list[dict[str, Any]]:
        """Every entry (of one codec, if given) with its kind, size and key components, for ``quant-harness cache
        list``; a damaged entry is listed too (with what could be read), so that prune can remove it."""
        out = []
        for meta_file in sorted(self.root.glob(f"**/{META}")):
            d = meta_file.parent
            rel = d.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts):
                continue
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, json.JSONDecodeError):
                meta = None
            if not (isinstance(meta, dict) and meta.get("key") == d.name) and not (meta is None and _is_key(d.name)):
                continue
            meta = meta or {}
            stored_codec = meta.get("codec", "tensors" if meta.get("schema") == 1 else None)
            if codec is not None and stored_codec != codec:
                continue
            kind = meta.get("kind") or rel.parts[0]
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            out.append({"path": rel.as_posix(), "kind": kind, "codec": stored_codec, "bytes": size,
                        "created": meta.get("created"), "components": meta.get("components", {}),
                        "shapes": meta.get("shapes", {})})
        return out

    def prune(self, keep: Callable[[dict[str, Any]], bool], codec: str | None = None) -> list[dict[str, Any]]:
        """Delete the entries for which ``keep`` is False (each under its lock); return what was deleted."""
        gone = []
        for e in self.entries(codec):
            if not keep(e):
                d = self.root / e["path"]
                with self._lock(d):
                    shutil.rmtree(d, ignore_errors=True)
                gone.append(e)
        return gone
