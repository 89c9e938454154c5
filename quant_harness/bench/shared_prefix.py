"""lm-eval's HFLM with log-likelihoods computed once per shared context (opt-in per benchmark task).

Multiple-choice tasks ask for ``log p(choice | context)`` of every choice of a doc, and lm-eval's HFLM runs the whole
``context + choice`` for each. TruthfulQA's six-shot preamble makes the context ~40x longer than a choice, so nearly
all of that work is the same prefix, again and again. ``SharedPrefixHFLM`` runs each distinct context once, keeps
its KV cache, and runs only the choices from it: the same tokens, positions and causal attention as HFLM's own
forward (so the same numbers up to float rounding; tests compare both), at a fraction of the cost on a long prompt.
Everything else (tokenization, request building, the metrics) stays lm-eval's.

One precision is batch-dependent under either path: bitsandbytes LLM.int8 moves every input column holding an
outlier in any row of the batch to its fp16 path, so a sequence's log-likelihood depends on what it is batched with
(lm-eval's own HFLM differs by up to ~1 nat between batch sizes 1 and 16 on TruthfulQA at int8).
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from quant_harness.extract.activations import cache_arg

Request = tuple[tuple[str, str], list[int], list[int]]


class SharedPrefixHFLM(HFLM):
    """HFLM whose ``_loglikelihood_tokens`` shares each context's forward pass among its continuations."""

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), continuation is greedy)`` per request, in request order."""
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        # a pair longer than the window is left-truncated by HFLM, which moves the context: leave those to it
        fits = [i for i, (_, ctx, cont) in enumerate(requests) if len(ctx) + len(cont) <= self.max_length + 1]
        long = sorted(set(range(len(requests))) - set(fits))
        out: dict[int, tuple[float, bool]] = {}
        if long:
            out.update(zip(long, super()._loglikelihood_tokens([requests[i] for i in long], disable_tqdm,
                                                               override_bs)))
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i in fits:
            groups[tuple(requests[i][1])].append(i)
        batch = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 0) or 16
        pbar = tqdm(total=len(fits), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for ctx in sorted(groups, key=len, reverse=True):  # longest first, as HFLM: early estimates over, not under
            members = groups[ctx]
            for i, answer in zip(members, self._score_from_prefix(ctx, [requests[i][2] for i in members], batch)):
                out[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            pbar.update(len(members))
        pbar.close()
        return [out[i] for i in range(len(requests))]

    @torch.no_grad()
    def _score_from_prefix(self, ctx: tuple[int, ...], conts: list[list[int]], batch: int) -> list[tuple[float, bool]]:
        """Run ``ctx[:-1]`` once into a KV cache, then ``ctx[-1:] + cont[:-1]`` for the continuations from it,
        ``batch`` at a time (every chunk but the last gets a copy of the cache: a forward extends it in place).

        Continuations are right-padded: causal attention keeps the pads out of every real position, so no mask is
        needed and each row's real tokens see exactly what HFLM's full forward shows them.
        """
        from transformers import DynamicCache

        model, device = self.model, self.device
        arg = cache_arg(model)
        prefix = DynamicCache(config=model.config)
        if len(ctx) > 1:
            model(torch.tensor([ctx[:-1]], device=device), use_cache=True, logits_to_keep=1, **{arg: prefix})
        answers = []
        for start in range(0, len(conts), batch):
            chunk = conts[start:start + batch]
            cache = prefix if start + batch >= len(conts) else copy.deepcopy(prefix)
            if len(ctx) > 1:
                cache.batch_repeat_interleave(len(chunk))
            width = max(len(c) for c in chunk)
            rows = [[ctx[-1], *c[:-1]] for c in chunk]
            ids = torch.tensor([r + [ctx[-1]] * (width - len(r)) for r in rows], device=device)
            logp = F.log_softmax(model(ids, use_cache=True, **{arg: cache}).logits, dim=-1, dtype=self.softmax_dtype)
            for row, cont in enumerate(chunk):
                target = torch.tensor(cont, device=device)
                lp = logp[row, :len(cont)]
                answers.append((float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())))
        return answers
