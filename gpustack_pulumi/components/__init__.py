"""What users import: GpuCluster, node pools and ModelDeployment.

Component modules do not use ``from __future__ import annotations``: Pulumi's component tooling reads the
argument and output annotations at runtime (shared reference: pulumi.md §1.1).
"""

from gpustack_pulumi.components.cluster import (
    ComponentArgsError,
    GpuCluster,
    GpuClusterArgs,
    LocalNodePool,
    LocalNodePoolArgs,
)
from gpustack_pulumi.components.deployment import ModelDeployment, ModelDeploymentArgs
from gpustack_pulumi.components.resources import AgentToken, LocalAgent, ModelReplica
from gpustack_pulumi.pools.ssh.component import SshHostArgs, SshNodePool, SshNodePoolArgs

__all__ = [
    "AgentToken",
    "ComponentArgsError",
    "GpuCluster",
    "GpuClusterArgs",
    "LocalAgent",
    "LocalNodePool",
    "LocalNodePoolArgs",
    "ModelDeployment",
    "ModelDeploymentArgs",
    "ModelReplica",
    "SshHostArgs",
    "SshNodePool",
    "SshNodePoolArgs",
]
from gpustack_pulumi.components.gateway import ApiKey, Gateway  # noqa: F401 (the gateway; needs the above)
from gpustack_pulumi.pools.kubernetes import KubernetesGpuPool, KubernetesGpuPoolArgs  # noqa: F401 (the Kubernetes pool)
