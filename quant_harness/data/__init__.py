"""Data the package itself needs, shipped inside it (pyproject ``package-data``) and read through importlib.resources,
so the harness works from an installed wheel, outside any checkout:

- ``model_cards/``: the cards of the plan's seven models and of the embedded SmolLM2-135M (``[study] cards_dir``)
- ``judge_prompts/``: the ``coherence`` template and the trait templates of the built-in CAA traits
- ``ab_questions/``: held-out A/B questions of the built-in CAA traits and the refusal prompts (``[steering]`` defaults)
- ``tasks/``: the lm-eval task folders qh_sanity, qh_hellaswag, qh_mmlu, qh_truthfulqa (always on the include path)

Study data (trait datasets, SAE texts, fixed vectors) is not here: a study names it, relative to its ``root``.
Where a default names a ``fixtures/...`` path, the study root's copy is used when there is one, else the one shipped
here (``study_or_shipped``).

May import: the standard library only (every layer reads its data through here).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["path", "study_or_shipped"]


def path(*parts: str) -> Path:
    """A shipped file or folder as a filesystem path (lm-eval and the card reader open real folders)."""
    found = resources.files(__name__).joinpath(*parts)
    if not isinstance(found, Path):
        raise TypeError(f"quant_harness data at {found} is not on the filesystem (a zipped install?); "
                        "install the package unzipped")
    return found


def study_or_shipped(candidate: Path, *shipped: str) -> Path:
    """``candidate`` (a default resolved against the study root) when it exists, else the shipped file ``shipped``
    when that exists, else ``candidate`` again (so a message about a missing file names the study's path)."""
    if candidate.exists():
        return candidate
    packaged = path(*shipped)
    return packaged if packaged.exists() else candidate
