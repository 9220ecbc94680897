"""The `kubernetes` stack: GPU nodes of an existing Kubernetes cluster and bare SSH hosts in ONE cluster, every
replica of every deployment placed together by one joint plan.

- ``KubernetesGpuPool`` runs the agent as a DaemonSet on the declared GPU nodes and serves the replicas the plan
  puts there as node-pinned Deployments (``pool.serve(cluster)``); its nodes' GPUs are declared, so the very first
  preview already places.
- ``SshNodePool`` installs the agent on the hosts over SSH (host keys pinned).

Config (example: ``Pulumi.kubernetes.example.yaml``):

- ``gpustack:k8sNodes``: the Kubernetes GPU nodes, each ``{name, gpu_product, gpus, address?, labels?, vendor?,
  mig_profile?}`` (``name`` = the node's ``kubernetes.io/hostname``).
- ``gpustack:agentImage``: the agent image without tag (tag: ``gpustack:agentVersion``, default this package's).
- ``gpustack:gpuAssignment``: ``plan`` (default, GPUs shared by memory fraction) or ``device-plugin``.
- ``gpustack:hfToken`` (secret, optional): the Hugging Face token engines on Kubernetes read.
- ``gpustack:hosts`` and ``gpustack:sshPrivateKey`` (secret): the SSH hosts, as in the ``onprem`` stack.
- ``gpustack:kubeconfig`` (optional): kubeconfig text; default: the ambient kubeconfig.
"""

import pulumi
import pulumi_kubernetes as k8s

from gpustack_pulumi import __version__
from gpustack_pulumi.components import AgentToken, GpuCluster, KubernetesGpuPool, ModelDeployment, SshNodePool

config = pulumi.Config("gpustack")
agent_version = config.get("agentVersion") or __version__
token = AgentToken("agent-token")

kubeconfig = config.get("kubeconfig")
provider = k8s.Provider("k8s", kubeconfig=kubeconfig) if kubeconfig else None
k8s_args: dict = {
    "nodes": config.require_object("k8sNodes"),
    "agent_token": token.token,
    "agent_image": config.require("agentImage"),
    "agent_version": agent_version,
    "gpu_assignment": config.get("gpuAssignment") or "plan",
}
if config.get_secret("hfToken") is not None:
    k8s_args["hf_token"] = config.require_secret("hfToken")
k8s_pool = KubernetesGpuPool("k8s", k8s_args, pulumi.ResourceOptions(providers=[provider] if provider else None))

ssh_pool = SshNodePool(
    "onprem",
    {
        "hosts": config.require_object("hosts"),
        "agent_token": token.token,
        "agent_version": agent_version,
        "private_key": config.require_secret("sshPrivateKey"),
    },
)

# One cluster over both pools: one plan places every replica on either pool's GPUs.
cluster = GpuCluster("gpus", {"pools": [k8s_pool, ssh_pool], "agent_token": token.token})  # type: ignore[list-item]

chat = ModelDeployment(
    "chat",
    {"cluster": cluster, "model": "Qwen/Qwen3-8B", "replicas": config.get_int("chatReplicas") or 3,
     "max_model_len": 32768, "mode": "throughput"},
)  # fmt: skip
reasoning = ModelDeployment(
    "reasoning",
    {"cluster": cluster, "model": "openai/gpt-oss-20b", "max_model_len": 65536, "concurrency": 4,
     "node_selector": {"gpustack.ai/runner": "kubernetes"}},
)  # fmt: skip
small = ModelDeployment(
    "small",
    {"cluster": cluster, "model": "Qwen/Qwen3-0.6B", "replicas": 2, "max_model_len": 8192, "priority": -1,
     "node_selector": {"rack": "r1"}},
)  # fmt: skip
# The workloads of the replicas the plan put on the Kubernetes nodes (Deployments, Services, PDBs).
workloads = k8s_pool.serve(cluster)

pulumi.export("agents", cluster.endpoints)
for deployment in (chat, reasoning, small):
    pulumi.export(f"{deployment._name}_placements", deployment.placements)
