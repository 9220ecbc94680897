"""Wire models of the agent API.

These are the contracts between the node agent and gpustack-pulumi. The capacity document is what
``GET /v1/capacity`` serves and what ``gpustack-pulumi plan --inventory`` reads. All memory is in bytes,
as integers.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, NonNegativeInt, StringConstraints

Vendor = Literal["nvidia", "amd", "ascend", "cpu"]

# --- Bounds of what a client may send ----------------------------------------------------------------------
# Every request field has a size bound and a character set, so no input can make the agent slow (a 20 MB
# owner string made every later write take 0.38 s), crash on output (a lone surrogate cannot be written as
# UTF-8, which used to poison the reservations file), or pass an option where a value belongs.

MAX_OWNER_CHARS = 256
MAX_ARGV_ITEMS = 1024
MAX_ARGUMENT_CHARS = 32 * 1024
MAX_ENV_ITEMS = 512
MAX_ENV_NAME_CHARS = 256
MAX_ENV_VALUE_CHARS = 32 * 1024
MAX_PATH_CHARS = 2048
MAX_IMAGE_CHARS = 512
MAX_DEVICES = 1024
MAX_DEVICE_INDEX = 4095
MAX_MEMORY_BYTES = 2**62
"""4 EiB per device: far above any device, far below 2**63 (so every sum of claims fits an int64 reader)."""


def _encodable(value: str) -> str:
    """Refuse text that cannot be written as UTF-8 (lone surrogates such as ``"\\ud800"``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text is not valid Unicode ({error.reason} at position {error.start})") from None
    return value


OwnerText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_OWNER_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$"),
    AfterValidator(_encodable),
]
"""Who holds a claim, e.g. ``<stack>/<deployment>``: 1-256 characters, no control characters."""

ArgumentText = Annotated[
    str, StringConstraints(max_length=MAX_ARGUMENT_CHARS, pattern=r"^[^\x00]*$"), AfterValidator(_encodable)
]
"""One argv item or env value: no NUL (it cannot be passed to exec), at most 32 KiB."""

EnvName = Annotated[str, StringConstraints(max_length=MAX_ENV_NAME_CHARS, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]

HealthPath = Annotated[str, StringConstraints(max_length=MAX_PATH_CHARS, pattern=r"^/[\x21-\x7e]*$")]
"""An HTTP path: starts with '/', printable ASCII without spaces (it goes on the request line)."""

ImageReference = Annotated[
    str, StringConstraints(max_length=MAX_IMAGE_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
]
"""A container image reference (``registry/name:tag`` or ``name@sha256:...``). It must start with a letter or
digit: one starting with '-' would reach ``docker run`` as an option."""

DeviceIndex = Annotated[int, Field(ge=0, le=MAX_DEVICE_INDEX)]
MemoryBytes = Annotated[int, Field(ge=0, le=MAX_MEMORY_BYTES)]


class WireModel(BaseModel):
    """Base for every wire model: unknown fields are errors, so a typo never passes silently; NaN and
    Infinity are not numbers here."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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

    argv: list[ArgumentText] = Field(min_length=1, max_length=MAX_ARGV_ITEMS)
    env: dict[EnvName, ArgumentText] = Field(default_factory=dict, max_length=MAX_ENV_ITEMS)
    port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="0: the agent picks a free port from its range. Never the agent's own port.",
    )
    health_path: HealthPath | None = Field(
        default="/v1/models",
        description=(
            "Ready when this answers 200. None: the engine serves no HTTP (a multi-node worker) and is ready "
            "while its process runs."
        ),
    )
    image: ImageReference | None = Field(default=None, description="Run in a container (docker/podman) when set.")


class InstanceBody(WireModel):
    """``PUT /v1/instances/{id}``: idempotent; a different body replaces the instance."""

    owner: OwnerText
    launch: LaunchBody
    device_indices: list[DeviceIndex] = Field(default_factory=list, max_length=MAX_DEVICES)
    memory_bytes_per_device: MemoryBytes = 0


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


INSTANCE_ID_ENV = "GPUSTACK_INSTANCE_ID"
"""Set by another runner (the Kubernetes pool's pods) in an engine it starts for an external reservation: the
agent counts that engine's device memory as the reservation's, not as foreign."""


class ReservationBody(WireModel):
    """``PUT /v1/reservations/{id}``: expires after ``ttl_seconds`` unless an instance with the same id
    confirms it. An ``external`` reservation holds memory for an engine this agent does not start (a Kubernetes
    pod): it never expires (``ttl_seconds`` is ignored) and stays until deleted."""

    owner: OwnerText
    device_indices: list[DeviceIndex] = Field(default_factory=list, max_length=MAX_DEVICES)
    memory_bytes_per_device: MemoryBytes = 0
    ttl_seconds: float = Field(default=300, gt=0, le=86400)
    external: bool = Field(
        default=False,
        description="Held for an engine another runner starts. Device processes whose environment has "
        "GPUSTACK_INSTANCE_ID=<this reservation's id> count as its use, not as foreign memory.",
    )


class ReservationStatus(WireModel):
    id: str
    owner: str
    device_indices: list[NonNegativeInt]
    memory_bytes_per_device: NonNegativeInt
    expires_at: float | None = Field(description="Unix time; None once confirmed by an instance, or external.")
    confirmed: bool = False
    external: bool = False


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


# ----- transport rules both sides apply -------------------------------------------------------------------------

FINGERPRINT_PREFIX = "sha256:"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def normalize_fingerprint(text: str) -> str:
    """``sha256:<64 lowercase hex>`` (the SHA-256 of the agent certificate's DER bytes) from ``sha256:AB:CD:...``,
    ``AB CD ...`` or bare hex. Raises ValueError naming the expected form."""
    value = str(text).strip().lower()
    if value.startswith(FINGERPRINT_PREFIX):
        value = value[len(FINGERPRINT_PREFIX) :]
    value = value.replace(":", "").replace(" ", "")
    if not _HEX64.match(value):
        raise ValueError(
            f"fingerprint {str(text).strip()[:80]!r} is not a SHA-256 certificate fingerprint: expected sha256: and "
            "64 hex digits, as the agent's install prints it (GPUSTACK_AGENT_FINGERPRINT=sha256:...)"
        )
    return FINGERPRINT_PREFIX + value


def is_loopback_host(host: str) -> bool:
    """True for an address only this machine can reach: 127.0.0.0/8, ::1 (also IPv4-mapped) and ``localhost``.
    Wildcards (``0.0.0.0``, ``::``) and every other name are not. The agent serves plain HTTP only there, and
    clients send a token over plain HTTP only there."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
