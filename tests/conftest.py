"""Shared fixtures of the harness's own tests.

torch, transformers and the quantization libraries are imported here first: pytester's in-process runs restore
sys.modules afterwards, and a second import of a module that registers torch operators dies inside the next run
("function '_has_torch_function' already has a docstring", "Tried to register an operator ... multiple times").
Runs that load a quantized model use runpytest_subprocess: transformers imports its quantizer classes lazily, and an
in-process run would evict and re-create them (class identity checks then fail).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import bitsandbytes  # noqa: F401
import pytest
import torch  # noqa: F401
import torchao  # noqa: F401
import transformers  # noqa: F401

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    """Every pytester run in a fresh process (pytest's own --runpytest=subprocess): the libraries a study imports
    (transformers' lazy quantizers, lm-eval, torchao) do not survive pytester's sys.modules restore."""
    config.option.runpytest = "subprocess"

REPO = Path(__file__).resolve().parent.parent
CASES = REPO / "cases"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The repository's model store: the embedded checkpoint and the GPTQ quantization are built once per machine."""
    return REPO / ".quant_cache" / "models"


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An activation cache shared by the tests of one session, so each study configuration is extracted once."""
    return tmp_path_factory.mktemp("activation_cache")


def study_toml(
    *,
    precisions: tuple[str, ...] = ("fp32", "nf4"),
    methods: tuple[str, ...] = ("mean_diff", "probe"),
    traits: str = "",
    limit: int = 8,
    layers: str = "[3, 10, 20]",
    extra: str = "",
    fail_on: str = "never",
) -> str:
    """A small study over the embedded model: CAA sycophancy (and any extra trait tables), few examples."""
    default_trait = f"""
        [[traits]]
        methodology = "caa"
        name = "sycophancy"
        dataset = "{REPO}/fixtures/traits/caa_sycophancy.json"
        limit = {limit}
        layers = {layers}
    """
    return textwrap.dedent(f"""
        [study]
        name = "tiny"
        root = "{REPO}"
        reference = "{precisions[0]}"
        precisions = {list(precisions)!r}
        methods = {list(methods)!r}
        fail_on = "{fail_on}"
        nf4_compute_dtype = "float32"

        [models.smollm2-135m]
        card = "smollm2-135m"
    """).replace("'", '"') + textwrap.dedent(traits or default_trait) + textwrap.dedent(extra)


@pytest.fixture
def make_study(tmp_path: Path) -> Callable[..., Path]:
    """Write a small study file and return its path."""

    def make(name: str = "tiny", **kwargs: object) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(study_toml(**kwargs))  # type: ignore[arg-type]
        return path

    return make


@pytest.fixture
def run_args(model_dir: Path, shared_cache: Path) -> Callable[..., list[str]]:
    """Arguments for a pytester run of the real `cases/` with a given study."""

    def args(study: Path, *more: str, cache: Path | None = None) -> list[str]:
        here = Path.cwd()  # pytester has chdir'ed into its own folder: reports land there, not in the repo
        return [str(CASES), "-p", "quant_harness.plugin", "--quant-study", str(study),
                "--quant-model-dir", str(model_dir), "--quant-cache-dir", str(cache or shared_cache),
                "--quant-report-dir", str(here / "reports"), "--rootdir", str(here), "-p", "no:cacheprovider",
                # cases/test_x.py and tests/unit/test_x.py share basenames: import each by its path
                "--import-mode=importlib",
                *more]

    return args


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Thousands of tiny matrix products (resampling tests): one thread each is faster than a contended pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
