"""A minimal OpenAI-compatible chat server on loopback, for judging offline with a local checkpoint.

Why not ``transformers serve``: in transformers 5.23 it needs FastAPI and Uvicorn (``transformers[serving]``), which
the harness does not otherwise install. This module needs only the standard library and transformers. It serves
``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions`` (greedy; ``logprobs``/``top_logprobs`` per
generated token, as OpenAI returns them). Requests that arrive within ``--batch-window`` seconds of each other share
one batched generate (left-padded; each gets the answer it gets alone), so a client asking several at once (``[judge]
concurrency``) is answered faster than one after another. Extension: a request with ``"quant_harness_number": true``
is decoded constrained to an integer (digits, then end), because small local models seldom answer "reply with a
number" with a number; the record of a study says its judge was constrained. Run: ``python -m
quant_harness.judge.server --model PATH [--port 0]``; it prints ``listening on http://127.0.0.1:PORT`` once ready.
"""

from __future__ import annotations

import argparse
import inspect
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MIN_SHARED_PREFIX = 16
"""Fewest tokens that all prompts of a batch must share before that prefix is run once for all of them."""


def _common_prefix(rows: list[list[int]]) -> int:
    """Tokens that every row starts with, leaving each row at least one token of its own (its first logits)."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(n, 0)


@dataclass(frozen=True)
class _Request:
    """One chat request, parsed and tokenized in its handler's thread (a bad one is a 400 there, alone)."""

    ids: list[int]
    max_tokens: int
    number: bool
    logprobs: bool
    top: int


@dataclass
class _Pending:
    request: _Request
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None


class _Model:
    """The served model. Requests that arrive together are answered by one batched generate: one forward over
    several padded prompts (their common prefix run once) costs less than one per prompt, and greedy decoding of a
    padded row gives that prompt's answer alone (the attention mask and positions skip the padding)."""

    def __init__(self, path: str, name: str, window: float = 0.01, max_batch: int = 16) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.window, self.max_batch = window, max_batch
        self.eos = self.tokenizer.eos_token_id
        takes = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in takes else "past_key_values"
        """The keyword a forward takes its KV cache by: ``cache`` since transformers 5.24."""
        self.last_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}
        """Logits of the last position only, where the model can skip the rest."""
        self.digits = [self.tokenizer(str(d), add_special_tokens=False).input_ids[-1] for d in range(10)]
        self.queue: queue.Queue[_Pending] = queue.Queue()
        self.batches: list[tuple[int, int]] = []
        """(rows, prefix tokens run once for all rows or 0) of each generate: did concurrent requests share one?"""
        threading.Thread(target=self._serve, daemon=True, name="judge-batcher").start()

    def parse(self, body: dict[str, Any]) -> _Request:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages: expected a non-empty list")
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        number = bool(body.get("quant_harness_number"))
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return _Request(list(ids), min(max_tokens, 4) if number else max_tokens, number, bool(body.get("logprobs")),
                        int(body.get("top_logprobs") or 0))

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer one request, batched with any that arrive within ``window`` seconds of the first waiting one."""
        pending = _Pending(self.parse(body))
        self.queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _serve(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get(timeout=max(deadline - time.monotonic(), 0.0)))
                except queue.Empty:
                    break
            groups: dict[tuple[int, bool], list[_Pending]] = {}
            for p in batch:
                groups.setdefault((p.request.max_tokens, p.request.number), []).append(p)
            for group in groups.values():
                try:
                    for p, result in zip(group, self.generate([p.request for p in group])):
                        p.result = result
                except Exception as e:  # noqa: BLE001  any failure goes to the waiting requests (else they hang)
                    for p in group:
                        p.error = e
                for p in group:
                    p.done.set()

    def generate(self, requests: list[_Request]) -> list[dict[str, Any]]:
        """One greedy generate over ``requests`` (same max_tokens and constraint), left-padded to one width."""
        torch = self.torch
        shared = _common_prefix([r.ids for r in requests])
        if len(requests) > 1 and shared >= MIN_SHARED_PREFIX:
            self.batches.append((len(requests), shared))
            return self._generate_shared(requests, shared)
        self.batches.append((len(requests), 0))
        width = max(len(r.ids) for r in requests)
        ids = torch.full((len(requests), width), self.eos, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, r in enumerate(requests):
            ids[row, width - len(r.ids):] = torch.tensor(r.ids)
            mask[row, width - len(r.ids):] = 1
        first = requests[0]
        extra: dict[str, Any] = {"logits_processor": [self._number_only(width)]} if first.number else {}
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=first.max_tokens, do_sample=False,
                                      output_scores=True, return_dict_in_generate=True, pad_token_id=self.eos,
                                      temperature=None, top_p=None, top_k=None, **extra)
        return [self._choice(r, out.sequences[row, width:].tolist(), [s[row] for s in out.scores])
                for row, r in enumerate(requests)]

    def _generate_shared(self, requests: list[_Request], shared: int) -> list[dict[str, Any]]:
        """Greedy decoding of ``requests`` whose first ``shared`` tokens are the same (the chat header and the judge
        template up to the question): that prefix is run once and its KV cache repeated for every row, so a batch
        of one template's prompts costs a third less. Rows are the prefix, padding, then each row's own suffix,
        with positions counted over the real tokens only, so each row sees what it would alone."""
        from transformers import DynamicCache

        torch = self.torch
        n = len(requests)
        suffixes = [r.ids[shared:] for r in requests]
        width = max(len(x) for x in suffixes)
        ids = torch.full((n, width), self.eos, dtype=torch.long)
        mask = torch.zeros((n, shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, x in enumerate(suffixes):
            ids[row, width - len(x):] = torch.tensor(x)
            mask[row, shared + width - len(x):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        process = self._number_only(0) if requests[0].number else None
        new = torch.empty((n, 0), dtype=torch.long)
        finished = torch.zeros(n, dtype=torch.bool)
        scores: list[Any] = []
        with torch.no_grad():
            cache = DynamicCache(config=self.model.config)
            self.model(input_ids=torch.tensor([requests[0].ids[:shared]]), use_cache=True, **self.last_only,
                       **{self.cache_arg: cache})
            cache.batch_repeat_interleave(n)
            for _ in range(requests[0].max_tokens):
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                 **self.last_only, **{self.cache_arg: cache})
                step = out.logits[:, -1, :].float()
                if process is not None:
                    step = process(new, step)
                scores.append(step)
                token = step.argmax(-1).masked_fill(finished, self.eos)
                new = torch.cat([new, token[:, None]], 1)
                finished |= token == self.eos
                if bool(finished.all()):
                    break
                ids = token[:, None]
                mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], 1)
                positions = positions[:, -1:] + 1
        return [self._choice(r, new[row].tolist(), [s[row] for s in scores]) for row, r in enumerate(requests)]

    def _choice(self, r: _Request, new: list[int], scores: list[Any]) -> dict[str, Any]:
        """One request's chat completion from its row: tokens up to its end (the rows after it are padding)."""
        torch = self.torch
        finish = "length"
        if self.eos in new:
            new, finish = new[:new.index(self.eos)], "stop"
        content = []
        for step, tok in enumerate(new):
            logp = torch.log_softmax(scores[step].double(), -1)
            entry = self._token(tok, float(logp[tok]))
            if r.top:
                vals, idx = logp.topk(min(r.top, 20))
                entry["top_logprobs"] = [self._token(int(i), float(v)) for v, i in zip(vals, idx)]
            content.append(entry)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish,
                                  "message": {"role": "assistant", "content": self.tokenizer.decode(new)},
                                  "logprobs": {"content": content} if r.logprobs else None}
        return {"id": f"chatcmpl-local-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": len(r.ids), "completion_tokens": len(new),
                          "total_tokens": len(r.ids) + len(new)}}

    def _number_only(self, n_prompt: int) -> Any:
        """Allow each row only the tokens that keep its answer an integer in 0..100, then the end."""
        torch = self.torch
        value = {tok: d for d, tok in enumerate(self.digits)}

        def process(input_ids: Any, scores: Any) -> Any:
            mask = torch.full_like(scores, float("-inf"))
            for row in range(input_ids.shape[0]):
                so_far = "".join(str(value[int(t)]) for t in input_ids[row, n_prompt:] if int(t) in value)
                allowed = [tok for d, tok in enumerate(self.digits) if so_far != "0" and int(so_far + str(d)) <= 100]
                if so_far:
                    allowed.append(self.eos)
                mask[row, allowed] = 0.0
            return scores + mask

        return process

    def _token(self, tok: int, logprob: float) -> dict[str, Any]:
        s = self.tokenizer.decode([tok])
        return {"token": s, "logprob": logprob, "bytes": list(s.encode())}


def make_server(model: _Model, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self._send(200, model.chat(body))
            except (ValueError, KeyError, TypeError) as e:
                self._send(400, {"error": {"message": str(e), "type": "invalid_request_error"}})
            except RuntimeError as e:  # the batched generate failed (out of memory): the client retries
                self._send(500, {"error": {"message": str(e), "type": "server_error"}})

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible chat server for a local checkpoint")
    parser.add_argument("--model", required=True, help="Local checkpoint folder")
    parser.add_argument("--name", default="", help="Model name the server reports. Default: the folder name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="Port (0: any free port). Default: 0")
    parser.add_argument("--batch-window", type=float, default=0.01,
                        help="Seconds a request waits for others to share its generate. Default: 0.01")
    parser.add_argument("--max-batch", type=int, default=16, help="Most requests in one generate. Default: 16")
    args = parser.parse_args(argv)
    model = _Model(args.model, args.name or args.model.rstrip("/").split("/")[-1], args.batch_window,
                   args.max_batch)
    server = make_server(model, args.host, args.port)
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
