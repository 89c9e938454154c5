"""Exceptions of the library. The plugin turns them into usage errors or cell errors at its boundary."""

from __future__ import annotations


class QuantHarnessError(Exception):
    """Base class: every error the library raises on purpose."""


class StudyError(QuantHarnessError):
    """A study file or model card is malformed: names the file, the key, the value and what was expected."""

    def __init__(self, path: object, key: str, value: object, expected: str) -> None:
        self.path, self.key, self.value, self.expected = str(path), key, value, expected
        super().__init__(f"{self.path}: {key} = {value!r}: expected {expected}")


class DatasetError(QuantHarnessError):
    """A trait dataset cannot be used: names the file, the record and the field."""


class CacheError(QuantHarnessError):
    """An activation cache entry is truncated or does not match its key."""


class CellError(QuantHarnessError):
    """A cell produced a figure that must not be scored (NaN, zero vector, empty split)."""


class PrecisionUnavailable(QuantHarnessError):
    """A precision cannot run on this machine; the cell is skipped with this reason."""


class JudgeError(QuantHarnessError):
    """The judge endpoint failed after its retries."""


class BundleError(QuantHarnessError):
    """An SAE or transcoder bundle is unusable: names the file, the tensor and what was expected."""
