"""The admission ledger: which instance or reservation holds how much memory on which device.

Pure bookkeeping plus one lock: no HTTP, no processes. The app feeds it the devices' live usage
(:class:`DeviceUsage`) and asks it to admit claims; the answer is either an :class:`Admitted` value or an
:class:`~gpustack_runtime.wire.AdmissionRejection` value (rejection is a value, not an exception).

The admission rule, per device a claim names::

    committed = max(allocated, used_by_instances)
    available = total - safety_margin - committed - foreign
    admit iff requested <= available            (a request of 0 bytes only needs the device to exist)

where

* ``allocated`` is the sum of the claims of every *other* instance and every live, unconfirmed reservation on
  the device (a claim replacing instance or reservation ``X`` never counts ``X``'s old claim, and an instance
  ``X`` that confirms reservation ``X`` does not count that reservation);
* ``used_by_instances`` is the live memory of the *other* instances' process trees: an engine that uses more
  than it claimed is counted at its real use, one that uses less is still counted at its claim;
* ``foreign`` is the live memory of device processes that are in no instance's process tree: a training job
  started by hand, a stray engine. The agent cannot take it back, so it cannot promise it;
* memory that the driver reports as used but that no listed process holds (the driver's device-wide reserve
  that appears with the first CUDA context, about 624 MiB on an H200) is covered by the safety margin only
  (see ``DEFAULT_MEMORY_SAFETY_MARGIN_BYTES``).

NVML reports the pids of the host's PID namespace. An agent that runs in a container without the host's PID
namespace (Kubernetes ``hostPID: false``) cannot match them to its engines, so its engines' memory counts as
foreign on top of their claims: admission errs on the safe side, by up to the engines' usage.

An instance's claim counts from its admission until it is deleted, whatever its state: the memory of a
failed or restarting engine is still promised to its owner.

Reservations are leases: each expires ``ttl_seconds`` after its last PUT unless an instance with the same id
confirms it; a confirmed reservation no longer counts (the instance's claim does) and stays until the instance
or the reservation is deleted. Reservations are persisted in ``reservations.json`` (atomic replace) so an
agent restart keeps them; instance claims are rebuilt from the supervisor, which owns the instances.

Admission and the ledger update happen under one lock, so two racing claims that together exceed a device
get exactly one rejection.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from gpustack_runtime.wire import (
    AdmissionRejection,
    Allocation,
    DeviceShortfall,
    InstanceBody,
    InstanceStatus,
    ReservationBody,
    ReservationStatus,
)

logger = logging.getLogger(__name__)

ClaimKind = Literal["instance", "reservation"]

RESERVATIONS_FILE_VERSION = 1


@dataclass(frozen=True)
class Claim:
    """Memory one instance or reservation holds: the same amount on each of its devices."""

    id: str
    kind: ClaimKind
    owner: str
    device_indices: tuple[int, ...]
    memory_bytes_per_device: int

    def to_allocation(self) -> Allocation:
        return Allocation(
            id=self.id,
            kind=self.kind,
            owner=self.owner,
            device_indices=list(self.device_indices),
            memory_bytes_per_device=self.memory_bytes_per_device,
        )

    @classmethod
    def for_instance(cls, instance_id: str, body: InstanceBody | InstanceStatus) -> Claim:
        return cls(
            id=instance_id,
            kind="instance",
            owner=body.owner,
            device_indices=tuple(body.device_indices),
            memory_bytes_per_device=body.memory_bytes_per_device,
        )


@dataclass(frozen=True)
class DeviceUsage:
    """One device as admission sees it: its size and who uses its memory right now."""

    index: int
    memory_total: int
    foreign_bytes: int = 0
    """Live memory of device processes outside every instance's process tree."""
    instance_bytes: Mapping[str, int] = field(default_factory=dict)
    """Live memory of each instance's process tree, by instance id (only instances with processes here)."""


class ReservationRecord(BaseModel):
    """A reservation as stored in ``reservations.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    owner: str
    device_indices: list[NonNegativeInt]
    memory_bytes_per_device: NonNegativeInt
    ttl_seconds: float = Field(gt=0)
    expires_at: float | None = Field(description="Unix time; None once confirmed by an instance, or external.")
    external: bool = False
    """Held for an engine another runner starts: never expires, always counted (no instance confirms it)."""

    @property
    def confirmed(self) -> bool:
        return self.expires_at is None and not self.external

    def is_live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now

    def same_request(self, body: ReservationBody) -> bool:
        return (
            self.owner == body.owner
            and self.device_indices == list(body.device_indices)
            and self.memory_bytes_per_device == body.memory_bytes_per_device
            and self.ttl_seconds == body.ttl_seconds
            and self.external == body.external
        )

    def to_claim(self) -> Claim:
        return Claim(
            id=self.id,
            kind="reservation",
            owner=self.owner,
            device_indices=tuple(self.device_indices),
            memory_bytes_per_device=self.memory_bytes_per_device,
        )

    def to_status(self) -> ReservationStatus:
        return ReservationStatus(
            id=self.id,
            owner=self.owner,
            device_indices=list(self.device_indices),
            memory_bytes_per_device=self.memory_bytes_per_device,
            expires_at=self.expires_at,
            confirmed=self.confirmed,
            external=self.external,
        )


class ReservationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = RESERVATIONS_FILE_VERSION
    reservations: list[ReservationRecord] = Field(default_factory=list)


@dataclass(frozen=True)
class Admitted:
    """An instance claim was recorded. Keeps what it replaced so :meth:`Ledger.undo` can restore it when the
    supervisor then fails to start the instance."""

    claim: Claim
    previous_instance: Claim | None
    previous_reservation: ReservationRecord | None


@dataclass(frozen=True)
class ReservationOutcome:
    status: ReservationStatus
    created: bool


class DuplicateDeviceError(ValueError):
    """A claim names the same device twice (it would be counted twice)."""

    def __init__(self, device_index: int) -> None:
        super().__init__(
            f"device_indices names device {device_index} more than once; list each device once "
            "(memory_bytes_per_device is claimed on each)"
        )
        self.device_index = device_index


def _format_bytes(value: int) -> str:
    gib = 1024**3
    mib = 1024**2
    if abs(value) >= gib:
        return f"{value / gib:.2f} GiB"
    return f"{value / mib:.1f} MiB"


def _check_unique(device_indices: Sequence[int]) -> None:
    seen: set[int] = set()
    for index in device_indices:
        if index in seen:
            raise DuplicateDeviceError(index)
        seen.add(index)


class Ledger:
    """Claims on this node's devices. Thread-safe; every method is short and non-blocking except for the
    small ``reservations.json`` write."""

    def __init__(
        self,
        *,
        safety_margin_bytes: int,
        reservations_file: Path | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if safety_margin_bytes < 0:
            raise ValueError(f"safety_margin_bytes must be >= 0, got {safety_margin_bytes}")
        self.safety_margin_bytes = safety_margin_bytes
        self._reservations_file = reservations_file
        self._clock = clock
        self._lock = threading.Lock()
        self._instances: dict[str, Claim] = {}
        self._reservations: dict[str, ReservationRecord] = {}

    # --- state in and out --------------------------------------------------------------------------

    def load(self) -> None:
        """Read ``reservations.json``; drop expired entries. A corrupt file is moved aside (it is named in the
        log) and the ledger starts without reservations: leases are short and their owners retry."""
        if self._reservations_file is None or not self._reservations_file.exists():
            return
        path = self._reservations_file
        try:
            stored = ReservationsFile.model_validate_json(path.read_bytes())
        except (ValidationError, OSError, ValueError) as error:
            aside = path.with_name(f"{path.name}.corrupt-{int(self._clock())}")
            os.replace(path, aside)
            logger.error("reservations file %s is unreadable (%s); moved it to %s", path, error, aside)
            return
        with self._lock:
            now = self._clock()
            self._reservations = {r.id: r for r in stored.reservations if r.is_live(now)}
            if len(self._reservations) != len(stored.reservations):
                self._persist_locked()

    def sync_instances(self, instances: Iterable[InstanceStatus]) -> None:
        """Rebuild the instance claims from the supervisor (at start-up). Reservations confirmed by an
        instance that no longer exists are dropped; live ones whose instance exists become confirmed."""
        with self._lock:
            self._instances = {status.id: Claim.for_instance(status.id, status) for status in instances}
            changed = False
            for reservation_id, record in list(self._reservations.items()):
                if reservation_id in self._instances and not record.confirmed and not record.external:
                    self._reservations[reservation_id] = record.model_copy(update={"expires_at": None})
                    changed = True
                elif record.confirmed and reservation_id not in self._instances:
                    del self._reservations[reservation_id]
                    changed = True
            if changed:
                self._persist_locked()

    # --- reading -----------------------------------------------------------------------------------

    def allocations(self) -> list[Claim]:
        """Instance claims and live, unconfirmed reservations, sorted by kind then id."""
        with self._lock:
            self._expire_locked()
            return self._counted_claims_locked(exclude_instance=None, exclude_reservation=None)

    def allocated_bytes_by_device(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for claim in self.allocations():
            for index in claim.device_indices:
                totals[index] = totals.get(index, 0) + claim.memory_bytes_per_device
        return totals

    def reservations(self) -> list[ReservationRecord]:
        """Every live reservation, confirmed or not."""
        with self._lock:
            self._expire_locked()
            return sorted(self._reservations.values(), key=lambda r: r.id)

    def instance_claim(self, instance_id: str) -> Claim | None:
        with self._lock:
            return self._instances.get(instance_id)

    def available_bytes(self, devices: Sequence[DeviceUsage]) -> dict[int, int]:
        """What a new claim could get on each device now (the admission rule, nothing excluded)."""
        with self._lock:
            self._expire_locked()
            claims = self._counted_claims_locked(exclude_instance=None, exclude_reservation=None)
            return {
                device.index: self._shortfall_inputs(device, claims, exclude_instance=None)[-1] for device in devices
            }

    # --- instances ---------------------------------------------------------------------------------

    def admit_instance(
        self, instance_id: str, body: InstanceBody, devices: Sequence[DeviceUsage]
    ) -> Admitted | AdmissionRejection:
        """Record ``body``'s claim for instance ``instance_id`` if it fits, replacing the instance's previous
        claim and confirming reservation ``instance_id`` if one is live.

        A claim identical to the one recorded is admitted without a check: it asks for nothing new, and an
        idempotent re-PUT must not fail because a foreign process grew since the first PUT.
        """
        _check_unique(body.device_indices)
        claim = Claim.for_instance(instance_id, body)
        with self._lock:
            self._expire_locked()
            previous_instance = self._instances.get(instance_id)
            previous_reservation = self._reservations.get(instance_id)
            if claim != previous_instance:
                rejection = self._check_locked(claim, devices)
                if rejection is not None:
                    return rejection
            pending = previous_reservation is not None and not previous_reservation.confirmed
            if pending and previous_reservation is not None and not previous_reservation.external:
                # Written first: when the file cannot be written (OSError), nothing has changed.
                self._commit_reservations_locked(
                    {**self._reservations, instance_id: previous_reservation.model_copy(update={"expires_at": None})}
                )
            self._instances[instance_id] = claim
            return Admitted(claim, previous_instance, previous_reservation)

    def undo(self, admitted: Admitted) -> None:
        """Put back what :meth:`admit_instance` replaced (the supervisor refused the instance)."""
        instance_id = admitted.claim.id
        with self._lock:
            if self._instances.get(instance_id) != admitted.claim:
                return  # a later change already replaced it; leave that one alone
            if admitted.previous_instance is None:
                del self._instances[instance_id]
            else:
                self._instances[instance_id] = admitted.previous_instance
            if self._reservations.get(instance_id) != admitted.previous_reservation:
                restored = dict(self._reservations)
                if admitted.previous_reservation is None:
                    restored.pop(instance_id, None)
                else:
                    restored[instance_id] = admitted.previous_reservation
                try:
                    self._commit_reservations_locked(restored)
                except OSError:
                    # The file keeps the confirmation; memory goes back. A confirmed reservation whose
                    # instance does not exist is dropped at the next start (sync_instances).
                    logger.exception("could not write the reservations file while undoing %s", instance_id)
                    self._reservations = restored

    def release_instance(self, instance_id: str) -> Claim | None:
        """Forget the instance's claim and the reservation it confirmed. Returns the claim it had."""
        with self._lock:
            claim = self._instances.pop(instance_id, None)
            record = self._reservations.get(instance_id)
            if record is not None and record.confirmed:
                remaining = {rid: r for rid, r in self._reservations.items() if rid != instance_id}
                try:
                    self._commit_reservations_locked(remaining)
                except OSError:
                    # The engine is gone already; the file's stale confirmed entry is dropped at the next
                    # start (sync_instances: its instance does not exist).
                    logger.exception("could not write the reservations file while releasing %s", instance_id)
                    self._reservations = remaining
            return claim

    # --- reservations ------------------------------------------------------------------------------

    def put_reservation(
        self, reservation_id: str, body: ReservationBody, devices: Sequence[DeviceUsage]
    ) -> ReservationOutcome | AdmissionRejection:
        """Create, renew or replace reservation ``reservation_id``.

        * same request as the live reservation: the lease is renewed (expires ``ttl_seconds`` from now);
        * an instance with the same id exists: the reservation is recorded as confirmed, nothing is checked
          (the instance's claim is what counts);
        * otherwise the claim must pass admission (the reservation's own previous claim is not counted).
        """
        _check_unique(body.device_indices)
        with self._lock:
            self._expire_locked()
            now = self._clock()
            previous = self._reservations.get(reservation_id)
            if reservation_id in self._instances and not body.external:
                record = ReservationRecord(
                    id=reservation_id,
                    owner=body.owner,
                    device_indices=list(body.device_indices),
                    memory_bytes_per_device=body.memory_bytes_per_device,
                    ttl_seconds=body.ttl_seconds,
                    expires_at=None,
                )
            else:
                record = ReservationRecord(
                    id=reservation_id,
                    owner=body.owner,
                    device_indices=list(body.device_indices),
                    memory_bytes_per_device=body.memory_bytes_per_device,
                    ttl_seconds=body.ttl_seconds,
                    expires_at=None if body.external else now + body.ttl_seconds,
                    external=body.external,
                )
                if previous is None or not previous.same_request(body):
                    rejection = self._check_locked(record.to_claim(), devices)
                    if rejection is not None:
                        return rejection
            self._commit_reservations_locked({**self._reservations, reservation_id: record})
            return ReservationOutcome(record.to_status(), created=previous is None)

    def delete_reservation(self, reservation_id: str) -> bool:
        with self._lock:
            self._expire_locked()
            if reservation_id not in self._reservations:
                return False
            self._commit_reservations_locked({rid: r for rid, r in self._reservations.items() if rid != reservation_id})
            return True

    def expire(self) -> list[str]:
        """Drop expired reservations now (the periodic sweep); returns their ids."""
        with self._lock:
            return self._expire_locked()

    # --- internals (call with the lock held) ---------------------------------------------------------

    def _expire_locked(self) -> list[str]:
        now = self._clock()
        expired = [rid for rid, record in self._reservations.items() if not record.is_live(now)]
        for reservation_id in expired:
            del self._reservations[reservation_id]
            logger.info("reservation %s expired", reservation_id)
        if expired:
            try:
                self._persist_locked()
            except OSError:
                # Expired entries left in the file are dropped again when it is read (load) or next written.
                logger.exception("could not write the reservations file after expiring %s", expired)
        return expired

    def _counted_claims_locked(self, *, exclude_instance: str | None, exclude_reservation: str | None) -> list[Claim]:
        claims = [claim for iid, claim in sorted(self._instances.items()) if iid != exclude_instance]
        claims += [
            record.to_claim()
            for rid, record in sorted(self._reservations.items())
            if rid != exclude_reservation and not record.confirmed
        ]
        return claims

    def _shortfall_inputs(
        self, device: DeviceUsage, claims: Sequence[Claim], *, exclude_instance: str | None
    ) -> tuple[int, int, int]:
        """(allocated, used_by_instances, available) on one device."""
        allocated = sum(c.memory_bytes_per_device for c in claims if device.index in c.device_indices)
        used_by_instances = sum(used for iid, used in device.instance_bytes.items() if iid != exclude_instance)
        available = (
            device.memory_total - self.safety_margin_bytes - max(allocated, used_by_instances) - device.foreign_bytes
        )
        return allocated, used_by_instances, available

    def _check_locked(self, claim: Claim, devices: Sequence[DeviceUsage]) -> AdmissionRejection | None:
        """Every shortfall of ``claim``, or None when it fits. The claim's own previous version (same kind,
        same id) and, for an instance, the reservation it confirms are not counted."""
        by_index = {device.index: device for device in devices}
        exclude_instance = claim.id if claim.kind == "instance" else None
        # An instance confirms (replaces) the reservation with its id; a reservation replaces its own.
        claims = self._counted_claims_locked(exclude_instance=exclude_instance, exclude_reservation=claim.id)
        requested = claim.memory_bytes_per_device
        shortfalls: list[DeviceShortfall] = []
        for index in claim.device_indices:
            device = by_index.get(index)
            if device is None:
                shortfalls.append(
                    DeviceShortfall(device_index=index, reason="missing_device", requested_bytes=requested)
                )
                continue
            if requested == 0:
                continue
            allocated, used_by_instances, available = self._shortfall_inputs(
                device, claims, exclude_instance=exclude_instance
            )
            if requested > available:
                shortfalls.append(
                    DeviceShortfall(
                        device_index=index,
                        reason="insufficient_memory",
                        requested_bytes=requested,
                        allocated_bytes=allocated,
                        used_by_instances_bytes=used_by_instances,
                        foreign_bytes=device.foreign_bytes,
                        total_bytes=device.memory_total,
                        safety_margin_bytes=self.safety_margin_bytes,
                        available_bytes=available,
                    )
                )
        if not shortfalls:
            return None
        return AdmissionRejection(
            kind=claim.kind,
            id=claim.id,
            message=_rejection_message(claim, shortfalls, sorted(by_index)),
            shortfalls=shortfalls,
        )

    def _persist_locked(self) -> None:
        self._write_locked(self._reservations)

    def _commit_reservations_locked(self, reservations: dict[str, ReservationRecord]) -> None:
        """Write ``reservations`` to the file, then make them the ledger's: a failed write (OSError) changes
        nothing, in the file or in memory."""
        self._write_locked(reservations)
        self._reservations = reservations

    def _write_locked(self, reservations: Mapping[str, ReservationRecord]) -> None:
        if self._reservations_file is None:
            return
        document = ReservationsFile(reservations=sorted(reservations.values(), key=lambda r: r.id))
        write_atomically(self._reservations_file, document.model_dump_json(indent=2).encode())


def _rejection_message(claim: Claim, shortfalls: Sequence[DeviceShortfall], present: Sequence[int]) -> str:
    parts: list[str] = []
    for shortfall in shortfalls:
        if shortfall.reason == "missing_device":
            parts.append(f"device {shortfall.device_index} does not exist (devices here: {list(present)})")
        else:
            parts.append(
                f"device {shortfall.device_index} has {_format_bytes(shortfall.available_bytes)} available, "
                f"{_format_bytes(shortfall.requested_bytes)} requested "
                f"(total {_format_bytes(shortfall.total_bytes)} - margin "
                f"{_format_bytes(shortfall.safety_margin_bytes)} - max(allocated "
                f"{_format_bytes(shortfall.allocated_bytes)}, used by instances "
                f"{_format_bytes(shortfall.used_by_instances_bytes)}) - foreign "
                f"{_format_bytes(shortfall.foreign_bytes)})"
            )
    return f"{claim.kind} {claim.id!r} of {claim.owner!r} does not fit: " + "; ".join(parts)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old or the new file, never a mix:
    temp file in the same directory, fsync, rename over, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
