"""Property-based tests of the whole API from its own OpenAPI document (schemathesis): whatever valid or
odd input a client sends, the agent never answers with a 5xx.

The server is the live agent (real uvicorn, real supervisor). Generated instance bodies keep every field
except what would make the test run arbitrary programs or grab arbitrary ports: ``launch.argv`` is replaced by
the tiny test engine, ``launch.port`` by 0 (the agent's range) and ``launch.image`` by None (no container
runtime here). Each instance a case creates is deleted right after, so engines do not pile up. Both valid
(positive) and schema-breaking (negative) inputs are sent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from api_fixtures import ENGINE_SCRIPT, TOKEN, live_agent
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

AUTHORIZATION = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_OPERATION = 25
"""Enough to hit each operation's edge values (empty lists, huge integers, odd ids) in about 20 s on two
cores; instance PUTs start a real process each."""


def make_launch_harmless(body: Any) -> None:
    launch = body.get("launch") if isinstance(body, dict) else None
    if isinstance(launch, dict):
        launch["argv"] = [sys.executable, str(ENGINE_SCRIPT), "--port", "{port}"]
        launch["port"] = 0
        launch["image"] = None


def check_operation(
    operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode, client: httpx.Client
) -> None:
    """Hypothesis drives the operation's strategy directly (schemathesis's pytest plugin does not load
    under the pytest version here)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def no_server_error(case: schemathesis.Case) -> None:
        creates_instance = case.method == "PUT" and case.path == "/v1/instances/{instance_id}"
        if creates_instance:
            make_launch_harmless(case.body)
        response = case.call(headers=AUTHORIZATION)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        finally:
            if creates_instance and response.status_code < 300:
                instance_id = case.path_parameters["instance_id"] if case.path_parameters else ""
                cleanup = client.delete(f"/v1/instances/{instance_id}")
                assert cleanup.status_code == 204, cleanup.text

    no_server_error()


def test_no_request_makes_the_agent_fail(tmp_path: Path) -> None:
    with live_agent(tmp_path / "state") as agent:
        schema = schemathesis.openapi.from_url(f"{agent.url}/openapi.json", headers=AUTHORIZATION)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 12, [op.label for op in operations]
        for mode in schemathesis.GenerationMode:  # valid inputs, then inputs that break the schema
            for operation in operations:
                has_inputs = bool(operation.path_parameters or operation.query or operation.body)
                if mode is schemathesis.GenerationMode.NEGATIVE and not has_inputs:
                    continue  # nothing to break in e.g. GET /healthz: no parameters, no body
                check_operation(operation, mode, agent.client)
        assert agent.client.get("/v1/instances").json() == [], "every generated instance was deleted"
