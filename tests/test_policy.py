"""The CrossGuard policies (gpustack_pulumi.policy) called directly: ResourceValidationArgs built from the inputs our
components register under Pulumi's mocks (secrets in their wire envelopes, as the analyzer receives them), the
cluster plan's inputs checked by the real ClusterPlanProvider.check as the engine does before it analyzes, and the
pack's secret-keeping view of the analyzer's properties. The pack under the real CLI: tests/test_policy_cli.py."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest
from harness.recording_mocks import recording_mocks

pulumi_policy = pytest.importorskip("pulumi_policy", reason="pulumi-policy (the `policy` extra) is not installed")
from pulumi_policy import (  # noqa: E402
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.proxy import unknown_checking_proxy  # noqa: E402

from gpustack_pulumi.components import AgentToken, GpuCluster, LocalNodePool, ModelDeployment  # noqa: E402
from gpustack_pulumi.policy import PACK_DIR, checks  # noqa: E402
from gpustack_pulumi.policy.policies import (  # noqa: E402
    POLICIES,
    agent_not_exposed,
    allowed_gpu_products,
    allowed_instance_types,
    deployments_placed,
    gpu_ceiling,
    placement_decided,
    secrets_as_secrets,
)
from gpustack_pulumi.policy.secret_view import deserialize_keeping_secrets  # noqa: E402
from gpustack_pulumi.providers.cluster_plan import ClusterPlanProvider  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
L4 = {"index": 0, "uuid": "GPU-l4-0", "vendor": "nvidia", "product": "NVIDIA L4", "memory_total": 23034 * 2**20,
      "memory_used": 0, "memory_allocated": 0, "compute_capability": "8.9"}  # fmt: skip


def secret(value: Any) -> dict[str, Any]:
    return {checks.SIG_KEY: checks.SECRET_SIG, "value": value}


def opts(parent: str | None = None) -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], parent)


def violations(policy, resource_type: str, props: dict, config: dict | None = None, parent: str | None = None):
    found: list[str] = []
    args = ResourceValidationArgs(resource_type, props, f"urn:pulumi:s::p::{resource_type}::x", "x", opts(parent),
                                  None, config)  # fmt: skip
    policy.validate(args, lambda message, _urn=None: found.append(message))
    return found


def stack_violations(resources: list[tuple[str, dict]], config: dict) -> list[str]:
    found: list[str] = []
    policy_resources = [PolicyResource(kind, props, f"urn:{i}", f"r{i}", opts(), None, None, [], {})
                        for i, (kind, props) in enumerate(resources)]  # fmt: skip
    gpu_ceiling.validate(StackValidationArgs(policy_resources, config), lambda m, _urn=None: found.append(m))
    return found


@pytest.fixture(scope="module")
def registered() -> dict[str, Any]:
    """The inputs the local pool, cluster and a deployment register (type -> inputs), under mocks."""
    with recording_mocks() as (recorder, _monitor):

        @pulumi.runtime.test
        def program():
            token = AgentToken("agent-token")
            pool = LocalNodePool("local", {"agent_token": token.token, "node_name": "box", "devices": "none"})
            cluster = GpuCluster("gpus", {"pools": [pool], "agent_token": token.token})
            chat = ModelDeployment("chat", {"cluster": cluster, "model": "Qwen/Qwen3-0.6B", "max_model_len": 4096,
                                            "secrets": {"hf": "hf_" + "a" * 30}})  # fmt: skip
            return chat.endpoints

        program()
        return {args.typ: copy.deepcopy(args.inputs) for args in recorder.resources}


def checked_plan(registered: dict[str, Any], devices: list[dict]) -> dict[str, Any]:
    """The ClusterPlan's inputs as the analyzer sees them at a first preview: checked by the provider against the
    planned capacity (here: one node with these devices), the token still a secret."""
    inputs = copy.deepcopy(registered[checks.CLUSTER_PLAN])
    news = checks.reveal(inputs)
    news.pop("__provider", None)
    news["agents"] = None  # not known before the agents exist: the plan reads the planned capacity
    news["planned"] = [{**news["planned"][0], "devices": devices}]
    result = ClusterPlanProvider().check({}, news)
    assert not result.failures, result.failures
    return {**result.inputs, "token": inputs["token"]}


def test_components_register_credentials_as_secrets(registered) -> None:
    for kind in (checks.CLUSTER_PLAN, checks.MODEL_REPLICA, checks.LOCAL_AGENT):
        assert violations(secrets_as_secrets, kind, registered[kind]) == [], kind
        assert checks.is_secret(registered[kind]["token"])
    assert checks.is_secret(registered[checks.MODEL_REPLICA]["secrets"])


def test_plain_credentials_are_violations(registered) -> None:
    agent = {**registered[checks.LOCAL_AGENT], "token": "plain-token"}
    assert any("'token' is a plain value" in v for v in violations(secrets_as_secrets, checks.LOCAL_AGENT, agent))
    replica = {**registered[checks.MODEL_REPLICA], "secrets": {"hf": "hf_" + "b" * 30}}
    found = violations(secrets_as_secrets, checks.MODEL_REPLICA, replica)
    assert any("'secrets'" in v for v in found) and any("secrets.hf" in v for v in found), found
    # SshNodePool's remote commands: the token on stdin and the SSH key must be secrets.
    pool_urn = "urn:pulumi:s::p::gpustack:index:SshNodePool::gpus"
    command = {"create": "sh install.sh --host=10.0.0.5", "stdin": "tok",
               "connection": {"host": "10.0.0.5", "privateKey": "-----BEGIN OPENSSH PRIVATE KEY-----"}}  # fmt: skip
    found = violations(secrets_as_secrets, checks.REMOTE_COMMAND, command, parent=pool_urn)
    assert any("stdin" in v for v in found) and any("connection.privateKey" in v for v in found), found
    safe = {**command, "stdin": secret("tok"), "connection": {"host": "h", "privateKey": secret("k")}}
    assert violations(secrets_as_secrets, checks.REMOTE_COMMAND, safe, parent=pool_urn) == []
    # A key of ours pasted in clear anywhere.
    leaked = {"deployments": [{"engine_options": {"extra_args": ["--api-key", "sk-gps-abcdefghijkl"]}}]}
    assert violations(secrets_as_secrets, checks.CLUSTER_PLAN, leaked)
    # Names of secrets (not their values) are fine.
    assert violations(secrets_as_secrets, checks.CLUSTER_PLAN, {"engine_options": {"api_key_secret": "hf"}}) == []


def test_a_placed_plan_passes_every_policy(registered) -> None:
    plan = checked_plan(registered, [L4])
    assert plan["plan"]["status"] == "planned"
    for policy in POLICIES:
        if policy is gpu_ceiling:
            continue
        config = {"products": ["L4"]} if policy is allowed_gpu_products else None
        assert violations(policy, checks.CLUSTER_PLAN, plan, config) == [], policy.name
    assert stack_violations([(checks.CLUSTER_PLAN, plan)], {"maxGpus": 1}) == []


def test_gpu_ceiling_counts_the_devices_of_the_placements(registered) -> None:
    plan = checked_plan(registered, [L4])
    assert checks.plan_gpus(plan) == 1
    found = stack_violations([(checks.CLUSTER_PLAN, plan), (checks.CLUSTER_PLAN, plan)], {"maxGpus": 1})
    assert found == ["the stack's placements hold 2 GPUs (r0: 1, r1: 1); the ceiling is 1"]
    assert stack_violations([(checks.CLUSTER_PLAN, plan)], {}) == []  # no ceiling configured
    undecided = {**plan, "plan": {"status": checks.DECIDED_AT_UPDATE}}
    assert checks.plan_gpus(undecided) == 0
    assert stack_violations([(checks.CLUSTER_PLAN, undecided)], {"maxGpus": 0}) == []


def test_hourly_cost_ceiling_uses_the_registered_estimators() -> None:
    instance = ("aws:ec2/instance:Instance", {"instanceType": "g6.xlarge"})
    assert stack_violations([instance], {"maxHourlyUsd": 0.5}) == []  # nothing priced: no claim either way

    def price(kind: str, props: dict) -> float | None:
        return 0.8048 if kind == instance[0] and props.get("instanceType") == "g6.xlarge" else None

    checks.register_cost_estimator(price)
    try:
        assert stack_violations([instance, instance], {"maxHourlyUsd": 1.0}) == [
            "the stack's priced resources cost $1.61/h; the ceiling is $1.00/h"
        ]
        assert stack_violations([instance], {"maxHourlyUsd": 1.0}) == []
    finally:
        checks.COST_ESTIMATORS.remove(price)


def test_allowed_gpu_products_by_catalog_key_alias_or_driver_name(registered) -> None:
    plan = checked_plan(registered, [L4])
    for allowed in (["L4"], ["NVIDIA L4"], ["nvidia-l4"], ["H100", "L4"]):
        assert violations(allowed_gpu_products, checks.CLUSTER_PLAN, plan, {"products": allowed}) == [], allowed
    assert violations(allowed_gpu_products, checks.CLUSTER_PLAN, plan, {"products": ["H100", "A100-80GB-SXM"]}) == [
        "node box has a NVIDIA L4, which is not an allowed GPU (H100, A100-80GB-SXM)"
    ]
    assert violations(allowed_gpu_products, checks.CLUSTER_PLAN, plan, {}) == []


def test_allowed_instance_types() -> None:
    kind = "aws:ec2/launchTemplate:LaunchTemplate"
    config = {"instanceTypes": ["g6.xlarge", "g6.12xlarge"]}
    assert violations(allowed_instance_types, kind, {"instanceType": "g6.xlarge"}, config) == []
    assert re.search("p5.48xlarge is not allowed", "".join(
        violations(allowed_instance_types, kind, {"instanceType": "p5.48xlarge"}, config)))  # fmt: skip
    assert violations(allowed_instance_types, kind, {"instanceType": "p5.48xlarge"}, {}) == []


def test_unplaced_and_pending_replicas_fail_and_a_plan_decided_at_update_is_advisory(registered) -> None:
    plan = checked_plan(registered, [L4])
    broken = copy.deepcopy(plan)
    broken["plan"]["failures"] = ["chat needs 90 GiB, 22.5 GiB free on box"]
    broken["plan"]["replicas"]["chat/0"]["status"] = "pending"
    broken["plan"]["replicas"]["chat/0"]["reason"] = "pending: higher-priority deployments hold the room"
    found = violations(deployments_placed, checks.CLUSTER_PLAN, broken)
    assert len(found) == 2 and "plan failure: chat needs 90 GiB" in found[0] and "chat/0 is pending" in found[1]

    undecided = {**registered[checks.CLUSTER_PLAN], "plan": {"status": checks.DECIDED_AT_UPDATE}}
    assert violations(deployments_placed, checks.CLUSTER_PLAN, undecided) == []
    assert "decided at update" in violations(placement_decided, checks.CLUSTER_PLAN, undecided)[0]
    assert violations(placement_decided, checks.CLUSTER_PLAN, plan) == []
    assert placement_decided.enforcement_level == EnforcementLevel.ADVISORY
    assert deployments_placed.enforcement_level == EnforcementLevel.MANDATORY


def test_agents_open_to_the_world(registered) -> None:
    assert violations(agent_not_exposed, checks.LOCAL_AGENT, registered[checks.LOCAL_AGENT]) == []
    wide = {**registered[checks.LOCAL_AGENT], "host": "0.0.0.0"}
    assert "listens on every interface" in violations(agent_not_exposed, checks.LOCAL_AGENT, wide)[0]
    lan = {**registered[checks.LOCAL_AGENT], "host": "10.1.2.3"}
    assert "over plain HTTP" in violations(agent_not_exposed, checks.LOCAL_AGENT, lan)[0]
    plan = {**registered[checks.CLUSTER_PLAN], "agents": {"a": "http://10.0.0.7:9000", "b": "https://10.0.0.8:9000",
                                                          "c": "http://127.0.0.1:9000"}}  # fmt: skip
    assert violations(agent_not_exposed, checks.CLUSTER_PLAN, plan) == [
        "agent of node a is reached over plain HTTP at http://10.0.0.7:9000 (token and engine traffic in the clear)"
    ]
    pool_urn = "urn:pulumi:s::p::gpustack:index:SshNodePool::gpus"
    command = {"create": "sudo sh /tmp/gpustack/install.sh --host=0.0.0.0 --port=9000"}
    assert violations(agent_not_exposed, checks.REMOTE_COMMAND, command, parent=pool_urn)
    allowed = {"allowWildcardBind": True}
    assert violations(agent_not_exposed, checks.REMOTE_COMMAND, command, allowed, parent=pool_urn) == []
    assert violations(agent_not_exposed, checks.REMOTE_COMMAND, {"create": "echo --host=0.0.0.0"}, parent=None) == []


def test_the_pack_sees_secrets_through_the_analyzers_proxies() -> None:
    """What pulumi-policy's analyzer hands a policy once the pack keeps secrets: Secret objects inside its
    unknown-checking proxies; unknown values (preview) do not stop the other checks."""
    wire = {"token": secret("t0k"), "agents": {"box": "http://10.0.0.9:1"},
            "secrets": secret({"hf": "x"}), "deployments": checks.UNKNOWN_SENTINELS.__iter__().__next__()}  # fmt: skip
    props = unknown_checking_proxy(deserialize_keeping_secrets(wire))
    assert violations(secrets_as_secrets, checks.MODEL_REPLICA, props) == []
    assert len(violations(agent_not_exposed, checks.MODEL_REPLICA, props)) == 1
    plain = unknown_checking_proxy(deserialize_keeping_secrets({**wire, "token": "t0k"}))
    assert "'token' is a plain value" in violations(secrets_as_secrets, checks.MODEL_REPLICA, plain)[0]


def test_pack_files_and_the_pinned_pulumi_policy() -> None:
    assert (PACK_DIR / "PulumiPolicy.yaml").read_text().splitlines()[:2] == ["name: gpustack", "runtime: python"]
    main = (PACK_DIR / "__main__.py").read_text()
    assert "PolicyPack(" in main and "keep_secrets_in_analyzer()" in main
    assert len({policy.name for policy in POLICIES}) == len(POLICIES)
    pin = re.search(r'^policy = \["pulumi-policy==([0-9.]+)"\]$', (REPO / "pyproject.toml").read_text(), re.M)
    assert pin is not None, "pyproject's policy extra pins pulumi-policy exactly (setup.sh reads that line)"
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "--no-deps" in setup and "^policy = " in setup
    from importlib.metadata import version

    assert version("pulumi-policy") == pin.group(1)


def test_example_ci_workflow_posts_the_diff_with_the_pack_and_the_placement_report() -> None:
    import json

    import yaml

    workflow = yaml.safe_load((REPO / "examples" / "ci" / "placement-preview.yml").read_text())
    scripts = "\n".join(step.get("run", "") for step in workflow["jobs"]["preview"]["steps"])
    assert "pulumi preview --stack onprem --diff" in scripts
    assert "--policy-pack gpustack_pulumi/policy/pack" in scripts and "--policy-pack-config" in scripts
    assert "gpustack-pulumi preview stacks/onprem" in scripts and "--markdown" in scripts
    assert "gh pr comment" in scripts and "steps.pulumi.outputs.exit" in str(workflow)
    config = json.loads((REPO / "examples" / "ci" / "policy-config.json").read_text())
    names = {policy.name for policy in POLICIES}
    assert set(config) <= names, set(config) - names
    for name, value in config.items():
        policy = next(p for p in POLICIES if p.name == name)
        if isinstance(value, dict):
            keys = set(value) - {"enforcementLevel"}
            assert keys <= set(policy.config_schema.properties if policy.config_schema else {}), (name, keys)
