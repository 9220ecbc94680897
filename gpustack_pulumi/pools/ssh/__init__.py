"""Bare hosts over SSH as a node pool: component, install rendering and host-key pinning."""

from gpustack_pulumi.pools.ssh.component import SshHostArgs, SshNodePool, SshNodePoolArgs

__all__ = ["SshHostArgs", "SshNodePool", "SshNodePoolArgs"]
