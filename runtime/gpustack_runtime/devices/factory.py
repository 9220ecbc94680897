"""Choose the device backend of this node."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Literal, get_args

from gpustack_runtime.devices.ascend import NPU_SMI_COMMAND, AscendBackend, NpuSmiRunner
from gpustack_runtime.devices.base import DeviceBackend, DeviceBackendUnavailable
from gpustack_runtime.devices.none import NoneBackend
from gpustack_runtime.devices.nvml import NvmlBackend

logger = logging.getLogger(__name__)

BackendKind = Literal["nvml", "ascend", "none", "auto"]
BACKEND_KINDS: tuple[str, ...] = get_args(BackendKind)


def create_backend(
    kind: BackendKind = "auto",
    *,
    nvml_library_path: str | os.PathLike[str] | None = None,
    npu_smi_runner: NpuSmiRunner | None = None,
) -> DeviceBackend:
    """The device backend for ``kind``.

    - ``nvml`` / ``ascend``: that backend; raises :class:`DeviceBackendUnavailable` naming the driver error when it
      cannot start (asked for GPUs explicitly, the node must not quietly serve as a CPU-only node).
    - ``auto``: NVML if it initialises and sees a GPU, else Ascend if ``npu-smi`` exists and lists an NPU,
      else ``none``; never raises for a missing driver.
    - ``none``: no devices (CPU-only node).

    ``nvml_library_path`` loads that file as NVML (see :class:`NvmlBackend`); ``npu_smi_runner`` replaces
    the ``npu-smi`` subprocess (tests).
    """
    if kind not in BACKEND_KINDS:
        raise ValueError(f"device backend {kind!r} is not one of {', '.join(BACKEND_KINDS)}")
    if kind == "none":
        return NoneBackend()
    if kind == "nvml":
        return NvmlBackend(nvml_library_path)
    if kind == "ascend":
        return AscendBackend(npu_smi_runner)
    return _detect(nvml_library_path, npu_smi_runner)


def _detect(nvml_library_path: str | os.PathLike[str] | None, npu_smi_runner: NpuSmiRunner | None) -> DeviceBackend:
    try:
        nvml = NvmlBackend(nvml_library_path)
    except DeviceBackendUnavailable as error:
        logger.info("device detection: no NVML (%s)", error.reason)
    else:
        if nvml.snapshot():
            logger.info("device detection: using nvml")
            return nvml
        # NVML loads on hosts whose driver sees no GPU (e.g. a container without devices); look further.
        logger.info("device detection: NVML initialised but lists no GPU")
        nvml.close()
    if npu_smi_runner is not None or shutil.which(NPU_SMI_COMMAND[0]) is not None:
        try:
            ascend = AscendBackend(npu_smi_runner)
        except DeviceBackendUnavailable as error:
            logger.info("device detection: npu-smi present but unusable (%s)", error.reason)
        else:
            logger.info("device detection: using ascend")
            return ascend
    logger.info("device detection: no accelerator found, using none")
    return NoneBackend()
