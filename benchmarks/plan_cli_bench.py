"""`gpustack-pulumi plan` as a whole process on 100,000 GPUs and 10,000 deployments (issue 12, item 6).

Writes a JSON inventory (12,500 nodes × 8 GPUs: H100, A100, L40S, L4) and a deployments file (JSON, and the
same as YAML), then times the CLI process end to end (interpreter start, reading, validation, placement,
printing the JSON plan to /dev/null), best of ``--repeat`` runs, and where the time goes in-process.

    .venv/bin/python benchmarks/plan_cli_bench.py [--nodes 12500] [--deployments 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from placement_bench import MIXED_MODELS

GPU_TYPES = {  # product, memory (NVML total), compute capability, NVLink
    "H100": ("NVIDIA H100 80GB HBM3", 85520809984, "9.0", True),
    "A100": ("NVIDIA A100-SXM4-80GB", 85899345920, "8.0", True),
    "L40S": ("NVIDIA L40S", 48305799168, "8.9", False),
    "L4": ("NVIDIA L4", 24152899584, "8.9", False),
}
SHARES = {"H100": 0.4, "A100": 0.3, "L40S": 0.2, "L4": 0.1}
# The same mix of models as the placement benchmark's scale case (placement_bench.py, beside this file).
MODELS = MIXED_MODELS


def inventory_document(nodes: int) -> dict:
    out = []
    serial = 0
    for kind, share in SHARES.items():
        product, memory, capability, nvlink = GPU_TYPES[kind]
        for _ in range(int(nodes * share)):
            name = f"{kind.lower()}-{serial:05d}"
            devices = [
                {
                    "index": i,
                    "uuid": f"GPU-{serial:05d}-{i}",
                    "vendor": "nvidia",
                    "product": product,
                    "memory_total": memory,
                    "memory_used": 536870912,
                    "compute_capability": capability,
                    "topology_group": f"{name}-nvlink" if nvlink else None,
                }
                for i in range(8)
            ]
            out.append({"name": name, "labels": {"zone": f"z{serial % 4}", "gpu": kind.lower()}, "devices": devices})
            serial += 1
    return {"nodes": out}


def deployments_document(count: int, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    names = [m[0] for m in MODELS]
    weights = [m[1] for m in MODELS]
    out = []
    for i in range(count):
        model, _, lengths, concurrencies = MODELS[names.index(rng.choices(names, weights)[0])]
        item = {
            "name": f"d{i:05d}",
            "model": model,
            "replicas": rng.randint(1, 3),
            "engine": "sglang" if rng.random() < 0.1 else "vllm",
            "max_model_len": rng.choice(lengths),
            "concurrency": rng.choice(concurrencies),
        }
        if rng.random() < 0.1:
            item["node_selector"] = {"zone": f"z{rng.randrange(4)}"}
        if rng.random() < 0.1:
            item["priority"] = 5
        out.append(item)
    return out


def run_cli(inventory: Path, deployments: Path) -> tuple[float, int]:
    command = [sys.executable, "-m", "gpustack_pulumi.cli", "plan", "--inventory", str(inventory), "--deployments",
               str(deployments), "--json"]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"plan failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed, result.returncode


def stages(inventory: Path, deployments: Path) -> dict[str, float]:
    """In-process: read + validate the inventory, the deployments, and the placement itself."""
    from gpustack_pulumi.placement.cli_plan import load_deployments, load_inventory
    from gpustack_pulumi.placement.planner import plan

    t0 = time.perf_counter()
    inv = load_inventory(inventory)
    t1 = time.perf_counter()
    deps = load_deployments(deployments)
    t2 = time.perf_counter()
    result = plan(inv, deps)
    t3 = time.perf_counter()
    result.to_json()
    t4 = time.perf_counter()
    return {"read inventory": t1 - t0, "read deployments": t2 - t1, "place": t3 - t2, "plan to JSON": t4 - t3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=12500)
    parser.add_argument("--deployments", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"{platform.platform()}; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.json"
        deployments_json = Path(tmp) / "deployments.json"
        deployments_yaml = Path(tmp) / "deployments.yaml"
        inv = inventory_document(args.nodes)
        inventory.write_text(json.dumps(inv))
        deps = deployments_document(args.deployments)
        deployments_json.write_text(json.dumps(deps))
        import yaml

        deployments_yaml.write_text(yaml.safe_dump(deps, sort_keys=False))
        gpus = sum(len(n["devices"]) for n in inv["nodes"])
        print(f"inventory: {len(inv['nodes']):,} nodes, {gpus:,} GPUs, {inventory.stat().st_size / 1e6:.1f} MB JSON; "
              f"deployments: {len(deps):,} ({sum(d['replicas'] for d in deps):,} replicas)")  # fmt: skip
        for label, path in (("JSON", deployments_json), ("YAML", deployments_yaml)):
            times = [run_cli(inventory, path) for _ in range(args.repeat)]
            best = min(t for t, _ in times)
            print(f"whole process, deployments as {label}: best {best:.2f} s of {args.repeat} "
                  f"({', '.join(f'{t:.2f}' for t, _ in times)}); exit {times[0][1]}")  # fmt: skip
        for stage, seconds in stages(inventory, deployments_json).items():
            print(f"  in-process {stage}: {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
