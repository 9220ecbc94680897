"""The one interface every device backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from gpustack_runtime.wire import Vendor


class DeviceProcess(BaseModel):
    """A process holding memory on a device, as the driver reports it."""

    model_config = ConfigDict(frozen=True)

    pid: int
    used_memory: int = Field(description="Bytes; 0 when the driver does not say.")


class DeviceSnapshot(BaseModel):
    """Everything the agent knows about one device at one moment."""

    model_config = ConfigDict(frozen=True)

    index: int
    uuid: str
    vendor: Vendor
    product: str
    memory_total: int
    memory_used: int
    compute_capability: str | None = None
    topology_group: str | None = None
    pci_bus_id: str | None = None
    utilization_gpu: float | None = Field(default=None, description="Percent, 0-100.")
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    processes: list[DeviceProcess] = Field(default_factory=list)


@runtime_checkable
class DeviceBackend(Protocol):
    """Reads the devices of this host. Implementations never raise on a missing driver at construction:
    the factory turns a failing backend into ``none`` with a log line."""

    name: str

    def snapshot(self) -> list[DeviceSnapshot]:
        """The devices now. Called on every capacity request, so it must be cheap (well under 1 ms a device)."""
        ...

    def close(self) -> None:
        """Release driver handles."""
        ...
