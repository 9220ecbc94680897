"""The gpustack CrossGuard policies (pulumi-policy objects over :mod:`gpustack_pulumi.policy.checks`).

Importable without running anything: ``PolicyPack(...)`` (which serves and never returns) is only constructed
by ``gpustack_pulumi/policy/pack/__main__.py``. Every policy's enforcement level can be changed by the pack's
config (``pulumi preview --policy-pack-config FILE``): ``{"all": "advisory"}`` or
``{"gpustack-gpu-ceiling": {"enforcementLevel": "mandatory", "maxGpus": 8}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from gpustack_pulumi.policy import checks

PACK_NAME = "gpustack"


def _config(args: Any) -> Mapping[str, Any]:
    return args.get_config() or {}


def _parent(args: Any) -> str | None:
    opts = getattr(args, "opts", None)
    return getattr(opts, "parent", None) or None


def _string_list(description: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string"}, "default": [], "description": description}


def _resource_policy(
    name: str,
    description: str,
    level: EnforcementLevel,
    check: Callable[[ResourceValidationArgs], list[str]],
    config_schema: PolicyConfigSchema | None = None,
) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in check(args):
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=level, config_schema=config_schema
    )


deployments_placed = _resource_policy(
    "gpustack-deployments-placed",
    "Every model deployment fits and every replica is placed (the cluster plan has no failures, unplaced or "
    "pending replicas).",
    EnforcementLevel.MANDATORY,
    lambda args: checks.placement_failures(args.resource_type, args.props),
)

placement_decided = _resource_policy(
    "gpustack-placement-decided",
    "The placement is known at preview (not 'decided at update', as on a first preview of pools whose capacity "
    "cannot be read before they exist).",
    EnforcementLevel.ADVISORY,
    lambda args: checks.placement_undecided(args.resource_type, args.props),
)

agent_not_exposed = _resource_policy(
    "gpustack-agent-not-exposed",
    "No node agent or gateway listens on every interface or is reached over plain HTTP off loopback.",
    EnforcementLevel.MANDATORY,
    lambda args: checks.exposure_problems(
        args.resource_type, args.props, _parent(args), bool(_config(args).get("allowWildcardBind", False))
    ),
    PolicyConfigSchema(
        {
            "allowWildcardBind": {
                "type": "boolean",
                "default": False,
                "description": "Allow agents bound to 0.0.0.0 / :: (HTTPS, e.g. hosts behind NAT).",
            }
        }
    ),
)

secrets_as_secrets = _resource_policy(
    "gpustack-secrets-as-secrets",
    "Agent tokens, API keys, SSH keys and passwords reach resources only as Pulumi secrets.",
    EnforcementLevel.MANDATORY,
    lambda args: checks.secret_problems(args.resource_type, args.props, _parent(args)),
)

allowed_gpu_products = _resource_policy(
    "gpustack-allowed-gpu-products",
    "Node pools only bring GPUs of the allowed products (config 'products': catalog keys, aliases or driver names; "
    "empty: any).",
    EnforcementLevel.MANDATORY,
    lambda args: checks.product_problems(args.resource_type, args.props, list(_config(args).get("products") or [])),
    PolicyConfigSchema({"products": _string_list("Allowed GPUs, e.g. ['H100', 'L40S', 'NVIDIA L4'].")}),
)

allowed_instance_types = _resource_policy(
    "gpustack-allowed-instance-types",
    "Cloud GPU nodes only use the allowed instance types (config 'instanceTypes'; empty: any).",
    EnforcementLevel.MANDATORY,
    lambda args: checks.instance_type_problems(
        args.resource_type, args.props, list(_config(args).get("instanceTypes") or [])
    ),
    PolicyConfigSchema({"instanceTypes": _string_list("Allowed instance types, e.g. ['g6.xlarge', 'p5.48xlarge'].")}),
)


def _validate_ceiling(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    config = _config(args)
    max_gpus = config.get("maxGpus")
    max_usd = config.get("maxHourlyUsd")
    if max_gpus is not None:
        per_plan = [
            (resource.name, checks.plan_gpus(resource.props))
            for resource in args.resources
            if resource.resource_type == checks.CLUSTER_PLAN
        ]
        total = sum(count for _name, count in per_plan)
        if total > int(max_gpus):
            detail = ", ".join(f"{name}: {count}" for name, count in per_plan if count)
            report_violation(f"the stack's placements hold {total} GPUs ({detail}); the ceiling is {int(max_gpus)}",
                             None)  # fmt: skip
    if max_usd is not None:
        cost, priced = checks.hourly_cost((resource.resource_type, resource.props) for resource in args.resources)
        if priced and cost > float(max_usd):
            report_violation(f"the stack's priced resources cost ${cost:.2f}/h; the ceiling is ${float(max_usd):.2f}/h",
                             None)  # fmt: skip


gpu_ceiling = StackValidationPolicy(
    name="gpustack-gpu-ceiling",
    description="The stack's placements hold at most 'maxGpus' GPUs (sum of devices over its cluster plans) and "
    "its priced resources cost at most 'maxHourlyUsd' per hour (cloud pools register cost estimators).",
    validate=_validate_ceiling,
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=PolicyConfigSchema(
        {
            "maxGpus": {"type": "integer", "minimum": 0, "description": "GPU ceiling (unset: none)."},
            "maxHourlyUsd": {"type": "number", "minimum": 0, "description": "$/h ceiling (unset: none)."},
        }
    ),
)

POLICIES = [
    deployments_placed,
    placement_decided,
    agent_not_exposed,
    secrets_as_secrets,
    allowed_gpu_products,
    allowed_instance_types,
    gpu_ceiling,
]
