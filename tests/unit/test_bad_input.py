"""What bad input gets you: one test per class of bad input, checking the exact outcome (README "What bad input gets
you" lists them).

Everything knowable from the study and its files is a StudyError when the study loads (the plugin turns it into a
usage error, exit code 4: tests/plugin/test_bad_input_runs.py proves that path end to end), and its message is
``<file>: <key> = <value>: expected <what>``. What only a cell can find (a NaN activation, a zero mean difference,
a ``.pt`` vector file, NaN inside an SAE bundle, an unreachable judge, a full cache) is an error whose message names
the file or endpoint, the field and what was expected; the plugin prefixes the cell id (``CellError: cell <id>:``).
"""

from __future__ import annotations

import errno
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from quant_harness import study
from quant_harness.errors import BundleError, CacheError, CellError, StudyError
from quant_harness.study.files import check_cell_files
from quant_harness.study.kinds import all_cells

REPO = Path(__file__).resolve().parents[2]
SYCO = REPO / "fixtures/traits/caa_sycophancy.json"
D, L = 576, 30  # the embedded model's card


def _study(tmp: Path, body: str = "", *, head: str = "", models: str = "", traits: str | None = None) -> Path:
    """A study over the embedded model's card, one CAA trait unless ``traits`` is given, plus ``body``."""
    trait = (f'[[traits]]\nmethodology = "caa"\nname = "sycophancy"\ndataset = "{SYCO}"\nlayers = [3, 10]\n'
             if traits is None else traits)
    p = tmp / "bad.toml"
    reference = "" if "reference" in head else 'reference = "fp32"\n'
    p.write_text(f'[study]\nroot = "{REPO}"\n{reference}precisions = ["fp32", "nf4"]\n{head}\n'
                 + (models or '[models.smollm2-135m]\ncard = "smollm2-135m"\n') + trait + textwrap.dedent(body))
    return p


def _trait(dataset: Path | str, fmt: str = "caa", extra: str = "") -> str:
    methodology = {"caa": "caa", "pv": "pv", "arditi": "arditi"}[fmt]
    return (f'[[traits]]\nmethodology = "{methodology}"\nname = "t"\ndataset = "{dataset}"\nformat = "{fmt}"\n'
            f'layers = [3]\n{extra}')


def _file(tmp: Path, name: str, content: Any) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


def _card(tmp: Path, extra: str, base: bool = True) -> str:
    """A cards_dir holding smollm2-135m.toml with ``extra`` lines; returns the [study] line that selects it."""
    text = ('name = "smollm2-135m"\nhub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"\nlayers = 30\n'
            'hidden_size = 576\nnative_dtype = "float32"\n' if base else "") + extra
    _file(tmp, "cards/smollm2-135m.toml", text)
    return f'cards_dir = "{tmp / "cards"}"'


def _vectors(tmp: Path, tensors: dict[str, np.ndarray], extra: str = "layers = [3, 10]\n") -> str:
    f = tmp / "v.safetensors"
    save_file(tensors, str(f))
    return (f'[[traits]]\nmethodology = "caa"\nname = "sycophancy"\ndataset = "{SYCO}"\n{extra}'
            f'methods = ["mean_diff", "file"]\nvectors = "{f}"\n')


def _bundle(tmp: Path, *, drop: str = "", transpose: bool = False, nan: bool = False) -> Path:
    rng = np.random.default_rng(0)
    n = 16
    t = {"W_enc": rng.standard_normal((n, D)).astype(np.float32), "b_enc": np.zeros(n, np.float32),
         "W_dec": rng.standard_normal((n, D)).astype(np.float32), "b_dec": np.zeros(D, np.float32)}
    if transpose:
        t["W_enc"] = np.ascontiguousarray(t["W_enc"].T)
    if nan:
        t["W_dec"][0, 0] = np.nan
    t.pop(drop, None)
    folder = tmp / "bundle"
    folder.mkdir(exist_ok=True)
    save_file(t, str(folder / "layer_3.safetensors"))
    return folder


def _sae(folder: Path | str) -> str:
    return f'[sae]\nlayers = [3]\n[sae.dictionaries.ext]\npath = "{folder}"\n'


def _checkpoint(tmp: Path, layers: int = 30, hidden: int = 576) -> Path:
    folder = tmp / "ckpt"
    _file(tmp, "ckpt/config.json", {"num_hidden_layers": layers, "hidden_size": hidden, "model_type": "llama"})
    return folder


# Each case: (id, builder(tmp) -> study path, key in the message, words of the expectation). The first error a
# person reads is the StudyError's message: "<file>: <key> = <value>: expected <words>".
Case = tuple[str, Callable[[Path], Path], str, str]
LOAD_CASES: list[Case] = [
    ("toml-syntax", lambda t: _study(t, "[steering\nlayers = 3\n"), "<toml>", "valid TOML"),
    ("unknown-top-level-table", lambda t: _study(t, "[colours]\nred = 1\n"), "colours", "a top-level table among"),
    ("unknown-key-study", lambda t: _study(t, head="colour = 1"), "study.colour", "one of batch_size"),
    ("unknown-key-models", lambda t: _study(t, models='[models.smollm2-135m]\ncrad = "x"\n'),
     "models.smollm2-135m.crad", "one of card, precisions"),
    ("dotted-model-name", lambda t: _study(t, models='[models.qwen-coder-0.5b]\ncard = "x"\n'),
     "models.qwen-coder-0.5b", 'quote it, [models."qwen-coder-0.5b"]'),
    ("unknown-key-traits", lambda t: _study(t, traits=_trait(SYCO, extra="positon = \"prompt[-1]\"\n")),
     "traits[0].positon", "one of dataset"),
    ("unknown-threshold-metric", lambda t: _study(t, "[thresholds.cosin]\nrobust = 0.9\n"), "thresholds.cosin",
     "one of"),
    ("unknown-key-thresholds", lambda t: _study(t, "[thresholds.cosine]\nrobst = 0.9\n"), "thresholds.cosine.robst",
     "robust or broken"),
    ("unknown-key-judge", lambda t: _study(t, '[judge]\nbase_ur = "local"\n'), "judge.base_ur", "one of api_key_env"),
    ("unknown-key-steering", lambda t: _study(t, "[steering]\nlayer = [3]\n"), "steering.layer", "one of ab_coeff"),
    ("unknown-key-benchmarks", lambda t: _study(t, '[benchmarks]\ntask = ["qh_sanity"]\n'), "benchmarks.task",
     "one of batch_size"),
    ("unknown-key-sae", lambda t: _study(t, "[sae]\nlayer = [3]\n"), "sae.layer", "one of dictionaries"),
    ("unknown-key-sae-dictionary", lambda t: _study(t, "[sae]\nlayers = [3]\n[sae.dictionaries.d]\nfeaturs = 8\n"),
     "sae.dictionaries.d.featurs", "one of batch_size"),
    ("unknown-key-baselines", lambda t: _study(t, "[baselines]\ntolerence = 0.1\n"), "baselines.tolerence", "one of"),
    ("wrong-type-study", lambda t: _study(t, head='batch_size = "eight"'), "study.batch_size", "an integer"),
    ("wrong-type-trait-layers", lambda t: _study(t, traits=_trait(SYCO).replace("layers = [3]", "layers = 3")),
     "traits[0].layers", "a string or list"),
    ("wrong-type-judge", lambda t: _study(t, '[judge]\ntimeout = "fast"\n'), "judge.timeout", "a number"),
    ("wrong-type-threshold", lambda t: _study(t, '[thresholds.cosine]\nrobust = "high"\n'),
     "thresholds.cosine.robust", "a number"),
    ("unknown-precision", lambda t: _study(t, models='[models.smollm2-135m]\ncard = "smollm2-135m"\n'
                                                    'precisions = ["fp32", "fp8"]\n'),
     "models.smollm2-135m.precisions[1]", "one of fp32, fp16, bf16, nf4, int8, gptq"),
    ("unknown-reference", lambda t: _study(t, head='reference = "fp64"'),
     "study.reference", "one of fp32"),
    ("unknown-method", lambda t: _study(t, head='methods = ["mean_diff", "lda"]'), "study.methods[1]",
     "one of mean_diff, probe, pca, file"),
    ("unknown-format", lambda t: _study(t, traits=_trait(SYCO).replace('format = "caa"', 'format = "csv"')),
     "traits[0].format", "one of caa, pv, arditi"),
    ("unknown-methodology", lambda t: _study(t, traits=_trait(SYCO).replace('methodology = "caa"',
                                                                            'methodology = "repe"')),
     "traits[0].methodology", "one of caa, pv, arditi"),
    ("bad-position", lambda t: _study(t, traits=_trait(SYCO, extra='position = "prompt[last]"\n')),
     "traits[0].position", "expected prompt[i], prompt[a:b], response[i] or response[a:b]"),
    ("empty-position-index", lambda t: _study(t, traits=_trait(SYCO, extra='position = "prompt[]"\n')),
     "traits[0].position", "write prompt[:] for every token"),
    ("layers-out-of-range", lambda t: _study(t, traits=_trait(SYCO).replace("layers = [3]", "layers = [3, 30]")),
     "traits[0].layers", "a layer index in 0..29"),
    ("steering-layer-out-of-range", lambda t: _study(t, "[steering]\nlayers = [31]\n"), "steering.layers", "0..29"),
    ("duplicate-trait-name", lambda t: _study(t, traits=_trait(SYCO) + _trait(SYCO)), "traits[1].name",
     "a name unique within methodology caa"),
    ("missing-required-trait-key", lambda t: _study(t, traits='[[traits]]\nmethodology = "caa"\nname = "x"\n'),
     "traits[0].dataset", "a value (required)"),
    ("dataset-missing", lambda t: _study(t, traits=_trait(t / "none.json")), "traits[0].dataset",
     "an existing file (looked at"),
    ("dataset-unset-variable", lambda t: _study(t, traits=_trait("$QH_SURELY_UNSET_VAR/x.json")),
     "traits[0].dataset", "set the environment variables it names"),
    # CAA datasets
    ("caa-empty", lambda t: _study(t, traits=_trait(_file(t, "d.json", []))), "traits[0].dataset",
     "no usable A/B record"),
    ("caa-malformed-json", lambda t: _study(t, traits=_trait(_file(t, "d.json", "[{"))), "traits[0].dataset",
     "invalid JSON"),
    ("caa-wrong-schema", lambda t: _study(t, traits=_trait(_file(t, "d.json", {"question": "q"}))),
     "traits[0].dataset", "expected a JSON list of CAA records"),
    ("caa-record-missing-field", lambda t: _study(t, traits=_trait(_file(t, "d.json", [{"question": "q"}]))),
     "traits[0].dataset", "field 'answer_matching_behavior' missing or empty"),
    ("caa-answers-not-letters", lambda t: _study(t, traits=_trait(_file(t, "d.json", [
        {"question": "q", "answer_matching_behavior": "yes", "answer_not_matching_behavior": "(B)"}]))),
     "traits[0].dataset", "expected \"(A)\"-style letters"),
    ("caa-answers-not-A-B", lambda t: _study(t, traits=_trait(_file(t, "d.json", [
        {"question": "q", "answer_matching_behavior": "(C)", "answer_not_matching_behavior": "(D)"}]))),
     "traits[0].dataset", "no usable A/B record (1 skipped)"),
    # PV datasets
    ("pv-malformed-json", lambda t: _study(t, traits=_trait(_file(t, "p.json", "{"), "pv")), "traits[0].dataset",
     "invalid JSON"),
    ("pv-wrong-schema", lambda t: _study(t, traits=_trait(_file(t, "p.json", ["a"]), "pv")), "traits[0].dataset",
     "expected an object with instruction, questions, eval_prompt"),
    ("pv-no-instructions", lambda t: _study(t, traits=_trait(_file(t, "p.json", {"instruction": [],
                                                                                  "questions": ["q"]}), "pv")),
     "traits[0].dataset", "field 'instruction' missing or empty"),
    ("pv-no-questions", lambda t: _study(t, traits=_trait(_file(t, "p.json", {
        "instruction": [{"pos": "a", "neg": "b"}], "questions": []}), "pv")),
     "traits[0].dataset", "field 'questions' missing or empty"),
    ("pv-pair-missing-side", lambda t: _study(t, traits=_trait(_file(t, "p.json", {
        "instruction": [{"pos": "a"}], "questions": ["q"]}), "pv")), "traits[0].dataset", "field 'neg' missing"),
    # Arditi datasets
    ("arditi-not-a-folder", lambda t: _study(t, traits=_trait(_file(t, "a.json", []), "arditi")),
     "traits[0].dataset", "expected a directory with harmful[_train].json and harmless[_train].json"),
    ("arditi-missing-side", lambda t: _study(t, traits=_trait(_file(t, "a/harmful.json", [
        {"instruction": "x"}]).parent, "arditi")), "traits[0].dataset", "no harmless_train.json or harmless.json"),
    ("arditi-empty-side", lambda t: _study(t, traits=_trait(_file(t, "a/harmful.json", []).parent, "arditi")
                                          if _file(t, "a/harmless.json", [{"instruction": "y"}]) else ""),
     "traits[0].dataset", "expected a non-empty JSON list of {instruction, category}"),
    ("arditi-record-without-instruction", lambda t: _study(t, traits=_trait(_file(t, "a/harmful.json", [
        {"prompt": "x"}]).parent, "arditi") if _file(t, "a/harmless.json", [{"instruction": "y"}]) else ""),
     "traits[0].dataset", "field 'instruction' missing or empty"),
    # model cards and checkpoints
    ("card-missing", lambda t: _study(t, models='[models.nosuch]\ncard = "nosuch"\n'), "models.nosuch.card",
     "known cards: "),
    ("card-malformed-toml", lambda t: _study(t, head=_card(t, "layers = = 3\n", base=False)), "<toml>", "valid TOML"),
    ("card-missing-required-key", lambda t: _study(t, head=_card(t, 'name = "smollm2-135m"\nhub_id = "x"\n',
                                                                 base=False)), "layers", "an integer (required)"),
    ("card-wrong-type", lambda t: _study(t, head=_card(t, 'layers = "thirty"\nname = "smollm2-135m"\nhub_id = "x"\n'
                                                          'hidden_size = 576\n', base=False)), "layers", "an integer"),
    ("card-unknown-key", lambda t: _study(t, head=_card(t, 'hiden_size = 1\n')), "hiden_size",
     "one of the card keys"),
    ("local-model-path-missing", lambda t: _study(t, head=_card(t, f'path = "{t / "no-such-ckpt"}"\n')), "path",
     "an existing local checkpoint folder"),
    ("local-checkpoint-layers-differ", lambda t: _study(t, head=_card(t, f'path = "{_checkpoint(t, layers=12)}"\n')),
     "layers", "12, the num_hidden_layers of the checkpoint"),
    ("gptq-checkpoint-hidden-size-differs", lambda t: _study(
        t, head=_card(t, f'gptq = "{_checkpoint(t, hidden=960)}"\n')), "hidden_size",
     "960, the hidden_size of the checkpoint"),
    ("gptq-local-checkpoint-missing", lambda t: _study(t, head=_card(t, f'gptq = "{t / "no-gptq"}"\n')), "gptq",
     "an existing local checkpoint folder"),
    # vectors of method "file" (safetensors: checked at load with numpy)
    ("vectors-file-missing", lambda t: _study(t, traits=_trait(SYCO, extra=f'methods = ["file"]\n'
                                                                          f'vectors = "{t / "no.safetensors"}"\n')),
     "traits[0].vectors", "an existing .safetensors or .pt file"),
    ("vectors-unreadable", lambda t: _study(t, traits=_trait(SYCO, extra=f'methods = ["file"]\nvectors = '
                                                                        f'"{_file(t, "v.safetensors", "garbage!")}"\n')),
     "traits[0].vectors", "a readable safetensors file"),
    ("vectors-wrong-width", lambda t: _study(t, traits=_vectors(t, {f"layer_{i}": np.ones(100, np.float32)
                                                                     for i in (3, 10)})),
     "traits[0].vectors", "vectors of width 576 (hidden_size of smollm2-135m)"),
    ("vectors-wrong-dtype", lambda t: _study(t, traits=_vectors(t, {f"layer_{i}": np.ones(D, np.int64)
                                                                     for i in (3, 10)})),
     "traits[0].vectors", "floating-point vectors; tensor 'layer_10' is I64"),
    ("vectors-nan-row", lambda t: _study(t, traits=_vectors(t, {"m": np.where(np.arange(L)[:, None] == 10, np.nan,
                                                                              np.ones((L, D))).astype(np.float32)})),
     "traits[0].vectors", "finite vectors; layer 10 ('m' row 10) has NaN or inf"),
    ("vectors-zero-row", lambda t: _study(t, traits=_vectors(t, {"layer_3": np.ones(D, np.float32),
                                                                 "layer_10": np.zeros(D, np.float32)})),
     "traits[0].vectors", "non-zero vectors; layer 10 ('layer_10') is all zeros"),
    ("vectors-missing-layer", lambda t: _study(t, traits=_vectors(t, {"layer_3": np.ones(D, np.float32)})),
     "traits[0].vectors", "a vector for layer 10 of smollm2-135m"),
    ("vectors-wrong-layer-count", lambda t: _study(t, traits=_vectors(t, {"m": np.ones((7, D), np.float32)})),
     "traits[0].vectors", "one [30, d] or [31, d] matrix"),
    ("sae-feature-out-of-range", lambda t: _study(t, traits=_vectors(t, {"W_dec": np.ones((8, D), np.float32)},
                                                                     extra="layers = [3]\nsae_features = [[3, 9, 1.0]]\n")),
     "traits[0].sae_features[0]", "a feature in 0..7"),
    # SAE bundles (headers checked at load)
    ("sae-bundle-missing", lambda t: _study(t, _sae(t / "no-bundle")), "sae.dictionaries.ext.path",
     "an existing bundle folder"),
    ("sae-bundle-missing-layer", lambda t: _study(t, _sae(_bundle(t)).replace("layers = [3]", "layers = [4]")),
     "sae.dictionaries.ext.path", "a file layer_4.safetensors for layer 4 (found layer_3.safetensors)"),
    ("sae-bundle-missing-tensor", lambda t: _study(t, _sae(_bundle(t, drop="b_dec"))), "sae.dictionaries.ext.path",
     "tensor b_dec missing"),
    ("sae-bundle-wrong-orientation", lambda t: _study(t, _sae(_bundle(t, transpose=True))),
     "sae.dictionaries.ext.path", ('it looks transposed: SAELens/GemmaScope store W_enc as [d_model, n_features]; '
                                   'set layout = "saelens"')),
    # benchmarks
    ("benchmark-data-folder-missing", lambda t: _study(t, f'[benchmarks]\ntasks = ["qh_hellaswag"]\n'
                                                          f'data_dir = "{t / "no-data"}"\n'),
     "benchmarks.data_dir", "a folder holding hellaswag/hellaswag_val.jsonl for task qh_hellaswag"),
    ("benchmark-data-folder-unset", lambda t: _study(t, '[benchmarks]\ntasks = ["qh_mmlu"]\n'
                                                        'data_dir = "$QH_SURELY_UNSET_VAR"\n'),
     "benchmarks.data_dir", "a folder holding mmlu for task qh_mmlu: set data_dir or $QUANT_HARNESS_DATA"),
    ("unknown-lm-eval-task", lambda t: _study(t, '[benchmarks]\ntasks = ["qh_sanityy"]\n'), "benchmarks.tasks[0]",
     "a task or group of the include path (qh_benchmarks, qh_hellaswag, qh_mmlu, qh_sanity"),
    # steering and judge settings
    ("unknown-steering-method", lambda t: _study(t, '[steering]\nmethod = "mean-diff"\n'), "steering.method",
     "one of mean_diff, probe, pca, file"),
    ("judge-max-unscored-out-of-range", lambda t: _study(t, "[judge]\nmax_unscored = 2\n"), "judge.max_unscored",
     "a share of answers in 0..1"),
    ("judge-timeout-not-positive", lambda t: _study(t, "[judge]\ntimeout = 0\n"), "judge.timeout",
     "a positive number of seconds"),
]


@pytest.mark.parametrize(("builder", "key", "expected"), [c[1:] for c in LOAD_CASES], ids=[c[0] for c in LOAD_CASES])
def test_bad_study_input_is_a_study_error_naming_file_key_value_and_expectation(
        tmp_path: Path, builder: Callable[[Path], Path], key: str, expected: str) -> None:
    path = builder(tmp_path)
    with pytest.raises(StudyError) as err:
        study.load(path)
    e = err.value
    msg = str(e)
    assert e.key == key, msg
    assert expected in e.expected, msg
    assert msg.startswith(f"{e.path}: {key} = {e.value!r}: expected "), msg
    assert Path(e.path).name in ("bad.toml", "smollm2-135m.toml", "config.json"), msg


def test_the_catalogue_has_at_least_thirty_classes() -> None:
    assert len(LOAD_CASES) + len(CELL_FILE_CASES) + len(RUN_TIME_CASES) >= 30


# --- files the selected cells read: checked once collection has selected them (exit code 4 in a run) -----------


def _ab(tmp: Path, questions: list[str]) -> str:
    _file(tmp, "ab/caa_sycophancy_test.json", [
        {"question": q, "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"} for q in questions])
    return f'[steering]\nab_dir = "{tmp / "ab"}"\n'


def _first_question() -> str:
    return str(json.loads(SYCO.read_text())[0]["question"])


CELL_FILE_CASES: list[Case] = [
    ("held-out-ab-file-missing", lambda t: _study(t, f'[steering]\nab_dir = "{t / "empty"}"\n'), "steering.ab_dir",
     "a folder holding caa_sycophancy_test.json, the held-out A/B questions of trait caa_sycophancy"),
    ("held-out-ab-file-overlaps-training", lambda t: _study(t, _ab(t, [_first_question(), "Another question?"])),
     "traits[0].dataset", "training data disjoint from the held-out A/B file"),
    ("held-out-ab-file-too-small", lambda t: _study(t, _ab(t, ["Only one question?"])), "steering.ab_dir",
     "at least 2 usable A/B questions"),
    ("held-out-ab-file-malformed", lambda t: _study(t, f'[steering]\nab_dir = "{t / "ab"}"\n')
     if _file(t, "ab/caa_sycophancy_test.json", "[{") else t, "steering.ab_dir", "a usable held-out A/B file"),
    ("judge-prompt-missing", lambda t: _study(t, traits=_trait(SYCO).replace('name = "t"', 'name = "honesty"'),
                                              body=_ab(t, ["q1?", "q2?"]).replace("caa_sycophancy", "x")
                                              + 'traits = ["caa_honesty"]\n')
     if _file(t, "ab/caa_honesty_test.json", [{"question": f"q{i}?", "answer_matching_behavior": "(A)",
                                                "answer_not_matching_behavior": "(B)"} for i in (1, 2)]) else t,
     "steering.traits", "traits with a judge prompt"),
    ("refusal-prompts-malformed", lambda t: _study(t, f'[steering]\nrefusal_prompts = "{_file(t, "r.json", {"harmful": []})}"\n',
                                                   traits=_trait(REPO / "fixtures/traits/arditi_refusal", "arditi")),
     "steering.refusal_prompts", "non-empty lists harmful and harmless"),
]


@pytest.mark.parametrize(("builder", "key", "expected"), [c[1:] for c in CELL_FILE_CASES],
                         ids=[c[0] for c in CELL_FILE_CASES])
def test_files_of_the_selected_cells_are_checked_before_any_model_loads(
        tmp_path: Path, builder: Callable[[Path], Path], key: str, expected: str) -> None:
    s = study.load(builder(tmp_path))
    with pytest.raises(StudyError) as err:
        check_cell_files(s, all_cells(s))
    assert err.value.key == key and expected in err.value.expected, str(err.value)
    assert str(err.value).startswith(f"{s.path}: {key} = ")


def test_a_selection_without_steering_cells_needs_no_held_out_file(tmp_path: Path) -> None:
    s = study.load(_study(tmp_path, f'[steering]\nab_dir = "{tmp_path / "empty"}"\n'))
    check_cell_files(s, [c for c in all_cells(s) if c.kind == "vectors"])
    with pytest.raises(StudyError, match="held-out A/B questions of trait caa_sycophancy"):
        check_cell_files(s, [c for c in all_cells(s) if c.kind == "logit_diff"])


def test_the_default_studies_load_and_their_cells_have_their_files() -> None:
    s = study.load(REPO / "cases/studies/default.toml")
    check_cell_files(s, all_cells(s))


# --- what only a cell can find: errors that name the file or endpoint, the field and what was expected -----------


def _entry(pos: torch.Tensor, neg: torch.Tensor) -> Any:
    return SimpleNamespace(tensors={"pos": pos, "neg": neg}, meta={"components": {"layers": [3]}, "info": {}})


def _vector_cell(tmp: Path, pos: torch.Tensor, neg: torch.Tensor) -> CellError:
    """The vectors kind on cached activations ``pos``/``neg`` (no model), as a cell computes it."""
    from quant_harness.extract import datasets
    from quant_harness.extract.vectors import vector_comparison
    from quant_harness.study.spec import Cell

    s = study.load(_study(tmp))
    contrast = datasets.load("caa", SYCO, len(pos))
    entry = _entry(pos, neg)
    runner = SimpleNamespace(study=s, contrast=lambda t: contrast, activations=lambda m, p, t: entry,
                             cache=SimpleNamespace(root=tmp / "cache"))
    with pytest.raises(CellError) as err:
        vector_comparison(runner, Cell("vectors", "smollm2-135m", "nf4", s.traits[0].key, "mean_diff"))  # type: ignore[arg-type]
    return err.value


def _pt(tmp: Path, tensors: dict[str, torch.Tensor]) -> CellError:
    from quant_harness.runner import StudyRunner

    torch.save(tensors, tmp / "v.pt")
    s = study.load(_study(tmp, traits=f'[[traits]]\nmethodology = "caa"\nname = "sycophancy"\ndataset = "{SYCO}"\n'
                                      f'layers = [3]\nmethods = ["file"]\nvectors = "{tmp / "v.pt"}"\n'))
    runner = StudyRunner(s, tmp / "cache", tmp / "models")
    with pytest.raises(CellError) as err:
        runner.vectors("smollm2-135m", "fp32", s.traits[0], "file")
    assert not (tmp / "cache").exists() or not any((tmp / "cache").rglob("meta.json")), "no model work before it"
    return err.value


def _full_cache(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> CacheError:
    from quant_harness.store import JSON, ArtefactStore

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(CacheError) as err:
        ArtefactStore(tmp / "cache").get_or_build("steering/search", {"k": 1}, lambda: {"v": 1}, JSON)
    return err.value


def _read_only_cache(tmp: Path) -> CacheError:
    from quant_harness.store import JSON, ArtefactStore

    (tmp / "cache").write_text("a file where the cache folder should be")
    with pytest.raises(CacheError) as err:
        ArtefactStore(tmp / "cache").get_or_build("steering/search", {"k": 1}, lambda: {"v": 1}, JSON)
    return err.value


def _bundle_nan(tmp: Path) -> BundleError:
    from quant_harness.sae.bundle import load_bundle

    with pytest.raises(BundleError) as err:
        load_bundle(_bundle(tmp, nan=True), 3, d_model=D)
    return err.value


def _gptq_config(tmp: Path) -> StudyError:
    from quant_harness import data
    from quant_harness.models import precision
    from quant_harness.models.cards import load_card

    card = load_card("smollm2-135m", data.path("model_cards"))
    with pytest.raises(StudyError) as err:
        precision.check_config(card, SimpleNamespace(num_hidden_layers=24, hidden_size=576), "some/gptq-checkpoint")
    return err.value


# (id, run(tmp, monkeypatch) -> the error, words every message must hold)
RUN_TIME_CASES: list[tuple[str, Callable[[Path, pytest.MonkeyPatch], Exception], tuple[str, ...]]] = [
    ("nan-activation", lambda t, m: _vector_cell(t, torch.full((8, 1, 8), float("nan")), torch.ones(8, 1, 8)),
     ("reference positive activations contain NaN or inf",)),
    ("zero-mean-difference", lambda t, m: _vector_cell(t, torch.ones(8, 1, 8), torch.ones(8, 1, 8)),
     ("layer 3: the reference vector is all zeros; refusing to score it",)),
    ("pt-vectors-nan", lambda t, m: _pt(t, {"layer_3": torch.full((D,), float("nan"))}),
     ("v.pt", "layer 3 vector is not a finite non-zero [d] vector")),
    ("pt-vectors-wrong-width", lambda t, m: _pt(t, {"layer_3": torch.ones(100)}),
     ("v.pt", "layer 3 vector has width 100; expected 576 (hidden_size of smollm2-135m)")),
    ("sae-bundle-nan", lambda t, m: _bundle_nan(t), ("layer_3.safetensors", "tensor W_dec contains NaN or inf")),
    ("gptq-config-differs-at-load-time", lambda t, m: _gptq_config(t),
     ("smollm2-135m.toml", "layers = 30", "24, the num_hidden_layers of the checkpoint some/gptq-checkpoint")),
    ("cache-full", _full_cache, ("cannot write the steering/search artefact (No space left on device)",
                                 "expected a writable cache folder with free space")),
    ("cache-not-writable", lambda t, m: _read_only_cache(t),
     ("cannot lock a cache entry there", "expected a writable cache folder")),
]


@pytest.mark.parametrize(("run", "words"), [c[1:] for c in RUN_TIME_CASES], ids=[c[0] for c in RUN_TIME_CASES])
def test_what_only_a_cell_can_find_is_an_error_that_names_what_was_expected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: Callable[[Path, pytest.MonkeyPatch], Exception],
        words: tuple[str, ...]) -> None:
    e = run(tmp_path, monkeypatch)
    for w in words:
        assert w in str(e), str(e)
