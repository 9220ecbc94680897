"""``gpustack-pulumi preview [STACK_DIR]``: where every replica of a stack will land, for people and for CI.

The stack program runs under Pulumi's mocks (no Pulumi CLI, no cloud call, nothing created): the deployments each
``GpuCluster`` plans are collected (the inputs of its ``ClusterPlan`` resource), then placed on live capacity —
from an inventory file or read from the agents — by :func:`gpustack_pulumi.cluster_plan.plan_cluster`, the very
function the ``ClusterPlan`` provider runs at ``pulumi preview`` and ``up``. The report is deterministic (same
inputs → same bytes), and given the previous report it shows the diff: replicas added, removed and moved, each
with its reason.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import yaml
from gpustack_runtime.wire import Inventory
from pydantic import BaseModel, ConfigDict, Field

from gpustack_pulumi.cluster_plan import plan_cluster
from gpustack_pulumi.placement import Deployment, Plan

REPORT_VERSION = 1


class ReportReplica(BaseModel):
    model_config = ConfigDict(frozen=True)

    deployment: str
    replica: int
    engine: str
    nodes: list[str]
    devices: list[str] = Field(description="node:index for each device; node:cpu for CPU-only.")
    tensor_parallel_size: int
    pipeline_parallel_size: int
    memory_fraction: float | None
    memory_bytes_per_device: int
    reason: str

    @property
    def where(self) -> str:
        return ", ".join(self.devices)


class ReportUnplaced(BaseModel):
    model_config = ConfigDict(frozen=True)

    deployment: str
    replica: int
    constraint: str
    reason: str


class PreviewReport(BaseModel):
    """What the preview computed; ``plan`` keeps the placement so the next preview can be sticky to it."""

    model_config = ConfigDict(frozen=True)

    version: int = REPORT_VERSION
    stack: str
    replicas: list[ReportReplica]
    unplaced: list[ReportUnplaced]
    failures: list[str] = Field(default_factory=list, description="Why `pulumi preview` of the stack fails.")
    plan: Plan
    costs: dict[str, Any] | None = Field(
        default=None, description="$/h of the stack's cloud pools (AWS) on this plan; absent without one."
    )

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude={"costs"} if self.costs is None else None) + "\n"


class ReportDiff(BaseModel):
    model_config = ConfigDict(frozen=True)

    added: list[ReportReplica]
    removed: list[ReportReplica]
    moved: list[tuple[ReportReplica, ReportReplica]]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.moved)


# ----- running a stack program under mocks -------------------------------------------------------------


class StackPlanInputs(BaseModel):
    """What the stack's clusters plan: their deployments, the strategy and the owner prefix of the stack."""

    model_config = ConfigDict(frozen=True)

    deployments: list[Deployment]
    strategy: str = "binpack"
    owner_prefix: str = ""
    time_budget_s: float = 2.0
    planned: list[dict] | None = Field(
        default=None, description="The capacity the pools will create (None when some pool cannot tell)."
    )
    aws_pools: list[Any] = Field(
        default_factory=list, exclude=True, description="PoolSpec of each AwsGpuNodePool (for $/h in the report)."
    )


def collect_deployments(stack_dir: Path, *, stack: str, config: dict[str, str]) -> list[Deployment]:
    """The deployments ``stack_dir/__main__.py`` declares (see :func:`collect_plan_inputs`)."""
    return collect_plan_inputs(stack_dir, stack=stack, config=config).deployments


def collect_plan_inputs(stack_dir: Path, *, stack: str, config: dict[str, str]) -> StackPlanInputs:
    """Run ``stack_dir/__main__.py`` under mocks and return what its clusters plan (the inputs of their
    ClusterPlan resources). Nothing is created: every resource is only recorded."""
    import pulumi
    from pulumi.runtime import mocks as pulumi_mocks

    program = stack_dir / "__main__.py"
    if not program.is_file():
        raise PreviewError(f"{stack_dir}: no __main__.py (a Python stack program) in this directory")
    plans: list[dict[str, Any]] = []

    from gpustack_pulumi.components.cluster import GpuCluster

    clusters: list[Any] = []
    original_init = GpuCluster.__init__

    def recording_init(cluster: Any, *args: Any, **kwargs: Any) -> None:
        original_init(cluster, *args, **kwargs)
        clusters.append(cluster)

    class RecordingMocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
            if args.typ.endswith("dynamic/gpustack:ClusterPlan"):
                plans.append(dict(args.inputs))
            return (f"{args.name}-id" if args.custom else None), dict(args.inputs)

        def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list | None]:
            return {}, None

    project = _project_name(stack_dir)
    saved = {k: os.environ.get(k) for k in ("PULUMI_CONFIG",)}
    os.environ["PULUMI_CONFIG"] = json.dumps(config)
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=True, monitor=pulumi_mocks.MockMonitor(mocks))
    sys.path.insert(0, str(stack_dir))
    GpuCluster.__init__ = recording_init  # type: ignore[method-assign]
    try:

        @pulumi.runtime.test
        def run() -> None:
            runpy.run_path(str(program), run_name="__main__")

        run()
    except Exception as error:  # the program's own error (bad config, bad component arguments)
        raise PreviewError(f"{program}: the stack program failed: {error}") from None
    finally:
        GpuCluster.__init__ = original_init  # type: ignore[method-assign]
        sys.path.remove(str(stack_dir))
        pulumi.runtime.settings.reset_options()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    deployments = sorted(
        (Deployment.model_validate(spec) for inputs in plans for spec in inputs.get("deployments") or []),
        key=lambda deployment: deployment.name,
    )
    first = plans[0] if plans else {}
    return StackPlanInputs(
        deployments=deployments,
        strategy=first.get("strategy") or "binpack",
        owner_prefix=first.get("owner_prefix") or f"{project}/{stack}/",
        time_budget_s=float(first.get("time_budget_s") or 2.0),
        planned=_planned(plans),
        aws_pools=_aws_pool_specs(clusters),
    )


def _aws_pool_specs(clusters: list[Any]) -> list[Any]:
    """The PoolSpec of every AwsGpuNodePool the clusters use (by its ``spec``; the class is imported only when
    a stack has one: pulumi-aws is large)."""
    from gpustack_pulumi.pools.aws.render import PoolSpec

    specs: dict[str, Any] = {}
    for cluster in clusters:
        for pool in getattr(cluster, "pools", None) or []:
            spec = getattr(pool, "spec", None)
            if isinstance(spec, PoolSpec):
                specs[spec.name] = spec
    return [specs[name] for name in sorted(specs)]


def _planned(plans: list[dict[str, Any]]) -> list[dict] | None:
    """Every cluster's planned capacity, or None when one of them has none (a pool that cannot tell)."""
    if not plans or any(not isinstance(inputs.get("planned"), list) for inputs in plans):
        return None
    return [document for inputs in plans for document in inputs["planned"]]


def _project_name(stack_dir: Path) -> str:
    for directory in (stack_dir, *stack_dir.resolve().parents):
        project_file = directory / "Pulumi.yaml"
        if project_file.is_file():
            return str((yaml.safe_load(project_file.read_text()) or {}).get("name") or "project")
    return "project"


class PreviewError(ValueError):
    """Bad input to preview; the message names the file or flag."""


# ----- report and diff ------------------------------------------------------------------------------------


def build_report(stack: str, placed: Plan, failures: list[str] | None = None) -> PreviewReport:
    replicas = [
        ReportReplica(
            deployment=r.deployment,
            replica=r.replica,
            engine=r.engine,
            nodes=[p.node for p in r.placements],
            devices=[f"{p.node}:{i}" for p in r.placements for i in p.device_indices]
            or [f"{p.node}:cpu" for p in r.placements],
            tensor_parallel_size=r.tensor_parallel_size,
            pipeline_parallel_size=r.pipeline_parallel_size,
            memory_fraction=r.memory_fraction,
            memory_bytes_per_device=max((p.memory_bytes_per_device for p in r.placements), default=0),
            reason=r.reason,
        )
        for r in placed.replicas
    ]
    unplaced = [ReportUnplaced(deployment=u.deployment, replica=u.replica, constraint=u.constraint, reason=u.reason)
                for u in placed.unplaced]  # fmt: skip
    return PreviewReport(stack=stack, replicas=replicas, unplaced=unplaced, failures=list(failures or []), plan=placed)


def diff_reports(previous: PreviewReport, current: PreviewReport) -> ReportDiff:
    old = {(r.deployment, r.replica): r for r in previous.replicas}
    new = {(r.deployment, r.replica): r for r in current.replicas}
    added = [new[k] for k in sorted(set(new) - set(old))]
    removed = [old[k] for k in sorted(set(old) - set(new))]
    moved = [(old[k], new[k]) for k in sorted(set(old) & set(new)) if _placement_of(old[k]) != _placement_of(new[k])]
    return ReportDiff(added=added, removed=removed, moved=moved)


def _placement_of(replica: ReportReplica) -> tuple:
    return replica.devices, replica.engine, replica.tensor_parallel_size, replica.pipeline_parallel_size


def render_markdown(report: PreviewReport, diff: ReportDiff | None = None) -> str:
    lines = [f"### gpustack placement preview: `{report.stack}`", ""]
    lines += ["| deployment | # | engine | where | TP×PP | fraction | GiB/device | reason |",
              "|---|---:|---|---|---|---:|---:|---|"]  # fmt: skip
    for r in report.replicas:
        fraction = f"{r.memory_fraction:g}" if r.memory_fraction is not None else "—"
        lines.append(
            f"| {r.deployment} | {r.replica} | {r.engine} | {r.where} | {r.tensor_parallel_size}×"
            f"{r.pipeline_parallel_size} | {fraction} | {r.memory_bytes_per_device / 2**30:.1f} | {_md(r.reason)} |"
        )
    if report.unplaced:
        lines += ["", "**Not placed**", "", "| deployment | # | constraint | reason |", "|---|---:|---|---|"]
        lines += [f"| {u.deployment} | {u.replica} | {u.constraint} | {_md(u.reason)} |" for u in report.unplaced]
    if diff is not None:
        lines += ["", "**Changes since the previous preview**", ""]
        if diff.empty:
            lines.append("No replica added, removed or moved.")
        for r in diff.added:
            lines.append(f"- added {r.deployment}#{r.replica} on {r.where} ({r.engine}): {_md(r.reason)}")
        for r in diff.removed:
            lines.append(f"- removed {r.deployment}#{r.replica} from {r.where}")
        for old, new in diff.moved:
            lines.append(f"- moved {new.deployment}#{new.replica}: {old.where} → {new.where} ({_md(new.reason)})")
    return "\n".join(lines) + "\n"


def render_text(report: PreviewReport, diff: ReportDiff | None = None) -> str:
    lines = [f"stack {report.stack}: {len(report.replicas)} replica(s) placed, {len(report.unplaced)} not placed"]
    for r in report.replicas:
        fraction = f"fraction {r.memory_fraction:g}" if r.memory_fraction is not None else "no fraction"
        lines.append(f"  {r.deployment}#{r.replica}  {r.engine:<10} {r.where}  TP{r.tensor_parallel_size}"
                     f"×PP{r.pipeline_parallel_size}  {fraction}\n      {r.reason}")  # fmt: skip
    for u in report.unplaced:
        lines.append(f"  {u.deployment}#{u.replica}  NOT PLACED ({u.constraint}): {u.reason}")
    if diff is not None:
        lines.append(
            "changes: "
            + (
                "none"
                if diff.empty
                else f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.moved)} moved"
            )
        )
        for old, new in diff.moved:
            lines.append(f"  moved {new.deployment}#{new.replica}: {old.where} -> {new.where}: {new.reason}")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ----- CLI ------------------------------------------------------------------------------------------------------


def add_preview_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="run a stack under mocks and report where every replica lands (for CI)",
        description="Run STACK_DIR/__main__.py under Pulumi's mocks (no CLI, no cloud), place its deployments on "
        "live capacity (--inventory file or --agent endpoints) and print a deterministic report; with "
        "--previous, the diff. Exit 0: all placed; 1: some replica not placed; 2: bad input.",
    )
    parser.add_argument("stack_dir", nargs="?", default="stacks/local", type=Path, metavar="STACK_DIR")
    parser.add_argument("--stack", default="preview", help="stack name the program sees (default: preview)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="stack config, e.g. gpustack:replicas=2 (repeatable)")  # fmt: skip
    parser.add_argument("--config-file", type=Path, help="a Pulumi.<stack>.yaml whose `config:` the program sees")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inventory", type=Path, help='capacity documents, YAML/JSON {"nodes": [...]}')
    source.add_argument("--agent", action="append", metavar="NODE=URL",
                        help="read capacity from an agent (repeatable); token from $GPUSTACK_AGENT_TOKEN")  # fmt: skip
    source.add_argument("--planned", action="store_true",
                        help="place on the capacity the stack's pools will create (what the first `pulumi preview` "
                        "uses before any agent exists)")  # fmt: skip
    parser.add_argument("--previous", type=Path, help="a previous report (--json output): sticky placement + diff")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for pull-request comments")
    parser.add_argument(
        "--aws-prices",
        choices=("catalog", "live"),
        default="catalog",
        help="$/h of AWS pools: the package's price catalog (offline, default) or the AWS Price List API "
        "(live On-Demand rates; needs AWS credentials)",
    )


def run_preview(args: argparse.Namespace) -> int:
    from gpustack_pulumi.placement.cli_plan import BadInputFile, load_inventory

    try:
        config = _config_file(args.config_file) if args.config_file else {}
        config |= dict(_key_value(item, "--config") for item in args.config)
        previous = _load_report(args.previous) if args.previous else None
        inputs = collect_plan_inputs(args.stack_dir, stack=args.stack, config=config)
        if args.inventory is not None:
            inventory = load_inventory(args.inventory)
        elif args.planned:
            if inputs.planned is None:
                raise PreviewError(
                    "--planned: a pool of this stack cannot tell its capacity before its agents run (SSH hosts); "
                    "use --inventory FILE or --agent NODE=URL"
                )
            inventory = Inventory.model_validate({"nodes": inputs.planned})
        else:
            inventory = _inventory_from_agents(dict(_key_value(item, "--agent") for item in args.agent))
    except (PreviewError, BadInputFile) as error:
        print(f"gpustack-pulumi preview: error: {error}", file=sys.stderr)
        return 2
    cluster_plan = plan_cluster(
        inventory,
        inputs.deployments,
        previous.plan if previous else None,
        owner_prefix=inputs.owner_prefix,
        strategy="spread" if inputs.strategy == "spread" else "binpack",
        time_budget_s=inputs.time_budget_s,
    )
    report = build_report(args.stack, cluster_plan.plan, cluster_plan.failures)
    cost_text = ""
    if inputs.aws_pools:
        from gpustack_pulumi.pools.aws.cost import cost_summary, render_cost_markdown

        plan_json = cluster_plan.plan.model_dump(mode="json")
        live: dict[str, Any] = {}
        if args.aws_prices == "live":
            from gpustack_pulumi.pools.aws.pricing import live_prices

            live, notes = live_prices(inputs.aws_pools)
            for note in notes:
                print(f"gpustack-pulumi preview: warning: {note}", file=sys.stderr)
        report = report.model_copy(update={"costs": cost_summary(inputs.aws_pools, plan_json, live)})
        cost_text = "\n" + render_cost_markdown(inputs.aws_pools, plan_json, live)
    diff = diff_reports(previous, report) if previous else None
    if args.json:
        sys.stdout.write(report.to_json())
    elif args.markdown:
        sys.stdout.write(render_markdown(report, diff) + cost_text)
    else:
        sys.stdout.write(render_text(report, diff) + cost_text)
    # As under `pulumi up`: a replica left pending by higher priorities is no failure; anything else unplaced is.
    return 0 if cluster_plan.ok else 1


def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise PreviewError(f"{flag} {item!r}: expected KEY=VALUE")
    return key, value


def _config_file(path: Path) -> dict[str, str]:
    """A stack config file's ``config:`` as the program sees it: strings, and JSON for structured values."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise PreviewError(f"--config-file {path}: {error}") from None
    values = document.get("config") if isinstance(document, dict) else None
    if not isinstance(values, dict):
        raise PreviewError(f"--config-file {path}: no `config:` mapping")
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}


def _load_report(path: Path) -> PreviewReport:
    try:
        return PreviewReport.model_validate_json(path.read_text())
    except (OSError, ValueError) as error:
        raise PreviewError(f"--previous {path}: not a preview report ({str(error).splitlines()[0]})") from None


def _inventory_from_agents(agents: dict[str, str]) -> Any:
    from gpustack_pulumi.providers.model_replica import PlacementFailure, read_inventory

    token = os.environ.get("GPUSTACK_AGENT_TOKEN")
    if not token:
        raise PreviewError("--agent needs the agents' token in $GPUSTACK_AGENT_TOKEN")
    try:
        return read_inventory(agents, token)
    except PlacementFailure as failure:
        raise PreviewError(str(failure)) from None
