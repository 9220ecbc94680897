"""The AWS side of a GPU node pool, with boto3: can the pool grow to what the plan needs, and which of its
instances run which agent.

- :func:`check_capacity`: the EC2 vCPU quota of the pool's class and market (Service Quotas), the vCPUs already
  running in that class (EC2), and where the pool's instance types are offered (the pool's subnets' AZs). Every
  shortfall is returned as a value with its numbers (``Shortfall``); the pool's capacity resource fails
  ``check`` — so ``pulumi preview`` — with them.
- :func:`discover_nodes`: the pool's running instances (by tag), each with its node name (the slot it claimed)
  and its agent's TLS fingerprint (SSM parameter, else the instance tag).

Clients are made per call (``boto3.session.Session(region_name=…)``); nothing is kept on objects that Pulumi
pickles. ``AWS_ENDPOINT_URL`` points boto3 elsewhere (the tests' moto server).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

QUOTA_CODES: dict[tuple[str, str], tuple[str, str]] = {
    ("G", "on-demand"): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("P", "on-demand"): ("L-417A185B", "Running On-Demand P instances"),
    ("G", "spot"): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("P", "spot"): ("L-7212CCBC", "All P Spot Instance Requests"),
}
"""EC2 vCPU quotas (service code ``ec2``) by (class, market): codes agree across independent public preflight
scripts and the shared reference notes §3; check names with ``list_service_quotas(ServiceCode="ec2")``."""
LIVE_STATES = ("pending", "running")


@dataclass(frozen=True)
class Shortfall:
    """One reason the pool cannot grow to ``needed`` instances, with the numbers."""

    kind: str
    """quota | offering | subnets"""
    message: str


@dataclass
class CapacityReport:
    pool: str
    needed_instances: int
    shortfalls: list[Shortfall] = field(default_factory=list)
    quotas: dict[str, dict[str, float]] = field(default_factory=dict)
    """Quota code → {limit, in_use, pool_needs}."""
    offered_azs: dict[str, list[str]] = field(default_factory=dict)
    """Instance type → the AZs (of the pool's subnets) that offer it."""

    @property
    def ok(self) -> bool:
        return not self.shortfalls

    def describe(self) -> str:
        return f"AWS pool '{self.pool}' cannot grow to {self.needed_instances} instance(s): " + "; ".join(
            s.message for s in self.shortfalls
        )


def _session(region: str) -> Any:
    import boto3

    return boto3.session.Session(region_name=region)


def _markets(market: str, needed: int, on_demand_base: int) -> dict[str, int]:
    """Instances per quota market: spot pools use the spot quota, mixed ones on-demand up to the base."""
    if market == "spot":
        return {"spot": needed}
    if market == "mixed":
        base = min(needed, on_demand_base)
        return {key: value for key, value in (("on-demand", base), ("spot", needed - base)) if value}
    return {"on-demand": needed}  # on-demand and capacity blocks / reservations (counted as on-demand)


def quota_limit(session: Any, code: str) -> float | None:
    """The applied quota value (vCPUs), else the AWS default; None when Service Quotas knows neither."""
    from botocore.exceptions import ClientError

    client = session.client("service-quotas")
    for call in (client.get_service_quota, client.get_aws_default_service_quota):
        try:
            return float(call(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
        except client.exceptions.NoSuchResourceException:
            continue
        except ClientError as error:
            if call is client.get_service_quota:
                raise
            if error.response.get("Error", {}).get("Code") in ("AccessDeniedException",):
                raise
            continue
    return None


def vcpus_in_use(session: Any, quota_class: str, market: str, exclude_pool: str | None = None) -> int:
    """vCPUs of live instances of the class (G/VT or P) and market in the region, the pool's own left out
    (they are part of what it needs, not on top of it)."""
    from gpustack_pulumi.pools.aws.render import TAG_POOL

    ec2 = session.client("ec2")
    prefixes = ("g", "vt") if quota_class == "G" else ("p",)
    filters = [{"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
    types: dict[str, int] = {}
    total = 0
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                instance_type = instance["InstanceType"]
                if not instance_type.startswith(prefixes) or instance_type.split(".")[0].startswith("gr"):
                    continue
                spot = instance.get("InstanceLifecycle") == "spot"
                if spot != (market == "spot"):
                    continue
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
                if exclude_pool is not None and tags.get(TAG_POOL) == exclude_pool:
                    continue
                if instance_type not in types:
                    info = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"][0]
                    types[instance_type] = int(info["VCpuInfo"]["DefaultVCpus"])
                total += types[instance_type]
    return total


def offered_azs(session: Any, instance_types: Sequence[str], azs: Sequence[str]) -> dict[str, list[str]]:
    ec2 = session.client("ec2")
    offered: dict[str, list[str]] = {}
    response = ec2.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": list(instance_types)}, {"Name": "location", "Values": list(azs)}],
    )
    for item in response["InstanceTypeOfferings"]:
        offered.setdefault(item["InstanceType"], []).append(item["Location"])
    return {instance_type: sorted(offered.get(instance_type, [])) for instance_type in instance_types}


def subnet_azs(session: Any, subnet_ids: Sequence[str]) -> dict[str, str]:
    ec2 = session.client("ec2")
    subnets = ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
    return {subnet["SubnetId"]: subnet["AvailabilityZone"] for subnet in subnets}


def check_capacity(
    *,
    pool: str,
    region: str,
    instance_types: Sequence[str],
    vcpus_per_instance: int,
    quota_class: str,
    market: str,
    needed: int,
    subnet_ids: Sequence[str],
    on_demand_base: int = 0,
) -> CapacityReport:
    """Whether ``needed`` instances of the pool can run: quota headroom per market and an AZ of the pool's
    subnets offering one of its types. Every shortfall, with its numbers."""
    report = CapacityReport(pool=pool, needed_instances=needed)
    if needed <= 0:
        return report
    session = _session(region)
    azs = sorted(set(subnet_azs(session, subnet_ids).values()))
    report.offered_azs = offered_azs(session, instance_types, azs)
    if not any(report.offered_azs.values()):
        report.shortfalls.append(
            Shortfall(
                "offering",
                f"none of {', '.join(instance_types)} is offered in the AZs of its subnets ({', '.join(azs)}) in "
                f"{region}; use subnets in an AZ that offers them (aws ec2 describe-instance-type-offerings "
                f"--location-type availability-zone --filters Name=instance-type,Values={instance_types[0]})",
            )
        )
    for quota_market, count in _markets(market, needed, on_demand_base).items():
        code, title = QUOTA_CODES[(quota_class, quota_market)]
        limit = quota_limit(session, code)
        in_use = vcpus_in_use(session, quota_class, quota_market, exclude_pool=pool)
        wanted = count * vcpus_per_instance
        report.quotas[code] = {"limit": limit if limit is not None else -1, "in_use": in_use, "pool_needs": wanted}
        if limit is None:
            report.shortfalls.append(
                Shortfall(
                    "quota",
                    f"quota {code} ({title}) is unknown to Service Quotas in "
                    f"{region}; the pool needs {wanted} vCPUs of it",
                )
            )
            continue
        if in_use + wanted > limit:
            missing = int(in_use + wanted - limit)
            report.shortfalls.append(
                Shortfall(
                    "quota",
                    f"{count} × {instance_types[0]} ({vcpus_per_instance} vCPUs each) need {wanted} vCPUs of quota "
                    f"{code} '{title}', which is {limit:g} with {in_use} in use in {region}: {missing} vCPUs short "
                    f"(aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
                    f"--desired-value {int(in_use + wanted)})",
                )
            )
    return report


@dataclass(frozen=True)
class DiscoveredNode:
    node: str
    instance_id: str
    address: str
    fingerprint: str | None


def discover_nodes(*, region: str, pool: str, parameter_prefix: str, public: bool = False) -> list[DiscoveredNode]:
    """The pool's live instances (tag ``gpustack:pool``) that claimed a node name, with their address (private
    IP, or public with ``public``) and their agent's fingerprint (SSM ``<prefix>/nodes/<node>/fingerprint``,
    else the ``gpustack:fingerprint`` tag; None while the agent is not up yet)."""
    from gpustack_pulumi.pools.aws.render import TAG_FINGERPRINT, TAG_NODE, TAG_POOL

    session = _session(region)
    ec2 = session.client("ec2")
    ssm = session.client("ssm")
    filters = [
        {"Name": f"tag:{TAG_POOL}", "Values": [pool]},
        {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
    ]
    found: list[DiscoveredNode] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
                node = tags.get(TAG_NODE)
                if not node:
                    continue  # still booting: no slot claimed yet
                fingerprint = _parameter(ssm, f"{parameter_prefix}/nodes/{node}/fingerprint") or tags.get(
                    TAG_FINGERPRINT
                )
                address = instance.get("PublicIpAddress") if public else instance.get("PrivateIpAddress")
                found.append(DiscoveredNode(node, instance["InstanceId"], address or "", fingerprint))
    return sorted(found, key=lambda item: (item.node, item.instance_id))


def _parameter(ssm: Any, name: str) -> str | None:
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return None


def endpoints_of(nodes: Sequence[DiscoveredNode], agent_port: int) -> tuple[dict[str, str], dict[str, str]]:
    """(node → https URL, node → fingerprint) of nodes whose agent published its fingerprint."""
    urls: dict[str, str] = {}
    pins: dict[str, str] = {}
    for item in nodes:
        if item.fingerprint and item.address and item.node not in urls:
            urls[item.node] = f"https://{item.address}:{agent_port}"
            pins[item.node] = item.fingerprint
    return urls, pins


def quota_summary(report: CapacityReport) -> Mapping[str, Any]:
    return {"needed_instances": report.needed_instances, "quotas": report.quotas, "offered_azs": report.offered_azs}
