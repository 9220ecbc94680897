"""Entry points for callers (providers, ``gpustack-pulumi plan --show-launch``): a placed replica -> its
LaunchSpecs, the accelerators of a replica from an inventory, and a human-readable rendering.
"""

from __future__ import annotations

import shlex

from gpustack_runtime.wire import Inventory
from pydantic import BaseModel, ConfigDict

from gpustack_pulumi.analysis import analyze
from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.catalog import gpu_for_product
from gpustack_pulumi.engines.auto import select_engine
from gpustack_pulumi.engines.base import EngineContext, EngineRefusal, ExtraMemory, LaunchSpec, NodeAccelerator
from gpustack_pulumi.engines.options import EngineOptions
from gpustack_pulumi.engines.registry import get_engine
from gpustack_pulumi.placement.models import Deployment, PlacedReplica, Plan


def accelerators_from_inventory(inventory: Inventory, replica: PlacedReplica) -> dict[str, NodeAccelerator]:
    """Per node of the replica: what its placed devices are (catalog entry when the product is known)."""
    documents = {document.name: document for document in inventory.nodes}
    found: dict[str, NodeAccelerator] = {}
    for placement in replica.placements:
        document = documents.get(placement.node)
        if document is None:
            raise ValueError(
                f"replica {replica.deployment}[{replica.replica}]: node {placement.node} is not in the inventory"
            )
        if not placement.device_indices:
            found[placement.node] = NodeAccelerator.cpu(document.memory_total or 0)
            continue
        devices = {device.index: device for device in document.devices}
        device = devices.get(placement.device_indices[0])
        if device is None:
            raise ValueError(f"node {placement.node} has no device {placement.device_indices[0]}")
        spec = gpu_for_product(device.product, device.memory_total)
        found[placement.node] = NodeAccelerator(
            vendor=device.vendor, product=device.product, memory_bytes=device.memory_total, spec=spec
        )
    return found


def build_context(
    replica: PlacedReplica,
    profile: ModelProfile,
    deployment: Deployment,
    *,
    accelerators: dict[str, NodeAccelerator],
    node_addresses: dict[str, str] | None = None,
    options: EngineOptions | None = None,
) -> EngineContext:
    missing = [p.node for p in replica.placements if p.node not in accelerators]
    if missing:
        raise ValueError(f"accelerators: no entry for node(s) {', '.join(missing)} of {deployment.name}")
    return EngineContext(
        replica=replica,
        deployment=deployment,
        profile=profile,
        options=options or EngineOptions(),
        accelerators=accelerators,
        node_addresses=node_addresses or {},
    )


def resolve_engine(context: EngineContext) -> tuple[str, str | None]:
    """The replica's engine, and why when the deployment asked for ``auto``. Placement resolves ``auto`` with the
    same resolver (``select_engine``, through the registry's catalog), so the engine it sized the replica for is
    the one named here; a replica placed by hand with engine ``auto`` is resolved here."""
    if context.deployment.engine != "auto":
        return context.replica.engine, None
    choice = select_engine(
        context.deployment,
        context.profile,
        context.head_accelerator,
        context.options,
        gpu_count=context.device_count,
    )
    if context.replica.engine not in ("auto", choice.engine):
        # Placement resolves per device class (with the most GPUs of a node); the shape it chose may differ.
        return context.replica.engine, f"engine {context.replica.engine} (auto, as placement sized it)"
    return choice.engine, f"engine {choice.engine} (auto): {choice.reason}"


def launch_specs(
    replica: PlacedReplica,
    profile: ModelProfile,
    deployment: Deployment,
    *,
    accelerators: dict[str, NodeAccelerator],
    node_addresses: dict[str, str] | None = None,
    options: EngineOptions | None = None,
) -> list[LaunchSpec]:
    """One LaunchSpec per node of ``replica`` (head first). Raises EngineRefusal with the option at fault."""
    context = build_context(
        replica, profile, deployment, accelerators=accelerators, node_addresses=node_addresses, options=options
    )
    name, why = resolve_engine(context)
    specs = get_engine(name).launch_specs(context)
    if why:
        specs = [spec.model_copy(update={"reasons": [why, *spec.reasons]}) for spec in specs]
    return specs


def extra_memory(
    replica: PlacedReplica,
    profile: ModelProfile,
    deployment: Deployment,
    *,
    accelerators: dict[str, NodeAccelerator],
    options: EngineOptions | None = None,
) -> ExtraMemory:
    """Memory the engine needs beyond its memory model (drafts, KV offload), for placement's fit check."""
    context = build_context(replica, profile, deployment, accelerators=accelerators, options=options)
    name, _ = resolve_engine(context)
    return get_engine(name).extra_memory(context)


def render_launch_specs(specs: list[LaunchSpec]) -> str:
    """Plain text for people (``--show-launch``): where, what, and why. Secret values never exist here; only
    the names of the variables and the references they will be filled from."""
    lines: list[str] = []
    for spec in specs:
        devices = ",".join(str(index) for index in spec.visible_devices) or "cpu"
        lines.append(
            f"{spec.deployment}[{spec.replica}] {spec.node} ({spec.node_role}, rank {spec.node_rank}) "
            f"{spec.engine} {spec.engine_version} devices {devices}"
        )
        lines.append(f"  image:   {spec.image or '(process)'}")
        lines.append(f"  argv:    {shlex.join(spec.argv)}")
        for name, value in sorted(spec.env.items()):
            lines.append(f"  env:     {name}={value}")
        for name, reference in sorted(spec.secret_env.items()):
            lines.append(f"  secret:  {name} <- {reference}")
        for config_file in spec.config_files:
            lines.append(f"  file:    {config_file.path} ({len(config_file.content)} bytes)")
        lines.append(f"  health:  {spec.health_path or '(none: worker)'}   metrics: {spec.metrics_path or '(none)'}")
        for reason in spec.reasons:
            lines.append(f"  why:     {reason}")
    return "\n".join(lines) + "\n"


class ReplicaLaunch(BaseModel):
    """The launch specs of one placed replica, or why the engine refused it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment: str
    replica: int
    specs: list[LaunchSpec]
    refusal: str | None = None


def launch_specs_for_plan(
    plan: Plan,
    deployments: list[Deployment],
    inventory: Inventory,
    *,
    profiles: dict[str, ModelProfile] | None = None,
    node_addresses: dict[str, str] | None = None,
    options: dict[str, EngineOptions] | None = None,
) -> list[ReplicaLaunch]:
    """Every placed replica of ``plan`` with its LaunchSpecs (``gpustack-pulumi plan --show-launch``).

    ``profiles`` and ``options`` are keyed by deployment name; a missing profile is analysed from the
    deployment's model. Refusals are reported per replica, so one bad deployment does not hide the others.
    """
    by_name = {deployment.name: deployment for deployment in deployments}
    profiles = dict(profiles or {})
    launches = []
    for replica in plan.replicas:
        deployment = by_name[replica.deployment]
        profile = profiles.get(deployment.name)
        if profile is None:
            profile = profiles[deployment.name] = analyze(deployment.model, quantization=deployment.quantization)
        try:
            specs = launch_specs(
                replica,
                profile,
                deployment,
                accelerators=accelerators_from_inventory(inventory, replica),
                node_addresses=node_addresses,
                options=(options or {}).get(deployment.name),
            )
        except EngineRefusal as refusal:
            launches.append(
                ReplicaLaunch(deployment=replica.deployment, replica=replica.replica, specs=[], refusal=str(refusal))
            )
            continue
        launches.append(ReplicaLaunch(deployment=replica.deployment, replica=replica.replica, specs=specs))
    return launches


def render_plan_launches(launches: list[ReplicaLaunch]) -> str:
    parts = []
    for launch in launches:
        if launch.refusal:
            parts.append(f"{launch.deployment}[{launch.replica}] refused: {launch.refusal}\n")
        else:
            parts.append(render_launch_specs(launch.specs))
    return "".join(parts)
