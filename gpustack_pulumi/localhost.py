"""Facts about this machine that the `local` stack needs to choose its default model."""

from __future__ import annotations

import ctypes


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
