"""The agent API end to end: a real uvicorn server on 127.0.0.1, the real supervisor running real engine
processes, an httpx client. Only the device backend is static (no GPU here)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx
import pytest
from api_fixtures import (
    GIB,
    MIB,
    TOKEN,
    StaticBackend,
    engine_body,
    gpu,
    live_agent,
    put_concurrently,
    put_json,
)
from gpustack_runtime.devices.base import DeviceQueryError
from gpustack_runtime.wire import (
    AdmissionRejection,
    CapacityDocument,
    InstanceStatus,
    ReservationStatus,
)
from prometheus_client.parser import text_string_to_metric_families

MARGIN = 256 * MIB

PROTECTED = [
    ("GET", "/v1/node"),
    ("GET", "/v1/capacity"),
    ("GET", "/v1/reservations"),
    ("GET", "/v1/reservations/r1"),
    ("PUT", "/v1/reservations/r1"),
    ("DELETE", "/v1/reservations/r1"),
    ("GET", "/v1/instances"),
    ("GET", "/v1/instances/i1"),
    ("PUT", "/v1/instances/i1"),
    ("DELETE", "/v1/instances/i1"),
    ("GET", "/v1/instances/i1/logs"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
]


@pytest.fixture
def agent(tmp_path: Path):
    with live_agent(tmp_path / "state") as running:
        yield running


def capacity(agent) -> CapacityDocument:
    response = agent.client.get("/v1/capacity")
    assert response.status_code == 200, response.text
    return CapacityDocument.model_validate(response.json())


def rejection_of(response: httpx.Response) -> AdmissionRejection:
    assert response.status_code == 409, response.text
    return AdmissionRejection.model_validate(response.json()["detail"])


# --- authentication ------------------------------------------------------------------------------------


def test_healthz_needs_no_token(agent) -> None:
    response = httpx.get(f"{agent.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer tökén".encode("latin-1")],
    ids=["missing", "wrong", "basic-scheme", "prefix-of-longer", "non-ascii"],
)
def test_every_other_endpoint_refuses_a_missing_or_wrong_token(agent, authorization: str | bytes | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.Client(base_url=agent.url, headers=headers) as client:
        for method, path in PROTECTED:
            response = client.request(method, path, json={})
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer", (method, path)


def test_docs_and_openapi_are_served_with_the_token(agent) -> None:
    document = agent.client.get("/openapi.json")
    assert document.status_code == 200
    schema = document.json()
    assert "/v1/capacity" in schema["paths"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "swagger" in agent.client.get("/docs").text.lower()


def test_the_token_never_reaches_the_logs(agent, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    httpx.get(f"{agent.url}/v1/capacity", headers={"Authorization": "Bearer not-the-token"})
    agent.client.get("/v1/capacity")
    agent.client.put("/v1/reservations/r1", json={"owner": "o", "device_indices": [0]})

    assert any("wrong bearer token" in record.getMessage() for record in caplog.records)
    assert not any(TOKEN in record.getMessage() for record in caplog.records)


# --- node and capacity ---------------------------------------------------------------------------------


def test_node_reports_host_facts_and_full_device_snapshots(agent) -> None:
    agent.backend.devices = [gpu(0, processes=[(4242, 3 * GIB)], utilization=55.0)]

    node = agent.client.get("/v1/node").json()

    assert node["name"] == "node-a"
    assert node["backend"] == "static"
    assert node["host"]["cpu_count"] == os.cpu_count()
    assert node["host"]["memory_total"] > 0
    assert node["host"]["kernel"] == os.uname().release
    assert node["host"]["agent_version"]
    [device] = node["devices"]
    assert device["utilization_gpu"] == 55.0
    assert device["processes"] == [{"pid": 4242, "used_memory": 3 * GIB, "name": None}]


def test_capacity_document_lists_devices_and_allocations(agent) -> None:
    agent.backend.devices = [gpu(0, used=2 * GIB), gpu(1)]
    reserve = {"owner": "stack/a", "device_indices": [1], "memory_bytes_per_device": 5 * GIB}
    assert agent.client.put("/v1/reservations/r1", json=reserve).status_code == 201

    document = capacity(agent)

    assert document.name == "node-a"
    assert document.labels == {"zone": "test"}
    assert document.cpu_count == os.cpu_count()
    assert [(d.index, d.memory_used, d.memory_allocated) for d in document.devices] == [
        (0, 2 * GIB, 0),
        (1, 0, 5 * GIB),
    ]
    assert document.devices[1].memory_available == 80 * GIB - MARGIN - 5 * GIB
    [allocation] = document.allocations
    assert (allocation.id, allocation.kind, allocation.owner) == ("r1", "reservation", "stack/a")


def test_a_failing_device_backend_answers_503_and_the_agent_recovers(agent) -> None:
    agent.backend.failure = DeviceQueryError("nvmlDeviceGetMemoryInfo(3): GPU is lost")

    for path in ("/v1/capacity", "/v1/node", "/metrics"):
        response = agent.client.get(path)
        assert response.status_code == 503, path
        assert "GPU is lost" in response.json()["detail"]

    agent.backend.failure = None
    assert agent.client.get("/v1/capacity").status_code == 200


# --- reservations --------------------------------------------------------------------------------------


def test_reservation_put_is_idempotent_and_delete_frees_it(agent) -> None:
    body = {"owner": "stack/a", "device_indices": [0], "memory_bytes_per_device": 10 * GIB, "ttl_seconds": 60}

    first = agent.client.put("/v1/reservations/r1", json=body)
    again = agent.client.put("/v1/reservations/r1", json=body)

    assert first.status_code == 201 and again.status_code == 200
    status = ReservationStatus.model_validate(again.json())
    assert not status.confirmed and status.expires_at is not None
    assert status.expires_at >= ReservationStatus.model_validate(first.json()).expires_at
    assert [r["id"] for r in agent.client.get("/v1/reservations").json()] == ["r1"]
    assert agent.client.get("/v1/reservations/r1").json()["owner"] == "stack/a"

    assert agent.client.delete("/v1/reservations/r1").status_code == 204
    assert agent.client.delete("/v1/reservations/r1").status_code == 404
    assert agent.client.get("/v1/reservations/r1").status_code == 404
    assert capacity(agent).devices[0].memory_allocated == 0


def test_reservation_that_does_not_fit_is_refused_with_numbers(agent) -> None:
    agent.client.put(
        "/v1/reservations/big",
        json={"owner": "a", "device_indices": [0], "memory_bytes_per_device": 60 * GIB},
    )

    response = agent.client.put(
        "/v1/reservations/more",
        json={"owner": "b", "device_indices": [0, 1], "memory_bytes_per_device": 30 * GIB},
    )

    rejection = rejection_of(response)
    assert rejection.kind == "reservation" and rejection.id == "more"
    [shortfall] = rejection.shortfalls
    assert shortfall.device_index == 0
    assert shortfall.requested_bytes == 30 * GIB
    assert shortfall.allocated_bytes == 60 * GIB
    assert shortfall.total_bytes == 80 * GIB
    assert shortfall.safety_margin_bytes == MARGIN
    assert agent.client.get("/v1/reservations/more").status_code == 404


def test_reservation_expires_after_its_ttl(agent) -> None:
    short = {"owner": "a", "device_indices": [0], "memory_bytes_per_device": 70 * GIB, "ttl_seconds": 1.0}
    assert agent.client.put("/v1/reservations/short", json=short).status_code == 201
    blocked = agent.client.put(
        "/v1/reservations/other",
        json={"owner": "b", "device_indices": [0], "memory_bytes_per_device": 20 * GIB},
    )
    assert blocked.status_code == 409

    time.sleep(1.2)

    assert agent.client.get("/v1/reservations").json() == []
    assert capacity(agent).devices[0].memory_allocated == 0
    retried = agent.client.put(
        "/v1/reservations/other",
        json={"owner": "b", "device_indices": [0], "memory_bytes_per_device": 20 * GIB},
    )
    assert retried.status_code == 201


def test_reservations_survive_an_agent_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    body = {"owner": "a", "device_indices": [1], "memory_bytes_per_device": 7 * GIB, "ttl_seconds": 600}
    with live_agent(state) as first:
        assert first.client.put("/v1/reservations/keep", json=body).status_code == 201

    with live_agent(state) as second:
        [kept] = second.client.get("/v1/reservations").json()
        assert kept["id"] == "keep"
        assert capacity(second).devices[1].memory_allocated == 7 * GIB


def test_missing_device_is_refused_naming_it(agent) -> None:
    response = agent.client.put(
        "/v1/reservations/r", json={"owner": "a", "device_indices": [0, 5], "memory_bytes_per_device": GIB}
    )
    rejection = rejection_of(response)
    assert [(s.device_index, s.reason) for s in rejection.shortfalls] == [(5, "missing_device")]
    assert "device 5 does not exist" in rejection.message

    instance = put_json(agent.client, "/v1/instances/i", engine_body(devices=[3]))
    assert rejection_of(instance).shortfalls[0].device_index == 3
    assert agent.client.get("/v1/instances/i").status_code == 404, "a refused instance must not start"


def test_the_same_device_twice_is_a_validation_error(agent) -> None:
    response = agent.client.put(
        "/v1/reservations/r", json={"owner": "a", "device_indices": [1, 1], "memory_bytes_per_device": GIB}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "device_indices"]


# --- instances -----------------------------------------------------------------------------------------


def test_instance_lifecycle_create_ready_idempotent_logs_delete(agent) -> None:
    body = engine_body(memory=20 * GIB, extra_args=["--say", "hello from the engine"])

    created = agent.client.put("/v1/instances/web", json=body.model_dump(mode="json"))
    assert created.status_code == 201, created.text
    ready = agent.wait_state("web", {"ready"})
    assert ready.port is not None and 40500 <= ready.port <= 40599
    assert httpx.get(f"http://127.0.0.1:{ready.port}/v1/models").status_code == 200

    again = agent.client.put("/v1/instances/web", json=body.model_dump(mode="json"))
    assert again.status_code == 200
    assert InstanceStatus.model_validate(again.json()).pid == ready.pid, "same body: nothing restarted"
    assert [i["id"] for i in agent.client.get("/v1/instances").json()] == ["web"]

    document = capacity(agent)
    assert document.devices[0].memory_allocated == 20 * GIB
    assert [(a.id, a.kind) for a in document.allocations] == [("web", "instance")]

    logs = agent.client.get("/v1/instances/web/logs", params={"tail": 50})
    assert logs.status_code == 200
    assert logs.headers["content-type"].startswith("text/plain")
    assert "hello from the engine" in logs.text
    last = agent.client.get("/v1/instances/web/logs", params={"tail": 1}).text
    assert last.count("\n") == 1 and last.strip(), "tail=1 is the last line only"

    assert agent.client.delete("/v1/instances/web").status_code == 204
    assert agent.client.get("/v1/instances/web").status_code == 404
    assert agent.client.delete("/v1/instances/web").status_code == 404
    assert capacity(agent).devices[0].memory_allocated == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{ready.port}/v1/models", timeout=2)


def test_replacing_an_instance_does_not_count_its_old_claim(agent) -> None:
    assert put_json(agent.client, "/v1/instances/i", engine_body(memory=60 * GIB)).status_code == 201

    replaced = put_json(agent.client, "/v1/instances/i", engine_body(memory=70 * GIB))

    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["memory_bytes_per_device"] == 70 * GIB
    assert capacity(agent).devices[0].memory_allocated == 70 * GIB


def test_instance_confirms_its_reservation_without_double_counting(agent) -> None:
    reserve = {"owner": "s/d", "device_indices": [0], "memory_bytes_per_device": 50 * GIB, "ttl_seconds": 1.0}
    assert agent.client.put("/v1/reservations/x", json=reserve).status_code == 201

    # 50 GiB reserved + 50 GiB instance would exceed 80 GiB; the reservation is replaced, not added.
    response = put_json(agent.client, "/v1/instances/x", engine_body("s/d", memory=50 * GIB))

    assert response.status_code == 201, response.text
    [reservation] = agent.client.get("/v1/reservations").json()
    assert reservation["confirmed"] is True and reservation["expires_at"] is None
    time.sleep(1.2)  # past the ttl: a confirmed reservation does not expire
    assert agent.client.get("/v1/reservations/x").json()["confirmed"] is True
    document = capacity(agent)
    assert document.devices[0].memory_allocated == 50 * GIB
    assert [(a.id, a.kind) for a in document.allocations] == [("x", "instance")]

    assert agent.client.delete("/v1/instances/x").status_code == 204
    assert agent.client.get("/v1/reservations").json() == []


def test_racing_instance_puts_that_together_exceed_a_device_get_exactly_one_409(agent) -> None:
    agent.backend.devices = [gpu(0)]
    racers = [(f"/v1/instances/race{n}", engine_body(f"owner{n}", memory=50 * GIB)) for n in range(2)]

    responses = put_concurrently(agent.url, racers)

    assert sorted(r.status_code for r in responses) == [201, 409], [r.text for r in responses]
    assert capacity(agent).devices[0].memory_allocated == 50 * GIB


def test_many_racing_puts_admit_exactly_what_fits(agent) -> None:
    agent.backend.devices = [gpu(0)]
    racers = [(f"/v1/instances/many{n}", engine_body(memory=30 * GIB)) for n in range(4)]

    responses = put_concurrently(agent.url, racers)

    # 80 GiB - 256 MiB holds two 30 GiB claims.
    assert sorted(r.status_code for r in responses) == [201, 201, 409, 409]
    assert len(agent.client.get("/v1/instances").json()) == 2


def test_foreign_gpu_memory_is_respected(agent) -> None:
    foreign_pid = os.getppid()  # a real process that is no instance's
    agent.backend.devices = [gpu(0, used=60 * GIB, processes=[(foreign_pid, 60 * GIB)])]

    refused = put_json(agent.client, "/v1/instances/i", engine_body(memory=30 * GIB))

    [shortfall] = rejection_of(refused).shortfalls
    assert shortfall.foreign_bytes == 60 * GIB
    assert shortfall.available_bytes == 20 * GIB - MARGIN
    assert capacity(agent).devices[0].memory_foreign == 60 * GIB
    fits = put_json(agent.client, "/v1/instances/i", engine_body(memory=19 * GIB))
    assert fits.status_code == 201, fits.text


def test_memory_of_an_instances_own_processes_is_not_foreign(agent) -> None:
    put_json(agent.client, "/v1/instances/mine", engine_body(memory=30 * GIB))
    engine_pid = agent.wait_state("mine", {"ready"}).pid
    assert engine_pid is not None
    # The engine uses 45 GiB, more than its 30 GiB claim: it counts at 45, and none of it is foreign.
    agent.backend.devices = [gpu(0, used=45 * GIB, processes=[(engine_pid, 45 * GIB)])]

    device = capacity(agent).devices[0]

    assert device.memory_foreign == 0
    assert device.memory_allocated == 30 * GIB
    assert device.memory_available == 80 * GIB - MARGIN - 45 * GIB
    refused = put_json(agent.client, "/v1/instances/next", engine_body(memory=40 * GIB))
    assert rejection_of(refused).shortfalls[0].used_by_instances_bytes == 45 * GIB


def test_a_fixed_port_held_by_another_instance_is_a_conflict_and_frees_the_claim(agent) -> None:
    assert put_json(agent.client, "/v1/instances/a", engine_body(port=40590, memory=GIB)).status_code == 201

    clash = put_json(agent.client, "/v1/instances/b", engine_body(port=40590, memory=GIB))

    assert clash.status_code == 409
    assert "40590" in clash.json()["detail"]
    assert [a.id for a in capacity(agent).allocations] == ["a"], "the refused instance's claim is undone"


def test_logs_follow_streams_new_lines(agent) -> None:
    put_json(agent.client, "/v1/instances/talk", engine_body(extra_args=["--say", "first line"]))
    ready = agent.wait_state("talk", {"ready"})

    seen: list[str] = []
    with agent.client.stream("GET", "/v1/instances/talk/logs", params={"follow": True, "tail": 10_000}) as stream:
        assert stream.headers["content-type"].startswith("text/plain")
        lines = stream.iter_lines()
        seen.append(next(lines))
        # Each request the engine serves writes a log line: make one and watch it arrive.
        httpx.get(f"http://127.0.0.1:{ready.port}/v1/models")
        deadline = time.monotonic() + 10
        while not any("GET /v1/models" in line for line in seen) and time.monotonic() < deadline:
            seen.append(next(lines))

    assert seen[0] == "first line"
    assert any("GET /v1/models" in line for line in seen)


def test_logs_of_an_unknown_instance_are_404(agent) -> None:
    assert agent.client.get("/v1/instances/nope/logs").status_code == 404
    assert agent.client.get("/v1/instances/nope/logs", params={"follow": True}).status_code == 404


def test_invalid_ids_are_refused_before_anything_runs(agent) -> None:
    body = engine_body().model_dump(mode="json")
    assert agent.client.put("/v1/instances/a%20b", json=body).status_code == 422
    assert agent.client.put("/v1/instances/" + "x" * 129, json=body).status_code == 422
    assert agent.client.get("/v1/instances").json() == []


def test_engines_survive_an_agent_restart_and_keep_their_claims(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with live_agent(state, delete_instances_on_exit=False) as first:
        put_json(first.client, "/v1/instances/keep", engine_body(memory=12 * GIB))
        before = first.wait_state("keep", {"ready"})

    with live_agent(state, StaticBackend([gpu(0), gpu(1)])) as second:
        after = second.wait_state("keep", {"ready"})
        assert after.pid == before.pid, "the engine was adopted, not restarted"
        assert capacity(second).devices[0].memory_allocated == 12 * GIB
        refused = put_json(second.client, "/v1/instances/other", engine_body(memory=70 * GIB))
        assert refused.status_code == 409, "the adopted engine's claim still counts"


# --- metrics -------------------------------------------------------------------------------------------


def test_metrics_report_devices_instances_and_request_latency(agent) -> None:
    agent.backend.devices = [gpu(0, used=3 * GIB, utilization=40.0)]
    put_json(agent.client, "/v1/instances/m", engine_body("s/m", memory=5 * GIB))
    agent.wait_state("m", {"ready"})
    agent.client.get("/v1/instances/m")

    response = agent.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    device = (("index", "0"), ("product", "NVIDIA H100 80GB HBM3"), ("uuid", gpu(0).uuid))
    assert samples["gpustack_agent_device_memory_total_bytes", device] == 80 * GIB
    assert samples["gpustack_agent_device_memory_used_bytes", device] == 3 * GIB
    assert samples["gpustack_agent_device_memory_allocated_bytes", device] == 5 * GIB
    assert samples["gpustack_agent_device_memory_foreign_bytes", device] == 0
    assert samples["gpustack_agent_device_utilization_ratio", device] == 0.4
    instance = (("instance", "m"), ("owner", "s/m"))
    assert samples["gpustack_agent_instance_state", (*instance, ("state", "ready"))] == 1
    assert samples["gpustack_agent_instance_state", (*instance, ("state", "failed"))] == 0
    assert samples["gpustack_agent_instance_ready", instance] == 1
    assert samples["gpustack_agent_instance_restarts_total", instance] == 0
    get_instance = (("method", "GET"), ("route", "/v1/instances/{instance_id}"), ("status", "200"))
    assert samples["gpustack_agent_http_request_duration_seconds_count", get_instance] >= 2
