"""The admission ledger on its own: the admission rule, reservations as leases, persistence, atomicity."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from gpustack_runtime.ledger import (
    Admitted,
    DeviceUsage,
    DuplicateDeviceError,
    Ledger,
    ReservationOutcome,
)
from gpustack_runtime.wire import (
    AdmissionRejection,
    InstanceBody,
    InstanceStatus,
    LaunchBody,
    ReservationBody,
)

GIB = 1024**3
MIB = 1024**2
MARGIN = 256 * MIB


class FakeClock:
    """A clock the test moves by hand, so lease expiry is exact and instant."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def instance(owner: str = "stack/dep", devices: tuple[int, ...] = (0,), memory: int = 10 * GIB) -> InstanceBody:
    return InstanceBody(
        owner=owner,
        launch=LaunchBody(argv=["engine"]),
        device_indices=list(devices),
        memory_bytes_per_device=memory,
    )


def reservation(
    owner: str = "stack/dep", devices: tuple[int, ...] = (0,), memory: int = 10 * GIB, ttl: float = 60
) -> ReservationBody:
    return ReservationBody(owner=owner, device_indices=list(devices), memory_bytes_per_device=memory, ttl_seconds=ttl)


def gpus(count: int = 2, total: int = 80 * GIB) -> list[DeviceUsage]:
    return [DeviceUsage(index=i, memory_total=total) for i in range(count)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    return Ledger(safety_margin_bytes=MARGIN, reservations_file=tmp_path / "reservations.json", clock=clock)


def test_claim_that_fits_is_recorded_and_listed(ledger: Ledger) -> None:
    outcome = ledger.admit_instance("a", instance(devices=(0, 1), memory=30 * GIB), gpus())

    assert isinstance(outcome, Admitted)
    assert outcome.previous_instance is None
    assert ledger.allocated_bytes_by_device() == {0: 30 * GIB, 1: 30 * GIB}
    [allocation] = [claim.to_allocation() for claim in ledger.allocations()]
    assert (allocation.id, allocation.kind, allocation.owner) == ("a", "instance", "stack/dep")


def test_claim_up_to_total_minus_margin_fits_and_one_byte_more_does_not(ledger: Ledger) -> None:
    exactly = 80 * GIB - MARGIN
    assert isinstance(ledger.admit_instance("a", instance(memory=exactly), gpus(1)), Admitted)
    ledger.release_instance("a")

    rejection = ledger.admit_instance("a", instance(memory=exactly + 1), gpus(1))

    assert isinstance(rejection, AdmissionRejection)
    [shortfall] = rejection.shortfalls
    assert shortfall.reason == "insufficient_memory"
    assert shortfall.device_index == 0
    assert shortfall.requested_bytes == exactly + 1
    assert shortfall.total_bytes == 80 * GIB
    assert shortfall.safety_margin_bytes == MARGIN
    assert shortfall.available_bytes == exactly
    assert "device 0" in rejection.message and "'a'" in rejection.message


def test_rejection_lists_every_shortfall_missing_devices_included(ledger: Ledger) -> None:
    ledger.admit_instance("big", instance(devices=(0,), memory=70 * GIB), gpus(2))

    rejection = ledger.admit_instance("new", instance(devices=(0, 1, 7), memory=20 * GIB), gpus(2))

    assert isinstance(rejection, AdmissionRejection)
    by_device = {s.device_index: s for s in rejection.shortfalls}
    assert set(by_device) == {0, 7}
    assert by_device[0].allocated_bytes == 70 * GIB
    assert by_device[7].reason == "missing_device"
    assert "device 7 does not exist" in rejection.message
    # Nothing was recorded for the rejected claim.
    assert [c.id for c in ledger.allocations()] == ["big"]


def test_zero_byte_claim_needs_only_the_device_to_exist(ledger: Ledger) -> None:
    full = [DeviceUsage(index=0, memory_total=8 * GIB, foreign_bytes=8 * GIB)]

    assert isinstance(ledger.admit_instance("cpuish", instance(memory=0), full), Admitted)
    missing = ledger.admit_instance("elsewhere", instance(devices=(3,), memory=0), full)
    assert isinstance(missing, AdmissionRejection)
    assert missing.shortfalls[0].reason == "missing_device"


def test_foreign_processes_reduce_what_can_be_admitted(ledger: Ledger) -> None:
    devices = [DeviceUsage(index=0, memory_total=80 * GIB, foreign_bytes=30 * GIB)]

    rejection = ledger.admit_instance("a", instance(memory=50 * GIB), devices)

    assert isinstance(rejection, AdmissionRejection)
    assert rejection.shortfalls[0].foreign_bytes == 30 * GIB
    assert rejection.shortfalls[0].available_bytes == 50 * GIB - MARGIN
    assert isinstance(ledger.admit_instance("a", instance(memory=50 * GIB - MARGIN), devices), Admitted)


def test_an_instance_using_more_than_its_claim_counts_at_its_real_use(ledger: Ledger) -> None:
    ledger.admit_instance("greedy", instance(memory=10 * GIB), gpus(1))
    devices = [DeviceUsage(index=0, memory_total=80 * GIB, instance_bytes={"greedy": 40 * GIB})]

    rejection = ledger.admit_instance("next", instance(memory=40 * GIB), devices)

    assert isinstance(rejection, AdmissionRejection)
    shortfall = rejection.shortfalls[0]
    assert (shortfall.allocated_bytes, shortfall.used_by_instances_bytes) == (10 * GIB, 40 * GIB)
    assert shortfall.available_bytes == 40 * GIB - MARGIN


def test_replacing_an_instance_does_not_count_its_old_claim_or_its_processes(ledger: Ledger) -> None:
    ledger.admit_instance("a", instance(memory=60 * GIB), gpus(1))
    devices = [DeviceUsage(index=0, memory_total=80 * GIB, instance_bytes={"a": 60 * GIB})]

    outcome = ledger.admit_instance("a", instance(memory=70 * GIB), devices)

    assert isinstance(outcome, Admitted)
    assert outcome.previous_instance is not None
    assert outcome.previous_instance.memory_bytes_per_device == 60 * GIB
    assert ledger.allocated_bytes_by_device() == {0: 70 * GIB}


def test_identical_reput_is_admitted_even_when_foreign_memory_grew(ledger: Ledger) -> None:
    ledger.admit_instance("a", instance(memory=60 * GIB), gpus(1))
    crowded = [DeviceUsage(index=0, memory_total=80 * GIB, foreign_bytes=50 * GIB)]

    assert isinstance(ledger.admit_instance("a", instance(memory=60 * GIB), crowded), Admitted)
    assert isinstance(ledger.admit_instance("a", instance(memory=61 * GIB), crowded), AdmissionRejection)


def test_undo_restores_the_previous_claim_and_reservation(ledger: Ledger) -> None:
    ledger.put_reservation("a", reservation(memory=5 * GIB), gpus(1))
    first = ledger.admit_instance("a", instance(memory=10 * GIB), gpus(1))
    assert isinstance(first, Admitted)
    assert ledger.reservations()[0].confirmed

    ledger.undo(first)

    assert ledger.instance_claim("a") is None
    [record] = ledger.reservations()
    assert not record.confirmed
    assert ledger.allocated_bytes_by_device() == {0: 5 * GIB}


def test_duplicate_devices_are_refused_before_anything_is_counted(ledger: Ledger) -> None:
    with pytest.raises(DuplicateDeviceError, match="device 1 more than once"):
        ledger.admit_instance("a", instance(devices=(1, 1)), gpus())
    with pytest.raises(DuplicateDeviceError):
        ledger.put_reservation("r", reservation(devices=(0, 0)), gpus())
    assert ledger.allocations() == []


def test_reservation_create_renew_replace_delete(ledger: Ledger, clock: FakeClock) -> None:
    created = ledger.put_reservation("r", reservation(ttl=30), gpus())
    assert isinstance(created, ReservationOutcome) and created.created
    assert created.status.expires_at == clock.now + 30

    clock.now += 20
    renewed = ledger.put_reservation("r", reservation(ttl=30), gpus())
    assert isinstance(renewed, ReservationOutcome) and not renewed.created
    assert renewed.status.expires_at == clock.now + 30

    replaced = ledger.put_reservation("r", reservation(memory=70 * GIB, ttl=30), gpus())
    assert isinstance(replaced, ReservationOutcome), "its own old 10 GiB must not count against it"
    assert ledger.allocated_bytes_by_device() == {0: 70 * GIB}

    assert ledger.delete_reservation("r")
    assert not ledger.delete_reservation("r")
    assert ledger.allocations() == []


def test_reservation_expires_after_its_ttl(ledger: Ledger, clock: FakeClock) -> None:
    ledger.put_reservation("r", reservation(memory=70 * GIB, ttl=5), gpus(1))
    assert isinstance(ledger.admit_instance("a", instance(memory=20 * GIB), gpus(1)), AdmissionRejection)

    clock.now += 5.001

    assert ledger.reservations() == []
    assert isinstance(ledger.admit_instance("a", instance(memory=20 * GIB), gpus(1)), Admitted)


def test_instance_confirms_reservation_without_double_counting(ledger: Ledger, clock: FakeClock) -> None:
    ledger.put_reservation("x", reservation(memory=50 * GIB, ttl=5), gpus(1))

    # 50 GiB reserved + 50 GiB for the instance would not fit an 80 GiB device: only one may count.
    assert isinstance(ledger.admit_instance("x", instance(memory=50 * GIB), gpus(1)), Admitted)

    [record] = ledger.reservations()
    assert record.confirmed and record.expires_at is None
    assert ledger.allocated_bytes_by_device() == {0: 50 * GIB}
    assert [c.kind for c in ledger.allocations()] == ["instance"]
    clock.now += 3600
    assert ledger.reservations()[0].confirmed, "a confirmed reservation no longer expires"

    ledger.release_instance("x")
    assert ledger.reservations() == [] and ledger.allocations() == []


def test_reservation_put_for_an_existing_instance_is_confirmed_at_once(ledger: Ledger) -> None:
    ledger.admit_instance("x", instance(memory=70 * GIB), gpus(1))

    outcome = ledger.put_reservation("x", reservation(memory=70 * GIB), gpus(1))

    assert isinstance(outcome, ReservationOutcome)
    assert outcome.status.confirmed
    assert ledger.allocated_bytes_by_device() == {0: 70 * GIB}


def test_reservations_survive_a_restart_and_expired_ones_do_not(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "reservations.json"
    first = Ledger(safety_margin_bytes=MARGIN, reservations_file=path, clock=clock)
    first.put_reservation("short", reservation(ttl=10), gpus())
    first.put_reservation("long", reservation(devices=(1,), ttl=100), gpus())
    stored = json.loads(path.read_text())
    assert stored["version"] == 1
    assert [r["id"] for r in stored["reservations"]] == ["long", "short"]

    clock.now += 50
    second = Ledger(safety_margin_bytes=MARGIN, reservations_file=path, clock=clock)
    second.load()

    assert [r.id for r in second.reservations()] == ["long"]
    assert [r["id"] for r in json.loads(path.read_text())["reservations"]] == ["long"]
    assert not list(tmp_path.glob(".reservations.json.*")), "no temp file may be left behind"


def test_corrupt_reservations_file_is_moved_aside(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "reservations.json"
    path.write_text('{"version": 1, "reservations": [{"id": ')
    ledger = Ledger(safety_margin_bytes=MARGIN, reservations_file=path, clock=clock)

    ledger.load()

    assert ledger.reservations() == []
    [aside] = tmp_path.glob("reservations.json.corrupt-*")
    assert aside.read_text().startswith('{"version": 1')


def test_sync_instances_rebuilds_claims_and_reconciles_confirmations(ledger: Ledger) -> None:
    ledger.put_reservation("running", reservation(memory=GIB), gpus())
    ledger.put_reservation("gone", reservation(memory=GIB), gpus())
    ledger.admit_instance("gone", instance(memory=GIB), gpus())  # confirms 'gone'
    running = InstanceStatus(
        id="running", owner="o", state="ready", device_indices=[1], memory_bytes_per_device=3 * GIB
    )

    ledger.sync_instances([running])  # the supervisor no longer has 'gone'

    assert [(r.id, r.confirmed) for r in ledger.reservations()] == [("running", True)]
    assert ledger.allocated_bytes_by_device() == {1: 3 * GIB}


def test_racing_claims_that_together_exceed_a_device_get_exactly_one_rejection(ledger: Ledger) -> None:
    start = threading.Barrier(8)
    outcomes: list[object] = []

    def claim(n: int) -> None:
        start.wait()
        outcomes.append(ledger.admit_instance(f"i{n}", instance(memory=30 * GIB), gpus(1)))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # 80 GiB - 256 MiB holds two 30 GiB claims, never three.
    assert sum(isinstance(o, Admitted) for o in outcomes) == 2
    assert sum(isinstance(o, AdmissionRejection) for o in outcomes) == 6
    assert ledger.allocated_bytes_by_device() == {0: 60 * GIB}


def test_available_bytes_follows_the_rule(ledger: Ledger) -> None:
    ledger.admit_instance("a", instance(memory=20 * GIB), gpus(1))
    ledger.put_reservation("r", reservation(memory=10 * GIB), gpus(1))
    devices = [DeviceUsage(index=0, memory_total=80 * GIB, foreign_bytes=5 * GIB, instance_bytes={"a": 25 * GIB})]

    # max(allocated 30, used by instances 25) = 30
    assert ledger.available_bytes(devices) == {0: 80 * GIB - MARGIN - 30 * GIB - 5 * GIB}


def test_negative_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="safety_margin_bytes"):
        Ledger(safety_margin_bytes=-1, reservations_file=None)
