"""This machine as a node pool: component, the agent's dynamic resource and its provider."""

from gpustack_pulumi.pools.local.component import LocalNodePool, LocalNodePoolArgs

__all__ = ["LocalNodePool", "LocalNodePoolArgs"]
