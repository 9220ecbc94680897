"""``gpustack-pulumi plan``: place deployments on an inventory and print the plan (table or JSON).

Exit codes follow ``gpustack_pulumi.cli``: 0 every replica placed, 1 some replica could not be placed (the
reasons are printed), 2 a bad input file (the message names the path and the field).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from gpustack_runtime.wire import Inventory
from pydantic import BaseModel, ValidationError
from rich.console import Console

from gpustack_pulumi.placement.models import Deployment, DeploymentList, Plan
from gpustack_pulumi.placement.planner import DEFAULT_TIME_BUDGET_S, plan
from gpustack_pulumi.placement.report import render_plan

M = TypeVar("M", bound=BaseModel)

EXIT_OK = 0
EXIT_UNPLACED = 1
EXIT_BAD_INPUT = 2


class BadInputFile(Exception):
    """A file that cannot be read or validated; the message names the path and the field."""


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plan",
        help="place model replicas on GPUs (a pure dry run: no network)",
        description="Place deployments on an inventory of capacity documents. Exit 0: all placed; "
        "1: some replicas unplaced (reasons shown); 2: a bad input file.",
    )
    parser.add_argument("--inventory", required=True, type=Path, help='YAML/JSON: {"nodes": [capacity documents]}')
    parser.add_argument("--deployments", required=True, type=Path, help="YAML/JSON list of deployments")
    parser.add_argument("--previous", type=Path, help="a previous plan (JSON from --json): replicas stay put")
    parser.add_argument("--strategy", choices=("binpack", "spread"), default="binpack")
    parser.add_argument("--json", action="store_true", help="print the Plan as canonical JSON")
    parser.add_argument(
        "--show-launch",
        action="store_true",
        help="also show each replica's launch spec (argv, env names, image, why); with --json: "
        '{"plan": ..., "launches": [...]}',
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=DEFAULT_TIME_BUDGET_S,
        help=f"seconds the exact solver may use (default {DEFAULT_TIME_BUDGET_S})",
    )
    parser.add_argument(
        "--own-owner-prefix", default=None, help="allocations whose owner starts with this are the previous plan's own"
    )
    return parser


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as error:
        raise BadInputFile(f"{path}: cannot read: {error.strerror or error}") from error
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as error:
        raise BadInputFile(f"{path}: not valid YAML/JSON: {error}") from error


def _validate(model: type[M], data: Any, path: Path, prefix: tuple = ()) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in (*prefix, *first["loc"])) or "(top level)"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise BadInputFile(f"{path}: field '{field}': {first['msg']}{more}") from error


def load_inventory(path: Path) -> Inventory:
    return _validate(Inventory, _read(path), path)


def load_deployments(path: Path) -> list[Deployment]:
    data = _read(path)
    if isinstance(data, dict) and "deployments" in data:
        data = data["deployments"]
    if not isinstance(data, list):
        raise BadInputFile(f"{path}: expected a list of deployments (or {{deployments: [...]}})")
    resolved = []
    for position, item in enumerate(data):
        # A relative model path is relative to the deployments file, like a compose file's build context.
        if isinstance(item, dict) and isinstance(item.get("model"), str):
            candidate = path.parent / item["model"]
            if not Path(item["model"]).is_absolute() and candidate.exists():
                item = {**item, "model": str(candidate)}
        resolved.append(_validate(Deployment, item, path, prefix=(position,)))
    return _validate(DeploymentList, {"deployments": resolved}, path).deployments


def load_plan(path: Path) -> Plan:
    return _validate(Plan, _read(path), path)


def run_plan(args: argparse.Namespace) -> int:
    try:
        inventory = load_inventory(args.inventory)
        deployments = load_deployments(args.deployments)
        previous = load_plan(args.previous) if args.previous else None
        result = plan(
            inventory,
            deployments,
            previous,
            args.strategy,
            time_budget_s=args.time_budget,
            own_owner_prefix=args.own_owner_prefix,
        )
    except (BadInputFile, ValueError) as error:  # ValueError: e.g. duplicate node names in the inventory
        sys.stderr.write(f"error: {error}\n")
        return EXIT_BAD_INPUT
    launches = _launches(result, deployments, inventory) if args.show_launch else None
    if args.json and launches is not None:
        document = {"plan": result.model_dump(mode="json"), "launches": [x.model_dump(mode="json") for x in launches]}
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    elif args.json:
        sys.stdout.write(result.to_json())
    else:
        Console(width=max(160, Console().width)).print(render_plan(result, inventory))
        if launches is not None:
            from gpustack_pulumi.engines.launch import render_plan_launches

            sys.stdout.write("\nLaunch specs\n" + render_plan_launches(launches))
    return EXIT_UNPLACED if result.unplaced else EXIT_OK


def _launches(result: Plan, deployments: list[Deployment], inventory: Inventory) -> list:
    """Each placed replica's launch specs (node names stand in for addresses: the inventory has none)."""
    from gpustack_pulumi.engines.launch import launch_specs_for_plan
    from gpustack_pulumi.engines.options import EngineOptions

    options = {d.name: EngineOptions.model_validate(d.engine_options) for d in deployments}
    addresses = {document.name: document.name for document in inventory.nodes}
    return launch_specs_for_plan(result, deployments, inventory, node_addresses=addresses, options=options)


def main() -> int:  # pragma: no cover - convenience for `python -m`
    parser = argparse.ArgumentParser(prog="gpustack-pulumi")
    add_plan_parser(parser.add_subparsers(dest="command", required=True))
    return run_plan(parser.parse_args())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["BadInputFile", "add_plan_parser", "load_deployments", "load_inventory", "load_plan", "run_plan"]
