"""Kubernetes GPU pools: the GPU nodes of an existing cluster, with pulumi-kubernetes.

``render`` holds the pure functions that render every Kubernetes object as a plain dict; ``component`` holds
:class:`KubernetesGpuPool`, which validates its arguments and creates the rendered objects.
"""

from gpustack_pulumi.pools.kubernetes.component import KubernetesGpuPool, KubernetesGpuPoolArgs, KubernetesNodeArgs

__all__ = ["KubernetesGpuPool", "KubernetesGpuPoolArgs", "KubernetesNodeArgs"]
