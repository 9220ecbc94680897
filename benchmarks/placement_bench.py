"""Placement benchmarks: prints one table per benchmark of issue 3.

1. vs GPUStack's policy (``placement/baseline_gpustack.py``) on generated heterogeneous clusters and mixed
   workloads: replicas placed and GPUs used (goal: ≥ 2× on a sharing-heavy workload, never fewer).
2. vs the exact optimum (CP-SAT, run to optimality) on clusters of ≤ 64 GPUs: the heuristic's placed
   replicas as a share of the optimum (goal ≥ 99 %); ``plan()`` itself uses the exact solver there.
3. scale: 100,000 GPUs (12,500 nodes) and 10,000 deployments: a full plan (goal ≤ 2 s) and one changed
   deployment with the previous plan (goal ≤ 50 ms).
4. stability: an unrelated change moves 0 replicas.

Run: ``.venv/bin/python benchmarks/placement_bench.py [--quick]``. Everything is seeded: same numbers of
replicas every run; times vary with the machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass

from gpustack_runtime.wire import CapacityDocument, DeviceCapacity, Inventory
from rich.console import Console
from rich.table import Table

from gpustack_pulumi.placement import Deployment, Planner, plan
from gpustack_pulumi.placement.baseline_gpustack import gpustack_plan

GIB = 1024**3

# (product, memory_total bytes as NVML reports, compute capability, NVLink clique per node)
GPU_TYPES = {
    "H100": ("NVIDIA H100 80GB HBM3", 85520809984, "9.0", True),
    "A100": ("NVIDIA A100-SXM4-80GB", 85899345920, "8.0", True),
    "L40S": ("NVIDIA L40S", 48305799168, "8.9", False),
    "L4": ("NVIDIA L4", 24152899584, "8.9", False),
    "A10G": ("NVIDIA A10G", 24146608128, "8.6", False),
}


def make_inventory(layout: list[tuple[str, int, int]], zones: int = 4) -> Inventory:
    """``layout``: (gpu type, nodes, GPUs per node). Built with model_construct: 100,000 devices in ~0.3 s."""
    nodes = []
    serial = 0
    for kind, count, per_node in layout:
        product, memory, capability, nvlink = GPU_TYPES[kind]
        for _ in range(count):
            name = f"{kind.lower()}-{serial:05d}"
            devices = [
                DeviceCapacity.model_construct(
                    index=i,
                    uuid=f"GPU-{serial:05d}-{i}",
                    vendor="nvidia",
                    product=product,
                    memory_total=memory,
                    memory_used=0,
                    memory_allocated=0,
                    compute_capability=capability,
                    topology_group=f"{name}-nvlink" if nvlink else None,
                    memory_foreign=None,
                    memory_available=None,
                )
                for i in range(per_node)
            ]
            nodes.append(
                CapacityDocument.model_construct(
                    name=name,
                    labels={"zone": f"z{serial % zones}", "gpu": kind.lower()},
                    devices=devices,
                    allocations=[],
                    cpu_count=None,
                    memory_total=None,
                )
            )
            serial += 1
    return Inventory.model_construct(nodes=nodes)


# (model, share, max_model_len choices, concurrency choices)
MIXED_MODELS = [
    ("Qwen/Qwen3-0.6B", 0.30, (4096, 8192), (1, 4)),
    ("Qwen/Qwen3-8B", 0.22, (8192, 32768), (1, 4)),
    ("meta-llama/Llama-3.1-8B-Instruct", 0.14, (8192,), (1, 4)),
    ("Qwen/Qwen3-30B-A3B", 0.10, (8192, 32768), (1, 4)),
    ("Qwen/Qwen3-32B", 0.10, (8192,), (1, 4)),
    ("openai/gpt-oss-20b", 0.08, (8192, 32768), (1, 4)),
    ("openai/gpt-oss-120b", 0.05, (8192,), (1,)),
    ("Qwen/Qwen3-235B-A22B", 0.01, (8192,), (1,)),
]
SMALL_MODELS = [
    ("Qwen/Qwen3-0.6B", 0.6, (4096, 8192), (1, 4)),
    ("Qwen/Qwen3-8B", 0.25, (8192,), (1, 2)),
    ("meta-llama/Llama-3.1-8B-Instruct", 0.15, (8192,), (1,)),
]


def make_deployments(
    count: int,
    models: list[tuple[str, float, tuple[int, ...], tuple[int, ...]]],
    seed: int,
    *,
    max_replicas: int = 3,
    selector_share: float = 0.1,
    priority_share: float = 0.1,
    sglang_share: float = 0.1,
) -> list[Deployment]:
    rng = random.Random(seed)
    names = [m[0] for m in models]
    weights = [m[1] for m in models]
    out = []
    for i in range(count):
        model, _, lengths, concurrencies = models[names.index(rng.choices(names, weights)[0])]
        selector = {"zone": f"z{rng.randrange(4)}"} if rng.random() < selector_share else {}
        out.append(
            Deployment(
                name=f"d{i:05d}",
                model=model,
                replicas=rng.randint(1, max_replicas),
                engine="sglang" if rng.random() < sglang_share else "vllm",
                max_model_len=rng.choice(lengths),
                concurrency=rng.choice(concurrencies),
                node_selector=selector,
                priority=5 if rng.random() < priority_share else 0,
            )
        )
    return out


def _time(fn, repeat: int = 1) -> tuple[float, object]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


# --- 1. vs GPUStack -----------------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    layout: list[tuple[str, int, int]]
    deployments: list[Deployment]


def baseline_workloads() -> list[Workload]:
    hetero = [("H100", 2, 8), ("A100", 2, 8), ("L40S", 4, 4), ("L4", 8, 1)]
    return [
        Workload(
            "sharing-heavy: 120 small deployments",
            hetero,
            make_deployments(120, SMALL_MODELS, 1, max_replicas=2, selector_share=0, sglang_share=0),
        ),
        Workload(
            "mixed: 40 deployments 0.6B–235B",
            hetero,
            make_deployments(40, MIXED_MODELS, 2, selector_share=0, sglang_share=0),
        ),
        Workload(
            "large models only",
            [("H100", 4, 8), ("A100", 2, 8)],
            make_deployments(12, MIXED_MODELS[4:], 3, max_replicas=2, selector_share=0, sglang_share=0),
        ),
        Workload(
            "few deployments, plenty of GPUs",
            hetero,
            make_deployments(6, MIXED_MODELS, 4, max_replicas=1, selector_share=0, sglang_share=0),
        ),
    ]


def bench_baseline(console: Console) -> None:
    table = Table(title="1. gpustack-pulumi vs GPUStack's policy (replicas placed, GPUs used)")
    for column in (
        "workload",
        "GPUs",
        "replicas wanted",
        "GPUStack placed",
        "GPUStack GPUs",
        "ours placed",
        "ours GPUs",
        "placed ratio",
    ):
        table.add_column(column)
    for workload in baseline_workloads():
        inventory = make_inventory(workload.layout)
        wanted = sum(d.replicas for d in workload.deployments)
        base = gpustack_plan(inventory, workload.deployments)
        ours = plan(inventory, workload.deployments, exact=False)
        gpus = sum(len(n.devices) for n in inventory.nodes)
        ratio = ours.summary.placed / base.summary.placed if base.summary.placed else float("inf")
        table.add_row(
            workload.name,
            str(gpus),
            str(wanted),
            str(base.summary.placed),
            str(base.summary.gpus_used),
            str(ours.summary.placed),
            str(ours.summary.gpus_used),
            f"{ratio:.2f}×",
        )
    console.print(table)


# --- 2. vs the exact optimum ----------------------------------------------------------------------------------


def bench_optimum(console: Console, cases: int, budget: float = 20.0) -> None:
    table = Table(title="2. vs the exact optimum (CP-SAT), clusters ≤ 64 GPUs, many of them oversubscribed")
    for column in (
        "case",
        "GPUs",
        "wanted",
        f"best known ({budget:g} s exact)",
        "plan() (exact, 2 s)",
        "heuristic only",
        "plan() share",
        "heuristic share",
        "GPUs best/plan()/heur.",
        "plan() s",
    ):
        table.add_column(column)
    plan_shares = []
    heuristic_shares = []
    rng = random.Random(7)
    for case in range(cases):
        layout = [("H100", rng.randint(1, 3), 8), ("L40S", rng.randint(1, 4), 4), ("L4", rng.randint(0, 8), 1)]
        inventory = make_inventory(layout)
        gpus = sum(len(n.devices) for n in inventory.nodes)
        deployments = make_deployments(
            rng.randint(5, 30),
            MIXED_MODELS[:6],
            100 + case,
            max_replicas=4,
            selector_share=0,
            sglang_share=0,
            priority_share=0,
        )
        planner = Planner(inventory)
        best = planner.plan(deployments, exact=True, time_budget_s=budget)
        result = planner.last_exact
        status = "optimal" if result is not None and result.placed_optimal else "not proven"
        if result is not None and not result.placed_optimal and result.bound is not None:
            status = f"≤ {min(sum(d.replicas for d in deployments), result.bound // result.base_weight)}"
        elapsed, default = _time(lambda inventory=inventory, deployments=deployments: plan(inventory, deployments))
        heuristic = plan(inventory, deployments, exact=False)
        reference = max(best.summary.placed, default.summary.placed, heuristic.summary.placed)
        plan_share = default.summary.placed / reference if reference else 1.0
        heuristic_share = heuristic.summary.placed / reference if reference else 1.0
        plan_shares.append(plan_share)
        heuristic_shares.append(heuristic_share)
        table.add_row(
            str(case),
            str(gpus),
            str(sum(d.replicas for d in deployments)),
            f"{best.summary.placed} ({status})",
            str(default.summary.placed),
            str(heuristic.summary.placed),
            f"{plan_share:.1%}",
            f"{heuristic_share:.1%}",
            f"{best.summary.gpus_used}/{default.summary.gpus_used}/{heuristic.summary.gpus_used}",
            f"{elapsed:.2f}",
        )
    table.add_row(
        "mean",
        "",
        "",
        "",
        "",
        "",
        f"{statistics.mean(plan_shares):.2%}",
        f"{statistics.mean(heuristic_shares):.2%}",
        "",
        "",
    )
    console.print(table)


# --- 3. scale and 4. stability -------------------------------------------------------------------------------


def bench_scale(console: Console, nodes: int, deployments_count: int) -> None:
    shares = {"H100": 0.4, "A100": 0.3, "L40S": 0.2, "L4": 0.1}
    layout = [(kind, int(nodes * share), 8) for kind, share in shares.items()]
    inventory = make_inventory(layout)
    gpus = sum(len(n.devices) for n in inventory.nodes)
    deployments = make_deployments(deployments_count, MIXED_MODELS, 11)
    wanted = sum(d.replicas for d in deployments)

    full_time, full = _time(lambda: plan(inventory, deployments))
    planner = Planner(inventory)
    planner_time, first = _time(lambda: planner.plan(deployments))
    changed = list(deployments)
    target = changed[len(changed) // 2]
    changed[len(changed) // 2] = target.model_copy(update={"replicas": target.replicas + 1, "concurrency": 2})
    incremental_time, second = _time(lambda: planner.plan(changed, previous=first))
    scratch_time, scratch = _time(lambda: plan(inventory, changed, previous=first))

    table = Table(
        title=f"3. scale: {gpus:,} GPUs on {len(inventory.nodes):,} nodes, {len(deployments):,} deployments "
        f"({wanted:,} replicas)"
    )
    for column in ("operation", "seconds", "goal", "placed", "unplaced", "GPUs used", "moved"):
        table.add_column(column)
    table.add_row(
        "full plan: plan(inventory, deployments)",
        f"{full_time:.3f}",
        "≤ 2 s",
        str(full.summary.placed),
        str(full.summary.unplaced),
        str(full.summary.gpus_used),
        "",
    )
    table.add_row(
        "full plan on a Planner (keeps its index)",
        f"{planner_time:.3f}",
        "",
        str(first.summary.placed),
        str(first.summary.unplaced),
        str(first.summary.gpus_used),
        "",
    )
    table.add_row(
        "one changed deployment, Planner.plan(previous=...)",
        f"{incremental_time * 1000:.1f} ms",
        "≤ 50 ms",
        str(second.summary.placed),
        str(second.summary.unplaced),
        str(second.summary.gpus_used),
        str(second.summary.moved),
    )
    table.add_row(
        "same change from scratch: plan(..., previous=...)",
        f"{scratch_time:.3f}",
        "",
        str(scratch.summary.placed),
        str(scratch.summary.unplaced),
        str(scratch.summary.gpus_used),
        str(scratch.summary.moved),
    )
    console.print(table)
    same = second.to_json() == scratch.to_json()
    console.print(f"incremental plan == from-scratch plan with the same previous plan: {same}")

    # 4. stability: every replica of another deployment stays exactly where it was
    before = {(r.deployment, r.replica): r.placements for r in first.replicas}
    moved_unrelated = sum(
        1
        for r in second.replicas
        if r.deployment != target.name and before.get((r.deployment, r.replica)) not in (None, r.placements)
    )
    moved_unrelated_scratch = sum(
        1
        for r in scratch.replicas
        if r.deployment != target.name and before.get((r.deployment, r.replica)) not in (None, r.placements)
    )
    stability = Table(title="4. stability: one deployment changed (replicas +1, concurrency 2)")
    for column in ("path", "replicas of other deployments moved", "goal"):
        stability.add_column(column)
    stability.add_row("incremental (Planner)", str(moved_unrelated), "0")
    stability.add_row("from scratch with previous", str(moved_unrelated_scratch), "0")
    console.print(stability)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller scale run (for a smoke test)")
    parser.add_argument("--only", choices=("baseline", "optimum", "scale"), default=None)
    args = parser.parse_args(argv)
    console = Console(width=170)
    console.print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, Python "
        f"{sys.version.split()[0]}, {platform.platform()}"
    )
    if args.only in (None, "baseline"):
        bench_baseline(console)
    if args.only in (None, "optimum"):
        bench_optimum(console, 4 if args.quick else 12)
    if args.only in (None, "scale"):
        if args.quick:
            bench_scale(console, 1250, 1000)
        else:
            bench_scale(console, 12500, 10000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
