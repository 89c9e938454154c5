"""Trait datasets in the peers' formats -> contrast sets of chat prompts.

``caa``: a JSON list of ``{question, answer_matching_behavior, answer_not_matching_behavior}`` (answers "(A)"/"(B)").
``arditi``: a directory with ``harmful[_train].json`` and ``harmless[_train].json``, lists of ``{instruction, category}``.
``pv``: persona-vector trait JSON ``{instruction: [{pos, neg}], questions: [...], eval_prompt}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quant_harness.errors import DatasetError

_LETTER = re.compile(r"^\s*\(([A-Z])\)\s*$")


@dataclass(frozen=True)
class Prompt:
    """A chat conversation to render with the model's template, plus text prefilled into the reply."""

    messages: tuple[tuple[str, str], ...]
    prefill: str = ""


@dataclass(frozen=True)
class ContrastSet:
    """Positive and negative prompts of one trait; ``paired`` when pos[i] and neg[i] differ only in the trait."""

    source: Path
    format: str
    pos: tuple[Prompt, ...]
    neg: tuple[Prompt, ...]
    paired: bool
    skipped: tuple[str, ...] = ()
    """One line per input record that was left out, with the reason (never scored as 0)."""
    questions: tuple[str, ...] = ()
    eval_prompt: str = ""
    trait: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def content_hash(self) -> str:
        """Hash of what the model sees: the cache key uses it, so an edited dataset is a cache miss."""
        h = hashlib.sha256()
        for side in (self.pos, self.neg):
            for p in side:
                h.update(json.dumps([p.messages, p.prefill]).encode())
            h.update(b"\x01")
        return h.hexdigest()[:16]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e


def _field(path: Path, i: int, record: Any, name: str) -> str:
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: record {i} is a {type(record).__name__}; expected an object")
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{path}: record {i}: field {name!r} missing or empty; expected a non-empty string")
    return value


def load_caa(path: Path, limit: int = 0) -> ContrastSet:
    """CAA contrast pairs: the prompt ends at the answer letter, so ``prompt[-1]`` reads the letter's token."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of CAA records, got {type(data).__name__}")
    pos: list[Prompt] = []
    neg: list[Prompt] = []
    skipped: list[str] = []
    for i, rec in enumerate(data):
        question = _field(path, i, rec, "question")
        matching = _field(path, i, rec, "answer_matching_behavior")
        other = _field(path, i, rec, "answer_not_matching_behavior")
        m, o = _LETTER.match(matching), _LETTER.match(other)
        if not m or not o:
            raise DatasetError(f"{path}: record {i}: answers {matching!r}/{other!r}; expected \"(A)\"-style letters")
        if {m.group(1), o.group(1)} != {"A", "B"}:
            skipped.append(f"record {i}: matching answer {matching} is not (A)/(B)")
            continue
        user = (("user", question.strip()),)
        pos.append(Prompt(user, f"({m.group(1)}"))
        neg.append(Prompt(user, f"({o.group(1)}"))
        if limit and len(pos) >= limit:
            break
    if not pos:
        raise DatasetError(f"{path}: no usable A/B record ({len(skipped)} skipped)")
    return ContrastSet(path, "caa", tuple(pos), tuple(neg), paired=True, skipped=tuple(skipped))


def _arditi_file(directory: Path, side: str) -> Path:
    for name in (f"{side}_train.json", f"{side}.json"):
        if (directory / name).is_file():
            return directory / name
    raise DatasetError(f"{directory}: no {side}_train.json or {side}.json; expected an Arditi split directory")


def load_arditi(path: Path, limit: int = 0) -> ContrastSet:
    """Harmful vs harmless instructions (unpaired); ``prompt[-1]`` is the last post-instruction template token."""
    if not path.is_dir():
        raise DatasetError(f"{path}: expected a directory with harmful[_train].json and harmless[_train].json")
    sides = []
    for side in ("harmful", "harmless"):
        f = _arditi_file(path, side)
        data = _read_json(f)
        if not isinstance(data, list) or not data:
            raise DatasetError(f"{f}: expected a non-empty JSON list of {{instruction, category}}")
        prompts = [Prompt((("user", _field(f, i, r, "instruction").strip()),)) for i, r in enumerate(data)]
        sides.append(tuple(prompts[:limit] if limit else prompts))
    return ContrastSet(path, "arditi", sides[0], sides[1], paired=False)


def load_pv(path: Path, limit: int = 0) -> ContrastSet:
    """Persona-vector trait data: system prompts "You are a/an {trait} assistant. {instruction}" x questions."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected an object with instruction, questions, eval_prompt")
    pairs = data.get("instruction")
    questions = data.get("questions")
    if not isinstance(pairs, list) or not pairs:
        raise DatasetError(f"{path}: field 'instruction' missing or empty; expected a list of {{pos, neg}}")
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) for q in questions):
        raise DatasetError(f"{path}: field 'questions' missing or empty; expected a list of strings")
    eval_prompt = data.get("eval_prompt", "")
    if not isinstance(eval_prompt, str):
        raise DatasetError(f"{path}: field 'eval_prompt' must be a string")
    trait = str(data.get("trait") or path.stem)
    qs = questions[:limit] if limit else questions
    pos: list[Prompt] = []
    neg: list[Prompt] = []
    for i, pair in enumerate(pairs):
        p_ins, n_ins = _field(path, i, pair, "pos"), _field(path, i, pair, "neg")
        for q in qs:
            pos.append(Prompt((("system", f"You are {_article(trait)} {trait} assistant. {p_ins}"), ("user", q))))
            neg.append(Prompt((("system", f"You are a helpful assistant. {n_ins}"), ("user", q))))
    return ContrastSet(path, "pv", tuple(pos), tuple(neg), paired=True, questions=tuple(qs),
                       eval_prompt=eval_prompt, trait=trait)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


LOADERS = {"caa": load_caa, "arditi": load_arditi, "pv": load_pv}


def load(fmt: str, path: Path, limit: int = 0) -> ContrastSet:
    if fmt not in LOADERS:
        raise DatasetError(f"{path}: unknown dataset format {fmt!r}; expected one of {', '.join(LOADERS)}")
    return LOADERS[fmt](path, limit)
