"""Atomic file writes: a reader (another xdist worker, a re-run after a crash) sees the old file or the new one,
never half of one. And ``digest``: what a cache key holds of a local checkpoint folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt", ".jinja")
"""Weight, config and tokenizer files: what ``digest`` reads of a checkpoint folder."""


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` (parents created), then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def digest(path: str | Path, suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> str:
    """A digest of a local checkpoint (a file, or a folder's files with these suffixes, hidden ones left out): each
    file's relative name, size and modification time, not its content (hashing GBs of weights for every key would
    cost more than the cache saves); ``"missing"`` when the path does not exist."""
    p = Path(path)
    if not p.exists():
        return "missing"
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes
                                           and not any(x.startswith(".") for x in f.relative_to(p).parts))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        name = f.name if f == p else f.relative_to(p).as_posix()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
