"""Readable plan: a table per node and GPU, the replicas with their reasons, and the unplaced ones (rich)."""

from __future__ import annotations

from gpustack_runtime.wire import Inventory
from rich.console import Group
from rich.table import Table
from rich.text import Text

from gpustack_pulumi.placement.models import Plan

GIB = 1024**3


def _gib(value: int) -> str:
    return f"{value / GIB:.1f}"


def render_plan(plan: Plan, inventory: Inventory) -> Group:
    """Everything a reviewer needs, ordered by node name and device index (deterministic)."""
    on_device: dict[tuple[str, int], list[tuple[str, int]]] = {}
    on_host: dict[str, list[tuple[str, int]]] = {}
    for replica in plan.replicas:
        label = f"{replica.deployment}#{replica.replica}"
        for placement in replica.placements:
            if not placement.device_indices:
                on_host.setdefault(placement.node, []).append((label, placement.memory_bytes_per_device))
            for index in placement.device_indices:
                on_device.setdefault((placement.node, index), []).append((label, placement.memory_bytes_per_device))

    devices = Table(title="Placement by node and GPU", show_lines=False)
    for column in (
        "node",
        "GPU",
        "product",
        "total GiB",
        "taken by others GiB",
        "planned GiB",
        "free after GiB",
        "replicas",
    ):
        devices.add_column(column, justify="right" if "GiB" in column or column == "GPU" else "left")
    for node in sorted(inventory.nodes, key=lambda n: n.name):
        if not node.devices:
            planned = sum(claim for _, claim in on_host.get(node.name, []))
            total = node.memory_total or 0
            devices.add_row(
                node.name,
                "CPU",
                "host memory",
                _gib(total),
                "",
                _gib(planned),
                _gib(total - planned) if node.memory_total else "?",
                ", ".join(label for label, _ in on_host.get(node.name, [])),
            )
            continue
        for device in sorted(node.devices, key=lambda d: d.index):
            entries = on_device.get((node.name, device.index), [])
            planned = sum(claim for _, claim in entries)
            foreign = (
                device.memory_foreign
                if device.memory_foreign is not None
                else max(0, device.memory_used - device.memory_allocated)
            )
            others = device.memory_allocated + foreign
            devices.add_row(
                node.name,
                str(device.index),
                device.product,
                _gib(device.memory_total),
                _gib(others),
                _gib(planned),
                _gib(device.memory_total - others - planned),
                ", ".join(label for label, _ in entries),
            )

    replicas = Table(title="Replicas")
    for column in ("deployment", "#", "engine", "where", "TP×PP", "fraction", "GiB/device", "reason"):
        replicas.add_column(column, overflow="fold")
    for replica in plan.replicas:
        where = "; ".join(
            f"{p.node} " + (f"GPU {','.join(map(str, p.device_indices))}" if p.device_indices else "CPU")
            for p in replica.placements
        )
        fraction = "" if replica.memory_fraction is None else f"{replica.memory_fraction:g}"
        replicas.add_row(
            replica.deployment,
            str(replica.replica),
            replica.engine,
            where,
            f"{replica.tensor_parallel_size}×{replica.pipeline_parallel_size}",
            fraction,
            _gib(replica.placements[0].memory_bytes_per_device),
            replica.reason,
        )

    parts: list = [devices, replicas]
    if plan.unplaced:
        unplaced = Table(title="Unplaced replicas", style="red")
        for column in ("deployment", "#", "constraint", "reason"):
            unplaced.add_column(column, overflow="fold")
        for item in plan.unplaced:
            unplaced.add_row(item.deployment, str(item.replica), item.constraint, item.reason)
        parts.append(unplaced)
    s = plan.summary
    parts.append(
        Text(
            f"{s.placed} placed, {s.unplaced} unplaced, {s.gpus_used} GPUs on {s.nodes_used} nodes, "
            f"{s.kept} kept, {s.moved} moved ({s.method}{', proven optimal' if s.proven_optimal else ''}, "
            f"{plan.strategy})"
        )
    )
    return Group(*parts)
