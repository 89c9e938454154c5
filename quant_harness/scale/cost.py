"""The one cost model behind ``--quant-plan``'s wall-time estimate: work counted from the study, rates from ``RATES``.

What a cell does is counted exactly from the study (examples per trait, rollout and steering lengths, questions,
search steps, A/B coefficients, refusal prompts, benchmark docs x their measured tokens per doc): forward tokens,
generation steps and judge calls.
How fast each runs is a rate in ``RATES``, one table, each entry with its source: a measured ratio from a
``benchmarks/`` script, or a stated assumption about one 80 GB GPU (no GPU was available to measure on). When a
benchmark script measures a better figure, change the entry here and nothing else.

Work is charged where it runs: every artefact of the reference precision (activations, steering search, A/B
sweeps, refusal and benchmark runs at the reference) to the model's reference group, which builds them in its
phase (quant_harness.runner.StudyRunner.prepare), each once however many quantized cells read it; the quantized
side to its own group. Time scales with model size (``params_b`` / 7.6, an 8B model's decode step reads its weights
once) and precision (``PRECISION_SLOWDOWN``); a two-GPU model runs its layers in sequence across the GPUs, so its
second GPU adds memory, not speed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from quant_harness.study.spec import Cell, Study, TraitSpec


class Rate(NamedTuple):
    value: float
    source: str


RATES: dict[str, Rate] = {
    "load_s": Rate(120.0, "assumption: a 7-8B bf16 checkpoint (15 GB safetensors) from local NVMe into one GPU, "
                          "~2 min with transformers' init; README cost table's 2-5 min"),
    "quantize_load_factor": Rate(1.5, "assumption: bitsandbytes NF4/INT8 quantize while loading; README's 2-5 min "
                                      "upper end"),
    "prefill_tokens_s": Rate(8000.0, "assumption: 312 TFLOPs bf16 (A100-80GB) x 40% utilisation / (2 x 7.6e9 "
                                     "FLOPs per token)"),
    "extraction_overhead": Rate(1.24, "measured: benchmarks/extraction.py, our extraction vs a bare batched forward "
                                      "(README speed table; >1 because the LM head is skipped: 0.97 against a "
                                      "decoder-only forward, so 1/0.97 of its time)"),
    "decode_step_s": Rate(0.030, "assumption: one HF generate step of a 7-8B bf16 model at batch <= 32, memory-bound "
                                 "(15 GB at ~2 TB/s = 7.5 ms) plus Python/kernel-launch overhead"),
    "generation_batch": Rate(25.0, "measured: benchmarks/generation.py, a steering cell's search batched over "
                                   "(layer, coefficient, question) rows vs one condition per call: 3.14x on CPU "
                                   "(fp32, default study, outputs equal), applied to the old path's 8 rows per call"),
    "judge_call_s": Rate(0.8, "assumption: one gpt-4.1-mini completion of <= 4 tokens, latency"),
    "judge_concurrency": Rate(8.0, "[judge] concurrency's default of 8 calls in flight: a hosted judge is "
                                   "latency-bound, so 8 in flight answer ~8x as fast (assumption); the CPU-bound "
                                   "loopback server gains 1.68x (benchmarks/judge.py --n 32), its compute being "
                                   "the limit"),
    "prompt_tokens": Rate(96.0, "assumption: mean tokens of a CAA/Arditi prompt with its chat template; PV prompts "
                                "add the response"),
    "ab_steered_tokens": Rate(2.0, "counted: an A/B sweep runs each prompt once into a KV cache, then per "
                                   "coefficient the steered tail: the last instruction token and the answers' shared "
                                   "tokens (none on Llama-3/Qwen/OLMo, '(' on Gemma and Mistral)"),
    "stats_s_per_cell": Rate(3.0, "assumption: a vector/probe cell's bootstrap (1000 resamples) on the worker's "
                                  "CPU; no model work"),
}
"""Every rate of the cost model; the README's cost section is derived from this table."""

PRECISION_SLOWDOWN: dict[str, Rate] = {
    "bf16": Rate(1.0, "the reference"), "fp16": Rate(1.0, "as bf16"), "fp32": Rate(2.0, "twice the bytes"),
    "nf4": Rate(1.3, "assumption: bitsandbytes 4-bit dequantizes per matmul; fewer bytes read than bf16"),
    "int8": Rate(2.5, "assumption: LLM.int8's outlier decomposition makes each matmul two; slower than bf16"),
    "gptq": Rate(1.1, "assumption: gptqmodel's Marlin/ExLlama kernels near bf16 speed"),
}


class TaskWork(NamedTuple):
    docs: int
    """Docs of the task's whole evaluation split (all its leaf tasks)."""
    leaves: int
    """Leaf tasks (MMLU's 57 subjects): ``limit`` and ``samples`` count per leaf."""
    tokens: float
    """Tokens read per doc by lm-eval's HFLM: context + continuation for every request (benchmarks/benchmark_tokens.py,
    the task's own requests on 200 docs per leaf, Llama-3 tokenizer)."""
    shared_speedup: float
    """How much faster ``shared_prefix = true`` (SharedPrefixHFLM) scores the task than HFLM, measured in wall time
    (benchmarks/shared_prefix.py, lower end): fewer tokens, but one forward per distinct context."""
    source: str


BENCHMARK_WORK: dict[str, TaskWork] = {
    "qh_hellaswag": TaskWork(10042, 1, 177.0, 1.06, "measured: 177 tokens per doc; shared prefix reads 85 (2.08x "
                                                    "fewer) but ran 1.06x faster on 10 docs: short contexts"),
    "qh_mmlu": TaskWork(14042, 57, 423.0, 1.0, "measured: 423 tokens per doc; shared prefix not measured"),
    "qh_truthfulqa_mc2": TaskWork(817, 1, 1260.0, 2.9, "measured: 1260 tokens per doc; shared prefix reads 237 "
                                                       "(5.32x fewer), 2.9-4.6x faster on 10 docs"),
}
"""Per benchmark task, what one doc costs; a task not listed is charged ``OTHER_TASK``."""
OTHER_TASK = TaskWork(10042, 1, 640.0, 1.0, "assumption: 4 choices x 160 context + continuation tokens, a split as "
                                            "large as HellaSwag's")

REFERENCE_PARAMS_B = 7.6
"""The model size the rates are for (Qwen2.5-7B / Llama-3.1-8B)."""


def _r(name: str) -> float:
    return RATES[name].value


@dataclass
class Work:
    """Counted work of one group, in model-independent units."""

    forward_tokens: float = 0.0
    decode_steps: float = 0.0
    judge_calls: float = 0.0
    cpu_s: float = 0.0

    def add(self, other: Work) -> None:
        self.forward_tokens += other.forward_tokens
        self.decode_steps += other.decode_steps
        self.judge_calls += other.judge_calls
        self.cpu_s += other.cpu_s

    def seconds(self, params_b: float, precision: str, loads: int) -> float:
        """Wall seconds of this work plus ``loads`` model loads, for a ``params_b`` model at ``precision``."""
        size = max(params_b, 0.1) / REFERENCE_PARAMS_B
        slow = PRECISION_SLOWDOWN.get(precision, Rate(1.0, "")).value
        load = _r("load_s") * size * (_r("quantize_load_factor") if precision in ("nf4", "int8") else 1.0)
        model = (self.forward_tokens / _r("prefill_tokens_s") + self.decode_steps * _r("decode_step_s")) * size * slow
        judge = self.judge_calls * _r("judge_call_s") / _r("judge_concurrency")
        return loads * load + model + judge + self.cpu_s


def _examples(trait: TraitSpec, sizes: dict[str, int]) -> int:
    """Rows of one side of a trait's contrast set: the dataset's count where it was read, else its limit (or 100)."""
    return sizes.get(trait.key) or trait.limit or 100


def _generate(rows: float, tokens: int) -> Work:
    """``rows`` generations of ``tokens`` new tokens, in batches of ``generation_batch``."""
    return Work(forward_tokens=rows * _r("prompt_tokens"), decode_steps=-(-rows // _r("generation_batch")) * tokens)


def activations(study: Study, trait: TraitSpec, sizes: dict[str, int], rollouts: bool) -> Work:
    """One precision's activations of a trait: both sides' forwards, and PV rollouts first when it generates them."""
    n = _examples(trait, sizes)
    per_row = _r("prompt_tokens") + (trait.max_new_tokens if trait.position.startswith("response") else 0)
    w = Work(forward_tokens=2 * n * per_row * _r("extraction_overhead"))
    if rollouts and trait.position.startswith("response"):
        w.add(_generate(2 * n * trait.n_per_question, trait.max_new_tokens))
    return w


def reference_side(study: Study, cell: Cell) -> tuple[str, Work]:
    """The reference artefact a quantized cell reads beyond activations, as (key, work); the key dedupes it."""
    s = study.steering
    if cell.kind == "steering":
        rows = s.questions * (1 + len(s.layers) * s.search_steps)
        w = _generate(rows, s.max_new_tokens)
        w.judge_calls = 2 * rows
        return f"search/{cell.trait}/{cell.method}", w
    if cell.kind == "logit_diff":
        return f"ab/{cell.trait}", _ab_sweep(study)
    if cell.kind == "refusal":
        return "refusal", _refusal(study)
    if cell.kind == "benchmarks":
        return f"bench/{cell.trait}", _benchmark(study, cell)
    return "", Work()


def _ab_sweep(study: Study) -> Work:
    """One A/B sweep: every question's prompt once, then its steered tail at every coefficient (steer.ops.ab_sweep)."""
    s = study.steering
    return Work(forward_tokens=s.ab_questions * (_r("prompt_tokens") + len(s.ab_coefficients)
                                                 * _r("ab_steered_tokens")))


def _refusal(study: Study) -> Work:
    """One precision's refusal runs: harmful and harmless prompts, each plain and intervened (ablation, +r)."""
    return _generate(2 * _refusal_prompts(study), study.steering.max_new_tokens)


def _refusal_prompts(study: Study) -> int:
    """Harmful plus harmless prompts of the study's refusal file; 64 when it cannot be read here."""
    import json

    try:
        data = json.loads(study.steering.refusal_file(study.root or study.path.parent).read_text())
        return len(data.get("harmful", [])) + len(data.get("harmless", []))
    except (OSError, ValueError):
        return 64


def _benchmark(study: Study, cell: Cell) -> Work:
    """One precision's run of a benchmark task: its docs (the limit or samples per leaf task, else the whole split)
    x the tokens one doc costs through the scorer the task uses (``BENCHMARK_WORK``)."""
    b = study.benchmarks
    task, _ = b.task_of(cell.trait)
    o = b.options.get(task)
    w = BENCHMARK_WORK.get(task, OTHER_TASK)
    per_leaf = (o.limit or o.samples) if o is not None else 0
    docs = min(per_leaf * w.leaves, w.docs) if per_leaf else w.docs
    return Work(forward_tokens=docs * w.tokens / (w.shared_speedup if o is not None and o.shared_prefix else 1.0))


def own_side(study: Study, cell: Cell) -> Work:
    """What a cell computes at its own precision beyond activations."""
    s = study.steering
    if cell.kind == "steering":
        rows = s.questions * 3   # baseline and the two halves' operating points
        w = _generate(rows, s.max_new_tokens)
        w.judge_calls = 2 * rows
        return w
    if cell.kind in ("logit_diff", "transfer"):
        return _ab_sweep(study)
    if cell.kind == "refusal":
        return _refusal(study)
    if cell.kind == "benchmarks":
        return _benchmark(study, cell)
    return Work(cpu_s=_r("stats_s_per_cell"))


def group_work(study: Study, model: str, precision: str, cells: Iterable[Cell], dependents: Iterable[Cell],
               sizes: dict[str, int], warm: set[str]) -> Work:
    """Everything one group computes: its cells' own side and activations (unless ``warm`` holds the trait), and, for
    the reference group, the reference side of every ``dependents`` cell (each artefact once)."""
    total = Work()
    traits = {c.trait for c in cells if c.trait and c.kind not in ("benchmarks", "refusal")}
    done: set[str] = set()
    for c in cells:
        if c.kind == "refusal" or c.precision == study.reference:   # the artefact its quantized cells read
            done.add(reference_side(study, c)[0])
        total.add(own_side(study, c))
    if precision == study.reference:
        for c in dependents:
            if c.model != model:
                continue
            if c.trait and c.kind not in ("benchmarks", "refusal"):
                traits.add(c.trait)
            key, w = reference_side(study, c)
            if key and key not in done:
                done.add(key)
                total.add(w)
    keys = {t.key for t in study.traits}
    for key in sorted(traits & keys - warm):
        t = study.trait(key)
        replay = t.replay if t.replay is not None else study.replay
        total.add(activations(study, t, sizes, rollouts=precision == study.reference or not replay))
    return total
