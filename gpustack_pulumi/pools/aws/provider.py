"""Dynamic providers of the AWS pool (thin glue over :mod:`gpustack_pulumi.pools.aws.quota`).

- ``AwsPoolCapacityProvider`` (resource ``{pool}-capacity``): ``check`` asks AWS whether the pool can grow to the
  instances the plan needs (vCPU quotas of its class and market, type offerings in its subnets' AZs) and fails
  — so ``pulumi preview`` fails — with the numbers. Nothing to create.
- ``AwsPoolAgentsProvider`` (resource ``{pool}-agents``): after the Auto Scaling group, waits until ``desired``
  instances have claimed their node names and published their agents' fingerprints; its outputs are the pool's
  ``endpoints`` and ``fingerprints``. ``read`` (``pulumi refresh``) rediscovers them; ``delete`` removes the pool's
  slot and fingerprint parameters (the group's deletion terminates the instances).

Plain data only on ``self``: the provider objects are pickled into state.
"""

from __future__ import annotations

import time
from typing import Any

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

AGENTS_TIMEOUT_S = 1800.0
"""How long ``up`` waits for the pool's agents: a GPU instance boots in 1-3 min, install.sh builds the agent's
venv in 1-2 min; large instances (p5) and capacity-block starts take longer."""
POLL_S = 10.0


def _unknown(value: Any) -> bool:
    from gpustack_pulumi.providers.model_replica import _is_unknown

    return _is_unknown(value)


class AwsPoolCapacityProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        from gpustack_pulumi.pools.aws.quota import check_capacity, quota_summary

        needed = news.get("needed")
        if any(_unknown(news.get(key)) for key in ("needed", "region", "subnet_ids", "instance_types")):
            return CheckResult(news, [])
        try:
            report = check_capacity(
                pool=news["pool"],
                region=news["region"],
                instance_types=list(news["instance_types"]),
                vcpus_per_instance=int(news["vcpus_per_instance"]),
                quota_class=news["quota_class"],
                market=news["market"],
                needed=int(needed or 0),
                subnet_ids=list(news["subnet_ids"]),
                on_demand_base=int(news.get("on_demand_base") or 0),
            )
        except Exception as error:  # botocore: no credentials, no access, throttled
            return CheckResult(
                news,
                [
                    CheckFailure(
                        "needed",
                        f"AWS pool '{news['pool']}': cannot read quotas and offerings in {news['region']}: {error}",
                    )
                ],
            )
        if not report.ok:
            return CheckResult(news, [CheckFailure("needed", report.describe())])
        return CheckResult({**news, "report": quota_summary(report)}, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("needed", "region", "instance_types", "market", "subnet_ids", "report")
        return DiffResult(changes=any(olds.get(k) != news.get(k) for k in keys), replaces=[])

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"capacity-{props['pool']}", outs=props)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=news)


class AwsPoolAgentsProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"agents-{props['pool']}", outs={**props, **_wait_for_agents(props)})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, **_wait_for_agents(news)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("desired", "group", "launch_template_version", "agent_port", "public")
        return DiffResult(changes=any(olds.get(k) != news.get(k) for k in keys), replaces=[])

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        from gpustack_pulumi.pools.aws.quota import discover_nodes, endpoints_of

        nodes = discover_nodes(
            region=props["region"],
            pool=props["pool"],
            parameter_prefix=props["parameter_prefix"],
            public=bool(props.get("public")),
        )
        endpoints, fingerprints = endpoints_of(nodes, int(props["agent_port"]))
        return ReadResult(id_, {**props, "endpoints": endpoints, "fingerprints": fingerprints})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        from gpustack_pulumi.pools.aws.quota import _session

        ssm = _session(props["region"]).client("ssm")
        names: list[str] = []
        for page in ssm.get_paginator("get_parameters_by_path").paginate(
            Path=props["parameter_prefix"], Recursive=True
        ):
            names += [p["Name"] for p in page["Parameters"] if not p["Name"].endswith("/agent-token")]
        for start in range(0, len(names), 10):
            ssm.delete_parameters(Names=names[start : start + 10])


def _wait_for_agents(props: dict[str, Any]) -> dict[str, Any]:
    """Poll until ``desired`` nodes ``<pool>-0..desired-1`` serve (fingerprint published), or fail naming those
    that do not."""
    from gpustack_pulumi.pools.aws.quota import discover_nodes, endpoints_of

    desired = int(props.get("desired") or 0)
    wanted = [f"{props['pool']}-{index}" for index in range(desired)]
    deadline = time.monotonic() + float(props.get("timeout_s") or AGENTS_TIMEOUT_S)
    while True:
        nodes = discover_nodes(
            region=props["region"],
            pool=props["pool"],
            parameter_prefix=props["parameter_prefix"],
            public=bool(props.get("public")),
        )
        endpoints, fingerprints = endpoints_of(nodes, int(props["agent_port"]))
        missing = [node for node in wanted if node not in endpoints]
        if not missing:
            return {"endpoints": endpoints, "fingerprints": fingerprints}
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"AWS pool '{props['pool']}': after {props.get('timeout_s') or AGENTS_TIMEOUT_S:g} s, no serving "
                f"agent on {', '.join(missing)} ({len(nodes)} instance(s) claimed a node). See each instance's "
                "/var/log/gpustack-boot.log (aws ssm start-session --target <instance-id>) and the group's "
                "activity history (aws autoscaling describe-scaling-activities)"
            )
        time.sleep(float(props.get("poll_s") or POLL_S))
