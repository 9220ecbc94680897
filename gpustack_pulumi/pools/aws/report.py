"""Preview report of a stack with AWS GPU pools: where every replica lands on the pools' planned nodes, how many
instances each pool buys, $/h per pool and per deployment, and (``--check-quotas``) whether AWS quotas and
offerings allow it.

    python -m gpustack_pulumi.pools.aws.report stacks/aws --stack aws --config-file stacks/aws/Pulumi.aws.example.yaml

The stack program runs under Pulumi's mocks (nothing is created, no AWS call unless ``--check-quotas``); the
deployments and planned capacity the cluster's ``ClusterPlan`` receives are placed with ``plan_cluster`` — as the
plan does at the first ``pulumi preview`` — and rendered with ``gpustack_pulumi.preview``'s own Markdown, then
:func:`~gpustack_pulumi.pools.aws.cost.render_cost_markdown`. Exit 0: placed and (when checked) within quota; 1: a
replica not placed or a pool short of quota (the numbers are printed); 2: bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpustack_pulumi.pools.aws.render import PoolSpec


@dataclass
class StackCapture:
    deployments: list[dict] = field(default_factory=list)
    planned: list[dict] = field(default_factory=list)
    owner_prefix: str = ""
    pools: list[PoolSpec] = field(default_factory=list)


def capture_stack(stack_dir: Path, *, stack: str, config: dict[str, str]) -> StackCapture:
    """Run ``stack_dir/__main__.py`` under mocks; return what its cluster plans and its AWS pools' specs."""
    import pulumi
    from pulumi.runtime import mocks as pulumi_mocks

    from gpustack_pulumi.pools.aws import component
    from gpustack_pulumi.preview import _project_name

    capture = StackCapture()

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
            outputs = dict(args.inputs)
            if args.typ.endswith("gpustack:ClusterPlan"):
                capture.deployments += list(args.inputs.get("deployments") or [])
                capture.planned += list(args.inputs.get("planned") or [])
                capture.owner_prefix = args.inputs.get("owner_prefix") or ""
            if args.typ.endswith("gpustack:AwsPoolAgents"):
                outputs.update(endpoints={}, fingerprints={})
            return (f"{args.name}-id" if args.custom else None), outputs

        def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list | None]:
            return {}, None

    original_init = component.AwsGpuNodePool.__init__

    def recording_init(pool: Any, name: str, args: Any, opts: Any = None) -> None:
        original_init(pool, name, args, opts)
        capture.pools.append(pool.spec)

    saved = os.environ.get("PULUMI_CONFIG")
    os.environ["PULUMI_CONFIG"] = json.dumps(config)
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project=_project_name(stack_dir), stack=stack, preview=True,
                             monitor=pulumi_mocks.MockMonitor(mocks))  # fmt: skip
    component.AwsGpuNodePool.__init__ = recording_init  # type: ignore[method-assign]
    sys.path.insert(0, str(stack_dir))
    try:

        @pulumi.runtime.test
        def run() -> None:
            runpy.run_path(str(stack_dir / "__main__.py"), run_name="__main__")

        run()
    finally:
        component.AwsGpuNodePool.__init__ = original_init  # type: ignore[method-assign]
        sys.path.remove(str(stack_dir))
        pulumi.runtime.settings.reset_options()
        if saved is None:
            os.environ.pop("PULUMI_CONFIG", None)
        else:
            os.environ["PULUMI_CONFIG"] = saved
    return capture


def build(capture: StackCapture, stack: str, *, check_quotas: bool = False) -> tuple[str, bool]:
    """(Markdown report, ok)."""
    from gpustack_runtime.wire import Inventory

    from gpustack_pulumi.cluster_plan import plan_cluster
    from gpustack_pulumi.placement import Deployment
    from gpustack_pulumi.pools.aws.cost import render_cost_markdown
    from gpustack_pulumi.pools.aws.quota import check_capacity
    from gpustack_pulumi.pools.aws.render import desired_from_plan
    from gpustack_pulumi.preview import build_report, render_markdown

    result = plan_cluster(
        Inventory.model_validate({"nodes": capture.planned}),
        [Deployment.model_validate(d) for d in capture.deployments],
        owner_prefix=capture.owner_prefix,
    )
    plan = result.plan.model_dump(mode="json")
    text = render_markdown(build_report(stack, result.plan, result.failures))
    text += "\n" + render_cost_markdown(capture.pools, plan)
    ok = result.ok
    if check_quotas:
        lines = ["", "**AWS quotas and offerings**", ""]
        for spec in capture.pools:
            needed = desired_from_plan(spec, plan)
            report = check_capacity(
                pool=spec.name, region=spec.region, instance_types=[c.instance_type for c in spec.instances],
                vcpus_per_instance=spec.primary.vcpus, quota_class=spec.primary.quota_class,
                market="on-demand" if spec.market == "capacity-block" else spec.market, needed=needed,
                subnet_ids=list(spec.subnet_ids), on_demand_base=spec.on_demand_base,
            )  # fmt: skip
            if report.ok:
                quotas = ", ".join(f"{code}: {q['pool_needs']:g} needed, {q['in_use']:g} in use of {q['limit']:g}"
                                   for code, q in sorted(report.quotas.items()))  # fmt: skip
                lines.append(f"- {spec.name}: OK ({quotas})")
            else:
                ok = False
                lines.append(f"- {spec.name}: **FAILS**: {report.describe()}")
        text += "\n".join(lines) + "\n"
    return text, ok


def main(argv: list[str] | None = None) -> int:
    from gpustack_pulumi.preview import _config_file, _key_value

    parser = argparse.ArgumentParser(prog="python -m gpustack_pulumi.pools.aws.report", description=__doc__)
    parser.add_argument("stack_dir", type=Path)
    parser.add_argument("--stack", default="aws")
    parser.add_argument("--config-file", type=Path)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--check-quotas", action="store_true", help="ask AWS (boto3) for quotas and offerings")
    args = parser.parse_args(argv)
    try:
        config = _config_file(args.config_file) if args.config_file else {}
        config |= dict(_key_value(item, "--config") for item in args.config)
        capture = capture_stack(args.stack_dir, stack=args.stack, config=config)
    except Exception as error:  # bad config or arguments: the program's own error
        print(f"aws report: error: {error}", file=sys.stderr)
        return 2
    text, ok = build(capture, args.stack, check_quotas=args.check_quotas)
    sys.stdout.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
