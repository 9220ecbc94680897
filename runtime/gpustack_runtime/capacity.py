"""From device snapshots and the ledger to what the API serves: the capacity document and the node facts.

Pure functions, except :func:`read_host_facts`, which reads the host once at start-up.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from gpustack_runtime.config import agent_version
from gpustack_runtime.devices.base import DeviceSnapshot
from gpustack_runtime.ledger import Claim, DeviceUsage
from gpustack_runtime.wire import CapacityDocument

OS_RELEASE = Path("/etc/os-release")
MEMINFO = Path("/proc/meminfo")


class HostFacts(BaseModel):
    """What does not change while the agent runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hostname: str
    os: str = Field(description="PRETTY_NAME from /etc/os-release, else platform.system().")
    kernel: str
    architecture: str
    cpu_count: NonNegativeInt
    memory_total: NonNegativeInt = Field(description="Host RAM in bytes (MemTotal).")
    agent_version: str
    python_version: str


class NodeInfo(BaseModel):
    """``GET /v1/node``: host facts, the device backend's name and the full device snapshots."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    labels: dict[str, str]
    host: HostFacts
    backend: str = Field(description="Device backend in use: 'nvml', 'ascend' or 'none'.")
    driver_version: str | None = Field(default=None, description="The device driver's version, when known.")
    devices: list[DeviceSnapshot]


def _pretty_os_name() -> str:
    try:
        for line in OS_RELEASE.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "PRETTY_NAME":
                return value.strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _memory_total_bytes() -> int:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def read_host_facts() -> HostFacts:
    uname = platform.uname()
    return HostFacts(
        hostname=socket.gethostname(),
        os=_pretty_os_name(),
        kernel=uname.release,
        architecture=uname.machine,
        cpu_count=os.cpu_count() or 0,
        memory_total=_memory_total_bytes(),
        agent_version=agent_version(),
        python_version=platform.python_version(),
    )


def attribute_external(
    snapshots: Sequence[DeviceSnapshot],
    process_trees: Mapping[str, set[int]],
    external_ids: Iterable[str],
    instance_id_of: Callable[[int], str | None],
) -> dict[str, set[int]]:
    """``process_trees`` plus, for each external reservation, the device processes in no tree whose
    ``instance_id_of`` (the ``GPUSTACK_INSTANCE_ID`` of their environment) names it: a pod's engine then counts
    as the reservation's use instead of foreign memory (no double count of claim and use)."""
    wanted = set(external_ids)
    trees = {instance_id: set(pids) for instance_id, pids in process_trees.items()}
    if not wanted:
        return trees
    known = {pid for pids in trees.values() for pid in pids}
    for snapshot in snapshots:
        for process in snapshot.processes:
            if process.pid in known:
                continue
            owner = instance_id_of(process.pid)
            if owner in wanted:
                trees.setdefault(owner, set()).add(process.pid)
                known.add(process.pid)
    return trees


def split_device_usage(snapshots: Sequence[DeviceSnapshot], process_trees: Mapping[str, set[int]]) -> list[DeviceUsage]:
    """Attribute each device process's memory to the instance whose process tree holds it, or to
    ``foreign`` when none does."""
    owner_of_pid = {pid: instance_id for instance_id, pids in process_trees.items() for pid in pids}
    usages: list[DeviceUsage] = []
    for snapshot in snapshots:
        by_instance: dict[str, int] = {}
        foreign = 0
        for process in snapshot.processes:
            instance_id = owner_of_pid.get(process.pid)
            if instance_id is None:
                foreign += process.used_memory
            else:
                by_instance[instance_id] = by_instance.get(instance_id, 0) + process.used_memory
        usages.append(
            DeviceUsage(
                index=snapshot.index,
                memory_total=snapshot.memory_total,
                foreign_bytes=foreign,
                instance_bytes=by_instance,
            )
        )
    return usages


def build_capacity_document(
    *,
    name: str,
    labels: Mapping[str, str],
    host: HostFacts,
    snapshots: Sequence[DeviceSnapshot],
    usages: Sequence[DeviceUsage],
    allocations: Sequence[Claim],
    available_by_device: Mapping[int, int],
) -> CapacityDocument:
    """``memory_allocated`` of a device is the sum of the claims listed in ``allocations`` that name it
    (instances and live, unconfirmed reservations), so the document is consistent with itself."""
    allocated: dict[int, int] = {}
    for claim in allocations:
        for index in claim.device_indices:
            allocated[index] = allocated.get(index, 0) + claim.memory_bytes_per_device
    usage_by_index = {usage.index: usage for usage in usages}
    devices = []
    for snapshot in snapshots:
        usage = usage_by_index.get(snapshot.index)
        devices.append(
            snapshot.to_capacity(memory_allocated=allocated.get(snapshot.index, 0)).model_copy(
                update={
                    "memory_foreign": usage.foreign_bytes if usage is not None else None,
                    "memory_available": max(0, available_by_device.get(snapshot.index, 0)),
                }
            )
        )
    return CapacityDocument(
        name=name,
        labels=dict(labels),
        devices=devices,
        allocations=[claim.to_allocation() for claim in allocations],
        cpu_count=host.cpu_count,
        memory_total=host.memory_total,
    )
