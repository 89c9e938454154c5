"""The ``[judge]`` table of a study: which OpenAI-compatible endpoint scores steering, and how it is asked.

Parsed by ``study.load`` (torch- and openai-free), so ``[judge] base_ur = "local"`` is a usage error when the study
loads, not a failure inside every steering cell.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from quant_harness._util.validate import SectionContext, check_table
from quant_harness.errors import StudyError

LOCAL = "local"
"""``base_url = "local"``: start the loopback judge server (quant_harness.judge.server) with a local checkpoint."""


@dataclass(frozen=True)
class JudgeSettings:
    """The study's ``[judge]`` table."""

    base_url: str = LOCAL
    model: str = "gpt-4.1-mini"
    api_key_env: str = "OPENAI_API_KEY"
    local_model: str = ""
    """Checkpoint folder served when base_url is "local" (default: the embedded model in the model store)."""
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 1.0
    max_tokens: int = 4
    logprobs: bool = True
    constrain_number: bool | None = None
    """Ask the server to decode only an integer (quant_harness.judge_server's extension). None: on for "local"."""
    max_unscored: float = 0.5
    """Largest share of a judged run's answers that may be unscored (no answer after the retries, or no number in
    it); more is a cell error that says how many and why, never a score built from the few that came back."""
    concurrency: int = 8
    """Requests of one judged run in flight at once (1: one at a time): an endpoint answers several faster than one
    after another, and the loopback server batches those that arrive together into one generate."""


def missing_key(s: JudgeSettings) -> str | None:
    """Why a remote judge cannot be asked from here (its key variable is unset), or None: the skip reason of every
    judged cell, given before any model loads for it."""
    if s.base_url == LOCAL or os.environ.get(s.api_key_env):
        return None
    return (f"judge {s.model} at {s.base_url}: environment variable {s.api_key_env} is not set; set it or use "
            f'[judge] base_url = "local"')


_KEYS: dict[str, type | tuple[type, ...]] = {
    "base_url": str, "model": str, "api_key_env": str, "local_model": str, "timeout": (int, float),
    "max_retries": int, "backoff": (int, float), "max_tokens": int, "logprobs": bool,
    "constrain_number": bool, "max_unscored": (int, float), "concurrency": int,
}


def parse(ctx: SectionContext, table: object) -> JudgeSettings:
    """Validate ``[judge]`` (absent: the local judge); a bad key is a StudyError naming file, key and value."""
    if table is None:
        return JudgeSettings()
    path = ctx.path
    check_table(path, "judge", table, _KEYS)
    assert isinstance(table, dict)
    if table.get("max_retries", 0) < 0:
        raise StudyError(path, "judge.max_retries", table["max_retries"], "0 or a positive number of retries")
    if table.get("timeout", 1) <= 0:
        raise StudyError(path, "judge.timeout", table["timeout"], "a positive number of seconds")
    if not 0.0 <= table.get("max_unscored", 0.0) <= 1.0:
        raise StudyError(path, "judge.max_unscored", table["max_unscored"], "a share of answers in 0..1")
    if table.get("concurrency", 1) < 1:
        raise StudyError(path, "judge.concurrency", table["concurrency"], "a positive number of requests in flight")
    if table.get("backoff", 0.0) < 0:
        raise StudyError(path, "judge.backoff", table["backoff"], "0 or a positive number of seconds")
    if "api_key_env" in table and not table["api_key_env"].strip():
        raise StudyError(path, "judge.api_key_env", table["api_key_env"], "the name of an environment variable")
    floats = ("timeout", "backoff", "max_unscored")
    return JudgeSettings(**{k: (float(v) if k in floats else v) for k, v in table.items()})
