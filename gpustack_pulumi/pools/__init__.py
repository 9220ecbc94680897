"""Node pools: each kind in its own folder (component, install scripts, provider side by side), all behind the
:class:`NodePool` protocol that :class:`~gpustack_pulumi.components.GpuCluster` consumes."""

from gpustack_pulumi.pools.base import NodePool, planned_documents

__all__ = ["NodePool", "planned_documents"]
