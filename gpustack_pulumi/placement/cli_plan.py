"""``gpustack-pulumi plan``: place deployments on an inventory and print the plan (table or JSON).

Exit codes follow ``gpustack_pulumi.cli``: 0 every replica placed, 1 some replica could not be placed (the
reasons are printed), 2 a bad input file (the message names the path and the field).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
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
        description="Place deployments on an inventory of capacity documents. JSON files are read as JSON, YAML "
        "with the C loader.",
        epilog="exit codes: 0 every replica placed; 1 some replicas unplaced (the reasons are printed); 2 bad "
        "input (the message names the file and the field).",
    )
    parser.add_argument("--inventory", required=True, type=Path, help='YAML/JSON: {"nodes": [capacity documents]}')
    parser.add_argument("--deployments", required=True, type=Path, help="YAML/JSON list of deployments")
    parser.add_argument("--previous", type=Path, help="a previous plan (JSON from --json): replicas stay put")
    parser.add_argument(
        "--strategy",
        choices=("binpack", "spread"),
        default="binpack",
        help="binpack: fill used GPUs and nodes first, leaving whole GPUs free (default); spread: balance replicas "
        "over nodes and GPUs",
    )
    parser.add_argument("--json", action="store_true", help="print the Plan as canonical JSON")
    parser.add_argument(
        "--show-launch",
        action="store_true",
        help="also show each replica's launch spec (argv, env names, image, why); with --json: "
        '{"plan": ..., "launches": [...]}',
    )
    parser.add_argument(
        "--time-budget",
        type=_time_budget,
        default=DEFAULT_TIME_BUDGET_S,
        help=f"seconds the exact solver may use, in (0, {MAX_TIME_BUDGET_S:g}] (default {DEFAULT_TIME_BUDGET_S})",
    )
    parser.add_argument(
        "--own-owner-prefix", default=None, help="allocations whose owner starts with this are the previous plan's own"
    )
    return parser


# Bounds on counts and sizes read from files: far beyond any real cluster, small enough that no computation
# overflows (CP-SAT works in 64-bit integers) or runs out of memory.
MAX_REPLICAS = 10_000  # per deployment
MAX_TOTAL_REPLICAS = 1_000_000
MAX_DEPLOYMENTS = 100_000
MAX_CONCURRENCY = 1 << 20
MAX_CONTEXT = 1 << 24  # tokens
MAX_PRIORITY = 1_000_000
MAX_DEVICE_MEMORY = 1 << 44  # 16 TiB per device
MAX_NODE_MEMORY = 1 << 50  # 1 PiB per node
MAX_DEVICES_PER_NODE = 4096
MAX_CPU_COUNT = 1 << 20


MAX_TIME_BUDGET_S = 3600.0


def _time_budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIME_BUDGET_S:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, {MAX_TIME_BUDGET_S:g}], got {text!r}")
    return value


def _read(path: Path) -> Any:
    """Parse a YAML or JSON file. JSON (a ``.json`` name, or text starting with ``{`` or ``[``) is read with the
    json module, YAML with PyYAML's C loader when available: PyYAML's pure-Python reader needs minutes for a
    30 MB inventory that json reads in a fraction of a second."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise BadInputFile(f"{path}: cannot read: {error.strerror or error}") from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"{path}: not a text file (not UTF-8 at byte {error.start}): expected YAML or JSON"
        raise BadInputFile(message) from None
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            if path.suffix.lower() == ".json":
                raise BadInputFile(f"{path}: not valid JSON: {error}") from None
            # flow-style YAML that is not JSON: fall through to the YAML reader
        except RecursionError:
            raise BadInputFile(f"{path}: nested too deeply") from None
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader: CSafeLoader or SafeLoader
    except yaml.YAMLError as error:
        raise BadInputFile(f"{path}: not valid YAML/JSON: {error}") from None
    except RecursionError:
        raise BadInputFile(f"{path}: nested too deeply") from None


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _validate(model: type[M], data: Any, path: Path, prefix: tuple = ()) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in (*prefix, *first["loc"])) or "(top level)"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise BadInputFile(f"{path}: field '{field}': {first['msg']}{more}") from None


def _bound(path: Path, field: str, value: Any, low: int, high: int) -> None:
    """Counts and sizes must be integers in [low, high] (bools and floats such as 1e30 are refused)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInputFile(f"{path}: field '{field}': must be an integer between {low:,} and {high:,}, got {value!r}")


def _check_inventory(inventory: Inventory, path: Path) -> None:
    """Sizes and counts within bounds (after validation, which checked types: one pass over the objects)."""
    for n, node in enumerate(inventory.nodes):
        if node.memory_total is not None and node.memory_total > MAX_NODE_MEMORY:
            _bound(path, f"nodes.{n}.memory_total", node.memory_total, 0, MAX_NODE_MEMORY)
        if node.cpu_count is not None and node.cpu_count > MAX_CPU_COUNT:
            _bound(path, f"nodes.{n}.cpu_count", node.cpu_count, 0, MAX_CPU_COUNT)
        if len(node.devices) > MAX_DEVICES_PER_NODE:
            raise BadInputFile(f"{path}: field 'nodes.{n}.devices': more than {MAX_DEVICES_PER_NODE} devices")
        for d, device in enumerate(node.devices):
            if (
                device.memory_total > MAX_DEVICE_MEMORY
                or device.memory_used > MAX_DEVICE_MEMORY
                or device.memory_allocated > MAX_DEVICE_MEMORY
                or (device.memory_foreign or 0) > MAX_DEVICE_MEMORY
                or (device.memory_available or 0) > MAX_DEVICE_MEMORY
                or device.index > MAX_DEVICES_PER_NODE
            ):
                for key in ("memory_total", "memory_used", "memory_allocated", "memory_foreign", "memory_available"):
                    _bound(path, f"nodes.{n}.devices.{d}.{key}", getattr(device, key), 0, MAX_DEVICE_MEMORY)
                _bound(path, f"nodes.{n}.devices.{d}.index", device.index, 0, MAX_DEVICES_PER_NODE)
        for a, allocation in enumerate(node.allocations):
            if allocation.memory_bytes_per_device > MAX_DEVICE_MEMORY:
                field = f"nodes.{n}.allocations.{a}.memory_bytes_per_device"
                _bound(path, field, allocation.memory_bytes_per_device, 0, MAX_DEVICE_MEMORY)


def load_inventory(path: Path) -> Inventory:
    data = _read(path)
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise BadInputFile(f"{path}: expected an object with a 'nodes' list of capacity documents")
    inventory = _validate(Inventory, data, path)
    _check_inventory(inventory, path)
    return inventory


DEPLOYMENT_BOUNDS = {
    "replicas": (0, MAX_REPLICAS),
    "concurrency": (1, MAX_CONCURRENCY),
    "max_model_len": (1, MAX_CONTEXT),
    "priority": (-MAX_PRIORITY, MAX_PRIORITY),
}


def load_deployments(path: Path) -> list[Deployment]:
    data = _read(path)
    if isinstance(data, dict) and "deployments" in data:
        data = data["deployments"]
    if not isinstance(data, list):
        raise BadInputFile(f"{path}: expected a list of deployments (or {{deployments: [...]}})")
    if len(data) > MAX_DEPLOYMENTS:
        raise BadInputFile(f"{path}: {len(data):,} deployments; at most {MAX_DEPLOYMENTS:,} are planned at once")
    resolved = []
    total_replicas = 0
    relative_models: dict[str, str | None] = {}
    for position, item in enumerate(data):
        if isinstance(item, dict):
            for key, (low, high) in DEPLOYMENT_BOUNDS.items():
                _bound(path, f"{position}.{key}", item.get(key), low, high)
            replicas = item.get("replicas", 1)
            total_replicas += replicas if isinstance(replicas, int) else 0
            # A relative model path is relative to the deployments file, like a compose file's build context.
            model = item.get("model")
            if isinstance(model, str) and not os.path.isabs(model):
                if model not in relative_models:  # one stat per distinct model, not per deployment
                    candidate = os.path.join(path.parent, model)
                    relative_models[model] = candidate if os.path.exists(candidate) else None
                if relative_models[model] is not None:
                    item = {**item, "model": relative_models[model]}
        resolved.append(_validate(Deployment, item, path, prefix=(position,)))
    if total_replicas > MAX_TOTAL_REPLICAS:
        raise BadInputFile(
            f"{path}: field 'replicas': {total_replicas:,} replicas in all; at most {MAX_TOTAL_REPLICAS:,}"
        )
    return _validate(DeploymentList, {"deployments": resolved}, path).deployments


def load_plan(path: Path) -> Plan:
    return _validate(Plan, _read(path), path)


def run_plan(args: argparse.Namespace) -> int:
    # The cyclic garbage collector is paused for the whole command: reading and validating a 100,000-GPU
    # inventory creates ~10^6 acyclic objects, and the collector's passes over them tripled the validation time
    # (0.6 s -> 0.17 s). Reference counting still frees everything; the previous state is restored on return.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run_plan(args)
    finally:
        if enabled:
            gc.enable()


def _run_plan(args: argparse.Namespace) -> int:
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
    except (BadInputFile, ValueError, OverflowError) as error:  # ValueError: e.g. duplicate node names
        sys.stderr.write(f"gpustack-pulumi plan: error: {error}\n")
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
