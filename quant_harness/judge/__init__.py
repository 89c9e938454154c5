"""Judges: scoring steered text 0-100 through any OpenAI-compatible endpoint, and the loopback judge server.

Owns: ``settings`` (the ``[judge]`` table, parsed by ``study.load``), ``client`` (the openai client with retries,
cached answers, the logprob-weighted score, Arditi's refusal substrings), ``server`` (``python -m
quant_harness.judge.server``: a local model behind the OpenAI chat API on loopback). May import: errors, _util,
store. Keys are read from the environment at call time and never written anywhere.
"""

from quant_harness.judge.settings import LOCAL, JudgeSettings

__all__ = ["LOCAL", "JudgeSettings"]
