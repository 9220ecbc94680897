# No `from __future__ import annotations`: Pulumi reads these annotations at runtime.
"""The dynamic resource of the local pool: the agent process on this machine."""

from typing import Any

import pulumi
import pulumi.dynamic

from gpustack_pulumi.pools.local.provider import LocalAgentProvider


class LocalAgent(pulumi.dynamic.Resource, module="gpustack", name="LocalAgent"):
    """The node agent process on this machine."""

    endpoint: pulumi.Output[str]
    node_name: pulumi.Output[str]
    pid: pulumi.Output[int]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["token"]))
        super().__init__(
            LocalAgentProvider(), name, {**props, "endpoint": None, "pid": None, "pid_start_time": None}, opts
        )
