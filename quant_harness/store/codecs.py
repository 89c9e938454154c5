"""The artefact store's codecs: JSON values, named byte files (PNG plots), whole folders (SAE dictionaries) and
named tensors (activations, rollouts).

torch and safetensors are imported inside ``TensorCodec``'s methods only, so importing the store loads no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, cast

from quant_harness.errors import CacheError

if TYPE_CHECKING:
    from torch import Tensor

T = TypeVar("T")
In = TypeVar("In")
Out = TypeVar("Out")

TENSORS_FILE = "tensors.safetensors"
_F16_MAX = 65504.0


class JsonCodec(Generic[T]):
    """A JSON value in ``value.json``; ``encode``/``decode`` map a typed value (a dataclass) to JSON and back, and a
    value that no longer decodes (the type gained a field) is a miss."""

    name = "json"
    FILE = "value.json"

    def __init__(self, encode: Callable[[T], Any] | None = None, decode: Callable[[Any], T] | None = None) -> None:
        self._encode = encode or (lambda v: v)
        self._decode = decode or (lambda v: cast(T, v))

    def write(self, value: T, folder: Path) -> dict[str, Any]:
        (folder / self.FILE).write_text(json.dumps(self._encode(value), default=str))
        return {}

    def read(self, folder: Path, meta: Mapping[str, Any]) -> T:
        f = folder / self.FILE
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"{f}: cannot be read as JSON: {e}") from e
        try:
            return self._decode(data)
        except (KeyError, TypeError, ValueError) as e:
            raise CacheError(f"{f}: value = {str(data)[:80]}: expected one its reader takes ({e!r})") from e


JSON: JsonCodec[Any] = JsonCodec()
"""Plain JSON values, read back as JSON (tuples become lists, dict keys strings), cold run and warm alike."""


class FilesCodec:
    """Named files of bytes (PNG images, their index), written and read back as they are."""

    name = "files"

    def write(self, value: Mapping[str, bytes], folder: Path) -> dict[str, Any]:
        for name, data in value.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"artefact file name = {name!r}: expected a plain file name")
            (folder / name).write_bytes(data)
        return {}

    def read(self, folder: Path, meta: Mapping[str, Any]) -> dict[str, bytes]:
        return {name: (folder / name).read_bytes() for name in sorted(meta.get("files", {}))}


FILES = FilesCodec()


class DirectoryCodec(Generic[In, Out]):
    """A folder written by ``save`` and opened by ``load`` (an SAE bundle with its training report); ``load``
    raising one of ``damaged`` means the folder is unusable (a miss, rebuilt)."""

    def __init__(self, name: str, save: Callable[[In, Path], None], load: Callable[[Path], Out],
                 damaged: tuple[type[Exception], ...] = (OSError, ValueError)) -> None:
        self.name, self._save, self._load, self._damaged = name, save, load, damaged

    def write(self, value: In, folder: Path) -> dict[str, Any]:
        self._save(value, folder)
        return {}

    def read(self, folder: Path, meta: Mapping[str, Any]) -> Out:
        try:
            return self._load(folder)
        except self._damaged as e:
            raise CacheError(f"{folder}: cannot be opened as {self.name}: {e}") from e


class Tensors(NamedTuple):
    """Named tensors and the readable facts ``meta.json`` keeps beside them (its ``info``)."""

    tensors: dict[str, Tensor]
    info: dict[str, Any]


class TensorCodec:
    """Named tensors in one safetensors file, floats at half precision (float16, or bfloat16 when a value exceeds
    float16's range) and read back as float32; shapes and dtypes are written to ``meta.json`` and checked."""

    name = "tensors"

    def write(self, value: Tensors, folder: Path) -> dict[str, Any]:
        import torch
        from safetensors.torch import save_file

        stored = {}
        for name, t in value.tensors.items():
            t = t.detach().cpu().contiguous()
            if t.is_floating_point():
                big = t.numel() and float(t.float().abs().max()) > _F16_MAX
                t = t.to(torch.bfloat16 if big else torch.float16)
            stored[name] = t
        save_file(stored, str(folder / TENSORS_FILE))
        return {"shapes": {k: list(v.shape) for k, v in stored.items()},
                "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in stored.items()},
                "info": dict(value.info)}

    def read(self, folder: Path, meta: Mapping[str, Any]) -> Tensors:
        from safetensors.torch import load_file

        f = folder / TENSORS_FILE
        try:
            raw = load_file(str(f))
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise CacheError(f"{f}: cannot be read: {e}") from e
        shapes = {k: list(v.shape) for k, v in raw.items()}
        if shapes != meta.get("shapes"):
            raise CacheError(f"{f}: shapes = {shapes}: expected {meta.get('shapes')} ({folder.name}/meta.json)")
        return Tensors({k: v.float() if v.is_floating_point() else v for k, v in raw.items()},
                       dict(meta.get("info") or {}))
