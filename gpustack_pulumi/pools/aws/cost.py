"""$/h of AWS GPU node pools and of the deployments placed on them, for the preview report. Pure.

Prices come from ``catalog/aws_prices.yaml`` (each with its source page, date and region) or a pool's own
``price_per_hour``. A deployment's cost is the share of its nodes' price its replicas' GPUs take: a replica
on 2 of a node's 4 GPUs costs half that node.

The report section (:func:`render_cost_markdown`) is one function so the preview command can append it; the hook
``preview.py`` needs is described in the README's AWS section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from gpustack_pulumi.pools.aws.render import PoolSpec, desired_from_plan, nodes_used


@dataclass(frozen=True)
class Price:
    instance_type: str
    per_hour: float
    kind: str
    """on_demand, capacity_block or given (the pool's price_per_hour)."""
    region: str | None
    source: str | None
    date: str | None


@cache
def _prices() -> dict[str, Any]:
    import yaml

    from gpustack_pulumi.catalog._data import read_packaged_text

    return yaml.safe_load(read_packaged_text("aws_prices.yaml"))


def price_of(spec: PoolSpec, live: Mapping[str, Price] | None = None) -> Price | None:
    """The pool's hourly price per instance: its own ``price_per_hour``, else a live On-Demand price (``live``,
    by pool name; not for capacity-block pools, whose rate is the block's), else the catalog's (capacity-block
    rate for a capacity-block pool, else on-demand, which also bounds spot), else None."""
    instance_type = spec.primary.instance_type
    if spec.price_per_hour is not None:
        return Price(instance_type, spec.price_per_hour, "given", spec.region, "pool argument price_per_hour", None)
    if live and spec.name in live and spec.market != "capacity-block":
        return live[spec.name]
    data = _prices()
    entry = (data.get("prices") or {}).get(instance_type)
    if not entry:
        return None
    kind = "capacity_block" if spec.market == "capacity-block" and "capacity_block" in entry else "on_demand"
    if kind not in entry:
        return None
    source = (data.get("sources") or {}).get(entry["source"]) or {}
    return Price(instance_type, float(entry[kind]), kind, entry.get("region"), source.get("url"), source.get("date"))


@dataclass(frozen=True)
class PoolCost:
    pool: str
    instance_type: str
    instances: int
    market: str
    price: Price | None

    @property
    def per_hour(self) -> float | None:
        return None if self.price is None else round(self.instances * self.price.per_hour, 4)


def pool_cost(spec: PoolSpec, plan: Mapping[str, Any] | None, live: Mapping[str, Price] | None = None) -> PoolCost:
    return PoolCost(spec.name, spec.primary.instance_type, desired_from_plan(spec, plan), spec.market,
                    price_of(spec, live))  # fmt: skip


def deployment_costs(
    specs: Sequence[PoolSpec], plan: Mapping[str, Any] | None, live: Mapping[str, Price] | None = None
) -> dict[str, float]:
    """$/h per deployment: for each replica placement on a pool node, (GPUs it uses / GPUs of the node) × the
    node's price. Deployments on nodes without a price are left out."""
    by_node: dict[str, tuple[float, int]] = {}
    for spec in specs:
        price = price_of(spec, live)
        if price is None:
            continue
        for node in nodes_used(spec, plan):
            by_node[node] = (price.per_hour, spec.primary.gpu_count)
    costs: dict[str, float] = {}
    for replica in (plan or {}).get("replicas") or []:
        for placement in replica.get("placements") or []:
            node = placement.get("node")
            if node not in by_node:
                continue
            per_hour, gpus = by_node[node]
            share = len(placement.get("device_indices") or []) / gpus if gpus else 1.0
            costs[replica["deployment"]] = costs.get(replica["deployment"], 0.0) + per_hour * share
    return {name: round(value, 4) for name, value in sorted(costs.items())}


def cost_summary(
    specs: Sequence[PoolSpec], plan: Mapping[str, Any] | None, live: Mapping[str, Price] | None = None
) -> dict[str, Any]:
    """The same figures as :func:`render_cost_markdown`, as data (the preview report's JSON ``costs``)."""
    pools = []
    total = 0.0
    for spec in specs:
        cost = pool_cost(spec, plan, live)
        if cost.per_hour is not None:
            total += cost.per_hour
        price = cost.price
        pools.append({
            "pool": spec.name, "instance_type": cost.instance_type, "market": spec.market,
            "instances": cost.instances, "min_nodes": spec.min_nodes, "max_nodes": spec.max_nodes,
            "planned_nodes_used": nodes_used(spec, plan), "price_per_instance_hour": price.per_hour if price else None,
            "per_hour": cost.per_hour, "price_kind": price.kind if price else None,
            "price_source": price.source if price else None, "price_date": price.date if price else None,
            "price_region": price.region if price else None,
        })  # fmt: skip
    return {"currency": "USD", "pools": pools, "deployments": deployment_costs(specs, plan, live),
            "total_per_hour": round(total, 4)}  # fmt: skip


def render_cost_markdown(
    specs: Sequence[PoolSpec], plan: Mapping[str, Any] | None, live: Mapping[str, Price] | None = None
) -> str:
    """The AWS section of the preview report: per pool the instances the plan buys and their $/h, per deployment
    its share, and the total."""
    lines = [
        "**AWS node pools**",
        "",
        "| pool | instance type | market | instances (min–max) | planned nodes used | $/h each | $/h |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    total = 0.0
    unpriced = []
    for spec in specs:
        cost = pool_cost(spec, plan, live)
        nodes = ", ".join(nodes_used(spec, plan)) or "—"
        each = f"{cost.price.per_hour:.3f}" if cost.price else "no price"
        hourly = f"{cost.per_hour:.2f}" if cost.per_hour is not None else "—"
        if cost.per_hour is not None:
            total += cost.per_hour
        else:
            unpriced.append(spec.name)
        lines.append(
            f"| {spec.name} | {cost.instance_type} | {spec.market} | {cost.instances} ({spec.min_nodes}–"
            f"{spec.max_nodes}) | {nodes} | {each} | {hourly} |"
        )
    lines += ["", f"Total: **${total:.2f}/h**" + (f" (no price for {', '.join(unpriced)})" if unpriced else "")]
    per_deployment = deployment_costs(specs, plan, live)
    if per_deployment:
        lines += ["", "| deployment | $/h |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in per_deployment.items()]
    sources = sorted(
        {(p.kind, p.source, p.date, p.region) for p in (price_of(s, live) for s in specs) if p is not None}, key=str
    )
    if sources:
        lines += [""] + [
            f"Prices: {kind} {region or ''}, {source} ({date or 'undated'})" for kind, source, date, region in sources
        ]
    if any(spec.market in ("spot", "mixed") for spec in specs):
        lines.append("Spot capacity is priced at the on-demand rate (an upper bound).")
    return "\n".join(lines) + "\n"
