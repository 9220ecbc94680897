"""Test stack: two local agents with fake GPUs (2 × 6 GiB each) and several multi-replica llama.cpp deployments.

Config: gpustack:stateDir (required), gpustack:deploy (0: only the agents; 1: the deployments; 2: also a
high-priority deployment that needs room the others hold), gpustack:runner (kubernetes: the agents report the
label a KubernetesGpuPool's agents report, so replicas are held on them for pods, never started).
"""

import sys
from pathlib import Path

import pulumi

from gpustack_pulumi.components import AgentToken, GpuCluster, LocalNodePool, ModelDeployment

config = pulumi.Config("gpustack")
state = Path(config.require("stateDir"))
deploy = config.get_int("deploy") or 0
model = config.require("model")
runner_labels = {"gpustack.ai/runner": config.get("runner")} if config.get("runner") else {}

token = AgentToken("agent-token")
pools = [
    LocalNodePool(
        f"pool-{node}",
        {"agent_token": token.token, "node_name": node, "devices": "nvml", "state_dir": str(state / node),
         "labels": runner_labels},
    )
    for node in ("n1", "n2")
]
cluster = GpuCluster("joint", {"pools": pools, "agent_token": token.token})
common = {
    "cluster": cluster,
    "model": model,
    "engine": "llama.cpp",
    "mode": "latency",  # llama.cpp on a GPU
    "max_model_len": 256,
    "engine_options": {"container": False, "python": sys.executable, "host": "127.0.0.1"},
    "ready_timeout_s": 180,
}
deployments = []
if deploy >= 1:
    deployments += [
        ModelDeployment("chat", {**common, "replicas": 3}),
        ModelDeployment("small", {**common, "replicas": 2}),
        ModelDeployment("tools", {**common, "replicas": 2, "priority": -1}),
    ]
if deploy >= 2:
    deployments.append(ModelDeployment("vip", {**common, "replicas": 2, "priority": 10}))

pulumi.export("agents", cluster.endpoints)
pulumi.export("token", token.token)
for deployment in deployments:
    pulumi.export(f"{deployment._name}_placements", deployment.placements)
