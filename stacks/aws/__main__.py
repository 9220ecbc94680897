"""The `aws` stack: EC2 GPU instances in an Auto Scaling group, bought to the size the joint plan needs, each
running the gpustack agent; models placed on them by one plan.

Config (example: ``Pulumi.aws.example.yaml``):

- ``gpustack:region``, ``gpustack:vpcId``, ``gpustack:subnetIds`` (list): where the group launches.
- ``gpustack:agentCidrs`` (list): the networks allowed to reach the agents (where you run Pulumi).
- ``gpustack:instanceType`` (or a list of fallbacks with the same GPUs), ``gpustack:maxNodes``,
  ``gpustack:minNodes``, ``gpustack:market`` (on-demand, spot, mixed, capacity-block),
  ``gpustack:capacityReservationId``.
- ``gpustack:chatReplicas`` (default 2).

Preview report (no AWS call, planned capacity): ``python -m gpustack_pulumi.pools.aws.report stacks/aws --stack aws
--config-file stacks/aws/Pulumi.aws.example.yaml``; add ``--check-quotas`` to ask AWS for quotas and offerings.
"""

import json

import pulumi

from gpustack_pulumi.components import AgentToken, GpuCluster, ModelDeployment
from gpustack_pulumi.pools.aws import AwsGpuNodePool

config = pulumi.Config("gpustack")
token = AgentToken("agent-token")

instance_type = config.get("instanceType") or "g5.xlarge"  # or a JSON list of fallbacks
pool_args: dict = {
    "instance_type": json.loads(instance_type) if instance_type.startswith("[") else instance_type,
    "region": config.require("region"),
    "vpc_id": config.require("vpcId"),
    "subnet_ids": config.require_object("subnetIds"),
    "agent_cidrs": config.require_object("agentCidrs"),
    "max_nodes": config.get_int("maxNodes") or 4,
    "min_nodes": config.get_int("minNodes") or 0,
    "market": config.get("market") or "on-demand",
    "agent_token": token.token,
    "models": ["Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B"],
}
if config.get("capacityReservationId"):
    pool_args["capacity_reservation_id"] = config.get("capacityReservationId")
pool = AwsGpuNodePool("gpu", pool_args)

cluster = GpuCluster("gpus", {"pools": [pool], "agent_token": token.token})  # type: ignore[list-item]
chat = ModelDeployment(
    "chat",
    {"cluster": cluster, "model": "Qwen/Qwen3-8B", "replicas": config.get_int("chatReplicas") or 2,
     "max_model_len": 8192},
)  # fmt: skip
small = ModelDeployment("small", {"cluster": cluster, "model": "Qwen/Qwen3-0.6B", "max_model_len": 8192})
# The group's desired capacity: the planned nodes the deployments need (see AwsGpuNodePool).
pool.size_from(cluster)

pulumi.export("instances", pool.desired)
pulumi.export("agents", cluster.endpoints)
for deployment in (chat, small):
    pulumi.export(f"{deployment._name}_placements", deployment.placements)
