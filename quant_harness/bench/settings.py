"""The ``[benchmarks]`` table of a study: which lm-eval tasks run, on what data, with which options.

Kept apart from quant_harness.benchmarks (which runs lm-eval) and free of torch and lm-eval, so a study's grid and the
shipped tasks' data lookup load without either.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant_harness import data
from quant_harness._util.validate import SectionContext, check_table, expect, resolve
from quant_harness.errors import StudyError

TASKS_DIR = data.path("tasks")
"""The task YAMLs shipped with the harness (qh_sanity, qh_hellaswag, qh_mmlu, qh_truthfulqa_mc1/mc2), package data in
quant_harness/data/tasks: always on the include path, before the study's own ``include_path`` folders."""
DATA_ENV = "QUANT_HARNESS_DATA"
STEERED_SUFFIX = "_steered"
_KEYS: dict[str, type | tuple[type, ...]] = {
    "tasks": list, "data_dir": str, "include_path": (str, list), "stock_tasks": bool, "limit": int,
    "samples": int, "seed": int, "batch_size": int, "num_fewshot": int, "bootstrap_iters": int,
    "metric": str, "shared_prefix": bool, "per_task": dict, "steered": dict,
}
_PER_TASK_KEYS = {"limit": int, "samples": int, "metric": str, "num_fewshot": int, "shared_prefix": bool,
                  "models": list}
_STEERED_KEYS = {"trait": str, "method": str, "layer": int, "coefficient": (int, float), "tasks": list}


@dataclass(frozen=True)
class Steering:
    """A trait vector added to one decoder block's output while a benchmark runs."""

    trait: str
    method: str
    layer: int
    coefficient: float
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class TaskOptions:
    """How one task is run: which docs (first ``limit``, or ``samples`` drawn with the seed) and its headline."""

    limit: int
    samples: int
    num_fewshot: int | None
    metric: str
    """lm-eval key of the headline accuracy, or "" for ``acc_norm,none`` when present else ``acc,none``."""
    shared_prefix: bool = False
    """Score through quant_harness.shared_prefix_lm (each context run once for all its choices), not HFLM."""
    models: tuple[str, ...] = ()
    """The study's models that get this task's cells (empty: every model). The plan runs MMLU and TruthfulQA on
    three of its seven models and HellaSwag on all of them."""


@dataclass(frozen=True)
class BenchmarkSettings:
    """The study's validated ``[benchmarks]`` table."""

    tasks: tuple[str, ...]
    data_dir: Path | None
    include_path: tuple[Path, ...]
    stock_tasks: bool
    """Index lm-eval's built-in tasks too (~10 s), for users online who name stock tasks such as ``hellaswag``."""
    seed: int
    batch_size: int
    bootstrap_iters: int
    options: dict[str, TaskOptions]
    steered: Steering | None

    @classmethod
    def empty(cls) -> BenchmarkSettings:
        """No ``[benchmarks]`` table: no benchmark cells."""
        return cls((), None, (TASKS_DIR,), False, 0, 8, 1000, {}, None)

    def names(self, model: str | None = None) -> list[str]:
        """Benchmark parts of the cell ids: the task name without our ``qh_`` prefix, then the steered ones; with
        ``model``, only the tasks whose ``models`` include it."""
        def runs(task: str) -> bool:
            only = self.options[task].models if task in self.options else ()
            return model is None or not only or model in only

        out = [benchmark_name(t) for t in self.tasks if runs(t)]
        if self.steered:
            out += [benchmark_name(t) + STEERED_SUFFIX for t in self.steered.tasks if runs(t)]
        return out

    def task_of(self, name: str) -> tuple[str, bool]:
        """Cell benchmark part -> (lm-eval task name, steered?)."""
        steered = name.endswith(STEERED_SUFFIX)
        base = name[: -len(STEERED_SUFFIX)] if steered else name
        return next(t for t in self.tasks if benchmark_name(t) == base), steered


def local_data_dir(kwargs: dict[str, Any], task: str, holding: str) -> Path:
    """The benchmark data folder of a local task (tasks/*/utils.py): task metadata ``qh_data_dir`` (set by the
    harness from the study), else ``$QUANT_HARNESS_DATA``; never a machine path baked into a task file."""
    where = kwargs.get("qh_data_dir") or os.environ.get("QUANT_HARNESS_DATA")
    if not where:
        raise FileNotFoundError(f"{task} needs the benchmark data folder: set QUANT_HARNESS_DATA or pass "
                                f"metadata qh_data_dir (a folder holding {holding})")
    return Path(where)


NEEDS_DATA = {"qh_hellaswag": "hellaswag/hellaswag_val.jsonl", "qh_mmlu": "mmlu", "qh_truthfulqa_mc1":
              "truthfulqa/mc_task.json", "qh_truthfulqa_mc2": "truthfulqa/mc_task.json"}
"""What the shipped local-data tasks read under the data folder (their utils.py); qh_mmlu_<subject> reads mmlu/."""
_NAME_LINE = re.compile(r"^(?:task|group|tag):[ \t]*(\S.*?)\s*$", re.MULTILINE)


def task_names(include: tuple[Path, ...]) -> set[str]:
    """Task, group and tag names the YAML files of the include path define (a line scan: no lm-eval index)."""
    names: set[str] = set()
    for folder in include:
        for f in Path(folder).rglob("*"):
            if not f.is_file() or not (f.suffix in (".yaml", ".yml") or f.name.endswith("_yaml")):
                continue
            try:
                text = f.read_text()
            except (OSError, UnicodeDecodeError):
                continue
            for m in _NAME_LINE.finditer(text):
                names.update(x.strip(" '\"") for x in m.group(1).strip("[]").split(",") if x.strip(" '\""))
    return names


def _check_data(path: Path, raw: dict[str, Any], tasks: list[str], data_dir: Path | None) -> None:
    """The data folder holds what the study's local-data tasks read (else every benchmark cell would fail)."""
    for t in tasks:
        needed = NEEDS_DATA.get(t) or ("mmlu" if t.startswith("qh_mmlu_") else None)
        if needed is None:
            continue
        if data_dir is None:
            raise StudyError(path, "benchmarks.data_dir", raw.get("data_dir"),
                             f"a folder holding {needed} for task {t}: set data_dir or ${DATA_ENV}")
        if not (data_dir / needed).exists():
            raise StudyError(path, "benchmarks.data_dir", raw.get("data_dir", f"${DATA_ENV}"),
                             f"a folder holding {needed} for task {t} ({data_dir / needed} does not exist)")


def benchmark_name(task: str) -> str:
    return task.removeprefix("qh_")


def _check_table(path: Path, where: str, table: object, keys: dict[str, Any]) -> dict[str, Any]:
    checked = check_table(path, where, table, keys)
    for key, value in checked.items():
        if keys[key] is int and value < 0:
            raise StudyError(path, f"{where}.{key}", value, "0 or a positive integer")
    return checked


def parse(ctx: SectionContext, table: object) -> BenchmarkSettings:
    """The study's ``[benchmarks]`` table, validated (absent: no benchmark cells); every problem is a StudyError
    naming file, key and value."""
    if table is None:
        return BenchmarkSettings.empty()
    path, traits = ctx.path, ctx.traits
    raw = _check_table(path, "benchmarks", table, _KEYS)
    tasks = raw.get("tasks", [])
    if not tasks or not all(isinstance(t, str) and t and "-" not in t for t in tasks):
        raise StudyError(path, "benchmarks.tasks", tasks, "a non-empty list of lm-eval task names without '-'")
    if len({benchmark_name(t) for t in tasks}) != len(tasks):
        raise StudyError(path, "benchmarks.tasks", tasks, "names that stay distinct without the qh_ prefix")
    if raw.get("limit", 0) and raw.get("samples", 0):
        raise StudyError(path, "benchmarks.samples", raw["samples"], "limit or samples, not both (lm-eval)")
    data = raw.get("data_dir") or os.environ.get(DATA_ENV)
    data_dir = resolve(data, ctx.root) if data else None
    if data_dir is not None and "$" in str(data_dir):
        data_dir = None
    inc = raw.get("include_path", [])
    own = tuple(resolve(p, ctx.root) for p in ([inc] if isinstance(inc, str) else inc))
    for i, p in enumerate(own):
        if not p.is_dir():
            raise StudyError(path, f"benchmarks.include_path[{i}]", str(p), "an existing folder of task YAMLs")
    include = (TASKS_DIR, *(p for p in dict.fromkeys(own) if p.resolve() != TASKS_DIR.resolve()))
    if not raw.get("stock_tasks", False):
        defined = task_names(include)
        listed = ", ".join(sorted(n for n in defined if "_mmlu_" not in n))
        for i, t in enumerate(tasks):
            if t not in defined:
                raise StudyError(path, f"benchmarks.tasks[{i}]", t, f"a task or group of the include path ({listed}, "
                                 "qh_mmlu_<subject>), or stock_tasks = true for lm-eval's own tasks")
    if ctx.check_data:
        _check_data(path, raw, tasks, data_dir)
    options: dict[str, TaskOptions] = {}
    per_task = raw.get("per_task", {})
    for task, over in per_task.items():
        if task not in tasks:
            raise StudyError(path, f"benchmarks.per_task.{task}", over, f"a task of benchmarks.tasks ({tasks})")
        expect(path, f"benchmarks.per_task.{task}", over, dict)
        _check_table(path, f"benchmarks.per_task.{task}", over, _PER_TASK_KEYS)
        only = over.get("models")
        if only is not None and (not only or not all(m in ctx.models for m in only)):
            raise StudyError(path, f"benchmarks.per_task.{task}.models", only,
                             f"a non-empty list of the study's models ({', '.join(ctx.models)})")
    for task in tasks:
        o = {**{k: raw[k] for k in ("limit", "samples", "num_fewshot", "metric", "shared_prefix") if k in raw},
             **per_task.get(task, {})}
        if o.get("limit", 0) and o.get("samples", 0) and task in per_task:
            raise StudyError(path, f"benchmarks.per_task.{task}", per_task[task], "limit or samples, not both")
        if "samples" in per_task.get(task, {}):
            o["limit"] = 0
        if "limit" in per_task.get(task, {}):
            o["samples"] = 0
        metric = o.get("metric", "")
        if metric and "," not in metric:
            raise StudyError(path, f"benchmarks.per_task.{task}.metric", metric, 'an lm-eval key such as "acc,none"')
        options[task] = TaskOptions(o.get("limit", 0), o.get("samples", 0), o.get("num_fewshot"), metric,
                                    o.get("shared_prefix", False), tuple(per_task.get(task, {}).get("models", ())))
    steered = None
    if "steered" in raw:
        s = raw["steered"]
        _check_table(path, "benchmarks.steered", s, _STEERED_KEYS)
        for key in ("trait", "method", "layer", "coefficient"):
            if key not in s:
                raise StudyError(path, f"benchmarks.steered.{key}", None, "a value (required)")
        known = dict(traits)
        if s["trait"] not in known:
            raise StudyError(path, "benchmarks.steered.trait", s["trait"], f"a trait of the study ({', '.join(known)})")
        layers = known[s["trait"]]
        if layers is not None and s["layer"] not in layers:
            raise StudyError(path, "benchmarks.steered.layer", s["layer"], f"one of the trait's layers {list(layers)}")
        if s["method"] not in ("mean_diff", "probe", "pca"):
            raise StudyError(path, "benchmarks.steered.method", s["method"], "one of mean_diff, probe, pca")
        stasks = s.get("tasks", tasks)
        for t in stasks:
            if t not in tasks:
                raise StudyError(path, "benchmarks.steered.tasks", t, f"a task of benchmarks.tasks ({tasks})")
        steered = Steering(s["trait"], s["method"], s["layer"], float(s["coefficient"]), tuple(stasks))
    return BenchmarkSettings(tuple(tasks), data_dir, include, raw.get("stock_tasks", False), raw.get("seed", 0),
                    raw.get("batch_size", 8), raw.get("bootstrap_iters", 1000),
                    options, steered)

