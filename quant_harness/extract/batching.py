"""Batches of token ids: padding, attention masks, the pad-id rule and how generated tokens are counted.

Every batched forward pass and generation of the package pads through here, so they agree on three rules:

- The pad id is the tokenizer's ``pad_token_id``, or its ``eos_token_id`` when it has no pad token. ``0`` is a valid
  pad id (``is not None``, never ``or``), and the id the input is padded with is the id ``generate`` is told.
- Left padding (generation, KV-cache prefixes: the last real token of every row sits in the last column) and right
  padding (reading activations: row ``i``'s tokens keep their indices) both mark real tokens with 1 in the mask.
- A generated row's tokens count up to and including its first stop token (an id ``generate`` stops a row on);
  what follows is the padding ``generate`` fills finished rows with.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    """Padded rows of token ids."""

    input_ids: Tensor
    """``[rows, width]`` long; padding holds the pad id."""
    attention_mask: Tensor
    """``[rows, width]`` long; 1 on real tokens, 0 on padding."""
    offsets: list[int]
    """Per row, the column of its first real token: the padding's width under left padding, 0 under right."""


def pad_id(tokenizer: Any) -> int:
    """The id to pad with: ``pad_token_id``, or ``eos_token_id`` when the tokenizer has no pad token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
    return int(pad)


def _pad(rows: Sequence[Sequence[int]], pad: int, left: bool) -> Batch:
    if not rows:
        raise ValueError("no rows to pad")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    offsets = []
    for i, row in enumerate(rows):
        start = width - len(row) if left else 0
        ids[i, start:start + len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, start:start + len(row)] = 1
        offsets.append(start)
    return Batch(ids, mask, offsets)


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> Batch:
    """Rows right-aligned: padding first, so every row's last token is in the last column."""
    return _pad(rows, pad, left=True)


def right_pad(rows: Sequence[Sequence[int]], pad: int) -> Batch:
    """Rows left-aligned: padding last, so a row's token ``j`` is in column ``j``."""
    return _pad(rows, pad, left=False)


def stop_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The ids ``generate`` ends a row on: the model's generation config ``eos_token_id`` (an id or a list) and the
    tokenizer's ``eos_token_id``."""
    config = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(config) if isinstance(config, (list, tuple)) else [config]
    return frozenset(int(i) for i in [*ids, tokenizer.eos_token_id] if i is not None)


def generated_tokens(new: Tensor, stop: Collection[int]) -> int:
    """Tokens generated in ``new`` (``[rows, steps]``, the prompt cut off): each row up to and including its first
    stop token, or all of it when it has none."""
    total = 0
    for row in new.tolist():
        end = next((j for j, t in enumerate(row) if t in stop), None)
        total += len(row) if end is None else end + 1
    return total
