"""GpuCluster / LocalNodePool: the resource graph under mocks, argument errors, provider pickling, and the real
local agent started, refreshed and destroyed through the engine harness."""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path

import dill
import httpx
import pulumi
import pytest
from harness.pulumi_engine import StackHarness
from harness.recording_mocks import recording_mocks
from pulumi.dynamic.dynamic import serialize_provider

from gpustack_pulumi.components import AgentToken, ComponentArgsError, GpuCluster, LocalNodePool
from gpustack_pulumi.pools.local.provider import LocalAgentProvider, same_process_running
from gpustack_pulumi.providers.token import AgentTokenProvider

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mocks():
    with recording_mocks() as installed:
        yield installed


@pulumi.runtime.test
def test_resource_graph_names_parents_and_secrets(mocks) -> None:
    recorder, monitor = mocks
    pool = LocalNodePool("local", {"agent_token": "s3cret", "node_name": "box", "labels": {"zone": "a"}})
    cluster = GpuCluster("gpus", {"pools": [pool], "agent_token": "s3cret"})

    def check(values: list) -> None:
        endpoints, token_is_secret, _plan = values
        assert endpoints == {"box": "http://127.0.0.1:1"}
        by_name = {r.name: r for r in recorder.resources}
        assert set(by_name) == {"local", "local-agent", "gpus", "gpus-plan"}
        plan = by_name["gpus-plan"]
        assert plan.typ == "pulumi-python:dynamic/gpustack:ClusterPlan" and plan.custom
        assert plan.inputs["token"].get("value") == "s3cret" and len(plan.inputs["token"]) == 2  # secret
        assert plan.inputs["deployments"] == []  # none declared: the plan is made once the program is done
        agent = by_name["local-agent"]
        assert agent.typ == "pulumi-python:dynamic/gpustack:LocalAgent" and agent.custom
        assert agent.inputs["node_name"] == "box" and agent.inputs["labels"] == {"zone": "a"}
        assert agent.inputs["state_dir"] == ".gpustack/stack/local"
        # The token reaches the agent resource only as a secret.
        token = agent.inputs["token"]
        assert isinstance(token, dict) and token.get("value") == "s3cret" and len(token) == 2
        urns = {urn.rsplit("::", 1)[1]: urn for urn in monitor.resources}
        assert "gpustack:index:LocalNodePool$pulumi-python:dynamic/gpustack:LocalAgent" in urns["local-agent"]
        assert token_is_secret

    secret = pulumi.Output.from_input(cluster.agent_token.is_secret())
    return pulumi.Output.all(cluster.endpoints, secret, cluster.plan).apply(check)  # the plan registers last


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"agent_token": "t", "devices": "gpu"}, "devices 'gpu' is invalid; use one of auto, nvml"),
        ({"agent_token": "t", "node_name": "bad name"}, "node_name 'bad name' must be"),
        ({"agent_token": "t", "port": 70000}, "port must be 0"),
        ({"node_name": "x"}, "agent_token is required"),
    ],
)
@pulumi.runtime.test
def test_bad_pool_arguments_fail_before_registering(mocks, args: dict, message: str) -> None:
    recorder, _ = mocks
    with pytest.raises(ComponentArgsError, match=message):
        LocalNodePool("local", args)  # type: ignore[arg-type]
    assert recorder.resources == []


@pulumi.runtime.test
def test_cluster_needs_pools(mocks) -> None:
    with pytest.raises(ComponentArgsError, match="pools is empty"):
        GpuCluster("gpus", {"pools": [], "agent_token": "t"})


@pytest.mark.parametrize("provider", [LocalAgentProvider(), AgentTokenProvider()])
def test_providers_pickle_by_reference(provider) -> None:
    serialized = serialize_provider(provider)
    restored = dill.loads(base64.b64decode(serialized))
    assert type(restored) is type(provider)
    assert len(serialized) < 400  # by reference: module and class name, no code


def local_program(state_dir: Path):
    def program() -> None:
        token = AgentToken("agent-token")
        pool = LocalNodePool(
            "local", {"agent_token": token.token, "node_name": "here", "devices": "none", "state_dir": str(state_dir)}
        )
        cluster = GpuCluster("gpus", {"pools": [pool], "agent_token": token.token})
        pulumi.export("endpoints", cluster.endpoints)
        pulumi.export("token", token.token)

    return program


def test_local_agent_up_refresh_destroy(tmp_path: Path) -> None:
    harness = StackHarness(local_program(tmp_path / "agent"), state_path=tmp_path / "state.json", cwd=REPO)
    up = harness.up()
    assert sorted(up.ops("create")) == ["agent-token", "gpus-plan", "local-agent"]
    endpoint = up.outputs["endpoints"]["here"]
    token = up.outputs["token"]
    capacity = httpx.get(f"{endpoint}/v1/capacity", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert capacity.status_code == 200 and capacity.json()["name"] == "here"
    assert httpx.get(f"{endpoint}/v1/capacity", timeout=5).status_code == 401
    token_file = tmp_path / "agent" / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    state = {r.name: r for r in harness.load_state()}
    pid, start = state["local-agent"].outputs["pid"], state["local-agent"].outputs["pid_start_time"]
    try:
        again = harness.up()  # nothing changes: the same agent keeps running
        assert [op for op, _ in again.operations if op not in ("check", "diff")] == []
        assert same_process_running(pid, start)
        os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while same_process_running(pid, start) and time.monotonic() < deadline:
            time.sleep(0.05)
        refreshed = harness.refresh()
        assert refreshed.drift["local-agent"] == {"deleted": True}
        recreated = harness.up()
        assert recreated.ops("create") == ["local-agent"]
        new = {r.name: r for r in harness.load_state()}["local-agent"].outputs
        pid, start = new["pid"], new["pid_start_time"]
        assert same_process_running(pid, start)
    finally:
        harness.destroy()
    assert not same_process_running(pid, start)
