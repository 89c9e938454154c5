"""Rollouts for persona vectors: responses generated at a cell's precision, cached, and filtered into kept pairs.

PV reads activations over the model's own response tokens, so responses are part of the measurement: they are
generated once per (model, precision, prompts, settings), stored in the cache namespace ``responses/`` and reused.
With ``replay`` a quantized model is prefilled with the reference precision's responses instead, which separates
"the representation moved" from "the model said something else".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from quant_harness._util import counters, progress
from quant_harness.errors import CellError
from quant_harness.extract import batching
from quant_harness.extract.activations import encode
from quant_harness.extract.datasets import Prompt
from quant_harness.judge import client as judges

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner
    from quant_harness.study.spec import Study, TraitSpec


@dataclass(frozen=True)
class GenerationSettings:
    """How rollouts are produced; every field is part of the cache key of the responses and of the activations."""

    max_new_tokens: int = 16
    n_per_question: int = 1
    """Responses per prompt; sampled (with ``seed``) when > 1 or when ``temperature`` > 0."""
    temperature: float = 0.0
    """0 = greedy; PV's default is 1.0 when several responses per question are drawn."""
    seed: int = 0
    batch_size: int = 8
    """Part of the key when sampling: the random stream is seeded per batch."""

    @property
    def sampled(self) -> bool:
        return self.temperature > 0.0

    def key(self) -> dict[str, Any]:
        k = asdict(self)
        if not self.sampled:
            k.pop("seed")
            k.pop("batch_size")
        return k


@dataclass(frozen=True)
class PairScores:
    """Judge scores of one pos/neg rollout pair (0-100); None = unscored, and an unscored pair is never kept."""

    pos_trait: float | None
    neg_trait: float | None
    pos_coherence: float | None = None
    neg_coherence: float | None = None


def kept_pairs(responses_pos: Sequence[str], responses_neg: Sequence[str],
               scores: Sequence[PairScores] | None = None, *, threshold: float = 50.0) -> list[int]:
    """Indices of rollout pairs to extract from; the hook where judge filtering plugs in.

    Without scores every pair with two non-empty responses is kept. With scores, PV's rule: the positive response
    expresses the trait (>= threshold), the negative does not (< 100 - threshold), and both are coherent
    (>= threshold) where coherence was scored. An empty kept set is an error, never an empty vector.
    """
    if len(responses_pos) != len(responses_neg):
        raise CellError(f"rollout pairs misaligned: {len(responses_pos)} positive vs {len(responses_neg)} negative")
    if scores is not None and len(scores) != len(responses_pos):
        raise CellError(f"{len(scores)} judge scores for {len(responses_pos)} rollout pairs")
    kept = []
    for i, (p, n) in enumerate(zip(responses_pos, responses_neg)):
        if not p.strip() or not n.strip():
            continue
        if scores is not None and not _passes(scores[i], threshold):
            continue
        kept.append(i)
    if not kept:
        raise CellError(f"no rollout pair kept out of {len(responses_pos)} (empty responses or judge filter "
                        f"threshold {threshold:g}); refusing to build a vector from nothing")
    return kept


def _passes(s: PairScores, threshold: float) -> bool:
    if s.pos_trait is None or s.neg_trait is None:
        return False
    coherent = all(c is None or c >= threshold for c in (s.pos_coherence, s.neg_coherence))
    return s.pos_trait >= threshold and s.neg_trait < 100.0 - threshold and coherent


def expand(prompts: Sequence[Prompt], n: int) -> list[Prompt]:
    """Each prompt repeated ``n`` times, prompt-major: the order of ``generate``'s responses."""
    return [p for p in prompts for _ in range(n)]


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[Prompt], settings: GenerationSettings, *,
             desc: str = "generate") -> list[str]:
    """``n_per_question`` responses per prompt (prompt-major), batched with left padding; counts generated tokens."""
    if not prompts:
        raise CellError("no prompts to generate from")
    todo = expand(prompts, settings.n_per_question)
    encoded = [encode(tokenizer, p)[0] for p in todo]
    pad = batching.pad_id(tokenizer)
    stop = batching.stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    order = sorted(range(len(todo)), key=lambda i: len(encoded[i]))
    batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    out: dict[int, str] = {}
    for b, batch in enumerate(progress.bar(batches, desc=desc, unit="batch")):
        ids, mask, _ = batching.left_pad([encoded[i] for i in batch], pad)
        width = ids.shape[1]
        sample: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if settings.sampled:
            torch.manual_seed(settings.seed * 100003 + b)
            sample = {"do_sample": True, "temperature": settings.temperature, "top_p": 1.0, "top_k": 0}
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), pad_token_id=pad,
                             max_new_tokens=settings.max_new_tokens, **sample)
        new = gen[:, width:].cpu()
        counters.add("forward_passes", int(new.shape[1]))
        counters.add("generated_tokens", batching.generated_tokens(new, stop))
        for row, i in enumerate(batch):
            out[i] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
    return [out[i] for i in range(len(todo))]


def pack(texts: Sequence[str]) -> Tensor:
    """Responses as a uint8 tensor of UTF-8 JSON, so the cache's size and hash checks cover them too."""
    return torch.frombuffer(bytearray(json.dumps(list(texts)).encode()), dtype=torch.uint8).clone()


def unpack(t: Tensor) -> list[str]:
    data = json.loads(bytes(t.to(torch.uint8).tolist()).decode())
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise CellError("cached responses are not a list of strings")
    return data


def settings_for(study: Study, trait: TraitSpec) -> GenerationSettings:
    """A trait's rollout settings (trait keys, with the study's seed and batch size)."""
    return GenerationSettings(max_new_tokens=trait.max_new_tokens, n_per_question=trait.n_per_question,
                              temperature=trait.temperature, seed=study.seed, batch_size=study.batch_size)


def response_source(study: Study, trait: TraitSpec, precision: str) -> str:
    """The precision whose responses a precision's activations read: its own, or the reference's under replay."""
    replay = trait.replay if trait.replay is not None else study.replay
    return study.reference if replay else precision


class Rollouts(NamedTuple):
    """Responses of one model x precision x PV trait, prompt-major, and the cache key they are stored under."""

    pos: list[str]
    neg: list[str]
    key: str


def responses(runner: CellRunner, model: str, precision: str, trait: TraitSpec) -> Rollouts:
    """Rollouts of a PV trait at ``precision``, from the ``responses/`` cache or generated once (and cached)."""
    study = runner.study
    contrast = runner.contrast(trait)
    settings = settings_for(study, trait)
    components = {**runner.key_components(model, precision), "dataset": contrast.content_hash(),
                  "generation": settings.key()}

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        lm = runner.pool.get(model, precision)
        tag = f"{model}/{precision} {trait.key} rollouts"
        pos = generate(lm.model, lm.tokenizer, contrast.pos, settings, desc=f"{tag} +")
        neg = generate(lm.model, lm.tokenizer, contrast.neg, settings, desc=f"{tag} -")
        info = {"n_pos": len(pos), "n_neg": len(neg), "empty_pos": sum(not r for r in pos),
                "empty_neg": sum(not r for r in neg), "first_pos": pos[0][:200], "first_neg": neg[0][:200]}
        return {"pos": pack(pos), "neg": pack(neg)}, info

    entry = runner.cache.get_or_build(f"responses/{model}/{precision}", components, build)
    return Rollouts(unpack(entry.tensors["pos"]), unpack(entry.tensors["neg"]), entry.key)


class RolloutInputs(NamedTuple):
    """What PV extraction reads: the kept pairs' prompts and responses, and how many pairs were kept."""

    pos_prompts: list[Prompt]
    neg_prompts: list[Prompt]
    pos_responses: list[str]
    neg_responses: list[str]
    info: dict[str, Any]


def pair_scores(judge: judges.Judge, template: str, questions: Sequence[str], pos: Sequence[str],
                neg: Sequence[str]) -> list[PairScores]:
    """PV's filter scores: the trait's eval prompt and the coherence prompt on both responses of each pair."""
    coherence = judges.load_prompt("coherence")
    prompts = [t.format(question=q, answer=a) for q, p, n in zip(questions, pos, neg) for t, a in
               ((template, p), (template, n), (coherence, p), (coherence, n))]
    values = [x.value for x in judge.score_many(prompts, desc="judging rollouts")]
    return [PairScores(*values[i:i + 4]) for i in range(0, len(values), 4)]


def judge_filter_key(runner: CellRunner, trait: TraitSpec) -> dict[str, Any] | None:
    """What the judge filter adds to the activations' cache key: the threshold and what judges."""
    if trait.judge_filter is None:
        return None
    jset = runner.study.judge
    return {"threshold": trait.judge_filter, "judge": judges.describe(jset, runner.pool.model_dir),
            "judge_model": jset.model}


def rollout_inputs(runner: CellRunner, model: str, precision: str, trait: TraitSpec) -> RolloutInputs:
    """Prompts and responses of the kept rollout pairs at ``precision`` (or the reference's, under replay).

    With the trait's ``judge_filter`` every pair is judged (answers cached by the judge) and PV's rule keeps the
    pairs whose positive response shows the trait, whose negative does not, and which are both coherent.
    """
    source = response_source(runner.study, trait, precision)
    contrast = runner.contrast(trait)
    r = responses(runner, model, source, trait)
    n = trait.n_per_question
    pos_p, neg_p = expand(contrast.pos, n), expand(contrast.neg, n)
    scores, threshold = None, 50.0
    if trait.judge_filter is not None:
        threshold = trait.judge_filter
        judge = judges.study_judge(runner)
        template = contrast.eval_prompt or judges.load_prompt(trait.key)
        lost = getattr(judge, "unanswered", 0)
        scores = pair_scores(judge, template, [p.messages[-1][1] for p in pos_p], r.pos, r.neg)
        lost = getattr(judge, "unanswered", 0) - lost
        if lost:  # which pairs are kept would depend on a failure: build nothing, so a re-run asks those again
            raise CellError(f"judge {judges.describe(runner.study.judge, runner.pool.model_dir)}: {lost} of "
                            f"{4 * len(r.pos)} filter answers got no answer after the retries; expected an answer "
                            f"to each (answers received are cached: a re-run asks only the {lost} missing)")
    kept = kept_pairs(r.pos, r.neg, scores, threshold=threshold)
    info = {"responses_from": source, "responses_key": r.key, "n_pairs": len(r.pos), "kept_pairs": len(kept),
            "judge_filtered": scores is not None}
    if scores is not None:
        info["judge_filter"] = judge_filter_key(runner, trait)
    return RolloutInputs([pos_p[i] for i in kept], [neg_p[i] for i in kept], [r.pos[i] for i in kept],
                         [r.neg[i] for i in kept], info)
