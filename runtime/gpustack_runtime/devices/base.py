"""The one interface every device backend implements, and the snapshot it returns."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from gpustack_runtime.wire import DeviceCapacity, Vendor


class DeviceBackendUnavailable(RuntimeError):
    """The backend cannot read this host's devices: library missing, driver not loaded, tool absent.

    Raised by backend constructors; :func:`gpustack_runtime.devices.factory.create_backend` turns it into
    the ``none`` backend with one log line, so the agent never crashes for lack of a driver.
    """

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend} backend unavailable: {reason}")
        self.backend = backend
        self.reason = reason


class DeviceQueryError(RuntimeError):
    """A device that was present at start answered a required query with an error (e.g. GPU lost)."""


class DeviceProcess(BaseModel):
    """A process holding memory on a device, as the driver reports it."""

    model_config = ConfigDict(frozen=True)

    pid: int
    used_memory: int = Field(description="Bytes; 0 when the driver does not say.")
    name: str | None = Field(default=None, description="Process name when the driver reports one.")


class DeviceSnapshot(BaseModel):
    """Everything the agent knows about one device at one moment.

    Optional facts are None when the driver does not support them on this device; ``processes`` is empty
    when the driver cannot list them.
    """

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
    health: str | None = Field(
        default=None, description="Driver health word ('OK', 'Warning', 'Alarm', ...); None when not reported."
    )
    processes: list[DeviceProcess] = Field(default_factory=list)

    def to_capacity(self, memory_allocated: NonNegativeInt = 0) -> DeviceCapacity:
        """The wire form of this device for the capacity document; ``memory_allocated`` is the agent's own
        bookkeeping (instances and reservations), which the driver cannot know."""
        return DeviceCapacity(
            index=self.index,
            uuid=self.uuid,
            vendor=self.vendor,
            product=self.product,
            memory_total=self.memory_total,
            memory_used=self.memory_used,
            memory_allocated=memory_allocated,
            compute_capability=self.compute_capability,
            topology_group=self.topology_group,
        )


@runtime_checkable
class DeviceBackend(Protocol):
    """Reads the devices of this host.

    Constructors raise :class:`DeviceBackendUnavailable` when the driver or tool is missing; use
    :func:`gpustack_runtime.devices.factory.create_backend`, which turns that into the ``none`` backend with
    a log line instead of a crash.
    """

    name: str

    def snapshot(self) -> list[DeviceSnapshot]:
        """The devices now. Called on every capacity request, so it must be cheap (well under 1 ms a device)."""
        ...

    def close(self) -> None:
        """Release driver handles. Idempotent."""
        ...
