"""Wire models of the agent API.

These are the contracts between the node agent and gpustack-pulumi. The capacity document is what
``GET /v1/capacity`` serves and what ``gpustack-pulumi plan --inventory`` reads. All memory is in bytes,
as integers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

Vendor = Literal["nvidia", "amd", "ascend", "cpu"]


class WireModel(BaseModel):
    """Base for every wire model: unknown fields are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceCapacity(WireModel):
    """One accelerator as the agent sees it now."""

    index: NonNegativeInt = Field(description="Index the engine sees (CUDA_VISIBLE_DEVICES order).")
    uuid: str = Field(description="Stable device id, e.g. 'GPU-6f1c...'.")
    vendor: Vendor
    product: str = Field(description="Product name as the driver reports it, e.g. 'NVIDIA H100 80GB HBM3'.")
    memory_total: NonNegativeInt
    memory_used: NonNegativeInt = Field(description="Live used memory, all processes (from the driver).")
    memory_allocated: NonNegativeInt = Field(
        default=0, description="Memory claimed by this agent's instances and reservations."
    )
    compute_capability: str | None = Field(default=None, description="'9.0' for Hopper; None when unknown.")
    topology_group: str | None = Field(
        default=None, description="Devices with the same group share a fast interconnect (NVLink clique)."
    )
    memory_foreign: NonNegativeInt | None = Field(
        default=None,
        description="Live memory of device processes outside every instance of this agent (drift).",
    )
    memory_available: NonNegativeInt | None = Field(
        default=None,
        description="What the agent would admit on this device now: total - safety margin - "
        "max(allocated, used by this agent's instances) - foreign, floored at 0.",
    )


class Allocation(WireModel):
    """Memory that an instance or a reservation holds on some devices of this node."""

    id: str | None = Field(default=None, description="Instance or reservation id.")
    kind: Literal["instance", "reservation"] = "instance"
    owner: str = Field(description="Who holds it, e.g. '<stack>/<deployment>'.")
    device_indices: list[NonNegativeInt]
    memory_bytes_per_device: NonNegativeInt


class CapacityDocument(WireModel):
    """What one node can offer: ``GET /v1/capacity``."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    devices: list[DeviceCapacity] = Field(default_factory=list)
    allocations: list[Allocation] = Field(default_factory=list)
    cpu_count: NonNegativeInt | None = Field(default=None, description="Logical CPUs, for CPU-only engines.")
    memory_total: NonNegativeInt | None = Field(default=None, description="Host RAM in bytes.")


class Inventory(WireModel):
    """A set of nodes: the input of placement."""

    nodes: list[CapacityDocument]


# --- Instances and reservations (agent API bodies) -------------------------------------------------

InstanceState = Literal["starting", "ready", "restarting", "failed", "stopped"]


class LaunchBody(WireModel):
    """How to start an engine. The agent runs it without knowing which engine it is.

    ``{port}`` in ``argv`` or ``env`` values is replaced by the port the agent assigned when ``port`` is 0.
    """

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    port: int = Field(default=0, ge=0, le=65535, description="0: the agent picks a free port from its range.")
    health_path: str | None = Field(
        default="/v1/models",
        description=(
            "Ready when this answers 200. None: the engine serves no HTTP (a multi-node worker) and is ready "
            "while its process runs."
        ),
    )
    image: str | None = Field(default=None, description="Run in a container (docker/podman) when set.")


class InstanceBody(WireModel):
    """``PUT /v1/instances/{id}``: idempotent; a different body replaces the instance."""

    owner: str
    launch: LaunchBody
    device_indices: list[NonNegativeInt] = Field(default_factory=list)
    memory_bytes_per_device: NonNegativeInt = 0


class InstanceStatus(WireModel):
    """``GET /v1/instances/{id}``."""

    id: str
    owner: str
    state: InstanceState
    pid: int | None = None
    port: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    started_at: float | None = Field(default=None, description="Unix time of the current start.")
    device_indices: list[NonNegativeInt] = Field(default_factory=list)
    memory_bytes_per_device: NonNegativeInt = 0
    message: str | None = None


class ReservationBody(WireModel):
    """``PUT /v1/reservations/{id}``: expires after ``ttl_seconds`` unless an instance with the same id
    confirms it."""

    owner: str
    device_indices: list[NonNegativeInt] = Field(default_factory=list)
    memory_bytes_per_device: NonNegativeInt = 0
    ttl_seconds: float = Field(default=300, gt=0, le=86400)


class ReservationStatus(WireModel):
    id: str
    owner: str
    device_indices: list[NonNegativeInt]
    memory_bytes_per_device: NonNegativeInt
    expires_at: float | None = Field(description="Unix time; None once confirmed by an instance.")
    confirmed: bool = False


# --- Admission (409 bodies) -------------------------------------------------------------------------


class DeviceShortfall(WireModel):
    """Why one device cannot take a claim. Every shortfall of a request is reported, not just the first."""

    device_index: NonNegativeInt
    reason: Literal["missing_device", "insufficient_memory"]
    requested_bytes: NonNegativeInt
    allocated_bytes: NonNegativeInt = Field(
        default=0, description="Claims of other instances and live reservations on the device."
    )
    used_by_instances_bytes: NonNegativeInt = Field(
        default=0, description="Live memory of the other instances' process trees."
    )
    foreign_bytes: NonNegativeInt = Field(default=0, description="Live memory of processes in no instance.")
    total_bytes: NonNegativeInt = 0
    safety_margin_bytes: NonNegativeInt = 0
    available_bytes: int = Field(
        default=0,
        description="total - margin - max(allocated, used_by_instances) - foreign; < 0 when over-committed.",
    )


class AdmissionRejection(WireModel):
    """The ``detail`` of a 409 from ``PUT /v1/instances/{id}`` or ``PUT /v1/reservations/{id}``."""

    kind: Literal["instance", "reservation"]
    id: str
    message: str
    shortfalls: list[DeviceShortfall] = Field(min_length=1)
