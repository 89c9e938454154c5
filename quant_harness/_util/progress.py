"""Progress bars a person can follow while models load, activations are extracted and text is generated.

The library writes bars to a sink the caller chooses: the pytest plugin points it at the terminal (bypassing
output capture) or, on xdist workers whose output is not forwarded, at a per-worker log file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_sink: IO[str] | None = None


def set_sink(stream: IO[str] | None) -> IO[str] | None:
    """Route progress to ``stream`` (None: stderr); returns the previous sink so its owner can close it."""
    global _sink
    previous, _sink = _sink, stream
    return previous


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it") -> Any:
    """A tqdm bar on the configured sink; refreshes at most once a second so logs stay readable."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=_sink or sys.stderr, mininterval=1.0,
                dynamic_ncols=False, ncols=100, leave=True)


def note(message: str) -> None:
    """One line of progress outside a bar (a model load, a cache hit)."""
    stream = _sink or sys.stderr
    stream.write(message.rstrip() + "\n")
    stream.flush()
