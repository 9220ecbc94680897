"""External reservations: memory held for an engine another runner starts (the Kubernetes pool's pods).

The agent never starts those engines. It keeps the claim until it is deleted (no lease to renew: a pod may run
for months), and it counts the memory of device processes whose environment names the reservation
(``GPUSTACK_INSTANCE_ID``) as the reservation's use, not as foreign memory: the claim and the pod's real use are
never counted twice. A real agent on loopback; the stand-in for the pod's engine is a real process with that
environment, listed by the static device backend as NVML would list it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import GIB, MIB, StaticBackend, agent_config, engine_body, gpu, live_agent, put_json
from gpustack_runtime.capacity import attribute_external
from gpustack_runtime.devices.base import DeviceProcess, DeviceSnapshot
from gpustack_runtime.supervisor.procfs import read_environ_value
from gpustack_runtime.wire import INSTANCE_ID_ENV, CapacityDocument, ReservationBody, ReservationStatus

MARGIN = 256 * MIB
POD_ID = "proj.stack.chat.r0-"


@pytest.fixture
def pod_engine() -> Iterator[int]:
    """A process standing in for the pod's engine: it carries the reservation's id in its environment."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], env={**os.environ, INSTANCE_ID_ENV: POD_ID}
    )
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def external(memory: int, devices: list[int] | None = None) -> ReservationBody:
    return ReservationBody(
        owner="proj/stack/chat/r0/", device_indices=devices or [0], memory_bytes_per_device=memory,
        ttl_seconds=0.3, external=True,
    )  # fmt: skip


def capacity(agent) -> CapacityDocument:
    response = agent.client.get("/v1/capacity")
    response.raise_for_status()
    return CapacityDocument.model_validate(response.json())


def test_the_pods_engine_counts_as_the_reservation_not_as_foreign(tmp_path: Path, pod_engine: int) -> None:
    backend = StaticBackend([gpu(0), gpu(1)])
    with live_agent(tmp_path, backend) as agent:
        created = put_json(agent.client, f"/v1/reservations/{POD_ID}", external(30 * GIB))
        assert created.status_code == 201, created.text
        status = ReservationStatus.model_validate(created.json())
        assert status.external and status.expires_at is None and not status.confirmed
        # The pod's engine uses 45 GiB (more than claimed): counted once, at its use, as the reservation's.
        stranger = os.getppid()
        backend.devices = [gpu(0, used=45 * GIB, processes=[(pod_engine, 45 * GIB)]),
                           gpu(1, used=5 * GIB, processes=[(stranger, 5 * GIB)])]  # fmt: skip
        device0, device1 = capacity(agent).devices
        assert device0.memory_foreign == 0
        assert device0.memory_allocated == 30 * GIB
        assert device0.memory_available == 80 * GIB - MARGIN - 45 * GIB
        assert device1.memory_foreign == 5 * GIB  # a process without the id stays foreign

        # The lease does not lapse (0.3 s ttl, 0.2 s sweep): an external reservation lives until deleted.
        time.sleep(1.0)
        [listed] = [ReservationStatus.model_validate(r) for r in agent.client.get("/v1/reservations").json()]
        assert listed.id == POD_ID and listed.external
        assert capacity(agent).devices[0].memory_allocated == 30 * GIB

        # Admission counts it: 80 - 0.25 - 45 GiB left on device 0.
        refused = put_json(agent.client, "/v1/instances/next", engine_body(memory=36 * GIB))
        assert refused.status_code == 409
        shortfall = refused.json()["detail"]["shortfalls"][0]
        assert shortfall["used_by_instances_bytes"] == 45 * GIB and shortfall["foreign_bytes"] == 0

        assert agent.client.delete(f"/v1/reservations/{POD_ID}").status_code == 204
        # Without the reservation the pod's memory is foreign: nothing of it is promised to anyone any more.
        assert capacity(agent).devices[0].memory_foreign == 45 * GIB


def test_an_external_reservation_survives_an_agent_restart(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    with live_agent(tmp_path, config=config) as agent:
        assert put_json(agent.client, f"/v1/reservations/{POD_ID}", external(20 * GIB, [1])).status_code == 201
    time.sleep(0.5)  # longer than the ttl a lease would have had
    with live_agent(tmp_path, config=config) as agent:
        [listed] = agent.client.get("/v1/reservations").json()
        assert listed["id"] == POD_ID and listed["external"] is True
        assert capacity(agent).devices[1].memory_allocated == 20 * GIB


def test_an_external_reservation_is_admitted_like_any_claim(tmp_path: Path) -> None:
    with live_agent(tmp_path) as agent:
        assert put_json(agent.client, "/v1/instances/busy", engine_body(memory=60 * GIB)).status_code == 201
        refused = put_json(agent.client, f"/v1/reservations/{POD_ID}", external(30 * GIB))
        assert refused.status_code == 409
        # What is left (80 - 0.25 - 60 GiB) takes a smaller one.
        fits = put_json(agent.client, f"/v1/reservations/{POD_ID}", external(15 * GIB))
        assert fits.status_code == 201, fits.text


def test_attribution_reads_the_id_only_of_processes_in_no_tree() -> None:
    snapshot = DeviceSnapshot(
        index=0, uuid="GPU-0", vendor="nvidia", product="NVIDIA L4", memory_total=24 * GIB, memory_used=0,
        processes=[DeviceProcess(pid=10, used_memory=GIB), DeviceProcess(pid=11, used_memory=GIB),
                   DeviceProcess(pid=12, used_memory=GIB)],
    )  # fmt: skip
    asked: list[int] = []

    def instance_id_of(pid: int) -> str | None:
        asked.append(pid)
        return {11: "pod-a", 12: "someone-else"}.get(pid)

    trees = attribute_external([snapshot], {"engine": {10}}, ["pod-a"], instance_id_of)
    assert trees == {"engine": {10}, "pod-a": {11}}
    assert asked == [11, 12]  # pid 10 is an instance's: not read
    assert attribute_external([snapshot], {"engine": {10}}, [], instance_id_of) == {"engine": {10}}


def test_the_environment_value_is_read_from_proc(pod_engine: int) -> None:
    deadline = time.monotonic() + 5
    while read_environ_value(pod_engine, INSTANCE_ID_ENV) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_environ_value(pod_engine, INSTANCE_ID_ENV) == POD_ID
    assert read_environ_value(pod_engine, "GPUSTACK_NOT_SET_ANYWHERE") is None
