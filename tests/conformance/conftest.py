"""Twins of the seven study models for the conformance matrix, and the matrix itself in the test report.

``twin(name)`` builds (once, cached under ``.quant_cache/twins/``) the tiny random-weight twin of a study model from
``../shared/data/model_twins`` (quant_harness.models.twins) and writes its card; ``loaded(name, precision)`` loads it through the
library's own loader (``models.precision.load``: the card/config check, the bnb configs) once per session.

Every test here is parametrized by ``name`` (a twin) and, where a model runs, ``precision``; its function name
``test_<kind>`` gives the matrix column. The outcome of each (twin, kind, precision) is collected from the reports
and printed at the end of the run as a twin x kind table (``ok``, or the error), and written to
``reports/conformance/twins.md``, so it can be pasted into an issue.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quant_harness.models import twins

REPO = Path(__file__).resolve().parents[2]
DATA = twins.data_dir(REPO)
CACHE = REPO / ".quant_cache" / "twins"
MATRIX_FILE = REPO / "reports" / "conformance" / "twins.md"
PRECISIONS = twins.PRECISIONS
_KEY = "conformance"

_built: dict[str, twins.Twin] = {}
_loaded: dict[tuple[str, str], Any] = {}
_results: dict[tuple[str, str, str], str] = {}


def _twin(name: str) -> twins.Twin:
    if not (DATA / name / "config.json").is_file():
        pytest.skip(f"no twin data at {DATA / name} (../shared/data/model_twins beside the checkout)")
    if name not in _built:
        _built[name] = twins.ensure(name, DATA / name, CACHE)
    return _built[name]


@pytest.fixture(scope="session")
def twin() -> Callable[[str], twins.Twin]:
    """``twin(name)``: the built twin (checkpoint + card), or a skip when the twin data is absent."""
    return _twin


@pytest.fixture(scope="session")
def loaded() -> Callable[[str, str], Any]:
    """``loaded(name, precision)``: the twin loaded by ``quant_harness.models.precision.load`` (kept for the session),
    or a skip with the reason when the precision cannot run here."""
    from quant_harness.models.cards import load_card
    from quant_harness.models.precision import load, unavailable_reason

    def get(name: str, precision: str) -> Any:
        t = _twin(name)
        if (name, precision) not in _loaded:
            reason = unavailable_reason(precision)
            if reason:
                pytest.skip(reason)
            card = load_card(name, t.card_dir)
            if precision == "fp32" or (name, "fp32") not in _loaded:
                _loaded[(name, precision)] = load(card, precision, model_dir=CACHE / "models",
                                                  nf4_compute_dtype="float32")
            else:
                # the same tokenizer files: reuse the fp32 one (Gemma's take seconds to load) instead of loading again
                from unittest import mock

                from transformers import AutoTokenizer

                tok = _loaded[(name, "fp32")].tokenizer
                with mock.patch.object(AutoTokenizer, "from_pretrained", lambda *_a, **_k: tok):
                    _loaded[(name, precision)] = load(card, precision, model_dir=CACHE / "models",
                                                      nf4_compute_dtype="float32")
        return _loaded[(name, precision)]

    return get


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "name" in params and item.name.startswith("test_"):
            kind = item.originalname.removeprefix("test_") if hasattr(item, "originalname") else item.name
            item.user_properties.append((_KEY, f"{params['name']}|{kind}|{params.get('precision', '')}"))


def _message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return " ".join(text.split())[:160]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    where = dict(report.user_properties).get(_KEY)
    if where is None:
        return
    key = tuple(str(where).split("|"))
    if report.when == "call":
        _results[key] = "ok" if report.passed else f"FAIL {_message(report)}"  # type: ignore[index]
    elif report.when == "setup" and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _results[key] = f"skip {reason.removeprefix('Skipped: ')}"  # type: ignore[index]
    elif report.when == "setup" and report.failed:
        _results[key] = f"ERROR {_message(report)}"  # type: ignore[index]
    if report.when == "call" and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _results[key] = f"skip {reason.removeprefix('Skipped: ')}"  # type: ignore[index]


def matrix_markdown(results: dict[tuple[str, str, str], str]) -> str:
    """Twin x kind; a cell is ``ok`` when every precision passed (``ok (fp32)`` when only fp32 ran), else the
    precisions with their outcome; the errors in full below the table."""
    names = [n for n in twins.TWINS if any(k[0] == n for k in results)]
    kinds = list(dict.fromkeys(k[1] for k in results))
    lines = ["| twin | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    details = []
    for n in names:
        row = []
        for kind in kinds:
            got = {p: v for (nn, kk, p), v in results.items() if nn == n and kk == kind}
            if not got:
                row.append("")
            elif all(v == "ok" for v in got.values()):
                precs = [p for p in PRECISIONS if p in got] or [""]
                row.append("ok" if len(precs) == len(PRECISIONS) or precs == [""] else f"ok ({', '.join(precs)})")
            elif all(v.startswith("skip n/a") for v in got.values()):
                row.append("n/a")
            else:
                parts = []
                for p, v in sorted(got.items(), key=lambda kv: PRECISIONS.index(kv[0]) if kv[0] in PRECISIONS else 0):
                    word = v.split(" ", 1)[0]
                    parts.append(f"{p or '-'}: {word}")
                    if word != "ok":
                        details.append(f"- {n} / {kind} / {p or '-'}: {v}")
                row.append(", ".join(parts))
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    return "\n".join(lines + ([""] + details if details else [])) + "\n"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _results:
        return
    text = matrix_markdown(_results)
    terminalreporter.write_sep("=", "conformance matrix (twin x kind)")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    try:
        MATRIX_FILE.parent.mkdir(parents=True, exist_ok=True)
        MATRIX_FILE.write_text(text)
        (MATRIX_FILE.with_suffix(".json")).write_text(json.dumps(
            [{"twin": n, "kind": k, "precision": p, "outcome": v} for (n, k, p), v in sorted(_results.items())],
            indent=1))
        terminalreporter.write_line(f"written to {MATRIX_FILE}")
    except OSError as e:
        terminalreporter.write_line(f"could not write {MATRIX_FILE}: {e}")
