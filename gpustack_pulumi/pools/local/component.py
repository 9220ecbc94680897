# No `from __future__ import annotations`: Pulumi reads these annotations at runtime (see components/__init__.py).
"""LocalNodePool: this machine as a node. The agent runs here as a process (``provider.py``), and the pool reads
this machine's devices directly for its planned capacity, so the first preview already places."""

import re
import socket
from typing import NotRequired, TypedDict

import pulumi

from gpustack_pulumi.errors import ComponentArgsError
from gpustack_pulumi.localhost import planned_capacity
from gpustack_pulumi.pools.base import DEVICE_BACKENDS
from gpustack_pulumi.pools.local.resource import LocalAgent

_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class LocalNodePoolArgs(TypedDict):
    agent_token: pulumi.Input[str]
    """Bearer token the agent requires (a secret; usually the cluster's)."""
    node_name: NotRequired[str]
    """Node name in capacity documents and placements (default: this host's name)."""
    port: NotRequired[int]
    """Agent port; 0 (default) picks a free one."""
    devices: NotRequired[str]
    """Device backend: auto (default), nvml, ascend or none (CPU-only)."""
    labels: NotRequired[dict[str, str]]
    """Node labels that deployments can select on."""
    state_dir: NotRequired[str]
    """Where the agent keeps its state and engine logs (default: .gpustack/<stack>/<pool name>)."""
    port_range: NotRequired[str]
    """Ports for engines, LOW-HIGH (default: the agent's)."""


class LocalNodePool(pulumi.ComponentResource):
    """This machine as a node: starts the gpustack agent here."""

    endpoints: pulumi.Output[dict[str, str]]
    """Node name → agent URL."""
    planned_capacity: list[dict] | None
    """The capacity documents of the nodes this pool will create (read from this machine before its agent
    runs), so the first preview already places; None when unknown."""

    def __init__(self, name: str, args: LocalNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        props = _local_pool_props(name, args)
        super().__init__("gpustack:index:LocalNodePool", name, {}, opts)
        planned = planned_capacity(props["node_name"], props["devices"], props["labels"])
        self.planned_capacity = [planned] if planned is not None else None
        agent = LocalAgent(
            f"{name}-agent",
            {**props, "token": pulumi.Output.secret(args["agent_token"])},
            pulumi.ResourceOptions(parent=self),
        )
        self.endpoints = pulumi.Output.all(agent.node_name, agent.endpoint).apply(lambda v: {v[0]: v[1]})
        self.register_outputs({"endpoints": self.endpoints})


def _local_pool_props(name: str, args: LocalNodePoolArgs) -> dict:
    if "agent_token" not in args:
        raise ComponentArgsError(f"LocalNodePool '{name}': agent_token is required (pass the cluster's token)")
    node_name = args.get("node_name") or socket.gethostname()
    if not _NODE_NAME.match(node_name):
        raise ComponentArgsError(
            f"LocalNodePool '{name}': node_name '{node_name}' must be 1-63 letters, digits, '.', '_' or '-'"
        )
    devices = args.get("devices", "auto")
    if devices not in DEVICE_BACKENDS:
        raise ComponentArgsError(
            f"LocalNodePool '{name}': devices '{devices}' is invalid; use one of {', '.join(DEVICE_BACKENDS)}"
        )
    port = args.get("port", 0)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ComponentArgsError(f"LocalNodePool '{name}': port must be 0 (pick a free one) or 1-65535")
    port_range = args.get("port_range")
    if port_range is not None and not re.fullmatch(r"\d{1,5}-\d{1,5}", port_range):
        raise ComponentArgsError(f"LocalNodePool '{name}': port_range must look like 40000-40063")
    return {
        "node_name": node_name,
        "host": "127.0.0.1",
        "port": port,
        "devices": devices,
        "labels": dict(args.get("labels") or {}),
        "state_dir": args.get("state_dir") or f".gpustack/{pulumi.get_stack()}/{name}",
        "port_range": port_range,
    }
