"""Device backends: NVML (NVIDIA), Ascend (npu-smi) and none (CPU-only).

Use :func:`create_backend`; it never raises for a missing driver.
"""

from gpustack_runtime.devices.ascend import AscendBackend, parse_npu_smi_info
from gpustack_runtime.devices.base import (
    DeviceBackend,
    DeviceBackendUnavailable,
    DeviceProcess,
    DeviceQueryError,
    DeviceSnapshot,
)
from gpustack_runtime.devices.factory import BackendKind, create_backend
from gpustack_runtime.devices.none import NoneBackend
from gpustack_runtime.devices.nvml import NvmlBackend

__all__ = [
    "AscendBackend",
    "BackendKind",
    "DeviceBackend",
    "DeviceBackendUnavailable",
    "DeviceProcess",
    "DeviceQueryError",
    "DeviceSnapshot",
    "NoneBackend",
    "NvmlBackend",
    "create_backend",
    "parse_npu_smi_info",
]
