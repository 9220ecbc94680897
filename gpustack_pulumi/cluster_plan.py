"""One plan per cluster: every replica of every deployment placed together, with its launch specs.

This is the single placement path of the product. ``gpustack-pulumi plan`` and ``gpustack-pulumi preview`` call
:func:`plan_cluster` directly; in a stack, the cluster's ``ClusterPlan`` resource calls it at ``check`` (so
``pulumi preview`` shows it) and each ``ModelReplica`` only reads its slice. Pure: capacity documents,
deployments and the previous plan in; a :class:`ClusterPlan` out. No network, no Pulumi.

Unplaced replicas come in two kinds:

- **pending**: not placed because deployments of a higher priority took the room (preemption, as the CLI
  shows it). The replica exists, runs nothing and says why; it is placed by a later ``up`` once room frees.
- **failed**: anything else (the model does not fit any eligible GPU, a selector matches nothing, an engine
  refuses the options). The plan fails with the numbers, so ``pulumi preview`` fails before anything is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from gpustack_runtime.wire import Inventory
from pydantic import BaseModel, ConfigDict, Field

from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.placement.models import Deployment, PlacedReplica, Plan, Strategy
from gpustack_pulumi.placement.planner import DEFAULT_TIME_BUDGET_S, plan

ReplicaStatus = Literal["placed", "pending"]
RUNNER_LABEL = "gpustack.ai/runner"
"""Node label naming who starts engines on the node; absent means its agent does."""
Runner = Literal["agent", "kubernetes"]


class ReplicaSlice(BaseModel):
    """What one replica reads from the cluster plan: where it runs and how it starts, or why it waits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment: str
    replica: int
    owner: str = Field(description="Owner of its reservations and instances on the agents.")
    status: ReplicaStatus
    placement: PlacedReplica | None = None
    launch: list[dict] = Field(default_factory=list, description="LaunchSpecs (JSON), head first.")
    reason: str = ""
    runner: Runner = Field(
        default="agent",
        description="Who starts its engines: the agents, or Kubernetes (the KubernetesGpuPool's workloads; the "
        "replica then only holds its memory on the agents with external reservations).",
    )


class ClusterPlan(BaseModel):
    """The cluster's plan: the placement (the same Plan the CLI prints) and each replica's slice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plan: Plan
    replicas: dict[str, ReplicaSlice] = Field(description="By replica key 'deployment/index'.")
    failures: list[str] = Field(default_factory=list, description="Why the plan cannot be carried out.")

    @property
    def ok(self) -> bool:
        return not self.failures


def runner_of(inventory: Inventory, nodes: Iterable[str]) -> Runner | str:
    """The runner of a replica on ``nodes``: ``kubernetes`` when every node's ``gpustack.ai/runner`` label says
    so (a KubernetesGpuPool's pods run it), else ``agent`` (other pools label their own kind: ssh, aws, local);
    a message when only some do (one replica cannot be half Kubernetes pods, half agent processes)."""
    labels = {node.name: (node.labels or {}).get(RUNNER_LABEL, "agent") for node in inventory.nodes}
    on_kubernetes = {labels.get(node) == "kubernetes" for node in nodes}
    if on_kubernetes == {True}:
        return "kubernetes"
    if True not in on_kubernetes:
        return "agent"
    kinds = sorted({labels.get(node) or "agent" for node in nodes})
    return f"its nodes have different runners ({', '.join(kinds)}); keep a replica within Kubernetes nodes or without"


def replica_key(deployment: str, replica: int) -> str:
    return f"{deployment}/{replica}"


def replica_owner(owner_prefix: str, deployment: str, replica: int) -> str:
    """``project/stack/`` + ``deployment/rN/``: the owner string agents keep for the replica's claims."""
    return f"{owner_prefix}{deployment}/r{replica}/"


class ProfileMemo:
    """Analyse each (model, quantization) once per plan: placement and the engines read the same profile."""

    def __init__(self, loader: Callable[[str, str | None], ModelProfile] | None = None) -> None:
        self._loader = loader
        self._profiles: dict[tuple[str, str | None], ModelProfile] = {}

    def __call__(self, model: str, quantization: str | None) -> ModelProfile:
        key = (model, quantization)
        if key not in self._profiles:
            if self._loader is not None:
                self._profiles[key] = self._loader(model, quantization)
            else:
                from gpustack_pulumi.analysis import analyze

                self._profiles[key] = analyze(model, quantization=quantization)
        return self._profiles[key]


def plan_cluster(
    inventory: Inventory,
    deployments: Iterable[Deployment],
    previous: Plan | None = None,
    *,
    owner_prefix: str = "",
    strategy: Strategy = "binpack",
    node_addresses: dict[str, str] | None = None,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    profile_loader: Callable[[str, str | None], ModelProfile] | None = None,
    with_launch: bool = True,
) -> ClusterPlan:
    """Place every replica of ``deployments`` on ``inventory`` together and render their launch specs.

    ``owner_prefix`` (``project/stack/``): allocations on the agents whose owner starts with it are this
    stack's own, which the previous plan accounts for. Same inputs → the same ClusterPlan.
    """
    from gpustack_pulumi.engines.base import EngineRefusal
    from gpustack_pulumi.engines.launch import accelerators_from_inventory, launch_specs

    deployment_list = list(deployments)
    by_name = {deployment.name: deployment for deployment in deployment_list}
    memo = ProfileMemo(profile_loader)
    placed = plan(
        inventory,
        deployment_list,
        previous,
        strategy,
        time_budget_s=time_budget_s,
        own_owner_prefix=owner_prefix or None,
        profile_loader=memo,
    )
    slices: dict[str, ReplicaSlice] = {}
    failures: list[str] = []
    for replica in placed.replicas:
        deployment = by_name[replica.deployment]
        owner = replica_owner(owner_prefix, replica.deployment, replica.replica)
        launch: list[dict] = []
        if with_launch:
            try:
                specs = launch_specs(
                    replica,
                    memo(deployment.model, deployment.quantization),
                    deployment,
                    accelerators=accelerators_from_inventory(inventory, replica),
                    node_addresses=node_addresses or {},
                    options=deployment.options,
                )
            except EngineRefusal as refusal:
                failures.append(f"{replica.deployment} replica {replica.replica}: the engine refuses: {refusal}")
                continue
            launch = [spec.model_dump(mode="json") for spec in specs]
        runner = runner_of(inventory, [p.node for p in replica.placements])
        if runner not in ("agent", "kubernetes"):
            failures.append(f"{replica.deployment} replica {replica.replica}: {runner}")
            continue
        key = replica_key(replica.deployment, replica.replica)
        slices[key] = ReplicaSlice(
            deployment=replica.deployment,
            replica=replica.replica,
            owner=owner,
            status="placed",
            placement=replica,
            launch=launch,
            reason=replica.reason,
            runner=runner,  # type: ignore[arg-type]
        )
    placed_priorities = [by_name[r.deployment].priority for r in placed.replicas]
    for unplaced in placed.unplaced:
        priority = by_name[unplaced.deployment].priority
        preempted = unplaced.constraint == "InsufficientMemory" and any(p > priority for p in placed_priorities)
        if not preempted:
            failures.append(f"{unplaced.deployment} replica {unplaced.replica} cannot be placed: {unplaced.reason}")
            continue
        key = replica_key(unplaced.deployment, unplaced.replica)
        slices[key] = ReplicaSlice(
            deployment=unplaced.deployment,
            replica=unplaced.replica,
            owner=replica_owner(owner_prefix, unplaced.deployment, unplaced.replica),
            status="pending",
            reason=f"pending: higher-priority deployments hold the room ({unplaced.reason})",
        )
    return ClusterPlan(plan=placed, replicas=dict(sorted(slices.items())), failures=failures)


__all__ = [
    "RUNNER_LABEL",
    "ClusterPlan",
    "ProfileMemo",
    "ReplicaSlice",
    "Runner",
    "plan_cluster",
    "replica_key",
    "replica_owner",
    "runner_of",
]
