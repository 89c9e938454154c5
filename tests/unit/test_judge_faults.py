"""The judge client against a fault-injecting OpenAI-compatible server on loopback.

The server (http.server on 127.0.0.1, a daemon thread, shut down after each test) plays a script of replies: HTTP
500s, 429 with Retry-After, replies slower than the client's timeout, truncated JSON, a chat completion with a
non-numeric answer. The client retries with backoff up to ``max_retries`` and then gives an *unscored* answer,
counted in run.json's ``judge_unscored`` and never cached (a re-run asks again), never a 0; a judged run with too
many unscored answers is a cell error that says so; answers received are cached and not asked again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from loopback import ChatEndpoint, Reply, completion

from quant_harness._util import counters
from quant_harness.errors import CellError, JudgeError
from quant_harness.judge import client as judges
from quant_harness.judge.settings import JudgeSettings
from quant_harness.steer import cells as steer_cells

KEY = "sk-fault-server-key"


class FaultServer(ChatEndpoint):
    """Replies from ``script`` in order (the last one repeats): ("500",), ("429", retry_after), ("slow", seconds),
    ("truncated",), ("401",), ("ok", text). Records when each request came."""

    def __init__(self) -> None:
        self.script: list[tuple[Any, ...]] = [("ok", "50")]
        self.times: list[float] = []
        self.lock = threading.Lock()
        super().__init__(self._reply)

    def _reply(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.times.append(time.monotonic())
            step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        kind = step[0]
        if kind in ("500", "401"):
            return int(kind), b'{"error": {"message": "injected"}}', {}
        if kind == "429":
            return 429, b'{"error": {"message": "slow down"}}', {"Retry-After": str(step[1])}
        if kind == "slow":
            time.sleep(step[1])
            return 200, completion("99", "fault"), {}
        if kind == "truncated":
            return 200, completion("42", "fault")[:37], {}
        return 200, completion(step[1], "fault"), {}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    s = FaultServer()
    try:
        yield s
    finally:
        s.stop()


def _judge(server: FaultServer, cache: Path, **over: Any) -> judges.Judge:
    options = {"timeout": 2.0, "max_retries": 2, "backoff": 0.01, **over}
    settings = JudgeSettings(base_url=server.url, model="fault", api_key_env="QH_FAULT_KEY", logprobs=False,
                             **options)
    return judges.Judge(settings, cache, api_key=KEY)


@pytest.mark.parametrize("faults", [
    [("500",), ("500",)], [("truncated",)], [("429", 0)], [("500",), ("truncated",)],
], ids=["two-500s", "truncated-json", "429", "500-then-truncated"])
def test_transient_faults_are_retried_then_answered(server: FaultServer, tmp_path: Path,
                                                   faults: list[tuple[Any, ...]]) -> None:
    server.script = [*faults, ("ok", "73")]
    judge = _judge(server, tmp_path)
    score = judge.score("rate this")
    assert (score.value, score.mode) == (73.0, "parsed")
    assert len(server.times) == len(faults) + 1 and judge.calls == len(faults) + 1


def test_retry_after_is_honoured(server: FaultServer, tmp_path: Path) -> None:
    server.script = [("429", 0.4), ("ok", "60")]
    assert _judge(server, tmp_path).score("rate this").value == 60.0
    assert server.times[1] - server.times[0] >= 0.35, "waited for Retry-After, not the 0.01 s backoff"


def test_a_timeout_is_retried(server: FaultServer, tmp_path: Path) -> None:
    server.script = [("slow", 1.0), ("ok", "61")]
    judge = _judge(server, tmp_path, timeout=0.3)
    assert judge.score("rate this").value == 61.0 and len(server.times) == 2


def test_no_answer_after_the_retries_is_unscored_counted_and_asked_again(server: FaultServer, tmp_path: Path) -> None:
    server.script = [("500",)]
    judge = _judge(server, tmp_path)
    before = counters.snapshot()["judge_unscored"]
    score = judge.score("rate this")
    assert score.value is None and score.mode == "unscored", "never a 0"
    assert "no answer after 3 attempts (InternalServerError" in score.raw and server.url in score.raw
    assert len(server.times) == 3, "max_retries = 2: three attempts, then it stops"
    assert counters.snapshot()["judge_unscored"] == before + 1 and judge.unanswered == 1
    assert not list((tmp_path / "judge").rglob("meta.json")), "a failure is not cached"
    server.script = [("ok", "70")]
    assert judge.score("rate this").value == 70.0 and len(server.times) == 4, "the re-run asks again"
    assert KEY not in score.raw


def test_a_non_numeric_answer_is_unscored_and_cached(server: FaultServer, tmp_path: Path) -> None:
    server.script = [("ok", "It is a lovely answer.")]
    before = counters.snapshot()["judge_unscored"]
    score = _judge(server, tmp_path).score("rate this")
    assert score.value is None and score.mode == "unscored" and score.raw == "It is a lovely answer."
    assert counters.snapshot()["judge_unscored"] == before + 1
    again = _judge(server, tmp_path).score("rate this")   # a new judge (a re-run) on the same cache
    assert again == score and len(server.times) == 1, "the answer received is not asked again"


def test_answers_received_are_not_asked_again_on_a_rerun(server: FaultServer, tmp_path: Path) -> None:
    server.script = [("ok", "12"), ("500",), ("500",), ("500",), ("ok", "34")]
    first = _judge(server, tmp_path)
    assert first.score("a").value == 12.0 and first.score("b").value is None
    asked = len(server.times)
    rerun = _judge(server, tmp_path)
    assert rerun.score("a").value == 12.0 and len(server.times) == asked, "cached"
    assert rerun.score("b").value == 34.0 and len(server.times) == asked + 1, "only the unanswered one is asked"


def test_the_cache_key_holds_the_endpoint(server: FaultServer, tmp_path: Path) -> None:
    server.script = [("ok", "12"), ("ok", "13")]
    judge = _judge(server, tmp_path)
    assert judge.score("a").value == 12.0
    other = judges.Judge(judge.settings, tmp_path, base_url=server.url, api_key=KEY, endpoint="another-endpoint")
    assert other.score("a").value == 13.0 and len(server.times) == 2, "another endpoint's answer is not reused"


def test_an_auth_error_is_a_judge_error_naming_the_endpoint(server: FaultServer, tmp_path: Path) -> None:
    server.script = [("401",)]
    with pytest.raises(JudgeError) as err:
        _judge(server, tmp_path).score("rate this")
    assert f"judge fault at {server.url}: HTTP 401" in str(err.value) and KEY not in str(err.value)
    assert len(server.times) == 1, "not retried: it would not get better"


def test_an_unreachable_endpoint_gives_unscored_answers(tmp_path: Path) -> None:
    dead = FaultServer()
    url = dead.url
    dead.stop()  # nothing listens there any more
    settings = JudgeSettings(base_url=url, model="fault", timeout=1.0, max_retries=1, backoff=0.01, logprobs=False)
    score = judges.Judge(settings, tmp_path, api_key=KEY).score("rate this")
    assert score.value is None and f"{url}: no answer after 2 attempts (APIConnectionError" in score.raw


def _runner(max_unscored: float) -> Any:
    judge = JudgeSettings(base_url="http://127.0.0.1:9/v1", model="fault", max_unscored=max_unscored)
    return SimpleNamespace(study=SimpleNamespace(judge=judge), pool=SimpleNamespace(model_dir=Path("/models")))


def test_a_run_with_too_many_unscored_answers_is_a_cell_error_that_says_so() -> None:
    scores = [judges.Score(None, "unscored", "<no answer: judge fault at http://127.0.0.1:9/v1: ...>"),
              judges.Score(None, "unscored", "bla"), judges.Score(80.0, "parsed", "80"),
              judges.Score(70.0, "parsed", "70")]
    steer_cells._check_unscored(_runner(0.5), scores)  # 2 of 4: allowed
    with pytest.raises(CellError) as err:
        steer_cells._check_unscored(_runner(0.25), scores)
    msg = str(err.value)
    assert "judge fault at http://127.0.0.1:9/v1: 2 of 4 answers unscored, more than [judge] max_unscored = 0.25" in msg
    assert "expected a number 0-100 in each answer" in msg and "<no answer" in msg


def test_a_judge_filter_with_unanswered_pairs_builds_nothing(server: FaultServer, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """PV's judge filter decides which pairs are kept: with an answer missing it raises (inside the activation
    build, so nothing is cached) rather than keep pairs by a failure; the answers received are cached."""
    from quant_harness.extract import rollouts
    from quant_harness.extract.datasets import Prompt

    server.script = [("ok", "80"), ("500",)]
    judge = _judge(server, tmp_path, max_retries=0)
    prompt = Prompt((("user", "q"),))
    contrast = SimpleNamespace(pos=(prompt,), neg=(prompt,), eval_prompt="{question} {answer}")
    trait = SimpleNamespace(key="pv_t", n_per_question=1, judge_filter=50.0, replay=None)
    study = SimpleNamespace(reference="fp32", replay=False, judge=judge.settings)
    runner = SimpleNamespace(study=study, contrast=lambda t: contrast, pool=SimpleNamespace(model_dir=tmp_path))
    monkeypatch.setattr(rollouts, "responses", lambda *a: rollouts.Rollouts(["yes"], ["no"], "k"))
    monkeypatch.setattr(rollouts.judges, "study_judge", lambda r: judge)
    with pytest.raises(CellError, match=r"3 of 4 filter answers got no answer after the retries"):
        rollouts.rollout_inputs(runner, "m", "fp32", trait)  # type: ignore[arg-type]
    assert len(list((tmp_path / "judge").rglob("meta.json"))) == 1, "the one answer received is cached"
