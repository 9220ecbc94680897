"""A hand-written hostile corpus against the live agent (issue 11, items 6-9): every odd or malicious request
gets a 4xx, never a 5xx, and none of them changes state: afterwards every read works, no engine runs, and
the reservation sweeper still expires leases.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import ENGINE_SCRIPT, TOKEN, LiveAgent, live_agent

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json", **AUTH}
HARMLESS_ARGV = [sys.executable, str(ENGINE_SCRIPT), "--port", "{port}"]


def instance(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"owner": "stack/dep", "launch": {"argv": HARMLESS_ARGV}, "device_indices": [0]}
    launch = overrides.pop("launch", {})
    body["launch"].update(launch)
    body.update(overrides)
    return body


def reservation(**overrides: Any) -> dict[str, Any]:
    return {"owner": "stack/dep", "device_indices": [0], "memory_bytes_per_device": 1, **overrides}


HUGE = "1" + "0" * 4000
"""10^4000 as JSON text: Python's json parses it (fewer than 4300 digits)."""

# (name, method, path, raw body, expected status)
CORPUS: list[tuple[str, str, str, bytes, int]] = [
    (
        "lone surrogate owner, reservation",
        "PUT",
        "/v1/reservations/r1",
        b'{"owner": "\\ud800", "device_indices": [0]}',
        422,
    ),
    (
        "lone surrogate owner, instance",
        "PUT",
        "/v1/instances/i1",
        json.dumps(instance()).replace('"stack/dep"', '"\\udfff"').encode(),
        422,
    ),
    (
        "lone surrogate in argv",
        "PUT",
        "/v1/instances/i1",
        json.dumps(instance()).replace('"--port"', '"\\ud800"').encode(),
        422,
    ),
    ("NaN ttl", "PUT", "/v1/reservations/r1", b'{"owner": "a", "ttl_seconds": NaN}', 422),
    ("Infinity ttl", "PUT", "/v1/reservations/r1", b'{"owner": "a", "ttl_seconds": Infinity}', 422),
    ("-Infinity memory", "PUT", "/v1/reservations/r1", b'{"owner": "a", "memory_bytes_per_device": -Infinity}', 422),
    (
        "10^4000 memory, reservation",
        "PUT",
        "/v1/reservations/r1",
        b'{"owner": "a", "memory_bytes_per_device": ' + HUGE.encode() + b"}",
        422,
    ),
    (
        "10^4000 memory, instance",
        "PUT",
        "/v1/instances/i1",
        json.dumps(instance())
        .replace('"device_indices"', '"memory_bytes_per_device": ' + HUGE + ', "device_indices"')
        .encode(),
        422,
    ),
    (
        "10^4000 device index",
        "PUT",
        "/v1/reservations/r1",
        b'{"owner": "a", "device_indices": [' + HUGE.encode() + b"]}",
        422,
    ),
    (
        "10^4000 port",
        "PUT",
        "/v1/instances/i1",
        json.dumps(instance(launch={"port": 0})).replace('"port": 0', '"port": ' + HUGE).encode(),
        422,
    ),
    ("10^4000 ttl", "PUT", "/v1/reservations/r1", b'{"owner": "a", "ttl_seconds": ' + HUGE.encode() + b"}", 422),
    ("2^64 memory", "PUT", "/v1/reservations/r1", json.dumps(reservation(memory_bytes_per_device=2**64)).encode(), 422),
    (
        "image that is an option",
        "PUT",
        "/v1/instances/i1",
        json.dumps(instance(launch={"image": "--privileged"})).encode(),
        422,
    ),
    ("image with a space", "PUT", "/v1/instances/i1", json.dumps(instance(launch={"image": "a b"})).encode(), 422),
    ("NUL in argv", "PUT", "/v1/instances/i1", json.dumps(instance(launch={"argv": ["a\u0000b"]})).encode(), 422),
    ("env name with '='", "PUT", "/v1/instances/i1", json.dumps(instance(launch={"env": {"A=B": "c"}})).encode(), 422),
    (
        "health path without '/'",
        "PUT",
        "/v1/instances/i1",
        json.dumps(instance(launch={"health_path": "v1 models"})).encode(),
        422,
    ),
    ("owner with a newline", "PUT", "/v1/reservations/r1", json.dumps(reservation(owner="a\nb")).encode(), 422),
    ("empty owner", "PUT", "/v1/reservations/r1", json.dumps(reservation(owner="")).encode(), 422),
    ("owner of 300 characters", "PUT", "/v1/reservations/r1", json.dumps(reservation(owner="o" * 300)).encode(), 422),
    ("owner of 20 MB", "PUT", "/v1/reservations/r1", json.dumps(reservation(owner="o" * 20_000_000)).encode(), 413),
    (
        "argv of 5000 items",
        "PUT",
        "/v1/instances/i1",
        json.dumps(instance(launch={"argv": ["x"] * 5000})).encode(),
        422,
    ),
    (
        "2000 devices",
        "PUT",
        "/v1/reservations/r1",
        json.dumps(reservation(device_indices=list(range(2000)))).encode(),
        422,
    ),
    ("JSON nested 100000 deep", "PUT", "/v1/reservations/r1", b"[" * 100_000 + b"]" * 100_000, 422),
    ("invalid UTF-8", "PUT", "/v1/reservations/r1", b'{"owner": "\xff\xfe"}', 422),
    ("not JSON", "PUT", "/v1/reservations/r1", b"owner=a", 422),
    ("a JSON string", "PUT", "/v1/reservations/r1", b'"a"', 422),
    ("null", "PUT", "/v1/instances/i1", b"null", 422),
    ("unknown field", "PUT", "/v1/reservations/r1", json.dumps(reservation(extra=1)).encode(), 422),
    ("id with a slash", "PUT", "/v1/reservations/a%2Fb", json.dumps(reservation()).encode(), 404),
    ("id with a surrogate's bytes", "PUT", "/v1/reservations/%ED%A0%80", json.dumps(reservation()).encode(), 422),
    ("id of 200 characters", "GET", "/v1/instances/" + "a" * 200, b"", 422),
    ("tail of 10^4000", "GET", "/v1/instances/i1/logs?tail=" + HUGE, b"", 422),
    ("tail NaN", "GET", "/v1/instances/i1/logs?tail=NaN", b"", 422),
]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAgent]:
    with live_agent(tmp_path_factory.mktemp("hostile") / "state") as running:
        yield running


@pytest.mark.parametrize(("name", "method", "path", "body", "expected"), CORPUS, ids=[case[0] for case in CORPUS])
def test_hostile_request_is_refused_without_a_server_error(
    agent: LiveAgent, name: str, method: str, path: str, body: bytes, expected: int
) -> None:
    response = httpx.request(method, agent.url + path, content=body or None, headers=JSON, timeout=30)
    assert response.status_code == expected, (name, response.status_code, response.text[:300])
    response.json()  # every refusal is a JSON document


def test_the_agent_is_intact_after_the_corpus(agent: LiveAgent) -> None:
    """Nothing above changed state: reads work, nothing runs, no lease exists, and the sweeper still runs."""
    for case in CORPUS:
        httpx.request(case[1], agent.url + case[2], content=case[3] or None, headers=JSON, timeout=30)
    assert agent.client.get("/v1/capacity").status_code == 200
    assert agent.client.get("/v1/instances").json() == []
    assert agent.client.get("/v1/reservations").json() == []
    assert agent.client.get("/metrics").status_code == 200
    lease = agent.client.put("/v1/reservations/short", json=reservation(ttl_seconds=0.3))
    assert lease.status_code == 201, lease.text
    time.sleep(1.0)  # the sweeper (every 0.2 s here) drops it from the file
    stored = json.loads((agent_state_dir(agent) / "reservations.json").read_text())
    assert stored["reservations"] == []


def agent_state_dir(agent: LiveAgent) -> Path:
    return agent.server.config.app.state.runtime.config.state_dir  # type: ignore[no-any-return]


def test_a_fixed_engine_port_equal_to_the_agents_own_is_refused(agent: LiveAgent) -> None:
    own_port = int(agent.url.rsplit(":", 1)[1])
    response = agent.client.put("/v1/instances/i1", json=instance(launch={"port": own_port}))
    assert response.status_code == 422, response.text
    assert "agent's own port" in response.text
    assert agent.client.get("/v1/instances").json() == []


def test_unauthenticated_requests_are_refused_before_the_body_is_read(agent: LiveAgent) -> None:
    """A 300 MB PUT without a token: the 401 comes back after the headers alone, and the agent closes the
    connection instead of reading the body."""
    host, port = agent.url.removeprefix("http://").split(":")
    for authorization in ("", "Authorization: Bearer wrong\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(
                (
                    "PUT /v1/reservations/r1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"{authorization}Content-Length: 300000000\r\n\r\n"
                ).encode()
                + b'{"owner": "'
            )
            started = time.monotonic()
            answer = connection.recv(65536)
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
            assert time.monotonic() - started < 5


def test_an_oversized_chunked_body_is_cut_off_at_the_cap(agent: LiveAgent) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"owner": "'
        for _ in range(40):  # 2.5 MiB in all, no Content-Length
            yield b"o" * 65536
        yield b'"}'

    response = httpx.put(agent.url + "/v1/reservations/r1", content=chunks(), headers=JSON, timeout=30)
    assert response.status_code == 413, response.text


def test_the_validation_error_does_not_echo_the_input(agent: LiveAgent) -> None:
    response = agent.client.put("/v1/reservations/r1", json=reservation(owner="x" * 300))
    assert response.status_code == 422
    assert "x" * 300 not in response.text
