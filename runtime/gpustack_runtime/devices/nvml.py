"""NVIDIA GPUs through NVML, via ``pynvml`` from nvidia-ml-py.

Facts that cannot change while the driver is loaded (name, UUID, compute capability, PCI address, NVLink
topology, total memory) are read once at construction. Each :meth:`NvmlBackend.snapshot` asks only for
the live ones (free memory, utilisation, temperature, power, processes): about six NVML calls a device.

Indices are NVML's, which enumerate GPUs in PCI bus order. CUDA uses the same order only with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so whoever launches engines on these indices must set it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import pynvml

from gpustack_runtime.devices.base import (
    DeviceBackendUnavailable,
    DeviceProcess,
    DeviceQueryError,
    DeviceSnapshot,
)

logger = logging.getLogger(__name__)

LIBRARY_PATH_ENV: Final = "GPUSTACK_RUNTIME_NVML_LIBRARY"
"""Environment variable: path of the NVML library to load instead of the system's ``libnvidia-ml.so.1``
(tests point it at the fake NVML; also useful when the driver lives outside the loader path)."""

MILLIWATTS_PER_WATT: Final = 1000
"""NVML reports power usage and limits in milliwatts (nvml.h, nvmlDeviceGetPowerUsage)."""

MISSING_FACT_ERRORS: Final = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,  # the device or driver does not have this fact
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,  # the driver's NVML is older than the function
        pynvml.NVML_ERROR_NO_PERMISSION,  # e.g. power limits inside some containers
    }
)
"""NVML errors that mean "this device has no such fact": the field becomes None, never an exception."""

HIDDEN_NVLINK_REMOTE: Final = "FFFFFFFF:FF:FF.0"
"""Remote PCI address NVML reports for every active link when the far end is hidden from this OS: seen
on a 2 x H200 cloud VM of an NVSwitch (HGX) board, driver 580.159.04, where ``nvidia-smi topo -m`` shows
NV18 between the two GPUs. Grouping treats it as one shared endpoint, i.e. the board's switch fabric, so
such GPUs form one group, which is what that machine has."""

_T = TypeVar("_T")

# pynvml keeps one library handle per process (pynvml.nvmlLib) and caches function pointers from it.
_library_lock = threading.Lock()


def _bind_library(library_path: str) -> None:
    """Make pynvml use the NVML library at ``library_path`` (before nvmlInit).

    pynvml caches the handle and its function pointers for the life of the process, so switching to a
    different file is only safe while no NVML session is open; otherwise this refuses.
    """
    with _library_lock:
        current = pynvml.nvmlLib
        if current is not None and getattr(current, "_name", None) == library_path:
            return
        if current is not None and pynvml._nvmlLib_refcount > 0:
            raise DeviceBackendUnavailable(
                "nvml",
                f"another NVML library ({current._name}) is initialised in this process; "
                f"close its backend before loading {library_path}",
            )
        try:
            library = ctypes.CDLL(library_path)
        except OSError as error:
            raise DeviceBackendUnavailable("nvml", f"cannot load NVML library {library_path}: {error}") from error
        pynvml.nvmlLib = library
        pynvml._nvmlGetFunctionPointer_cache.clear()


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def normalize_pci_bus_id(bus_id: str) -> str:
    """``'0000:18:00.0'`` and ``'00000000:18:00.0'`` name the same function: NVML's 8-digit form, upper case.

    NVLink remote PCI info and the device's own PCI info must compare equal, whatever the domain width.
    """
    text = bus_id.strip().rstrip("\x00")
    try:
        domain, bus, rest = text.split(":")
        device, function = rest.split(".")
        return f"{int(domain, 16):08X}:{int(bus, 16):02X}:{int(device, 16):02X}.{int(function, 16):X}"
    except ValueError:
        return text.upper()


def nvlink_topology_groups(
    device_bus_ids: Mapping[int, str], active_link_remotes: Mapping[int, Sequence[str]]
) -> dict[int, str | None]:
    """Name the NVLink group of each device: devices that can reach each other over NVLink share one.

    The graph's nodes are PCI bus ids. Each active link joins its device to the remote end of the link:
    another GPU (direct NVLink, e.g. a bridge or an HGX board without switches) or an NVSwitch, whose
    bus id every GPU wired to it reports, so all GPUs on the same switches end up in one component.
    A hidden remote (:data:`HIDDEN_NVLINK_REMOTE`, in VMs) is one shared endpoint like a switch.
    Components with two or more devices are named ``nvlink-0``, ``nvlink-1``, ... in order of their
    lowest device index; a device alone (no NVLink, or links to nothing else visible) gets None, because a
    group of one tells placement nothing.
    """
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union(a: str, b: str) -> None:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)

    own = {index: normalize_pci_bus_id(bus_id) for index, bus_id in device_bus_ids.items()}
    for index, node in own.items():
        find(node)
        for remote in active_link_remotes.get(index, ()):
            union(node, normalize_pci_bus_id(remote))

    members: dict[str, list[int]] = {}
    for index in sorted(own):
        members.setdefault(find(own[index]), []).append(index)
    groups = sorted((indices for indices in members.values() if len(indices) >= 2), key=lambda ids: ids[0])
    names: dict[int, str | None] = dict.fromkeys(own)
    for number, indices in enumerate(groups):
        for index in indices:
            names[index] = f"nvlink-{number}"
    return names


@dataclass
class _Device:
    """One GPU: its handle, its static facts, and which live facts it turned out not to support."""

    index: int
    handle: object
    uuid: str
    product: str
    memory_total: int
    pci_bus_id: str
    compute_capability: str | None
    topology_group: str | None = None
    unsupported: set[str] = field(default_factory=set)


class NvmlBackend:
    """NVIDIA devices through NVML. See the module docstring for what is cached and what is live."""

    name = "nvml"

    def __init__(self, library_path: str | os.PathLike[str] | None = None) -> None:
        """Open NVML and read the static facts of every GPU.

        ``library_path`` (or the ``GPUSTACK_RUNTIME_NVML_LIBRARY`` environment variable) loads that file
        as NVML instead of the system's ``libnvidia-ml.so.1``. Raises :class:`DeviceBackendUnavailable`
        when NVML cannot be loaded or initialised (no library, driver not loaded).
        """
        path = library_path if library_path is not None else os.environ.get(LIBRARY_PATH_ENV) or None
        if path is not None:
            _bind_library(os.fspath(path))
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise DeviceBackendUnavailable("nvml", f"nvmlInit failed: {error} (NVML error {error.value})") from error
        self._lock = threading.Lock()
        self._closed = False
        try:
            version = self._optional(pynvml.nvmlSystemGetDriverVersion)
            self.driver_version: str | None = _text(version) if version is not None else None
            self._devices = self._read_devices()
        except BaseException:
            pynvml.nvmlShutdown()
            raise

    # --- construction: static facts ------------------------------------------------------------------

    @staticmethod
    def _optional(query: Callable[[], _T]) -> _T | None:
        """A static fact, or None when the device or driver does not have it."""
        try:
            return query()
        except pynvml.NVMLError as error:
            if error.value in MISSING_FACT_ERRORS:
                return None
            raise

    def _read_devices(self) -> list[_Device]:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as error:
            raise DeviceBackendUnavailable("nvml", f"nvmlDeviceGetCount failed: {error}") from error
        devices: list[_Device] = []
        remotes: dict[int, list[str]] = {}
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                device = _Device(
                    index=index,
                    handle=handle,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    product=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    pci_bus_id=_text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
                    compute_capability=self._compute_capability(handle),
                )
            except pynvml.NVMLError as error:
                # One broken GPU (e.g. "GPU is lost") must not hide the healthy ones; indices stay NVML's.
                logger.warning("NVML: skipping GPU %d: %s (NVML error %s)", index, error, error.value)
                continue
            devices.append(device)
            remotes[index] = self._active_nvlink_remotes(handle)
        groups = nvlink_topology_groups({d.index: d.pci_bus_id for d in devices}, remotes)
        for device in devices:
            device.topology_group = groups[device.index]
        return devices

    def _compute_capability(self, handle: object) -> str | None:
        capability = self._optional(lambda: pynvml.nvmlDeviceGetCudaComputeCapability(handle))
        if capability is None:
            return None
        major, minor = capability
        return f"{major}.{minor}"

    @staticmethod
    def _active_nvlink_remotes(handle: object) -> list[str]:
        """PCI bus ids at the far end of this GPU's active NVLinks (peer GPUs or NVSwitches).

        Every link number up to NVML_NVLINK_MAX_LINKS is asked: GPUs have different link counts, and links
        past the last one (or on a GPU without NVLink) answer with an error, which means "no link here".
        """
        remotes: list[str] = []
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            try:
                if pynvml.nvmlDeviceGetNvLinkState(handle, link) != pynvml.NVML_FEATURE_ENABLED:
                    continue
                remotes.append(_text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId))
            except pynvml.NVMLError as error:
                if link == 0 and error.value in MISSING_FACT_ERRORS:
                    break  # no NVLink at all on this GPU: the other 35 link numbers would say the same
                continue
        return remotes

    # --- per request: live facts ---------------------------------------------------------------------

    def snapshot(self) -> list[DeviceSnapshot]:
        with self._lock:
            if self._closed:
                raise DeviceQueryError("the NVML backend is closed")
            return [self._snapshot_device(device) for device in self._devices]

    def _live(self, device: _Device, fact: str, query: Callable[[], _T]) -> _T | None:
        """An optional live fact; None when unsupported (remembered, so it is not asked again)."""
        if fact in device.unsupported:
            return None
        try:
            return query()
        except pynvml.NVMLError as error:
            if error.value in MISSING_FACT_ERRORS:
                device.unsupported.add(fact)
            else:
                logger.debug("NVML: GPU %d %s: %s", device.index, fact, error)
            return None

    def _snapshot_device(self, device: _Device) -> DeviceSnapshot:
        handle = device.handle
        try:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        except pynvml.NVMLError as error:
            raise DeviceQueryError(
                f"GPU {device.index} ({device.uuid}): nvmlDeviceGetMemoryInfo failed: {error}"
            ) from error
        utilization = self._live(device, "utilization", lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
        temperature = self._live(
            device, "temperature", lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        )
        power_mw = self._live(device, "power", lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
        limit_mw = self._live(device, "power_limit", lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        # The explicitly versioned call: the unversioned wrapper turns FunctionNotFound into a non-NVML error.
        processes = self._live(device, "processes", lambda: pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle))
        return DeviceSnapshot(
            index=device.index,
            uuid=device.uuid,
            vendor="nvidia",
            product=device.product,
            memory_total=device.memory_total,
            # total - free rather than "used": since driver 510 "used" leaves out memory the driver
            # reserves, which no engine can have either.
            memory_used=int(memory.total) - int(memory.free),
            compute_capability=device.compute_capability,
            topology_group=device.topology_group,
            pci_bus_id=device.pci_bus_id,
            utilization_gpu=float(utilization.gpu) if utilization is not None else None,
            temperature_c=float(temperature) if temperature is not None else None,
            power_w=power_mw / MILLIWATTS_PER_WATT if power_mw is not None else None,
            power_limit_w=limit_mw / MILLIWATTS_PER_WATT if limit_mw is not None else None,
            processes=[
                # usedGpuMemory is None when the driver cannot attribute memory (pynvml maps the
                # NVML_VALUE_NOT_AVAILABLE sentinel to None).
                DeviceProcess(pid=int(process.pid), used_memory=int(process.usedGpuMemory or 0))
                for process in processes or ()
            ],
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as error:
                logger.debug("NVML: nvmlShutdown: %s", error)

    def __enter__(self) -> NvmlBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
