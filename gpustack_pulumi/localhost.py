"""Facts about this machine: what the `local` stack needs to choose its default model, and the capacity its
agent will report (planned capacity, for the first preview)."""

from __future__ import annotations

import ctypes
import os
import subprocess


def has_nvidia_gpu() -> bool:
    """True when the NVIDIA driver's NVML library loads and reports at least one GPU."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    if nvml.nvmlInit_v2() != 0:
        return False
    try:
        count = ctypes.c_uint(0)
        return nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 and count.value > 0
    finally:
        nvml.nvmlShutdown()


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def planned_capacity(node_name: str, devices: str, labels: dict[str, str]) -> dict | None:
    """The capacity document this machine's agent will serve, read directly (before the agent runs), so the
    first ``pulumi preview`` already places. None when it cannot be known here (Ascend; an NVIDIA driver
    without ``nvidia-smi``): the plan is then decided at update.

    GPUs come from ``nvidia-smi`` (the driver's own tool); allocations are empty, as on a new agent.
    """
    document: dict = {
        "name": node_name,
        "labels": dict(labels),
        "devices": [],
        "allocations": [],
        "cpu_count": os.cpu_count() or 1,
        "memory_total": host_memory_bytes(),
    }
    if devices == "none" or (devices == "auto" and not has_nvidia_gpu()):
        return document
    if devices not in ("auto", "nvml"):
        return None
    gpus = _nvidia_smi_devices()
    if gpus is None:
        return None
    document["devices"] = gpus
    return document


def _nvidia_smi_devices() -> list[dict] | None:
    fields = "index,uuid,name,memory.total,memory.used,compute_cap"
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    devices = []
    for line in result.stdout.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 6:
            return None
        index, uuid, name, total_mib, used_mib, capability = parts
        devices.append(
            {
                "index": int(index),
                "uuid": uuid,
                "vendor": "nvidia",
                "product": name,
                "memory_total": int(total_mib) * 2**20,
                "memory_used": int(used_mib) * 2**20,
                "memory_allocated": 0,
                "compute_capability": capability if capability not in ("", "[N/A]") else None,
            }
        )
    return devices
