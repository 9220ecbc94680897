# No `from __future__ import annotations`: Pulumi reads these annotations at runtime (see components/__init__.py).
"""GpuCluster and the node pools it is made of."""

import asyncio
import re
import socket
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import pulumi

from gpustack_pulumi.components.program_end import call_when_program_ends
from gpustack_pulumi.components.resources import ClusterPlan, LocalAgent
from gpustack_pulumi.localhost import planned_capacity
from gpustack_pulumi.pools.base import NodePool as NodePoolProtocol
from gpustack_pulumi.pools.base import planned_documents

if TYPE_CHECKING:
    from gpustack_pulumi.placement.models import Deployment

DEVICE_BACKENDS = ("auto", "nvml", "ascend", "none")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class ComponentArgsError(ValueError):
    """A component argument is wrong: the message names the argument and the fix. Raised before anything is
    registered, so nothing is half-created."""


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


from gpustack_pulumi.components.ssh_pool import SshNodePool  # noqa: E402 (needs ComponentArgsError above)

NodePool = LocalNodePool | SshNodePool  # pools of other kinds (AWS, Kubernetes) join this alias


STRATEGIES = ("binpack", "spread")


class GpuClusterArgs(TypedDict):
    pools: list[NodePool]
    """The node pools whose agents make up the cluster."""
    agent_token: pulumi.Input[str]
    """The agents' bearer token (a secret)."""
    strategy: NotRequired[str]
    """binpack (default: fewest GPUs, replicas of one deployment still apart) or spread."""
    time_budget_s: NotRequired[float]
    """Seconds the exact solver may spend on the plan (default 2)."""


class GpuCluster(pulumi.ComponentResource):
    """A set of node pools and the token their agents require; deployments place replicas on it.

    Every deployment declared on the cluster is placed by one joint plan (the ``ClusterPlan`` child): all
    replicas together, sticky to the previous plan, with the capacity claimed for all of them before any
    engine starts. The plan is made once the program has declared every deployment.
    """

    endpoints: pulumi.Output[dict[str, str]]
    """Node name → agent URL, over all pools."""
    agent_token: pulumi.Output[str]
    plan: pulumi.Output[dict]
    """The joint plan: status, source (agents or planned capacity), the Plan and each replica's slice."""

    def __init__(self, name: str, args: GpuClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        pools = list(args.get("pools") or [])
        if not pools:
            raise ComponentArgsError(f"GpuCluster '{name}': pools is empty; add at least one node pool")
        for index, pool in enumerate(pools):
            if not isinstance(pool, NodePoolProtocol):
                raise ComponentArgsError(
                    f"GpuCluster '{name}': pools[{index}] is a {type(pool).__name__}, not a node pool (it needs "
                    "`endpoints` and `planned_capacity`; see gpustack_pulumi.pools.NodePool)"
                )
        if "agent_token" not in args:
            raise ComponentArgsError(f"GpuCluster '{name}': agent_token is required (a Pulumi secret)")
        strategy = args.get("strategy", "binpack")
        if strategy not in STRATEGIES:
            raise ComponentArgsError(f"GpuCluster '{name}': strategy '{strategy}' is invalid; use binpack or spread")
        budget = args.get("time_budget_s", 2.0)
        if not isinstance(budget, int | float) or not 0 < budget <= 600:
            raise ComponentArgsError(f"GpuCluster '{name}': time_budget_s must be a number of seconds in (0, 600]")
        super().__init__("gpustack:index:GpuCluster", name, {}, opts)
        self.name = name
        self.agent_token = pulumi.Output.secret(args["agent_token"])
        self.endpoints = pulumi.Output.all(*[pool.endpoints for pool in pools]).apply(_merge_endpoints)
        self._deployments: dict[str, Deployment] = {}
        self._sealed = False
        loop = asyncio.get_event_loop()
        self._deployments_future: asyncio.Future[Any] = loop.create_future()
        known: asyncio.Future[bool] = loop.create_future()
        known.set_result(True)
        deployments = pulumi.Output(set(), self._deployments_future, known)
        # Planned capacity only when every pool can tell what it will create; else the plan waits for the agents.
        planned = planned_documents(pools)
        self._plan = ClusterPlan(
            f"{name}-plan",
            {
                "deployments": deployments,
                "agents": self.endpoints,
                "token": self.agent_token,
                "planned": planned,
                "owner_prefix": f"{pulumi.get_project()}/{pulumi.get_stack()}/",
                "strategy": strategy,
                "time_budget_s": float(budget),
            },
            pulumi.ResourceOptions(parent=self),
        )
        self.plan = self._plan.plan
        call_when_program_ends(self._seal)
        self.register_outputs({"endpoints": self.endpoints})

    def declare(self, deployment: "Deployment") -> None:
        """Add a deployment to the joint plan (``ModelDeployment`` does this). Only while the program runs."""
        if self._sealed:
            raise ComponentArgsError(
                f"ModelDeployment '{deployment.name}' was declared after cluster '{self.name}' made its plan; "
                "declare every ModelDeployment in the program's body (not inside an apply or a callback)"
            )
        if deployment.name in self._deployments:
            raise ComponentArgsError(
                f"ModelDeployment '{deployment.name}' is declared twice on cluster '{self.name}'; names must be unique"
            )
        self._deployments[deployment.name] = deployment

    def replica_slice(self, deployment: str, replica: int) -> pulumi.Output[Any]:
        """The slice of the joint plan for one replica (None while the plan is decided at update)."""
        from gpustack_pulumi.cluster_plan import replica_key

        key = replica_key(deployment, replica)
        return self.plan.apply(lambda plan: ((plan or {}).get("replicas") or {}).get(key))

    def _seal(self) -> None:
        self._sealed = True
        if not self._deployments_future.done():
            self._deployments_future.set_result(
                [self._deployments[name].model_dump(mode="json") for name in sorted(self._deployments)]
            )


def _merge_endpoints(per_pool: list[dict[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for endpoints in per_pool:
        for node, url in endpoints.items():
            if node in merged and merged[node] != url:
                raise ComponentArgsError(f"node name '{node}' appears in two pools; node names must be unique")
            merged[node] = url
    return dict(sorted(merged.items()))
