"""The agent API on a real NVIDIA GPU: real NVML, real processes holding GPU memory. Skipped (whole module)
on machines without one.

It checks what only a real driver can show: a process outside the agent that holds GPU memory is counted as
foreign and shrinks what admission hands out, while the memory of the agent's own engine is attributed to
its instance and not counted twice. Set ``GPU_REPORT_DIR`` to keep the capacity documents it saw.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from api_fixtures import ENGINE_SCRIPT, GIB, MIB, live_agent
from gpustack_runtime.devices.factory import create_backend
from gpustack_runtime.wire import CapacityDocument, InstanceBody, LaunchBody

REAL_NVML = "libnvidia-ml.so.1"
REAL_CUDA = "libcuda.so.1"
FOREIGN_BYTES = 1 * GIB
ENGINE_BYTES = 512 * MIB
NVML_REPORT_TIMEOUT_S = 30.0

# Allocates GPU memory through the CUDA driver API (no framework needed), prints "ready", then runs the
# program given after it (the test engine) or waits for stdin to close.
GPU_HOLDER = r"""
import ctypes, runpy, sys
cuda = ctypes.CDLL("libcuda.so.1")
device, context, pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
for code, what in ((cuda.cuInit(0), "cuInit"), (cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet"),
                   (cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device), "cuCtxCreate_v2"),
                   (cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(int(sys.argv[1]))), "cuMemAlloc_v2")):
    if code != 0:
        sys.exit(f"{what} failed with CUDA error {code}")
print("ready", flush=True)
if len(sys.argv) > 2:
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    sys.stdin.read()
"""


def _real_gpu_present() -> str:
    """'' when a real NVML sees a GPU and libcuda loads, else why not."""
    try:
        nvml = ctypes.CDLL(REAL_NVML)
        ctypes.CDLL(REAL_CUDA)
    except OSError as error:
        return f"no NVIDIA driver here ({error})"
    if not hasattr(nvml, "nvmlInit_v2"):
        return f"{REAL_NVML} on the loader path is not a real NVML (the test fake?)"
    if nvml.nvmlInit_v2() != 0:
        return "nvmlInit_v2 failed (driver not loaded?)"
    count = ctypes.c_uint(0)
    code = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count))
    nvml.nvmlShutdown()
    return "" if code == 0 and count.value > 0 else "NVML sees no GPU"


SKIP_REASON = _real_gpu_present()
if SKIP_REASON:
    pytest.skip(f"needs a real NVIDIA GPU: {SKIP_REASON}", allow_module_level=True)

pytestmark = pytest.mark.gpu
CUDA_ENV = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # CUDA's device 0 is NVML's index 0 only in PCI order


def _report(name: str, document: object) -> None:
    directory = os.environ.get("GPU_REPORT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / name).write_text(json.dumps(document, indent=2))


@contextmanager
def gpu_holder(nbytes: int, **env: str) -> Iterator[subprocess.Popen[str]]:
    """A process outside the agent holding ``nbytes`` on GPU 0 until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", GPU_HOLDER, str(nbytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **CUDA_ENV, "CUDA_VISIBLE_DEVICES": "0", **env},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


@pytest.fixture
def foreign_holder() -> Iterator[subprocess.Popen[str]]:
    """A process outside the agent holding FOREIGN_BYTES on GPU 0."""
    with gpu_holder(FOREIGN_BYTES) as holder:
        yield holder


def test_foreign_gpu_memory_counts_and_the_engines_own_does_not(
    tmp_path: Path, foreign_holder: subprocess.Popen[str]
) -> None:
    backend = create_backend("nvml", nvml_library_path=REAL_NVML)
    assert backend.name == "nvml"
    with live_agent(tmp_path / "state", backend) as agent:  # type: ignore[arg-type]

        def gpu0() -> CapacityDocument:
            return CapacityDocument.model_validate(agent.client.get("/v1/capacity").json())

        deadline = time.monotonic() + NVML_REPORT_TIMEOUT_S
        while (foreign := gpu0().devices[0].memory_foreign or 0) < FOREIGN_BYTES:
            if time.monotonic() > deadline:
                processes = agent.client.get("/v1/node").json()["devices"][0]["processes"]
                if not processes:
                    pytest.skip("NVML lists no GPU processes here (no process visibility in this sandbox)")
                pytest.fail(f"the holder's {FOREIGN_BYTES} bytes are not foreign; NVML lists {processes}")
            time.sleep(0.2)
        before = gpu0()
        _report("capacity-with-foreign.json", before.model_dump())

        # Admission: everything that is left, plus one GiB, does not fit; the shortfall names the foreign bytes.
        device = before.devices[0]
        assert device.memory_available is not None
        too_much = {"owner": "gpu", "device_indices": [0], "memory_bytes_per_device": device.memory_available + GIB}
        refused = agent.client.put("/v1/reservations/too-much", json=too_much)
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"]["shortfalls"][0]["foreign_bytes"] >= FOREIGN_BYTES

        # An engine of ours that holds GPU memory: attributed to its instance, not foreign.
        body = InstanceBody(
            owner="gpu",
            launch=LaunchBody(
                argv=[sys.executable, "-c", GPU_HOLDER, str(ENGINE_BYTES), str(ENGINE_SCRIPT), "--port", "{port}"],
                env=CUDA_ENV,
            ),
            device_indices=[0],
            memory_bytes_per_device=2 * GIB,
        )
        assert agent.client.put("/v1/instances/gpu-engine", json=body.model_dump(mode="json")).status_code == 201
        engine = agent.wait_state("gpu-engine", {"ready"}, timeout=60)
        deadline = time.monotonic() + NVML_REPORT_TIMEOUT_S
        while True:
            node = agent.client.get("/v1/node").json()
            listed = {p["pid"] for p in node["devices"][0]["processes"]}
            if engine.pid in listed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        after = gpu0()
        _report("capacity-with-engine.json", {"engine_pid": engine.pid, "node": node, "capacity": after.model_dump()})
        assert engine.pid in listed, f"NVML does not list the engine pid {engine.pid} (host pids?): {listed}"
        assert after.devices[0].memory_used >= before.devices[0].memory_used + ENGINE_BYTES
        assert (after.devices[0].memory_foreign or 0) < foreign + ENGINE_BYTES, "the engine's memory is not foreign"
        assert after.devices[0].memory_allocated == 2 * GIB
        assert agent.client.delete("/v1/instances/gpu-engine").status_code == 204


def test_a_pods_gpu_memory_counts_as_its_external_reservation(tmp_path: Path) -> None:
    """A process the agent did not start (a Kubernetes pod's engine) that carries GPUSTACK_INSTANCE_ID of an
    external reservation: the real driver lists it, and the agent counts its memory as that reservation's, not as
    foreign; once the reservation is deleted the same memory is foreign."""
    from gpustack_runtime.wire import INSTANCE_ID_ENV

    pod_id = "proj.stack.chat.r0-"
    with gpu_holder(FOREIGN_BYTES, **{INSTANCE_ID_ENV: pod_id}) as holder:
        backend = create_backend("nvml", nvml_library_path=REAL_NVML)
        with live_agent(tmp_path / "state", backend) as agent:  # type: ignore[arg-type]

            def gpu0() -> CapacityDocument:
                return CapacityDocument.model_validate(agent.client.get("/v1/capacity").json())

            deadline = time.monotonic() + NVML_REPORT_TIMEOUT_S
            while (gpu0().devices[0].memory_foreign or 0) < FOREIGN_BYTES:  # before the reservation: foreign
                if time.monotonic() > deadline:
                    pytest.fail(f"NVML does not show the pod's {FOREIGN_BYTES} bytes as foreign")
                time.sleep(0.2)
            foreign_before = gpu0().devices[0].memory_foreign or 0
            body = {"owner": "proj/stack/chat/r0/", "device_indices": [0], "memory_bytes_per_device": 2 * GIB,
                    "external": True}  # fmt: skip
            assert agent.client.put(f"/v1/reservations/{pod_id}", json=body).status_code == 201
            held = gpu0()
            _report("capacity-with-pod.json", {"pod_pid": holder.pid, "capacity": held.model_dump()})
            assert (held.devices[0].memory_foreign or 0) <= foreign_before - FOREIGN_BYTES
            assert held.devices[0].memory_allocated == 2 * GIB
            assert agent.client.delete(f"/v1/reservations/{pod_id}").status_code == 204
            assert (gpu0().devices[0].memory_foreign or 0) >= FOREIGN_BYTES
