"""The sample Kubernetes pool the renderer tests and the API-server test share: nodes that cover every shape the
pool renders (single-node replicas sharing GPUs, whole GPUs, a multi-node replica, Ascend NPUs, MIG slices), its
settings and the deployments placed on it, and the plan the product's own planner makes of them."""

from __future__ import annotations

from typing import Any

from gpustack_runtime.wire import Inventory

from gpustack_pulumi.cluster_plan import plan_cluster
from gpustack_pulumi.placement.models import Deployment
from gpustack_pulumi.pools.kubernetes import render
from gpustack_pulumi.pools.kubernetes.render import HfTokenRef, KubernetesNode, ModelCache, PoolSettings

NODES = [
    KubernetesNode("gpu-1", "NVIDIA L40S", 2, address="10.0.0.1", labels={"zone": "a", "tier": "shared"}),
    KubernetesNode("gpu-2", "L40S", 2, address="10.0.0.2", labels={"tier": "shared"}),
    KubernetesNode("pp-1", "NVIDIA L40S", 1, address="10.0.1.1", labels={"tier": "pp"}),
    KubernetesNode("pp-2", "NVIDIA L40S", 1, address="10.0.1.2", labels={"tier": "pp"}),
    KubernetesNode("npu-1", "Ascend-910B3", 8, vendor="ascend"),
    KubernetesNode("mig-1", "A100-80GB-SXM", 7, mig_profile="1g.10gb"),
]
SETTINGS = PoolSettings(
    pool="k8s",
    namespace="gpustack",
    agent_image="ghcr.io/acme/gpustack-runtime",
    agent_version="0.1.0",
    hf_token=HfTokenRef("hf-token", "token"),
    model_cache=ModelCache(pvc="models"),
    secret_name="k8s-secrets",
)
DEPLOYMENTS = [
    Deployment(name="chat", model="Qwen/Qwen3-8B", replicas=2, max_model_len=32768, node_selector={"tier": "shared"}),
    Deployment(
        name="small",
        model="Qwen/Qwen3-0.6B",
        replicas=1,
        max_model_len=8192,
        node_selector={"tier": "shared"},
        engine_options={"api_key_secret": "api-key"},
    ),
    Deployment(name="wide", model="Qwen/Qwen3-32B", replicas=1, max_model_len=32768, node_selector={"tier": "pp"}),
    Deployment(name="npu", model="Qwen/Qwen3-8B", replicas=1, max_model_len=8192, gpu_selector=["Ascend-910B3"]),
    Deployment(
        name="slice",
        model="Qwen/Qwen3-0.6B",
        replicas=1,
        max_model_len=4096,
        gpu_selector=["NVIDIA A100-SXM4-80GB MIG 1g.10gb"],
    ),
]


def plan_on_pool(pool: str, nodes: list[KubernetesNode], deployments: list[Deployment]) -> dict[str, Any]:
    """The cluster plan (as the ClusterPlan resource outputs it) of the deployments on the pool's planned capacity."""
    inventory = Inventory.model_validate({"nodes": render.planned_capacity(nodes, pool)})
    addresses = {node.name: node.address or node.name for node in nodes}
    result = plan_cluster(inventory, deployments, owner_prefix="proj/dev/", node_addresses=addresses)
    assert result.ok, result.failures
    return result.model_dump(mode="json")
