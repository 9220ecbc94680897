"""ModelDeployment: resource graph under mocks, argument errors, provider pickling, and check failures through
the real provider host (an impossible model fails with the numbers; an unreachable agent says so)."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import dill
import pulumi
import pytest
from harness.pulumi_engine import ProviderHost, serialize_for_host
from harness.recording_mocks import recording_mocks
from pulumi.dynamic.dynamic import serialize_provider

from gpustack_pulumi.components import ComponentArgsError, GpuCluster, LocalNodePool, ModelDeployment
from gpustack_pulumi.providers.cluster_plan import ClusterPlanProvider
from gpustack_pulumi.providers.model_replica import DECIDED_AT_UPDATE, ModelReplicaProvider, instance_id

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mocks():
    with recording_mocks() as (recorder, _monitor):
        yield recorder


def cluster() -> GpuCluster:
    pool = LocalNodePool("local", {"agent_token": "tok", "node_name": "box"})
    return GpuCluster("gpus", {"pools": [pool], "agent_token": "tok"})


@pulumi.runtime.test
def test_replicas_are_children_with_stable_names_and_secret_inputs(mocks) -> None:
    deployment = ModelDeployment(
        "chat",
        {
            "cluster": cluster(),
            "model": "Qwen/Qwen3-8B",
            "replicas": 2,
            "max_model_len": 8192,
            "engine_options": {"api_key_secret": "api-key"},
            "secrets": {"api-key": "sk-123"},
        },
    )

    def check(endpoints: list[str]) -> None:
        assert endpoints == ["http://127.0.0.1:40000/v1", "http://127.0.0.1:40001/v1"]
        replicas = sorted((r for r in mocks.resources if r.typ.endswith("ModelReplica")), key=lambda r: r.name)
        assert [r.name for r in replicas] == ["chat-r0", "chat-r1"]
        first = replicas[0].inputs
        assert first["deployment"] == "chat" and first["replica"] == 0
        assert first["owner"] == "project/stack/chat/r0/"
        assert first["agents"] == {"box": "http://127.0.0.1:1"}
        for secret_key in ("token", "secrets"):  # secret envelopes: {sig, value}
            assert set(first[secret_key]) == {"4dabf18193072939515e22adb298388d", "value"}, secret_key
        # The deployment itself goes to the cluster's one plan, declared once for all its replicas.
        (plan,) = [r for r in mocks.resources if r.typ.endswith("ClusterPlan")]
        assert plan.name == "gpus-plan"
        (declared,) = plan.inputs["deployments"]
        assert declared["name"] == "chat" and declared["model"] == "Qwen/Qwen3-8B" and declared["replicas"] == 2
        assert declared["engine_options"] == {"api_key_secret": "api-key"}  # a reference, never the value
        assert "sk-123" not in json.dumps(plan.inputs["deployments"])
        assert plan.inputs["owner_prefix"] == "project/stack/"
        assert plan.inputs["planned"][0]["name"] == "box"  # this machine, read before its agent runs

    return deployment.endpoints.apply(check)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"model": "Qwen/Qwen3-8B", "engine": "turbo"}, "engine: Value error, unknown engine 'turbo'"),
        ({"model": "Qwen/Qwen3-8B", "replicas": -1}, "replicas: Input should be greater than or equal to 0"),
        ({"model": "Qwen/Qwen3-8B", "mode": "fast"}, "mode: Input should be 'latency', 'throughput' or 'balanced'"),
        ({"model": "Qwen/Qwen3-8B", "engine_options": {"extra_args": ["--api-key=x"]}}, "engine_options"),
    ],
)
@pulumi.runtime.test
def test_bad_arguments_fail_before_anything_is_registered(mocks, args: dict, message: str) -> None:
    gpus = cluster()
    before = len(mocks.resources)
    with pytest.raises(ComponentArgsError, match=message):
        ModelDeployment("chat", {"cluster": gpus, **args})  # type: ignore[typeddict-item]
    assert len(mocks.resources) == before


def test_provider_pickles_by_reference() -> None:
    serialized = serialize_provider(ModelReplicaProvider())
    assert type(dill.loads(base64.b64decode(serialized))) is ModelReplicaProvider
    assert len(serialized) < 400


def test_instance_ids_are_agent_safe_and_distinct() -> None:
    assert instance_id("gpustack-pulumi/local/chat/r0/", 0) == "gpustack-pulumi.local.chat.r0."
    assert instance_id("p/s/chat/r0/", 1).endswith(".w1")
    assert instance_id("p/s/chat/r1/", 0) != instance_id("p/s/chat/r10/", 0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plan_news(agents: object, model: str = "Qwen/Qwen3-8B", planned: list | None = None) -> dict:
    return {
        "deployments": [{"name": "chat", "model": model, "engine": "auto", "max_model_len": 8192, "replicas": 1}],
        "agents": agents,
        "token": "tok",
        "planned": planned,
        "owner_prefix": "p/s/",
        "strategy": "binpack",
        "time_budget_s": 2,
    }


@pytest.fixture
def host():
    provider_host = ProviderHost(cwd=REPO, config={}, project="gpustack-pulumi")
    yield provider_host
    provider_host.close()


def test_unreachable_agent_fails_check_with_a_clear_message(host: ProviderHost) -> None:
    news = {**plan_news({"box": f"http://127.0.0.1:{closed_port()}"}), **serialize_for_host(ClusterPlanProvider())}
    _, failures = host.check("urn:x", {}, news)
    [(prop, reason)] = failures
    assert prop == "agents"
    assert "cannot read capacity of any node: box" in reason and "unreachable" in reason


def test_unknown_agents_without_planned_capacity_mean_placement_decided_at_update(host: ProviderHost) -> None:
    unknown = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
    checked, failures = host.check("urn:x", {}, {**plan_news(unknown), **serialize_for_host(ClusterPlanProvider())})
    assert failures == []
    assert checked["plan"] == {"status": DECIDED_AT_UPDATE}
    replica = {"deployment": "chat", "replica": 0, "owner": "p/s/chat/r0/", "slice": unknown, "agents": unknown}
    checked, failures = host.check("urn:y", {}, {**replica, **serialize_for_host(ModelReplicaProvider())})
    assert failures == [] and checked["placement"] == {"status": DECIDED_AT_UPDATE}


def test_planned_capacity_places_before_the_agents_exist_and_fails_a_misfit_with_numbers(host: ProviderHost) -> None:
    unknown = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
    gpu = {"index": 0, "uuid": "GPU-0", "vendor": "nvidia", "product": "NVIDIA L4", "memory_total": 24 * 2**30,
           "memory_used": 0, "compute_capability": "8.9"}  # fmt: skip
    planned = [{"name": "box", "devices": [gpu], "allocations": [], "cpu_count": 8, "memory_total": 64 * 2**30}]
    news = {**plan_news(unknown, planned=planned), **serialize_for_host(ClusterPlanProvider())}
    checked, failures = host.check("urn:x", {}, news)
    assert failures == []
    assert checked["plan"]["source"] == "planned"
    (replica,) = checked["plan"]["replicas"].values()
    [where] = replica["placement"]["placements"]
    assert (where["node"], where["device_indices"]) == ("box", [0]) and where["memory_bytes_per_device"] > 0
    assert replica["launch"][0]["argv"][:2] == ["vllm", "serve"]
    too_big = {
        **plan_news(unknown, model="Qwen/Qwen3-32B", planned=planned),
        **serialize_for_host(ClusterPlanProvider()),
    }
    _, failures = host.check("urn:x", {}, too_big)
    [(prop, reason)] = failures
    assert prop == "deployments"
    assert "on the capacity the pools will create" in reason
    assert "chat replica 0 cannot be placed: needs" in reason and "a GPU has 24.00 GiB" in reason


def test_diff_replaces_only_on_placement_or_launch_changes() -> None:
    provider = ModelReplicaProvider()
    placement = {"node": "a", "placements": [{"node": "a", "device_indices": [0]}], "reason": "binpack"}
    launch = [{"node": "a", "argv": ["vllm", "serve", "m"], "reasons": ["mode balanced"]}]
    olds = {"placement": placement, "launch": launch, "token": "t", "ready_timeout_s": 60}
    same_but_reworded = {**olds, "placement": {**placement, "reason": "kept"},
                         "launch": [{**launch[0], "reasons": ["kept where it was"]}]}  # fmt: skip
    assert provider.diff("id", olds, same_but_reworded).changes is False
    moved = {**olds, "placement": {**placement, "placements": [{"node": "a", "device_indices": [1]}]}}
    result = provider.diff("id", olds, moved)
    assert result.changes and result.replaces == ["placement"] and result.delete_before_replace
    relaunched = {**olds, "launch": [{**launch[0], "argv": ["vllm", "serve", "m", "--x"]}]}
    assert provider.diff("id", olds, relaunched).replaces == ["launch"]
    new_token = {**olds, "token": "u"}
    assert provider.diff("id", olds, new_token).changes and provider.diff("id", olds, new_token).replaces == []
