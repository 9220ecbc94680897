"""The NVML backend against the fake libnvidia-ml.so.1 (the real pynvml code path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest
from fakenvml import H100_SXM_MEMORY_TOTAL, H100_SXM_NAME, fake_gpu
from gpustack_runtime.devices.base import DeviceBackend, DeviceBackendUnavailable, DeviceProcess, DeviceQueryError
from gpustack_runtime.devices.nvml import (
    HIDDEN_NVLINK_REMOTE,
    LIBRARY_PATH_ENV,
    NvmlBackend,
    normalize_pci_bus_id,
    nvlink_topology_groups,
)

GIB = 1024**3
OPTIONAL_FUNCTIONS = [
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetNvLinkState",
    "nvmlDeviceGetComputeRunningProcesses_v3",
]


def hgx_two_cliques() -> list[dict]:
    """8 H100s wired as two NVLink cliques of 4 (GPUs 0-3 and 4-7): 6 links to each of 3 peers, 18 in all."""
    devices = []
    for index in range(8):
        clique = range(0, 4) if index < 4 else range(4, 8)
        peers = [peer for peer in clique if peer != index]
        devices.append(fake_gpu(index, nvlink_peers=peers * 6))
    return devices


def test_eight_h100_in_two_nvlink_cliques_form_two_groups(fake_nvml):
    fake = fake_nvml(hgx_two_cliques())
    with NvmlBackend(fake.library_path) as backend:
        snapshots = backend.snapshot()

    assert [s.index for s in snapshots] == list(range(8))
    assert [s.topology_group for s in snapshots] == ["nvlink-0"] * 4 + ["nvlink-1"] * 4
    first = snapshots[0]
    assert first.vendor == "nvidia"
    assert first.product == H100_SXM_NAME
    assert first.uuid == "GPU-00000000-1111-2222-3333-444455556666"
    assert first.memory_total == H100_SXM_MEMORY_TOTAL == 85_520_809_984
    assert first.compute_capability == "9.0"
    assert first.pci_bus_id == "00000000:18:00.0"
    assert snapshots[7].pci_bus_id == "00000000:88:00.0"
    assert backend.driver_version == "550.54.15"


def test_used_memory_and_processes_are_reported(fake_nvml):
    used = 40 * GIB + 123
    fake = fake_nvml(
        [
            fake_gpu(0),
            fake_gpu(
                1,
                memory_used=used,
                processes=[{"pid": 4242, "used_memory": 38 * GIB}, {"pid": 4243, "used_memory": 2 * GIB}],
            ),
        ]
    )
    with NvmlBackend(fake.library_path) as backend:
        idle, busy = backend.snapshot()

    assert idle.memory_used == 0
    assert idle.processes == []
    assert busy.memory_used == used
    assert busy.processes == [
        DeviceProcess(pid=4242, used_memory=38 * GIB),
        DeviceProcess(pid=4243, used_memory=2 * GIB),
    ]


def test_process_memory_the_driver_cannot_attribute_is_zero(fake_nvml):
    fake = fake_nvml([fake_gpu(0, processes=[{"pid": 7, "used_memory": None}])])
    with NvmlBackend(fake.library_path) as backend:
        (gpu,) = backend.snapshot()
    assert gpu.processes == [DeviceProcess(pid=7, used_memory=0)]


def test_power_is_in_watts_and_live_readings_are_reported(fake_nvml):
    fake = fake_nvml([fake_gpu(0, power_mw=312_456, power_limit_mw=700_000, temperature=64, utilization=87)])
    with NvmlBackend(fake.library_path) as backend:
        (gpu,) = backend.snapshot()
    assert gpu.power_w == pytest.approx(312.456)
    assert gpu.power_limit_w == 700.0
    assert gpu.temperature_c == 64.0
    assert gpu.utilization_gpu == 87.0


def test_snapshot_reads_live_facts_each_time_and_static_facts_once(fake_nvml):
    """The fake re-reads its file on every nvmlInit, so a second backend changes the "hardware" under the
    first one: live facts follow, cached static facts do not."""
    fake = fake_nvml([fake_gpu(0, memory_used=1 * GIB)])
    with NvmlBackend(fake.library_path) as backend:
        assert backend.snapshot()[0].memory_used == 1 * GIB
        fake.reconfigure(
            [fake_gpu(0, name="Renamed GPU", memory_used=5 * GIB, processes=[{"pid": 9, "used_memory": 4 * GIB}])]
        )
        NvmlBackend(fake.library_path).close()  # nvmlInit: the fake loads the new description

        (gpu,) = backend.snapshot()
    assert gpu.memory_used == 5 * GIB
    assert gpu.processes == [DeviceProcess(pid=9, used_memory=4 * GIB)]
    assert gpu.product == H100_SXM_NAME  # read once at construction


def test_nvswitch_system_is_one_group(fake_nvml):
    """On HGX boards with NVSwitch every GPU's links end at the switches, never at another GPU."""
    switches = [f"00000000:{bus:02X}:00.0" for bus in (0xC1, 0xC2, 0xC3, 0xC4)]
    fake = fake_nvml([fake_gpu(i, nvlink_remote_bus_ids=switches * 4 + switches[:2]) for i in range(8)])
    with NvmlBackend(fake.library_path) as backend:
        groups = {s.topology_group for s in backend.snapshot()}
    assert groups == {"nvlink-0"}


def test_vm_that_hides_the_switch_is_one_group(fake_nvml):
    """What a 2 x H200 HGX cloud VM reports (driver 580.159.04): 18 active links per GPU, every remote
    PCI address FFFFFFFF:FF:FF.0."""
    fake = fake_nvml([fake_gpu(i, nvlink_remote_bus_ids=[HIDDEN_NVLINK_REMOTE] * 18) for i in range(2)])
    with NvmlBackend(fake.library_path) as backend:
        assert [s.topology_group for s in backend.snapshot()] == ["nvlink-0", "nvlink-0"]


def test_device_without_nvlink_has_no_group(fake_nvml):
    fake = fake_nvml(
        [
            fake_gpu(0, nvlink_peers=[1] * 4),
            fake_gpu(1, nvlink_peers=[0] * 4),
            fake_gpu(2),  # PCIe only: NVML answers NOT_SUPPORTED
            fake_gpu(3, nvlink_inactive_links=18),  # links exist but are all down
        ]
    )
    with NvmlBackend(fake.library_path) as backend:
        assert [s.topology_group for s in backend.snapshot()] == ["nvlink-0", "nvlink-0", None, None]


def test_unsupported_optional_facts_become_none(fake_nvml):
    fake = fake_nvml(
        [
            fake_gpu(0, nvlink_peers=[1], processes=[{"pid": 1, "used_memory": GIB}], unsupported=OPTIONAL_FUNCTIONS),
            fake_gpu(1, nvlink_peers=[0], processes=[{"pid": 2, "used_memory": GIB}]),
        ]
    )
    with NvmlBackend(fake.library_path) as backend:
        for _ in range(2):  # the second snapshot skips what the first found unsupported
            bare, full = backend.snapshot()
            assert (bare.utilization_gpu, bare.temperature_c, bare.power_w, bare.power_limit_w) == (None,) * 4
            assert bare.compute_capability is None
            # Its own links are unknown, but GPU 1 reports the link between them: a link seen from either
            # end joins the two.
            assert bare.topology_group == full.topology_group == "nvlink-0"
            assert bare.processes == []
            assert bare.memory_total == H100_SXM_MEMORY_TOTAL
            assert full.power_w == 70.0
            assert full.compute_capability == "9.0"
            assert full.processes == [DeviceProcess(pid=2, used_memory=GIB)]


def test_functions_missing_from_the_library_become_none(fake_nvml):
    """An old driver lacks functions entirely: pynvml raises NVMLError_FunctionNotFound."""
    fake = fake_nvml([fake_gpu(0, processes=[{"pid": 1, "used_memory": GIB}])], minimal=True)
    with NvmlBackend(fake.library_path) as backend:
        (gpu,) = backend.snapshot()
    assert gpu.memory_total == H100_SXM_MEMORY_TOTAL
    assert gpu.product == H100_SXM_NAME
    assert (gpu.compute_capability, gpu.topology_group, gpu.utilization_gpu, gpu.temperature_c) == (None,) * 4
    assert (gpu.power_w, gpu.power_limit_w) == (None, None)
    assert gpu.processes == []


def test_driver_not_loaded_raises_typed_unavailable(fake_nvml):
    fake = fake_nvml([fake_gpu(0)], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(DeviceBackendUnavailable, match="Driver Not Loaded") as raised:
        NvmlBackend(fake.library_path)
    assert raised.value.backend == "nvml"
    assert "NVML error 9" in raised.value.reason


def test_missing_library_raises_typed_unavailable(tmp_path):
    with pytest.raises(DeviceBackendUnavailable, match="cannot load NVML library"):
        NvmlBackend(tmp_path / "libnvidia-ml.so.1")


def test_library_path_from_environment(fake_nvml, monkeypatch):
    fake = fake_nvml([fake_gpu(0), fake_gpu(1)])
    monkeypatch.setenv(LIBRARY_PATH_ENV, str(fake.library_path))
    with NvmlBackend() as backend:
        assert len(backend.snapshot()) == 2


def test_closed_backend_refuses_snapshots_and_close_is_idempotent(fake_nvml):
    fake = fake_nvml([fake_gpu(0)])
    backend = NvmlBackend(fake.library_path)
    assert isinstance(backend, DeviceBackend)
    backend.close()
    backend.close()
    with pytest.raises(DeviceQueryError, match="closed"):
        backend.snapshot()


def test_subprocess_finds_the_fake_through_ld_library_path(fake_nvml):
    """How the agent runs in end-to-end tests: no library_path, the loader finds libnvidia-ml.so.1."""
    fake = fake_nvml(hgx_two_cliques())
    script = (
        "import json; from gpustack_runtime.devices.nvml import NvmlBackend\n"
        "with NvmlBackend() as b: print(json.dumps([s.topology_group for s in b.snapshot()]))"
    )
    env = {**os.environ, "LD_LIBRARY_PATH": str(fake.library_dir)}
    env.pop(LIBRARY_PATH_ENV, None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["nvlink-0"] * 4 + ["nvlink-1"] * 4


# --- the topology grouping itself (pure) ---------------------------------------------------------------


def test_groups_are_named_by_lowest_index_and_chains_join():
    bus = {i: f"0000:{0x10 + i:02x}:00.0" for i in range(6)}
    links = {5: [bus[4]], 1: [bus[2]], 2: [bus[3]]}  # 1-2-3 chain, 4-5 pair, 0 alone
    assert nvlink_topology_groups(bus, links) == {
        0: None,
        1: "nvlink-0",
        2: "nvlink-0",
        3: "nvlink-0",
        4: "nvlink-1",
        5: "nvlink-1",
    }


def test_remote_pci_ids_match_whatever_the_domain_width():
    assert normalize_pci_bus_id("0000:1a:00.0") == "00000000:1A:00.0"
    assert normalize_pci_bus_id("00000000:1A:00.0\x00") == "00000000:1A:00.0"
    groups = nvlink_topology_groups({0: "00000000:1A:00.0", 1: "00000000:2B:00.0"}, {0: ["0000:2b:00.0"]})
    assert groups == {0: "nvlink-0", 1: "nvlink-0"}


def test_a_switch_reached_by_one_visible_gpu_makes_no_group():
    """A container that sees one GPU of an NVSwitch box: its switch links lead to nobody it can use."""
    groups = nvlink_topology_groups({0: "00000000:18:00.0"}, {0: ["00000000:C1:00.0"] * 18})
    assert groups == {0: None}


def test_fake_config_error_names_the_field(fake_nvml_library, tmp_path):
    config = Path(tmp_path / "bad.json")
    config.write_text(json.dumps({"devices": [fake_gpu(0, nvlink_peers=[3])]}))
    script = "from gpustack_runtime.devices.nvml import NvmlBackend\nNvmlBackend()"
    env = {**os.environ, "LD_LIBRARY_PATH": str(fake_nvml_library.parent), "FAKE_NVML_CONFIG": str(config)}
    env.pop(LIBRARY_PATH_ENV, None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "field 'devices[0].nvlink_peers': names a device index that does not exist" in result.stderr
    assert "DeviceBackendUnavailable" in result.stderr
