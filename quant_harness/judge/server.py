"""A minimal OpenAI-compatible chat server on loopback, for judging offline with a local checkpoint.

Why not ``transformers serve``: in transformers 5.23 it needs FastAPI and Uvicorn (``transformers[serving]``), which
the harness does not otherwise install. This module needs only the standard library and transformers. It serves
``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions`` (greedy; ``logprobs``/``top_logprobs`` per
generated token, as OpenAI returns them). Extension: a request with ``"quant_harness_number": true`` is decoded
constrained to an integer (digits, then end), because small local models seldom answer "reply with a number" with a
number; the record of a study says its judge was constrained. Run: ``python -m quant_harness.judge_server --model PATH [--port 0]``;
it prints ``listening on http://127.0.0.1:PORT`` once ready.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Model:
    """The served model; one request at a time (CPU, small model)."""

    def __init__(self, path: str, name: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.lock = threading.Lock()

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        torch = self.torch
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages: expected a non-empty list")
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        want_logprobs = bool(body.get("logprobs"))
        top = int(body.get("top_logprobs") or 0)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        extra: dict[str, Any] = {}
        if body.get("quant_harness_number"):
            max_tokens = min(max_tokens, 4)
            extra["logits_processor"] = [self._number_only(ids.shape[1])]
        with self.lock, torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      do_sample=False, output_scores=True, return_dict_in_generate=True,
                                      pad_token_id=self.tokenizer.eos_token_id, temperature=None, top_p=None,
                                      top_k=None, **extra)
        new = out.sequences[0, ids.shape[1]:].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "stop" if new and new[-1] == eos else "length"
        if new and new[-1] == eos:
            new = new[:-1]
        content = []
        for step, tok in enumerate(new):
            logp = torch.log_softmax(out.scores[step][0].double(), -1)
            entry = self._token(tok, float(logp[tok]))
            if top:
                vals, idx = logp.topk(min(top, 20))
                entry["top_logprobs"] = [self._token(int(i), float(v)) for v, i in zip(vals, idx)]
            content.append(entry)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish,
                                  "message": {"role": "assistant", "content": self.tokenizer.decode(new)},
                                  "logprobs": {"content": content} if want_logprobs else None}
        return {"id": f"chatcmpl-local-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(new),
                          "total_tokens": ids.shape[1] + len(new)}}

    def _number_only(self, n_prompt: int) -> Any:
        """Allow only the tokens that keep the answer an integer in 0..100, then the end."""
        torch = self.torch
        digits = [self.tokenizer(str(d), add_special_tokens=False).input_ids[-1] for d in range(10)]
        value = {tok: d for d, tok in enumerate(digits)}
        eos = self.tokenizer.eos_token_id

        def process(input_ids: Any, scores: Any) -> Any:
            so_far = "".join(str(value[int(t)]) for t in input_ids[0, n_prompt:] if int(t) in value)
            allowed = [tok for d, tok in enumerate(digits) if so_far != "0" and int(so_far + str(d)) <= 100]
            if so_far:
                allowed.append(eos)
            mask = torch.full_like(scores, float("-inf"))
            mask[:, allowed] = 0.0
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

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible chat server for a local checkpoint")
    parser.add_argument("--model", required=True, help="Local checkpoint folder")
    parser.add_argument("--name", default="", help="Model name the server reports. Default: the folder name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="Port (0: any free port). Default: 0")
    args = parser.parse_args(argv)
    model = _Model(args.model, args.name or args.model.rstrip("/").split("/")[-1])
    server = make_server(model, args.host, args.port)
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
