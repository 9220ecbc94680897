"""The Ascend backend: ``npu-smi info`` outputs recorded on real machines (see runtime/tests/data/)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from gpustack_runtime.devices.ascend import (
    AscendBackend,
    NpuSmiParseError,
    parse_npu_smi_info,
    snapshots_from_info,
)
from gpustack_runtime.devices.base import DeviceBackend, DeviceBackendUnavailable, DeviceProcess, DeviceQueryError

DATA = Path(__file__).parent / "data"
MIB = 1024 * 1024
GIB_64 = 65536 * MIB


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def test_910b3_server_with_eight_npus():
    info = parse_npu_smi_info(recorded("npu_smi_info_910b3_x8.txt"))
    assert info.driver_version == "25.3.rc1"
    snapshots = snapshots_from_info(info)

    assert [s.index for s in snapshots] == list(range(8))
    assert [s.pci_bus_id for s in snapshots] == [
        "0000:C1:00.0",
        "0000:C2:00.0",
        "0000:81:00.0",
        "0000:82:00.0",
        "0000:01:00.0",
        "0000:02:00.0",
        "0000:41:00.0",
        "0000:42:00.0",
    ]
    first = snapshots[0]
    assert first.vendor == "ascend"
    assert first.product == "910B3"
    assert first.uuid == "ascend-0000:c1:00.0"
    assert first.health == "OK"
    assert first.power_w == 100.9
    assert first.temperature_c == 40.0
    assert first.utilization_gpu == 0.0
    assert first.memory_total == GIB_64 == 68_719_476_736
    assert first.memory_used == 58626 * MIB == 61_473_816_576
    assert snapshots[2].memory_used == 58627 * MIB
    assert first.compute_capability is None
    assert first.processes == [DeviceProcess(pid=71867, used_memory=55278 * MIB, name=None)]
    assert snapshots[7].processes == [DeviceProcess(pid=71874, used_memory=55278 * MIB, name=None)]
    # One Atlas A2 server: its 910B NPUs share the HCCS mesh.
    assert {s.topology_group for s in snapshots} == {"hccs-0"}


def test_910b4_container_with_two_visible_npus_and_several_processes():
    info = parse_npu_smi_info(recorded("npu_smi_info_910b4_x2.txt"))
    assert info.driver_version == "24.1.rc3"
    assert [(chip.npu_id, chip.chip_id, chip.phy_id) for chip in info.chips] == [(3, 0, None), (6, 0, None)]
    first, second = snapshots_from_info(info)

    # npu-smi's NPU ids 3 and 6 are devices 0 and 1 for the engines in this container.
    assert (first.index, second.index) == (0, 1)
    assert first.product == second.product == "910B4"
    assert first.memory_total == 32768 * MIB == 34_359_738_368
    assert first.memory_used == 3034 * MIB
    assert second.memory_used == 2912 * MIB
    assert (first.power_w, first.temperature_c) == (87.1, 48.0)
    assert (second.power_w, second.temperature_c) == (90.6, 45.0)
    assert first.processes == [
        DeviceProcess(pid=14414, used_memory=113 * MIB, name="python"),
        DeviceProcess(pid=14247, used_memory=115 * MIB, name="vllm"),
        DeviceProcess(pid=14413, used_memory=113 * MIB, name="python"),
    ]
    assert second.processes == [DeviceProcess(pid=14412, used_memory=115 * MIB, name="python")]
    assert first.topology_group == second.topology_group == "hccs-0"


def test_a3_node_lists_each_die_as_a_device():
    info = parse_npu_smi_info(recorded("npu_smi_info_a3_x16.txt"))
    assert info.driver_version == "25.2.0"
    assert len(info.chips) == 16
    assert [(chip.npu_id, chip.chip_id, chip.phy_id) for chip in info.chips[:4]] == [
        (0, 0, 0),
        (0, 1, 1),
        (1, 0, 2),
        (1, 1, 3),
    ]
    snapshots = snapshots_from_info(info)
    die0, die1 = snapshots[0], snapshots[1]
    assert die0.product == "Ascend910"
    assert (die0.pci_bus_id, die1.pci_bus_id) == ("0000:9D:00.0", "0000:9F:00.0")
    assert die0.power_w == 211.3
    assert die1.power_w is None  # "-": the card's power is reported on its first die
    assert (die0.temperature_c, die1.temperature_c) == (43.0, 44.0)
    assert die0.utilization_gpu == 7.0
    assert snapshots[8].utilization_gpu == 8.0  # NPU 4 chip 0
    assert die0.memory_used == 61609 * MIB
    assert die1.memory_used == 61625 * MIB
    assert snapshots[15].memory_used == 61631 * MIB
    assert all(s.memory_total == GIB_64 for s in snapshots)
    # Processes belong to (NPU, chip): eight small ones on die 0, the worker on die 1.
    assert [p.pid for p in die0.processes] == [935440, 936673, 930242, 934451, 931572, 941045, 942487, 929673]
    assert all(p.used_memory == 141 * MIB for p in die0.processes)
    assert die1.processes == [DeviceProcess(pid=929405, used_memory=58780 * MIB)]
    assert snapshots[15].processes == [DeviceProcess(pid=944268, used_memory=58782 * MIB)]
    assert len({s.uuid for s in snapshots}) == 16


def test_single_npu_has_no_group_and_other_families_have_no_hccs():
    text = recorded("npu_smi_info_910b3_x8.txt")
    one = parse_npu_smi_info(text.split("| 1     910B3")[0])  # the table cut after NPU 0
    assert len(one.chips) == 1
    assert snapshots_from_info(one)[0].topology_group is None

    other = parse_npu_smi_info(text.replace("910B3", "310P3"))
    assert {s.topology_group for s in snapshots_from_info(other)} == {None}


def test_unreadable_rows_name_the_line():
    broken = recorded("npu_smi_info_910b4_x2.txt").replace("87.1        48", "hot         48")
    with pytest.raises(NpuSmiParseError, match=r"line \d+: 'hot' is not a number"):
        parse_npu_smi_info(broken)
    assert parse_npu_smi_info("").chips == ()


class RecordedRunner:
    """Plays recorded npu-smi outputs in turn and counts the runs."""

    def __init__(self, *outputs: str) -> None:
        self.outputs = list(outputs)
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, arguments: Sequence[str]) -> str:
        self.calls.append(tuple(arguments))
        return self.outputs[min(len(self.calls), len(self.outputs)) - 1]


def test_backend_caches_one_run_for_max_age():
    now = [100.0]
    runner = RecordedRunner(recorded("npu_smi_info_910b4_x2.txt"), recorded("npu_smi_info_910b3_x8.txt"))
    backend = AscendBackend(runner, max_age_s=2.0, clock=lambda: now[0])
    assert isinstance(backend, DeviceBackend)
    assert backend.driver_version == "24.1.rc3"
    assert runner.calls == [("info",)]

    assert len(backend.snapshot()) == 2
    now[0] += 1.9
    assert len(backend.snapshot()) == 2
    assert len(runner.calls) == 1
    now[0] += 0.1
    assert len(backend.snapshot()) == 8  # re-read: the second recorded output
    assert len(runner.calls) == 2
    backend.close()


def test_backend_unavailable_when_npu_smi_fails_or_lists_nothing():
    def failing(arguments: Sequence[str]) -> str:
        raise subprocess.CalledProcessError(255, ["npu-smi", *arguments], stderr="dcmi init failed")

    with pytest.raises(DeviceBackendUnavailable, match="npu-smi info failed"):
        AscendBackend(failing)
    with pytest.raises(DeviceBackendUnavailable, match="lists no NPU"):
        AscendBackend(RecordedRunner("npu-smi: command output without a table\n"))


def test_failure_after_start_is_a_query_error():
    now = [0.0]
    runner = RecordedRunner(
        recorded("npu_smi_info_910b4_x2.txt"), "| 0     910B4 | OK | x 1 |\n| 0 | 0000:02:00.0 | 0 1/2 |"
    )
    backend = AscendBackend(runner, max_age_s=0, clock=lambda: now[0])
    with pytest.raises(DeviceQueryError, match="'x' is not a number"):
        backend.snapshot()
