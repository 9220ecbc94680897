"""AwsGpuNodePool under Pulumi mocks: the pulumi_aws resource graph (launch template, user data, security group
rules, IAM documents parsed from the registered inputs), the group's desired capacity from the cluster's
deployments on the planned capacity, the ClusterPlan fed the pool's planned nodes, and argument errors."""

from __future__ import annotations

import base64
import json
from typing import Any

import pulumi
import pytest
from harness.recording_mocks import RecordingMocks
from pulumi.runtime import mocks as pulumi_mocks

from gpustack_pulumi.components import ComponentArgsError, GpuCluster, ModelDeployment
from gpustack_pulumi.pools import NodePool
from gpustack_pulumi.pools.aws import AwsGpuNodePool

ARGS: dict[str, Any] = {
    "instance_type": "g5.xlarge",
    "region": "us-east-1",
    "vpc_id": "vpc-1",
    "subnet_ids": ["subnet-a", "subnet-b"],
    "agent_token": "s3cret-token",
    "agent_cidrs": ["10.0.0.0/16"],
    "max_nodes": 4,
    "agent_version": "0.1.0",
}


class Mocks(RecordingMocks):
    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        resource_id, outputs = super().new_resource(args)
        if args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            outputs["latestVersion"] = 1
        if args.typ.endswith("gpustack:AwsPoolAgents"):
            outputs["endpoints"] = {"gpu-0": "https://10.0.0.5:10150"}
            outputs["fingerprints"] = {"gpu-0": "sha256:" + "a" * 64}
        return resource_id, outputs


@pytest.fixture
def mocks():
    recorder = Mocks()
    pulumi.runtime.set_mocks(
        recorder, project="proj", stack="dev", preview=False, monitor=pulumi_mocks.MockMonitor(recorder)
    )
    try:
        yield recorder
    finally:
        pulumi.runtime.settings.reset_options()


def _by_type(recorder: Mocks, typ: str) -> list[pulumi_mocks.MockResourceArgs]:
    return [r for r in recorder.resources if r.typ == typ]


@pulumi.runtime.test
def test_pool_graph_and_desired_capacity_from_the_plan(mocks) -> None:
    pool = AwsGpuNodePool("gpu", ARGS)  # type: ignore[arg-type]
    assert isinstance(pool, NodePool)
    assert [d["name"] for d in pool.planned_capacity or []] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    cluster = GpuCluster("gpus", {"pools": [pool], "agent_token": "s3cret-token"})  # type: ignore[list-item]
    ModelDeployment("chat", {"cluster": cluster, "model": "Qwen/Qwen3-8B", "replicas": 2, "max_model_len": 8192})
    pool.size_from(cluster)

    def check(values: list[Any]) -> None:
        desired, endpoints, fingerprints, plan, _cluster_plan = values
        used = sorted({p["node"] for r in plan["replicas"] for p in r["placements"]})
        assert len(used) == 2 and desired == 2
        assert endpoints == {"gpu-0": "https://10.0.0.5:10150"} and fingerprints["gpu-0"].startswith("sha256:")
        recorder = mocks
        (group,) = _by_type(recorder, "aws:autoscaling/group:Group")
        assert group.inputs["desiredCapacity"] == desired
        assert (group.inputs["minSize"], group.inputs["maxSize"]) == (0, 4)
        assert group.inputs["vpcZoneIdentifiers"] == ["subnet-a", "subnet-b"]
        (template,) = _by_type(recorder, "aws:ec2/launchTemplate:LaunchTemplate")
        inputs = template.inputs
        assert inputs["imageId"].startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/")
        assert inputs["metadataOptions"]["httpTokens"] == "required"
        assert inputs["metadataOptions"]["httpPutResponseHopLimit"] == 2
        assert inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"
        user_data = base64.b64decode(inputs["userData"]).decode()
        assert "PREFIX=/gpustack/proj/dev/gpu" in user_data.splitlines()
        assert "s3cret-token" not in user_data
        (parameter,) = _by_type(recorder, "aws:ssm/parameter:Parameter")
        assert (
            parameter.inputs["type"] == "SecureString"
            and parameter.inputs["name"] == "/gpustack/proj/dev/gpu/agent-token"
        )
        (role,) = _by_type(recorder, "aws:iam/role:Role")
        trust = json.loads(role.inputs["assumeRolePolicy"])
        assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
        (policy,) = _by_type(recorder, "aws:iam/rolePolicy:RolePolicy")
        statements = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
        assert statements["ReadAgentToken"]["Resource"] == [
            "arn:aws:ssm:us-east-1:*:parameter/gpustack/proj/dev/gpu/agent-token"
        ]
        (attachment,) = _by_type(recorder, "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        assert attachment.inputs["policyArn"].endswith("AmazonSSMManagedInstanceCore")
        ingress = _by_type(recorder, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        cidrs = sorted(r.inputs.get("cidrIpv4", "self") for r in ingress)
        assert cidrs == ["10.0.0.0/16", "self"]
        assert not _by_type(recorder, "aws:ec2/placementGroup:PlacementGroup")  # g5: no EFA
        (capacity,) = [r for r in recorder.resources if r.typ.endswith("gpustack:AwsPoolCapacity")]
        assert capacity.inputs["needed"] == desired and capacity.inputs["quota_class"] == "G"
        (plan_resource,) = [r for r in recorder.resources if r.typ.endswith("gpustack:ClusterPlan")]
        assert [d["name"] for d in plan_resource.inputs["planned"]] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
        assert plan_resource.inputs["agents"] == {"gpu-0": "https://10.0.0.5:10150"}

    return pulumi.Output.all(pool.desired, pool.endpoints, pool.fingerprints, pool.sizing_plan, cluster.plan).apply(
        check
    )


def test_arguments_are_checked_before_anything_is_registered(mocks) -> None:
    with pytest.raises(ComponentArgsError, match="agent_cidrs is empty"):
        AwsGpuNodePool("gpu", {**ARGS, "agent_cidrs": []})  # type: ignore[arg-type]
    with pytest.raises(ComponentArgsError, match="carries 8× L40S"):
        AwsGpuNodePool("gpu", {**ARGS, "instance_type": ["g6e.12xlarge", "g6e.48xlarge"]})  # type: ignore[arg-type]
    with pytest.raises(ComponentArgsError, match="capacity_reservation_id"):
        AwsGpuNodePool("gpu", {**ARGS, "market": "capacity-block"})  # type: ignore[arg-type]
    with pytest.raises(ComponentArgsError, match="not a CIDR"):
        AwsGpuNodePool("gpu", {**ARGS, "agent_cidrs": ["10.0.0.0/33"]})  # type: ignore[arg-type]
    assert not mocks.resources
