"""GPU slots, worker pinning, shard selection and GPU-aware group placement, with fake device lists and nodes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from quant_harness.plugin import scale
from quant_harness.scale import scheduling
from quant_harness.scale.scheduling import Shard
from quant_harness.scale.xdist_scheduler import CellGroupScheduling
from quant_harness.study import ids as cell_ids


def test_slots_index_into_the_callers_visible_devices() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "3,5,6,7"}
    assert scheduling.resolve_slots("0;1;2,3", env) == [("3",), ("5",), ("6", "7")]
    assert scheduling.resolve_slots("0;1;2,3", {}) == [("0",), ("1",), ("2", "3")]
    assert scheduling.resolve_slots("auto", env) == [("3",), ("5",), ("6",), ("7",)]
    assert scheduling.resolve_slots("auto", {}, device_count=0) == []
    assert scheduling.resolve_slots("", env) == []


def test_slot_outside_the_visible_list_names_option_and_list() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"--quant-gpus '0;4'.*index 4.*CUDA_VISIBLE_DEVICES='3,5'"):
        scheduling.resolve_slots("0;4", {"CUDA_VISIBLE_DEVICES": "3,5"})


@pytest.mark.parametrize("text, message", [
    ("0;a", "Could not parse --quant-gpus '0;a': expected slots separated by ';'"),
    ("0;0,1", "device 0 is in two slots"),
    ("1,1", "device 1 is in two slots"),
])
def test_bad_gpu_slots_are_rejected(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        scheduling.gpu_slots_arg(text)


def test_each_worker_gets_its_slot_and_pins_only_that() -> None:
    slots = scheduling.resolve_slots("0;1;2;3;4,5;6,7", {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
    assert [scheduling.slot_for_worker(slots, f"gw{i}") for i in (0, 4, 5, 6)] == [
        ("0",), ("4", "5"), ("6", "7"), ("0",)]
    env: dict[str, str] = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    scheduling.pin(env, scheduling.slot_for_worker(slots, "gw5"))
    assert env["CUDA_VISIBLE_DEVICES"] == "6,7"


def test_worker_pins_itself_from_workerinput_before_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    config = SimpleNamespace(workerinput={"workerid": "gw1", "quant_gpu_slot": "2,3"})
    scale.cmdline_main(config)  # type: ignore[arg-type]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_controller_hands_each_node_its_slot(monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    config = pytester.parseconfig("-p", "quant_harness.plugin", "--quant-gpus", "0;1,2")
    nodes = [SimpleNamespace(gateway=SimpleNamespace(id=f"gw{i}"), workerinput={}) for i in range(3)]
    for node in nodes:
        scale.configure_node(config, node)
    assert [n.workerinput["quant_gpu_slot"] for n in nodes] == ["4", "5,6", "4"]
    assert nodes[0].workerinput["quant_gpu_slots"] == "4;5,6"


def test_a_model_that_fits_no_slot_gets_a_skip_reason() -> None:
    slots = [("0",), ("1",)]
    reason = scheduling.unfit_reason("llama-70b", 2, slots, distributed=True)
    assert reason == "llama-70b needs 2 GPUs (model card gpus = 2); the largest slot of --quant-gpus '0;1' has 1"
    assert scheduling.unfit_reason("llama-70b", 2, slots, distributed=False) is None
    assert scheduling.unfit_reason("llama-70b", 2, [], distributed=True) is None


@pytest.mark.parametrize("text", ["3/2", "2/2", "-1/2", "1", "a/b", "1/0"])
def test_bad_shard_is_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=rf"Could not parse '{text}': expected I/N with 0 <= I < N"):
        scheduling.parse_shard(text)


def test_shards_split_whole_groups_stably() -> None:
    assert scheduling.parse_shard("1/4") == Shard(1, 4)
    assert scheduling.shard_of("llama-8b-nf4", 8) == scheduling.shard_of("llama-8b-nf4", 8) == 6
    ids = [f"cases/test_v.py::test_v[{m}-{p}-caa_x-{k}]@g" for m in ("a", "b", "c") for p in ("nf4", "int8")
           for k in ("mean_diff", "probe")]
    for n in (1, 2, 3, 5):
        chosen = [[i for i in ids if scheduling.in_shard(i, Shard(s, n))] for s in range(n)]
        assert sorted(sum(chosen, [])) == sorted(ids)
        for part in chosen:
            groups = {cell_ids.group_of_nodeid(i) for i in part}
            assert all(cell_ids.group_of_nodeid(i) not in groups for other in chosen if other is not part
                       for i in other)


class _Node:
    def __init__(self, name: str, slot: str | None) -> None:
        self.gateway = SimpleNamespace(id=name, spec=SimpleNamespace(env={}))
        self.workerinput = {"quant_gpu_slot": slot} if slot is not None else {}
        self.shutting_down = False
        self.sent: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent += indices

    def shutdown(self) -> None:
        self.shutting_down = True

    def __repr__(self) -> str:
        return self.gateway.id


def _run(sched: CellGroupScheduling, nodes: list[_Node], ids: list[str]) -> dict[str, set[str]]:
    """Drive the scheduler to the end; return which nodes ran each group."""
    for node in nodes:
        sched.add_node(node)  # type: ignore[arg-type]
        sched.add_node_collection(node, ids)  # type: ignore[arg-type]
    sched.schedule()
    ran: dict[str, set[str]] = {}
    done: set[tuple[str, int]] = set()
    while True:
        pending = [(n, i) for n in nodes for i in n.sent if (n.gateway.id, i) not in done]
        if not pending:
            break
        node, i = pending[0]
        done.add((node.gateway.id, i))
        ran.setdefault(str(cell_ids.group_of_nodeid(ids[i])), set()).add(node.gateway.id)
        sched.mark_test_complete(node, i)  # type: ignore[arg-type]
    assert sched.tests_finished
    return ran


def _sched(pytester: pytest.Pytester, n: int, gpus: dict[str, int]) -> CellGroupScheduling:
    config: Any = pytester.parseconfig("-p", "xdist", f"--tx={n}*popen")
    return CellGroupScheduling(config, None, model_gpus=gpus)


def test_a_two_gpu_model_never_lands_on_a_one_gpu_slot(pytester: pytest.Pytester) -> None:
    ids = [f"cases/test_v.py::test_v[{m}-{p}-caa_x-{k}]" for m in ("big", "mid", "small")
           for p in ("nf4", "int8", "gptq") for k in ("mean_diff", "probe")]
    nodes = [_Node("gw0", "0"), _Node("gw1", "1"), _Node("gw2", "2,3")]
    ran = _run(_sched(pytester, 3, {"big": 2}), nodes, ids)
    assert len(ran) == 9 and all(len(w) == 1 for w in ran.values())
    assert all(ran[f"big-{p}"] == {"gw2"} for p in ("nf4", "int8", "gptq"))
    assert nodes[2].sent[:2] == [0, 1]  # the 2-GPU groups are handed out first


def test_unpinned_workers_still_group_and_unfit_models_still_run(pytester: pytest.Pytester) -> None:
    ids = [f"cases/test_v.py::test_v[{m}-nf4-caa_x-{k}]" for m in ("big", "small") for k in ("mean_diff", "probe")]
    ran = _run(_sched(pytester, 2, {"big": 2}), [_Node("gw0", None), _Node("gw1", None)], ids)
    assert sorted(map(len, ran.values())) == [1, 1]
    ran = _run(_sched(pytester, 2, {"big": 2}), [_Node("gw0", "0"), _Node("gw1", "1")], ids)
    assert set(ran) == {"big-nf4", "small-nf4"} and all(len(w) == 1 for w in ran.values())


def test_loading_the_plugin_imports_nothing_that_touches_cuda() -> None:
    """A worker pins CUDA_VISIBLE_DEVICES in pytest_cmdline_main, after the plugin module is imported."""
    import subprocess
    import sys

    code = ("import sys, quant_harness.plugin, quant_harness.scale, quant_harness.scale.xdist_scheduler; "
            "print(sorted(m for m in ('bitsandbytes', 'gptqmodel', 'optimum', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_vram_estimate_follows_bytes_per_parameter() -> None:
    from quant_harness.scale.planner import vram_gb

    assert vram_gb(8.0, "bf16") == pytest.approx(8 * 2 * 1.1 + 1.5)
    assert vram_gb(8.0, "nf4") < vram_gb(8.0, "int8") < vram_gb(8.0, "bf16") < vram_gb(8.0, "fp32")
    assert vram_gb(70.6, "bf16") > 80 > vram_gb(70.6, "nf4")


def test_quantized_groups_wait_for_their_reference_group(pytester: pytest.Pytester) -> None:
    """Two phases per model: a quantized group goes to a worker only once its reference group has finished, or to
    the worker running it (which runs its queue in order); another model's groups keep the other worker busy."""
    ids = [f"cases/test_v.py::test_v[{m}-{p}-caa_x-{k}]" for m in ("a", "b") for p in ("nf4", "int8", "bf16")
           for k in ("mean_diff", "probe")]
    sched = CellGroupScheduling(pytester.parseconfig("-p", "xdist", "--tx=2*popen"), None, reference="bf16")
    nodes = [_Node("gw0", None), _Node("gw1", None)]
    started: dict[str, tuple[str, set[str]]] = {}
    """group -> (node it was sent to, reference groups complete at that moment)."""
    done: set[int] = set()

    def complete(group: str) -> bool:
        return all(i in done for i, nid in enumerate(ids) if cell_ids.group_of_nodeid(nid) == group)

    for node in nodes:
        sched.add_node(node)  # type: ignore[arg-type]
        sched.add_node_collection(node, ids)  # type: ignore[arg-type]

    def note_sends() -> None:
        for node in nodes:
            for i in node.sent:
                g = str(cell_ids.group_of_nodeid(ids[i]))
                started.setdefault(g, (node.gateway.id, {r for r in ("a-bf16", "b-bf16") if complete(r)}))

    sched.schedule()
    note_sends()
    while pending := [(n, i) for n in nodes for i in n.sent if i not in done]:
        node, i = pending[0]
        done.add(i)
        sched.mark_test_complete(node, i)  # type: ignore[arg-type]
        note_sends()
    assert sched.tests_finished and len(started) == 6
    assert started["a-bf16"][0] != started["b-bf16"][0]   # both references first, in parallel
    for m in ("a", "b"):
        ref_node = started[f"{m}-bf16"][0]
        for p in ("nf4", "int8"):
            node, refs_done = started[f"{m}-{p}"]
            assert node == ref_node or f"{m}-bf16" in refs_done, (m, p, started)


def test_by_group_keeps_each_groups_cells_together_in_their_own_order() -> None:
    groups = ["m-fp32", "m-nf4", "m-int8", "m-fp32", "m-nf4", "m-int8", None, "m-nf4"]
    assert scheduling.by_group(groups) == [0, 3, 1, 4, 7, 2, 5, 6]
    # the reference group leads even where a comparison kind (no reference cells) collects first
    assert scheduling.by_group(["m-int8", "m-nf4", "m-fp32", "m-int8"], lead=["m-fp32"]) == [2, 0, 3, 1]


def test_the_pool_evicts_the_reference_before_loading_a_quantized_model(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Any) -> None:
    """One resident model: the reference is dropped before a quantized copy loads (70B bf16 + NF4 > 160 GB)."""
    from quant_harness import runner
    from quant_harness.study.load import load as load_study

    study = load_study(Path(__file__).resolve().parents[2] / "cases" / "studies" / "quant-sensitivity.toml",
                       check_data=False)
    resident: list[str] = []

    class _Loaded:
        def __init__(self, name: str) -> None:
            self.name, self.load_seconds, self.device = name, 0.0, "cpu"
            assert not resident, f"{name} loaded while {resident} is resident"
            resident.append(name)

        def __del__(self) -> None:
            resident.remove(self.name)

    monkeypatch.setattr(runner, "load", lambda card, precision, **_: _Loaded(f"{card.name}-{precision}"))
    pool = runner.ModelPool(study, tmp_path)
    for precision in ("bf16", "nf4", "nf4", "int8"):
        assert pool.get("llama-70b", precision).name == f"llama-70b-{precision}"
    assert pool.history == [("load", "llama-70b-bf16"), ("evict", "llama-70b-bf16"), ("load", "llama-70b-nf4"),
                            ("evict", "llama-70b-nf4"), ("load", "llama-70b-int8")]
    pool.close()
    assert resident == []
