"""The `onprem` stack: bare GPU hosts over SSH, three deployments placed across them.

Each host gets the gpustack agent (installed over SSH, host keys pinned); the deployments are placed on the GPUs
the agents report. Config:

- ``gpustack:hosts``: a list of hosts, each ``{address, host_key, user?, port?, node_name?, labels?}``
  (``host_key``: the host's public key line, e.g. from ``ssh-keyscan -t ed25519 HOST``).
- ``gpustack:sshPrivateKey`` (secret): the key that logs in to every host.
- ``gpustack:agentVersion`` (default: this package's version), ``gpustack:agentPort`` (default 10150),
  ``gpustack:chatReplicas`` (default 2).
"""

import pulumi

from gpustack_pulumi import __version__
from gpustack_pulumi.components import AgentToken, GpuCluster, ModelDeployment, SshNodePool

config = pulumi.Config("gpustack")
hosts = config.require_object("hosts")
token = AgentToken("agent-token")
pool = SshNodePool(
    "onprem",
    {
        "hosts": hosts,
        "agent_token": token.token,
        "agent_version": config.get("agentVersion") or __version__,
        "private_key": config.require_secret("sshPrivateKey"),
        "agent_port": config.get_int("agentPort") or 10150,
    },
)
cluster = GpuCluster("onprem", {"pools": [pool], "agent_token": token.token})

chat = ModelDeployment(
    "chat",
    {
        "cluster": cluster,
        "model": "Qwen/Qwen3-8B",
        "replicas": config.get_int("chatReplicas") or 2,
        "max_model_len": 32768,
        "mode": "throughput",
    },
)
reasoning = ModelDeployment(
    "reasoning",
    {"cluster": cluster, "model": "openai/gpt-oss-20b", "replicas": 1, "max_model_len": 65536, "concurrency": 4},
)
embeddings_sidecar = ModelDeployment(
    "small",
    {"cluster": cluster, "model": "Qwen/Qwen3-0.6B", "replicas": 3, "max_model_len": 8192, "priority": -1},
)

pulumi.export("agents", cluster.endpoints)
for deployment in (chat, reasoning, embeddings_sidecar):
    pulumi.export(f"{deployment._name}_endpoints", deployment.endpoints)
    pulumi.export(f"{deployment._name}_placements", deployment.placements)
