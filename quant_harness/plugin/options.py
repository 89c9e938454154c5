"""Command-line options and ini keys, and the folders they name. Registered once, read everywhere from here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quant_harness._util import defaults
from quant_harness.scale.scheduling import Shard, gpu_slots_arg, parse_shard


def add_options(parser: pytest.Parser) -> None:
    """Every option with the ini key it falls back to, grouped as ``pytest --help`` shows them."""
    group = parser.getgroup("quant_harness", "quantization sensitivity of trait vectors")
    group.addoption("--quant-study", dest="quant_study", default=None, metavar="PATH",
                    help="Study file to run (TOML). Default: ini quant_study")
    parser.addini("quant_study", "Study file run when --quant-study is not given", default="")
    group.addoption("--quant-cache-dir", dest="quant_cache_dir", default=None, metavar="DIR",
                    help=f"Artefact cache folder. Default: ini quant_cache_dir, else {defaults.CACHE_DIR}")
    parser.addini("quant_cache_dir", "Artefact cache folder", default=defaults.CACHE_DIR)
    group.addoption("--quant-model-dir", dest="quant_model_dir", default=None, metavar="DIR",
                    help="Folder for local checkpoints (embedded model, GPTQ quantized on load). "
                         f"Default: ini quant_model_dir, else <cache dir>/{defaults.MODELS_SUBDIR}")
    parser.addini("quant_model_dir", "Folder for local checkpoints", default="")
    group.addoption("--quant-report-dir", dest="quant_report_dir", default=None, metavar="DIR",
                    help="Where results/*.json and run.json are written. "
                         f"Default: ini quant_report_dir, else {defaults.REPORT_DIR}")
    parser.addini("quant_report_dir", "Folder for result files", default=defaults.REPORT_DIR)
    group.addoption("--quant-update-baselines", dest="quant_update_baselines", action="store_true", default=False,
                    help="Record the selected cells' figures as baselines (and delete unused ones) instead of "
                         "comparing with them. Default: compare")
    parser.addini("quant_baselines_dir", "Folder of per-study baselines, relative to rootdir",
                  default=defaults.BASELINES_DIR)
    group.addoption("--quant-gpus", dest="quant_gpus", default=None, metavar="SLOTS", type=gpu_slots_arg,
                    help="GPU slots, one per xdist worker: ';' between slots, ',' within, indices into your "
                         "CUDA_VISIBLE_DEVICES, e.g. '0;1;2;3;4,5;6,7', or 'auto'. Default: ini quant_gpus, else no pinning")
    parser.addini("quant_gpus", "GPU slots per worker (see --quant-gpus)", default="")
    group.addoption("--quant-gpu-mem", dest="quant_gpu_mem", default=None, type=float, metavar="GB",
                    help="Memory of one GPU, for the plan's fit check. Default: ini quant_gpu_mem, else unchecked")
    parser.addini("quant_gpu_mem", "Memory of one GPU in GB (see --quant-gpu-mem)", default="")
    group.addoption("--quant-shard", dest="quant_shard", default=None, type=parse_shard, metavar="I/N",
                    help="Run shard I of N (whole model x precision groups, stable hash); results go to "
                         "<report dir>/shards/shard-I-of-N. Default: everything")
    group.addoption("--quant-rehearse", dest="quant_rehearse", action="store_true", default=False,
                    help="Rehearse the study on CPU: every model replaced by its tiny twin ($QUANT_HARNESS_DATA/"
                         "model_twins), the loopback judge, small data limits; reports under <report dir>/rehearsal. "
                         "Default: the real study")
    group.addoption("--quant-plan", dest="quant_plan", action="store_true", default=False,
                    help="Print cells, groups, workers, memory estimates and warm cache entries; load and run nothing")


def setting(config: pytest.Config, name: str) -> str:
    """An option's value, else its ini key's, else ""."""
    return str(config.getoption(name) or config.getini(name) or "")


def _path(config: pytest.Config, name: str) -> Path:
    p = Path(os.path.expandvars(setting(config, name))).expanduser()
    return p if p.is_absolute() else config.rootpath / p


def cache_dir(config: pytest.Config) -> Path:
    return _path(config, "quant_cache_dir")


def model_dir(config: pytest.Config) -> Path:
    if setting(config, "quant_model_dir"):
        return _path(config, "quant_model_dir")
    return cache_dir(config) / defaults.MODELS_SUBDIR


def shard(config: pytest.Config) -> Shard | None:
    value: Shard | None = config.getoption("quant_shard", None)
    return value


def report_dir(config: pytest.Config) -> Path:
    """The report folder; a shard writes into its own part of it: ``<dir>/shards/shard-I-of-N``."""
    base = _path(config, "quant_report_dir")
    if rehearsing(config):
        base = base / "rehearsal"
    sh = shard(config)
    return base / "shards" / sh.label if sh else base


def rehearsing(config: pytest.Config) -> bool:
    """``--quant-rehearse``: twins for models (quant_harness.scale.rehearsal); a rehearsal never replaces real reports."""
    return bool(config.getoption("quant_rehearse", False))


def planning(config: pytest.Config) -> bool:
    return bool(config.getoption("quant_plan", False))


def check_writable(config: pytest.Config) -> None:
    """The cache folder must take files before any cell runs (every cell writes there, and a warm run still takes
    per-entry locks): a read-only or full folder, or a path that is a file, is a usage error naming it. Not checked
    for --quant-plan and --collect-only, which write nothing."""
    if planning(config) or config.getoption("collectonly", False):
        return
    import tempfile

    where = cache_dir(config)
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".write-check-"):
            pass
    except OSError as e:
        raise pytest.UsageError(f"{where}: --quant-cache-dir = {str(where)!r}: expected a writable folder with free "
                                f"space ({type(e).__name__}: {e.strerror or e})") from e
