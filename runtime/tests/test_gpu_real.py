"""The NVML backend on a real NVIDIA GPU. Skipped (whole module) on machines without one.

Set ``GPU_REPORT_DIR`` to keep what the backend saw: ``nvml-snapshot.json`` (snapshots and their
capacity-document form) and ``nvml-process.json`` (the memory-holding process test).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gpustack_runtime.devices.base import DeviceSnapshot
from gpustack_runtime.devices.nvml import NvmlBackend

REAL_NVML = "libnvidia-ml.so.1"
REAL_CUDA = "libcuda.so.1"
ALLOCATION_BYTES = 512 * 1024 * 1024
NVML_REPORT_TIMEOUT_S = 20.0


def _real_gpu_count() -> tuple[int, str]:
    """Ask the real NVML directly (ctypes, not pynvml, whose library handle other tests may have set)."""
    try:
        library = ctypes.CDLL(REAL_NVML)
    except OSError as error:
        return 0, f"no NVIDIA driver: {REAL_NVML} cannot be loaded ({error})"
    if not hasattr(library, "nvmlInit_v2"):
        return 0, f"{REAL_NVML} on the loader path is not a real NVML (the test fake?)"
    if (code := library.nvmlInit_v2()) != 0:
        return 0, f"nvmlInit_v2 failed with NVML error {code} (driver not loaded?)"
    count = ctypes.c_uint(0)
    code = library.nvmlDeviceGetCount_v2(ctypes.byref(count))
    library.nvmlShutdown()
    if code != 0 or count.value == 0:
        return 0, f"NVML sees no GPU (nvmlDeviceGetCount_v2 returned {code}, count {count.value})"
    return count.value, ""


GPU_COUNT, SKIP_REASON = _real_gpu_count()
if GPU_COUNT == 0:
    pytest.skip(f"needs a real NVIDIA GPU: {SKIP_REASON}", allow_module_level=True)

pytestmark = pytest.mark.gpu

PLAUSIBLE_PRODUCT = re.compile(r"NVIDIA|Tesla|Quadro|GeForce|TITAN|RTX|GRID", re.IGNORECASE)

# Holds GPU memory through the CUDA driver API only (no torch): cuInit, cuCtxCreate, cuMemAlloc, then
# waits for its stdin to close.
HOLDER = r"""
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
def check(code, what):
    if code != 0:
        sys.exit(f"{what} failed with CUDA error {code}")
device, context, pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
check(cuda.cuInit(0), "cuInit")
check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device), "cuCtxCreate_v2")
check(cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(int(sys.argv[1]))), "cuMemAlloc_v2")
print("ready", flush=True)
sys.stdin.read()
"""


def _report(name: str, document: dict) -> None:
    directory = os.environ.get("GPU_REPORT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / name).write_text(json.dumps(document, indent=2))


@pytest.fixture
def backend():
    nvml = NvmlBackend(REAL_NVML)
    yield nvml
    nvml.close()


def test_snapshot_of_the_real_gpus(backend):
    started = time.perf_counter()
    snapshots = backend.snapshot()
    elapsed_s = time.perf_counter() - started
    _report(
        "nvml-snapshot.json",
        {
            "host": platform.node(),
            "driver_version": backend.driver_version,
            "snapshot_seconds": elapsed_s,
            "devices": [s.model_dump() for s in snapshots],
            "capacity_devices": [s.to_capacity().model_dump() for s in snapshots],
        },
    )

    assert len(snapshots) == GPU_COUNT
    assert backend.driver_version and re.match(r"^\d+\.\d+", backend.driver_version)
    for gpu in snapshots:
        assert PLAUSIBLE_PRODUCT.search(gpu.product), gpu.product
        assert gpu.uuid.startswith(("GPU-", "MIG-"))
        assert gpu.memory_total > 0
        assert 0 <= gpu.memory_used <= gpu.memory_total
        assert gpu.compute_capability is None or re.fullmatch(r"\d+\.\d+", gpu.compute_capability)
        assert gpu.pci_bus_id and re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-9A-F]", gpu.pci_bus_id)
        assert gpu.power_w is None or 0 < gpu.power_w < 2000
        assert gpu.temperature_c is None or 0 < gpu.temperature_c < 120
    assert len({gpu.uuid for gpu in snapshots}) == GPU_COUNT


def test_a_process_holding_memory_appears(backend):
    try:
        ctypes.CDLL(REAL_CUDA)
    except OSError as error:
        pytest.skip(f"{REAL_CUDA} cannot be loaded, so no process can allocate GPU memory: {error}")
    before: DeviceSnapshot = backend.snapshot()[0]
    # CUDA device 0 is NVML index 0 only in PCI bus order.
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ALLOCATION_BYTES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        if line.strip() != "ready":
            holder.wait(timeout=30)
            pytest.fail(f"the memory holder did not start: {holder.stderr.read() if holder.stderr else ''}")
        deadline = time.monotonic() + NVML_REPORT_TIMEOUT_S
        while True:
            after = backend.snapshot()[0]
            mine = [p for p in after.processes if p.pid == holder.pid]
            new = [p for p in after.processes if p.pid not in {q.pid for q in before.processes}]
            if mine or new or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        _report(
            "nvml-process.json",
            {
                "holder_pid": holder.pid,
                "allocated_bytes": ALLOCATION_BYTES,
                "before": before.model_dump(),
                "after": after.model_dump(),
            },
        )
        # In a container NVML may report host PIDs, so a new process with the memory also counts.
        seen = mine or new
        assert seen, f"no new process on GPU 0; NVML lists {after.processes}"
        assert max(p.used_memory for p in seen) >= ALLOCATION_BYTES
        assert after.memory_used - before.memory_used >= ALLOCATION_BYTES
    finally:
        if holder.stdin:
            holder.stdin.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
