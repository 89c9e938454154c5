"""Token positions where activations are read: ``prompt[-1]``, ``prompt[-3:]``, ``response[:]``, ``response[0]``.

The prompt is the chat-templated conversation including the assistant header (and any prefill), so for an Arditi
prompt ``prompt[-1]`` is the last post-instruction template token and ``prompt[-k:]`` the last k of them (SmolLM2's
post-instruction template ``<|im_end|>\n<|im_start|>assistant\n`` is 6 tokens). For CAA the prefill ends at the
answer letter, so ``prompt[-1]`` is the letter. ``response[...]`` indexes generated (or replayed) response tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FORM = re.compile(r"^(prompt|response)\[(-?\d+)?(:(-?\d+)?)?\]$")


@dataclass(frozen=True)
class Position:
    """A region (prompt or response tokens) and an index or slice into it; several tokens are averaged."""

    region: str
    start: int | None
    stop: int | None
    is_slice: bool
    spec: str

    def indices(self, prompt_len: int, total_len: int) -> list[int]:
        """Absolute token indices in a sequence whose first ``prompt_len`` tokens are the prompt."""
        lo, hi = (0, prompt_len) if self.region == "prompt" else (prompt_len, total_len)
        n = hi - lo
        if self.is_slice:
            picked = list(range(n))[slice(self.start, self.stop)]
            if not picked:
                raise ValueError(f"position {self.spec} selects no token of a {self.region} of {n} tokens")
            return [lo + i for i in picked]
        if self.start is None:
            raise ValueError(f"position {self.spec} has no index; write {self.region}[:] for every token")
        if not -n <= self.start < n:
            raise ValueError(f"position {self.spec} is out of range for a {self.region} of {n} tokens")
        return [lo + (self.start % n)]

    @property
    def needs_response(self) -> bool:
        return self.region == "response"


def parse_position(spec: str) -> Position:
    """Parse a position spec; an unknown form is a ValueError that shows the accepted forms."""
    m = _FORM.match(spec.replace(" ", ""))
    if not m:
        raise ValueError(
            f"unknown position {spec!r}: expected prompt[i], prompt[a:b], response[i] or response[a:b] "
            "(e.g. prompt[-1], prompt[-3:], response[:], response[0])"
        )
    region, start, colon, stop = m.group(1), m.group(2), m.group(3), m.group(4)
    if colon is None and start is None:
        raise ValueError(f"position {spec!r} has an empty index: write {region}[:] for every token")
    return Position(region, int(start) if start is not None else None,
                    int(stop) if stop is not None else None, colon is not None, spec)
