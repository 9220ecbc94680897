"""An independent upper bound on the replicas the exact solver's model can place: a configuration LP.

    .venv/bin/python benchmarks/placement_upper_bound.py [--cases 8] [--large]

The exact solver (``placement/solver.py``, CP-SAT) often cannot prove its placed count optimal on oversubscribed
clusters of 40–64 GPUs. This script bounds the optimum of the solver's own placed-replicas model from above with
a Gilmore–Gomory configuration LP solved by column generation (GLOP), so the solver's counts can be certified
(placed == bound) or left open.

The model it relaxes is exactly the one ``solve_exact`` builds: the same ``ClusterState`` and tasks (captured
from ``Planner.plan`` by wrapping ``solve_exact``), the same options (``solver._options`` via ``solver._groups``),
the same MiB integers (claims rounded up, free memory rounded down, as in the solver). Relaxation:

- devices are grouped into types (same free MiB, same set of options with room on them): a *pattern* is what one
  device of a type holds, counts ``a_o`` of rank items of the options eligible there, with ``Σ claim_o·a_o ≤ free``
  and, per deployment, ``Σ_o a_o ≤ replicas`` (the model has one rank of a replica per device, ``z ≤ y ≤ c``);
- ``λ_p ≥ 0`` devices use pattern ``p``, ``Σ_{p of type t} λ_p ≤ devices of t``; ``x_o ≥ 0`` replicas with
  option ``o`` (TP·PP ranks each) need ``TP·PP·x_o ≤ Σ_p a_{o,p}·λ_p``; ``Σ_o x_o ≤ replicas`` per deployment;
  maximise ``Σ x_o`` (priorities are checked to be equal; with unequal ones this counts replicas anyway);
- dropped: ranks of a replica on one node / in one NVLink pool / on distinct devices, pipeline stages on
  distinct nodes, integrality. CPU-only options are handled the same way (their "devices" are the nodes' host
  memory, as in the model's host-load constraint), so nothing about them is relaxed further.

Any solution of the model gives such a (λ, x), so the LP optimum is ≥ the model's optimum. Pricing is an exact
knapsack over one device's MiB (integers, no rounding needed) with the per-deployment count limit. The reported
bound is not the LP's own value but a dual certificate: for the final duals ``π_o ≥ 0`` of the rank rows,
``Σ_d replicas_d · max(0, max_o 1 − TP·PP·π_o) + Σ_t devices_t · knapsack_t(π)`` is ≥ the LP optimum for *any*
``π ≥ 0`` (weak duality), and it equals the LP value when column generation has converged.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpustack_pulumi.placement import solver as solver_module
from gpustack_pulumi.placement.planner import DEFAULT_TIME_BUDGET_S, Planner
from gpustack_pulumi.placement.solver import _units_down, _units_up

TOLERANCE = 1e-9  # reduced cost below which no column improves the LP
BOUND_SLACK = 1e-6  # the bound is floor(value + slack)


@dataclass
class Item:
    """One option of one deployment as rank items: ``ranks`` items of ``claim`` MiB per replica."""

    group: int
    claim: int  # MiB per rank (rounded up, as the solver)
    ranks: int  # TP · PP
    label: str


@dataclass
class DeviceType:
    capacity: int  # MiB free (rounded down, as the solver)
    count: int  # devices (or CPU nodes' host memory) of this type
    items: tuple[int, ...]  # indices of the items that may go there
    host: bool = False


@dataclass
class Relaxation:
    items: list[Item]
    replicas: list[int]  # per group (deployment)
    types: list[DeviceType]
    priorities: set[int] = field(default_factory=set)


class _Captured(Exception):
    pass


def solver_relaxation(state, tasks) -> Relaxation:
    """The configuration-LP data of the model ``solve_exact(state, tasks, ...)`` builds."""
    groups = solver_module._groups(state, tasks)
    items: list[Item] = []
    replicas: list[int] = []
    eligible: dict[tuple, set[int]] = {}  # device key -> item indices
    capacity: dict[tuple, int] = {}
    for gi, group in enumerate(groups):
        replicas.append(len(group.tasks))
        for option in group.options:
            index = len(items)
            items.append(Item(gi, _units_up(option.claim), option.tp * option.pp,
                              f"{group.tasks[0].prepared.name}:{option.engine}:c{option.class_id}:tp{option.tp}"
                              f"pp{option.pp}"))  # fmt: skip
            if option.class_id is None:
                for node, _ in option.nodes:
                    key = ("host", node)
                    capacity[key] = _units_down(state.host_free.get(node))
                    eligible.setdefault(key, set()).add(index)
            else:
                for _node, gids in option.nodes:
                    for g in gids:
                        key = ("gpu", g)
                        capacity[key] = _units_down(state.free[g])
                        eligible.setdefault(key, set()).add(index)
    by_signature: dict[tuple, int] = {}
    for key, members in eligible.items():
        signature = (key[0], capacity[key], tuple(sorted(members)))
        by_signature[signature] = by_signature.get(signature, 0) + 1
    types = [
        DeviceType(cap, count, members, kind == "host") for (kind, cap, members), count in sorted(by_signature.items())
    ]
    priorities = {group.tasks[0].prepared.deployment.priority for group in groups}
    return Relaxation(items, replicas, types, priorities)


def capture(inventory, deployments, *, time_budget_s: float | None = DEFAULT_TIME_BUDGET_S):
    """Run ``Planner.plan(exact=True)`` and capture the relaxation of the model its exact solver gets.

    With ``time_budget_s=None`` the solver is not run (only the inputs are captured): returns
    ``(relaxation, plan or None, planner)``."""
    real = solver_module.solve_exact
    found: list[Relaxation] = []

    def spy(state, tasks, strategy, budget):
        found.append(solver_relaxation(state, tasks))
        if time_budget_s is None:
            raise _Captured
        return real(state, tasks, strategy, budget)

    planner = Planner(inventory)
    solver_module.solve_exact = spy
    try:
        result = planner.plan(deployments, exact=True, time_budget_s=time_budget_s or DEFAULT_TIME_BUDGET_S)
    except _Captured:
        result = None
    finally:
        solver_module.solve_exact = real
    relaxation = found[0] if found else Relaxation([], [], [])
    return relaxation, result, planner


def _choices(relaxation: Relaxation, dtype: DeviceType, values: np.ndarray) -> list[list[tuple[int, float, tuple]]]:
    """Per deployment: the (MiB, value, counts per item) ways to put its items on one device of the type."""
    by_group: dict[int, list[int]] = {}
    for i in dtype.items:
        if values[i] > 0:
            by_group.setdefault(relaxation.items[i].group, []).append(i)
    out = []
    for gi, members in sorted(by_group.items()):
        limit = relaxation.replicas[gi]
        ways = []
        ranges = [range(min(limit, dtype.capacity // relaxation.items[i].claim) + 1) for i in members]
        for counts in itertools.product(*ranges):
            if not 0 < sum(counts) <= limit:
                continue
            weight = sum(n * relaxation.items[i].claim for n, i in zip(counts, members, strict=True))
            if weight <= dtype.capacity:
                value = sum(n * values[i] for n, i in zip(counts, members, strict=True))
                ways.append((weight, value, tuple(zip(members, counts, strict=True))))
        if ways:
            out.append(ways)
    return out


def knapsack(relaxation: Relaxation, dtype: DeviceType, values: np.ndarray) -> tuple[float, dict[int, int]]:
    """The most valuable pattern of one device of the type (exact DP over its MiB): (value, counts per item)."""
    groups = _choices(relaxation, dtype, values)
    cap = dtype.capacity
    best = np.zeros(cap + 1)  # best[c]: the most value within c MiB
    picks = []
    for ways in groups:
        new = best.copy()
        pick = np.full(cap + 1, -1, dtype=np.int16)
        for j, (weight, value, _) in enumerate(ways):
            candidate = best[: cap + 1 - weight] + value
            better = candidate > new[weight:]
            new[weight:][better] = candidate[better]
            pick[weight:][better] = j
        best = new
        picks.append(pick)
    pattern: dict[int, int] = {}
    c = cap
    for ways, pick in zip(reversed(groups), reversed(picks), strict=True):
        j = int(pick[c])
        if j >= 0:
            weight, _, counts = ways[j]
            for i, n in counts:
                if n:
                    pattern[i] = pattern.get(i, 0) + n
            c -= weight
    return float(best[cap]), pattern


@dataclass
class Bound:
    value: float  # the dual certificate (≥ the LP optimum ≥ the model's optimum)
    lp_value: float  # the restricted master's last value (equal at convergence)
    columns: int
    iterations: int
    seconds: float

    @property
    def replicas(self) -> int:
        return math.floor(self.value + BOUND_SLACK)


def _initial_patterns(relaxation: Relaxation) -> list[tuple[int, dict[int, int]]]:
    out = []
    for t, dtype in enumerate(relaxation.types):
        for i in dtype.items:
            item = relaxation.items[i]
            count = min(relaxation.replicas[item.group], dtype.capacity // item.claim)
            if count:
                out.append((t, {i: count}))
    return out


def config_lp_bound(relaxation: Relaxation, max_iterations: int = 10_000) -> Bound:
    """Column generation on the configuration LP; returns its dual certificate."""
    from ortools.linear_solver import pywraplp

    started = time.perf_counter()
    items, types = relaxation.items, relaxation.types
    if not items:
        return Bound(0.0, 0.0, 0, 0, 0.0)
    lp = pywraplp.Solver.CreateSolver("GLOP")
    x = [lp.NumVar(0, lp.infinity(), f"x{i}") for i in range(len(items))]
    demand_rows = []
    for gi, count in enumerate(relaxation.replicas):
        row = lp.Constraint(-lp.infinity(), count, f"d{gi}")
        for i, item in enumerate(items):
            if item.group == gi:
                row.SetCoefficient(x[i], 1)
        demand_rows.append(row)
    rank_rows = []
    for i, item in enumerate(items):
        row = lp.Constraint(-lp.infinity(), 0, f"r{i}")
        row.SetCoefficient(x[i], item.ranks)
        rank_rows.append(row)
    type_rows = [lp.Constraint(-lp.infinity(), dtype.count, f"t{t}") for t, dtype in enumerate(types)]
    objective = lp.Objective()
    for var in x:
        objective.SetCoefficient(var, 1)
    objective.SetMaximization()
    seen: set[tuple] = set()

    def add(t: int, pattern: dict[int, int]) -> bool:
        key = (t, tuple(sorted(pattern.items())))
        if key in seen:
            return False
        seen.add(key)
        var = lp.NumVar(0, lp.infinity(), f"p{len(seen)}")
        type_rows[t].SetCoefficient(var, 1)
        for i, n in pattern.items():
            rank_rows[i].SetCoefficient(var, -n)
        return True

    for t, pattern in _initial_patterns(relaxation):
        add(t, pattern)
    iterations = 0
    lp_value = 0.0
    certificate = math.inf
    while iterations < max_iterations:
        iterations += 1
        status = lp.Solve()
        if status != pywraplp.Solver.OPTIMAL:
            raise RuntimeError(f"GLOP status {status}")
        lp_value = objective.Value()
        values = np.array([max(0.0, row.dual_value()) for row in rank_rows])
        mus = [row.dual_value() for row in type_rows]
        found = False
        total = 0.0
        for t, dtype in enumerate(types):
            best, pattern = knapsack(relaxation, dtype, values)
            total += dtype.count * best
            if best - mus[t] > TOLERANCE and pattern and add(t, pattern):
                found = True
        for gi, count in enumerate(relaxation.replicas):
            sigma = max([0.0] + [1 - item.ranks * values[i] for i, item in enumerate(items) if item.group == gi])
            total += count * sigma
        certificate = min(certificate, total)
        if not found:
            break
    return Bound(certificate, lp_value, len(seen), iterations, time.perf_counter() - started)


def upper_bound(inventory, deployments) -> Bound:
    """The configuration-LP bound on the replicas the exact solver's model can place (the solver is not run)."""
    relaxation, _, _ = capture(inventory, deployments, time_budget_s=None)
    return config_lp_bound(relaxation)


def main(argv: list[str] | None = None) -> int:
    from exact_optimum_bench import cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--large", action="store_true", help="clusters of 40-64 GPUs")
    args = parser.parse_args(argv)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("case | GPUs | wanted | plan() placed | CP-SAT bound | config-LP bound (LP value) | proven optimal | LP s")
    for index, (inventory, deployments, gpus) in enumerate(cases(args.cases, large=args.large)):
        wanted = sum(d.replicas for d in deployments)
        relaxation, result, planner = capture(inventory, deployments)
        placed = result.summary.placed
        exact = planner.last_exact
        cp_bound = "-" if exact is None or exact.bound is None else str(exact.bound // exact.base_weight)
        bound = config_lp_bound(relaxation)
        note = "" if len(relaxation.priorities) <= 1 else " (unequal priorities)"
        proven = "yes" if placed == bound.replicas else ("BOUND BELOW PLACED" if bound.replicas < placed else "no")
        print(f"{index} | {gpus} | {wanted} | {placed} | {cp_bound} | {bound.replicas} ({bound.value:.4f}) | "
              f"{proven}{note} | {bound.seconds:.1f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
