# No `from __future__ import annotations`: Pulumi reads these annotations at runtime (see components/__init__.py).
"""GpuCluster: node pools (``gpustack_pulumi.pools``) and the one plan that places every deployment on them."""

import asyncio
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import pulumi

from gpustack_pulumi.components.program_end import call_when_program_ends
from gpustack_pulumi.components.resources import ClusterPlan
from gpustack_pulumi.errors import ComponentArgsError
from gpustack_pulumi.pools.base import NodePool as NodePoolProtocol
from gpustack_pulumi.pools.base import planned_documents

if TYPE_CHECKING:
    from gpustack_pulumi.placement.models import Deployment


NodePool = NodePoolProtocol  # every pool kind implements gpustack_pulumi.pools.NodePool


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
    deployments: pulumi.Output[list[dict]]
    """Every deployment declared on the cluster (JSON), once the program has declared them all."""
    fingerprints: pulumi.Output[dict[str, str]]
    """Node name → the SHA-256 fingerprint its agent's TLS certificate is pinned to (HTTPS agents only)."""
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
        # TLS pins of the agents that serve HTTPS (node -> sha256 fingerprint); loopback agents have none.
        self.fingerprints = pulumi.Output.all(*[getattr(pool, "fingerprints", None) or {} for pool in pools]).apply(
            lambda per_pool: {node: pin for pins in per_pool for node, pin in sorted((pins or {}).items())}
        )
        self._deployments: dict[str, Deployment] = {}
        self._sealed = False
        loop = asyncio.get_event_loop()
        self._deployments_future: asyncio.Future[Any] = loop.create_future()
        known: asyncio.Future[bool] = loop.create_future()
        known.set_result(True)
        deployments = pulumi.Output(set(), self._deployments_future, known)
        self.deployments = deployments
        self.pools = pools
        self.strategy = strategy
        # Planned capacity only when every pool can tell what it will create; else the plan waits for the agents.
        planned = planned_documents(pools)
        self._plan = ClusterPlan(
            f"{name}-plan",
            {
                "deployments": deployments,
                "agents": self.endpoints,
                "fingerprints": self.fingerprints,
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


# Re-exported for `from gpustack_pulumi.components.cluster import ...` in existing stacks.
from gpustack_pulumi.pools.local.component import LocalNodePool, LocalNodePoolArgs  # noqa: E402
from gpustack_pulumi.pools.ssh.component import SshNodePool  # noqa: E402

__all__ = ["ComponentArgsError", "GpuCluster", "GpuClusterArgs", "LocalNodePool", "LocalNodePoolArgs", "NodePool",
           "SshNodePool"]  # fmt: skip
