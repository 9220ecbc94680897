"""The exact placer for small problems: OR-Tools CP-SAT, lexicographic objective, bounded time.

Objective, strictly in this order (integer weights, so CP-SAT optimises it exactly):
1. placed replicas, weighted so that one replica of a higher priority outweighs all lower ones;
2. fewest mode=latency replicas on CPU-only nodes; 3. fewest extra replicas of one deployment on one device,
then 4. on one node (availability: every deployment under spread, those without ``pack_replicas`` under
binpack); 5. fewest GPUs used, 6. fewest nodes used, 7. fewest ranks.
Two stages: (1) alone first, then the rest with (1) held at its best value. Stage (1) starts with the MIP stage
on the same placed-replicas model with interchangeable deployments merged (``packing_config.py``,
``packing_mip.py``, HiGHS), in a thread while CP-SAT's model is built: a configuration LP bounds the count and
proves most hints optimal at once; below its bound, a MIP over the patterns near it and the compact MIP with the
LP's duals as cuts look for a placement at the bound side by side. Only where the MIP stage proves nothing does
CP-SAT's own placed-replicas solve (max-hitting-set search) run after it.

Variables per deployment and option (device class × smallest TP with room, multi-node TP × PP, or CPU):
a count ``c`` of replicas; per node ``y`` (stages there) and per device ``z`` (ranks there) with
``Σ_node z = TP·y``, ``z ≤ y``, ``Σ y = PP·c``; device capacity ``Σ claim·z ≤ free`` (in MiB). Replicas of one
deployment are interchangeable, so counting them removes that symmetry. The (complete) hint is the better
of the heuristic's plan and a best-fit-decreasing packing of the smallest replicas (tight packings that
CP-SAT's search alone took seconds to find); the hint stands if the search ends below it, and the heuristic
is the fallback: the result is never worse than either. Determinism: one worker,
a fixed seed, and a deterministic work limit derived from the budget alone; the wall clock (what is left of
the budget) is only the hard stop behind it. HiGHS has no deterministic work limit: most problems are settled by
a proof (the LP's bound reached, or none at it), but where a search at the bound is stopped by the wall clock, or
two searches both find a placement and the first to finish is taken, the plan depends on the machine's speed
and load.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from gpustack_pulumi.placement.cluster import ClusterState
from gpustack_pulumi.placement.demand import CLAIM_GRANULARITY_BYTES
from gpustack_pulumi.placement.heuristic import Placer, ReplicaTask
from gpustack_pulumi.placement.models import Strategy
from gpustack_pulumi.placement.packing_config import AtTarget, ConfigurationLP, configuration_lp, search_at
from gpustack_pulumi.placement.packing_mip import (
    NODES_PER_BUDGET_SECOND,
    KindSolution,
    PackingKind,
    PackingOption,
    PackingResult,
    Race,
    highs_available,
    solve_packing,
)
from gpustack_pulumi.placement.scorers import Candidate, ScoredCandidate, ScorePipeline, spreads_replicas

# Time kept back from the budget for model building and extraction, so the whole call stays inside it.
SOLVE_MARGIN_FRACTION = 0.1

# CP-SAT deterministic time each solve may do, as a share of the budget (about a second of work per unit on
# this project's 2-core reference machine). The placed-replicas solve decides what the plan is worth, so it
# gets most: on generated oversubscribed clusters of ≤ 64 GPUs (benchmarks/exact_optimum_bench.py), starting
# from the packing hint, it proved the optimum of all twelve cases within 0.55 units (without that hint it
# needed up to 4 units to find some); the GPUs/nodes solve starts from a feasible hint and gets the rest.
DETERMINISTIC_SHARE_PRIMARY = 0.4
DETERMINISTIC_SHARE_SECONDARY = 0.15
DETERMINISTIC_SHARE_PER_SOLVE = DETERMINISTIC_SHARE_PRIMARY  # the larger of the two (planner's docs name it)
# Wall-clock share of what is left of the budget for the placed-replicas solve (the second gets all the rest).
PRIMARY_WALL_SHARE = 0.7
# Wall-clock share of what is left (after the heuristic and the hint) that the MIP stage may use; it stops
# earlier where it proves the count, which the configuration LP's bound does at once on most problems. The
# hardest benchmark cases need ~1.4 s of the 2 s budget on the reference VM for the search at the bound.
MIP_WALL_SHARE = 0.95
# Of that, the most the configuration LP may take (packing_config.py; 0.01-0.25 s on the benchmark's clusters,
# more while CP-SAT's model is built beside it: a cap it reaches leaves a weaker bound), and the share of what is
# left for the searches at its bound (the rest: the compact MIP from the start, for any better placement).
CONFIG_LP_SHARE = 0.5
TARGET_WALL_SHARE = 0.9
# What must be left of the budget after HiGHS for CP-SAT's placed-replicas solve to run (less, and it could not
# even load the model and the hint of a 64-GPU problem: measured 0.1-0.15 s for nothing), and for the second solve.
CP_SAT_MIN_SHARE = 0.15
SECONDARY_MIN_SHARE = 0.05

T = TypeVar("T")

# Memory is modelled in MiB: claims and free memory are whole MiB already (demand.CLAIM_GRANULARITY_BYTES),
# so this is exact. Byte-sized coefficients (~10^11) slow CP-SAT's propagation by orders of magnitude.
SOLVER_UNIT_BYTES = CLAIM_GRANULARITY_BYTES


def _units_up(value: int) -> int:
    return -(-value // SOLVER_UNIT_BYTES)


def _units_down(value: int | None) -> int:
    return max(0, value or 0) // SOLVER_UNIT_BYTES


@dataclass
class ExactResult:
    assignments: list[tuple[ReplicaTask, ScoredCandidate | None]]
    used_exact: bool
    optimal: bool
    objective: int
    bound: int | None = None  # CP-SAT's proven upper bound of the placed-replicas objective
    base_weight: int = 1  # objective weight of one replica of the lowest priority
    placed_optimal: bool = False  # the placed replicas are proven optimal (GPUs/nodes may not be)


@dataclass
class _Option:
    task: int
    class_id: int | None
    engine: str
    tp: int
    pp: int
    claim: int
    fraction: float | None
    detail: str
    nodes: list[tuple[int, list[int]]]  # eligible (node, devices with room for one rank)

    def candidate(self, node_gids: list[tuple[int, list[int]]]) -> Candidate:
        """This option placed on the given (node, devices) ranks, as the heuristic's candidates read."""
        return Candidate(
            self.class_id, self.engine, self.tp, self.pp, self.claim, self.fraction, node_gids, self.detail
        )


def _options(state: ClusterState, task: ReplicaTask, index: int) -> list[_Option]:
    prepared = task.prepared
    cluster = state.cluster
    out: list[_Option] = []

    def nodes_for(class_id: int, tp: int, claim: int) -> list[tuple[int, list[int]]]:
        found = []
        for node in cluster.class_nodes.get(class_id, []):
            if prepared.eligible_nodes is not None and node not in prepared.eligible_nodes:
                continue
            gids = [
                g
                for g in cluster.nodes[node].gids_by_class[class_id]
                if state.free[g] >= claim and (prepared.eligible_gids is None or g in prepared.eligible_gids)
            ]
            if len(gids) >= tp:
                found.append((node, gids))
        return found

    for option in prepared.options:
        # The smallest TP that has room somewhere now (larger TPs only where fragmentation leaves no room for
        # it), as the heuristic does: the solver does not trade a larger TP for fewer GPUs.
        for tp in option.tps:
            demand = prepared.demand(option, tp)
            if demand.fits:
                nodes = nodes_for(option.class_id, tp, demand.claim_bytes)
                if nodes:
                    out.append(
                        _Option(
                            index,
                            option.class_id,
                            option.engine,
                            tp,
                            1,
                            demand.claim_bytes,
                            demand.memory_fraction,
                            demand.detail,
                            nodes,
                        )
                    )
                    break
    if prepared.cpu_request is not None:
        hosts = [
            (n, [])
            for n in cluster.cpu_nodes
            if (prepared.eligible_nodes is None or n in prepared.eligible_nodes)
            and (state.host_free.get(n) or 0) >= prepared.cpu_host_bytes
        ]
        if hosts:
            out.append(
                _Option(
                    index, None, prepared.cpu_request.engine, 1, 1, prepared.cpu_host_bytes, None, "host memory", hosts
                )
            )
    if not prepared.options and prepared.cpu_request is None:
        for option in prepared.multi_node_options:
            assert option.multi_node is not None
            tp, pp = option.multi_node
            demand = prepared.demand(option, tp, pp)
            nodes = nodes_for(option.class_id, tp, demand.claim_bytes)
            if len(nodes) >= pp:
                out.append(
                    _Option(
                        index,
                        option.class_id,
                        option.engine,
                        tp,
                        pp,
                        demand.claim_bytes,
                        demand.memory_fraction,
                        demand.detail,
                        nodes,
                    )
                )
    return out


def _tier_weights(tasks: list[ReplicaTask], base: int) -> dict[int, int]:
    """Weight per priority so that one replica of a tier outweighs every replica of all lower tiers."""
    counts: dict[int, int] = {}
    for task in tasks:
        priority = task.prepared.deployment.priority
        counts[priority] = counts.get(priority, 0) + 1
    weights: dict[int, int] = {}
    below = 0
    for priority in sorted(counts):
        weights[priority] = below + base
        below += counts[priority] * weights[priority]
    return weights


@dataclass
class _Group:
    """Replicas of one deployment: interchangeable, so the model counts them instead of naming them."""

    tasks: list[ReplicaTask]
    options: list[_Option]


def _groups(state: ClusterState, tasks: list[ReplicaTask]) -> list[_Group]:
    groups: dict[int, _Group] = {}
    order: list[int] = []
    for task in tasks:
        key = id(task.prepared)
        if key not in groups:
            groups[key] = _Group([], _options(state, task, len(order)))
            order.append(key)
        groups[key].tasks.append(task)
    return [groups[key] for key in order]


def solve_exact(state: ClusterState, tasks: list[ReplicaTask], strategy: Strategy, time_budget_s: float) -> ExactResult:
    """Place ``tasks`` optimally on ``state`` (not modified); falls back to the heuristic's result.

    Replicas of one deployment are counted (integer variables per device / node), which removes their
    symmetry; identical unused devices of a node are ordered by the bytes they receive, which removes most
    of the devices' symmetry.
    """
    from ortools.sat.python import cp_model

    started = time.perf_counter()
    heuristic_state = copy.deepcopy(state)
    heuristic = run_heuristic(heuristic_state, tasks, strategy)

    cluster = state.cluster
    groups = _groups(state, tasks)
    unit_tier = _tier_weights(tasks, 1)
    weights = [unit_tier[group.tasks[0].prepared.deployment.priority] for group in groups]
    # The hint: the heuristic's plan, or where better a packing of the smallest replicas (on generated
    # oversubscribed clusters it often is: tight packings that CP-SAT's search alone took seconds to find).
    hint, hint_units = _hint_assignment(state, heuristic, groups, weights)
    # Then the MIP stage on the placed-replicas model from the hint (packing_config.py, packing_mip.py), before
    # CP-SAT's model is built (it needs the time more): the configuration LP's bound proves most hints optimal
    # at once, and on tight packings of 40-64 GPUs the searches at that bound find the replicas CP-SAT's search
    # missed. Only where it proves nothing does CP-SAT's own placed-replicas solve run.
    # It runs in a thread while CP-SAT's model is built here (HiGHS releases the GIL).
    remaining = time_budget_s * (1 - SOLVE_MARGIN_FRACTION) - (time.perf_counter() - started)
    kinds = _kinds(state, groups, weights)
    lp_done = threading.Event()

    def packing() -> _Packed | None:
        try:
            return _packing_stage(state, groups, kinds, hint, remaining * MIP_WALL_SHARE, time_budget_s, lp_done)
        finally:
            lp_done.set()  # also where the stage ends before or without the LP

    packing_future = _in_thread(packing)
    # The configuration LP is mostly Python (pricing): building CP-SAT's model beside it would share the GIL and
    # slow it down; the searches after it run in HiGHS without the GIL.
    lp_done.wait(timeout=remaining * MIP_WALL_SHARE * CONFIG_LP_SHARE)
    model = cp_model.CpModel()
    load: dict[int, list] = {}  # gid -> [(count var, claim)]
    eligibility: dict[int, list[tuple[int, int]]] = {}  # gid -> [(group, option)] with a variable on it
    host_load: dict[int, list] = {}
    dev_counts: dict[int, list] = {}
    node_counts: dict[int, list] = {}
    dep_node: dict[tuple[int, int], list] = {}
    placed_vars = []
    rank_terms = []
    extract: list[tuple[int, _Option, object, dict[int, object], dict[int, object]]] = []
    latency_cpu_terms: list = []
    pools: dict[tuple[int, int], list[tuple[object, list[int]]]] = {}  # (extract index, node) -> rank pools
    for gi, group in enumerate(groups):
        m = len(group.tasks)
        counts = []
        for k, option in enumerate(group.options):
            c = model.NewIntVar(0, m, f"c_{gi}_{k}")
            counts.append(c)
            rank_terms.append(option.tp * option.pp * c)
            if option.class_id is None and group.tasks[0].prepared.deployment.mode == "latency":
                latency_cpu_terms.append(c)  # mode=latency: a CPU-only node is the last resort
            ys: dict[int, object] = {}
            zs: dict[int, object] = {}
            if option.class_id is None:
                for node, _ in option.nodes:
                    cap = min(m, _units_down(state.host_free.get(node)) // max(1, _units_up(option.claim)))
                    y = model.NewIntVar(0, cap, f"h_{gi}_{k}_{node}")
                    ys[node] = y
                    host_load.setdefault(node, []).append((y, _units_up(option.claim)))
                    node_counts.setdefault(node, []).append((y, m))
                    dep_node.setdefault((gi, node), []).append(y)
                model.Add(sum(ys.values()) == c)
            else:
                for node, gids in option.nodes:
                    y = model.NewIntVar(0, m, f"y_{gi}_{k}_{node}")
                    ys[node] = y
                    node_counts.setdefault(node, []).append((y, m))
                    dep_node.setdefault((gi, node), []).append(y)
                    node_pools = []
                    for members in _rank_pools(state, gids, option.tp):
                        pool = y if len(members) == len(gids) else model.NewIntVar(0, m, f"p_{gi}_{k}_{members[0]}")
                        pool_z = []
                        for g in members:
                            cap = min(m, _units_down(state.free[g]) // max(1, _units_up(option.claim)))
                            z = model.NewIntVar(0, cap, f"z_{gi}_{k}_{g}")
                            zs[g] = z
                            pool_z.append(z)
                            model.Add(z <= pool)  # one rank of a replica per device
                            load.setdefault(g, []).append((z, _units_up(option.claim)))
                            eligibility.setdefault(g, []).append((gi, k))
                            dev_counts.setdefault(g, []).append((z, m))
                        model.Add(sum(pool_z) == option.tp * pool)  # a replica's ranks stay in one pool
                        node_pools.append((pool, members))
                    if len(node_pools) > 1 or node_pools[0][0] is not y:
                        model.Add(y == sum(pool for pool, _ in node_pools))
                    pools[(len(extract), node)] = node_pools
                    if option.pp > 1:
                        model.Add(y <= c)  # one stage of a replica per node
                model.Add(sum(ys.values()) == option.pp * c)
            extract.append((gi, option, c, ys, zs))
        placed = model.NewIntVar(0, m, f"placed_{gi}")
        model.Add(sum(counts) == placed)
        placed_vars.append(placed)

    for g, terms in load.items():
        model.Add(sum(claim * z for z, claim in terms) <= _units_down(state.free[g]))
    for node, terms in host_load.items():
        model.Add(sum(claim * y for y, claim in terms) <= _units_down(state.host_free.get(node)))

    new_devices = []
    device_used: dict[int, object] = {}
    for g, terms in dev_counts.items():
        if state.users[g]:
            continue
        used = model.NewBoolVar(f"dev_{g}")
        model.Add(sum(z for z, _ in terms) <= sum(bound for _, bound in terms) * used)
        device_used[g] = used
        new_devices.append(used)
    new_nodes = []
    node_used: dict[int, object] = {}
    for node, terms in node_counts.items():
        if state.node_users[node]:
            continue
        used = model.NewBoolVar(f"node_{node}")
        model.Add(sum(y for y, _ in terms) <= sum(bound for _, bound in terms) * used)
        new_nodes.append(used)
        node_used[node] = used
    buckets = _break_device_symmetry(model, state, load, eligibility, device_used)

    # Availability: replicas of one deployment on distinct devices and, where room allows, distinct nodes —
    # for every deployment under spread, and for those that do not ask to pack their replicas under binpack.
    dep_dev: dict[tuple[int, int], list] = {}
    for gi, _option, _c, _ys, zs in extract:
        for g, z in zs.items():
            dep_dev.setdefault((gi, g), []).append(z)

    def excess_vars(
        counts: dict[tuple[int, int], list], held: dict[str, dict[int, int]], tag: str
    ) -> dict[tuple[int, int], tuple[object, int]]:
        """Per (deployment, node or device): how many of its replicas there are beyond the first."""
        found: dict[tuple[int, int], tuple[object, int]] = {}
        for (gi, where), terms in counts.items():
            prepared = groups[gi].tasks[0].prepared
            if not spreads_replicas(prepared.deployment.pack_replicas, strategy):
                continue
            existing = held.get(prepared.name, {}).get(where, 0)
            excess = model.NewIntVar(0, len(groups[gi].tasks) + existing, f"{tag}_{gi}_{where}")
            model.Add(excess >= sum(terms) + existing - 1)
            found[(gi, where)] = (excess, existing)
        return found

    excess_of = excess_vars(dep_node, state.dep_nodes, "excess")
    gpu_excess_of = excess_vars(dep_dev, state.dep_gpus, "gexcess")
    excess_terms = [var for var, _ in excess_of.values()]
    gpu_excess_terms = [var for var, _ in gpu_excess_of.values()]

    ranks = sum(o.tp * o.pp * len(group.tasks) for group in groups for o in group.options) + 1
    node_weight = ranks + 1
    device_weight = node_weight * (len(new_nodes) + 1)
    spread_weight = device_weight * (len(new_devices) + 1)
    excess_bound = sum(len(groups[gi].tasks) + existing for (gi, _), (_, existing) in excess_of.items())
    gpu_spread_weight = spread_weight * (excess_bound + 1)
    gpu_excess_bound = sum(len(groups[gi].tasks) + existing for (gi, _), (_, existing) in gpu_excess_of.items())
    latency_weight = gpu_spread_weight * (gpu_excess_bound + 1)
    base = latency_weight * (len(tasks) + 1)
    tier = _tier_weights(tasks, base)
    # The primary solve counts replicas in units of the lowest tier (tier weights are multiples of ``base``):
    # small coefficients keep CP-SAT's bounds tight; values are scaled back by ``base`` for the result.
    primary = sum(
        unit_tier[group.tasks[0].prepared.deployment.priority] * placed_vars[gi] for gi, group in enumerate(groups)
    )
    secondary = (
        -latency_weight * sum(latency_cpu_terms)
        - gpu_spread_weight * sum(gpu_excess_terms)
        - spread_weight * sum(excess_terms)
        - device_weight * sum(new_devices)
        - node_weight * sum(new_nodes)
        - sum(rank_terms)
    )
    objective_weights = (latency_weight, gpu_spread_weight, spread_weight, device_weight, node_weight)
    heuristic_value = _value(heuristic, tier, state, strategy, objective_weights)
    base_weight = min(tier.values()) if tier else 1

    # Lexicographic in two solves: first the placed replicas alone (their optimum is usually proven fast),
    # then, with that many placed, the GPUs/nodes/ranks (most of the budget goes to the first).
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0

    def run(share: float, work_share: float, *, max_hs: bool) -> int:
        remaining = time_budget_s * (1 - SOLVE_MARGIN_FRACTION) - (time.perf_counter() - started)
        solver.parameters.max_time_in_seconds = max(0.01, remaining * share)  # the hard stop
        # The work limit depends on the budget only (not on time already spent), so it is the same on every
        # run and the plan is reproducible; it is set below the wall limit so that it stops the solve.
        solver.parameters.max_deterministic_time = max(0.01, time_budget_s * work_share)
        # Maximising placed replicas is a multiple-knapsack: CP-SAT's max-hitting-set search (a MIP on the
        # cores it finds) reached the best known counts where plain search from the hint stalled.
        solver.parameters.optimize_with_max_hs = max_hs
        return solver.Solve(model)

    packing = packing_future.result()  # an error there is raised here
    if packing is not None and packing.units > hint_units:
        hint_units, hint = packing.units, packing.assignments
    else:  # the same slots dealt for availability: a better start for the second solve
        dealt = _redeal(state, groups, kinds, hint)
        if _value(dealt, tier, state, strategy, objective_weights) > _value(
            hint, tier, state, strategy, objective_weights
        ):
            hint = dealt
    _hint_from(model, hint, groups, extract, placed_vars, device_used, node_used, excess_of, gpu_excess_of, buckets,
               pools)  # fmt: skip
    model.Maximize(primary)
    values: list[int] | None = None
    remaining = time_budget_s * (1 - SOLVE_MARGIN_FRACTION) - (time.perf_counter() - started)
    if packing is not None and (packing.optimal or remaining < CP_SAT_MIN_SHARE * time_budget_s):
        # HiGHS proved it, or used the time on a hard one: its plan (or the hint, if no worse) stands
        primary_units, primary_bound = hint_units, packing.bound * base
        primary_optimal = packing.optimal or hint_units * base >= primary_bound
    else:
        status = run(PRIMARY_WALL_SHARE, DETERMINISTIC_SHARE_PRIMARY, max_hs=True)
        found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
        primary_optimal = status == cp_model.OPTIMAL
        # CP-SAT's bound means something only where it found a solution; HiGHS's holds in any case
        bounds = [round(solver.BestObjectiveBound()) * base] if found else []
        if packing is not None:
            bounds.append(packing.bound * base)
        primary_bound = min(bounds) if bounds else None
        if not found or round(solver.ObjectiveValue()) < hint_units:
            # The max-hitting-set search does not always start from the hint: the hint itself then stands
            # (all variables fixed to it, a solve of a few milliseconds).
            solver.parameters.fix_variables_to_their_hinted_value = True
            status = run(PRIMARY_WALL_SHARE, 0.01, max_hs=False)
            solver.parameters.fix_variables_to_their_hinted_value = False
            found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
        if not found:
            # nothing found in time (a loaded machine): the hint is feasible, and may be better than the heuristic
            hint_value = _value(hint, tier, state, strategy, objective_weights)
            if hint_value > heuristic_value and status != cp_model.INFEASIBLE:
                return ExactResult(hint, False, False, hint_value, primary_bound, base_weight)
            return ExactResult(heuristic, False, False, heuristic_value, primary_bound, base_weight)
        primary_units = round(solver.ObjectiveValue())
        primary_optimal = primary_optimal or (primary_bound is not None and primary_units * base >= primary_bound)
        values = [solver.Value(model.GetIntVarFromProtoIndex(i)) for i in range(len(model.Proto().variables))]

    def assignments_from(value_of) -> list[tuple[ReplicaTask, ScoredCandidate | None]]:
        assignments: list[tuple[ReplicaTask, ScoredCandidate | None]] = []
        next_task = {gi: 0 for gi in range(len(groups))}
        for ei, (gi, option, c, ys, zs) in enumerate(extract):
            count = value_of(c)
            if not count:
                continue
            group_tasks = groups[gi].tasks
            node_pools = {
                node: [(value_of(pool), members) for pool, members in pools.get((ei, node), [])] for node in ys
            }
            for node_gids in _decompose(
                cluster,
                option,
                count,
                {n: value_of(y) for n, y in ys.items()},
                node_pools,
                {g: value_of(z) for g, z in zs.items()},
            ):
                task = group_tasks[next_task[gi]]
                next_task[gi] += 1
                assignments.append((task, ScoredCandidate(option.candidate(node_gids), 0, ())))
        for gi, group in enumerate(groups):
            assignments.extend((task, None) for task in group.tasks[next_task[gi] :])
        return assignments

    primary_value = primary_units * base
    model.Add(primary >= primary_units)
    if values is not None:  # CP-SAT's solution is the second solve's hint (else the hint stays)
        model.ClearHints()
        for i, value in enumerate(values):
            model.AddHint(model.GetIntVarFromProtoIndex(i), value)
    model.Maximize(secondary)
    remaining = time_budget_s * (1 - SOLVE_MARGIN_FRACTION) - (time.perf_counter() - started)
    status = cp_model.UNKNOWN  # no time left: the first stage's plan stands
    if remaining >= SECONDARY_MIN_SHARE * time_budget_s:
        status = run(1.0, DETERMINISTIC_SHARE_SECONDARY, max_hs=False)
        work = solver.ResponseProto().deterministic_time
        if status == cp_model.FEASIBLE and work < 0.99 * solver.parameters.max_deterministic_time:
            # Stopped by the wall clock, not by its work limit: where it stopped depends on the machine's load,
            # so its solution is dropped and the first stage's plan stands (the same plan on every run).
            status = cp_model.UNKNOWN
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        solved = [solver.Value(model.GetIntVarFromProtoIndex(i)) for i in range(len(model.Proto().variables))]
        exact_value = primary_value + round(solver.ObjectiveValue())
        assignments = assignments_from(lambda var: solved[var.Index()])
    else:
        # The second solve found nothing within its work limit (CP-SAT does not always take the hint whole):
        # the first stage's plan (CP-SAT's solution, or the hint) is feasible and places as many, so it stands,
        # with the interchangeable deployments' replicas at least dealt out so that they share few GPUs and
        # nodes (free: the same slots, so the same count, GPUs and nodes).
        assignments = assignments_from(lambda var: values[var.Index()]) if values is not None else hint
        dealt = _redeal(state, groups, kinds, assignments)
        if _value(dealt, tier, state, strategy, objective_weights) >= _value(
            assignments, tier, state, strategy, objective_weights
        ):
            assignments = dealt
        exact_value = _value(assignments, tier, state, strategy, objective_weights)
    optimal = primary_optimal and status == cp_model.OPTIMAL
    if exact_value < heuristic_value:
        return ExactResult(heuristic, False, False, heuristic_value, primary_bound, base_weight, primary_optimal)
    return ExactResult(assignments, True, optimal, exact_value, primary_bound, base_weight, primary_optimal)


@dataclass
class _Kinds:
    """Deployments interchangeable for the placed-replicas objective: same priority, same options (device class,
    TP × PP, claim, eligible devices), in the order of ``groups``."""

    kinds: list[PackingKind]
    members: list[list[int]]  # kind -> its groups
    kind_of: dict[int, int]  # group -> its kind


def _kinds(state: ClusterState, groups: list[_Group], weights: list[int]) -> _Kinds:
    signature: dict[tuple, int] = {}
    out = _Kinds([], [], {})
    for gi, group in enumerate(groups):
        key = (
            weights[gi],
            tuple(
                (o.class_id, o.tp, o.pp, _units_up(o.claim), tuple((n, tuple(gids)) for n, gids in o.nodes))
                for o in group.options
            ),
        )
        if key not in signature:
            signature[key] = len(out.kinds)
            options = [
                PackingOption(
                    o.class_id,
                    o.tp,
                    o.pp,
                    _units_up(o.claim),
                    [
                        (node, _rank_pools(state, gids, o.tp) if o.class_id is not None else [])
                        for node, gids in o.nodes
                    ],
                )
                for o in group.options
            ]
            out.kinds.append(PackingKind(0, weights[gi], options))
            out.members.append([])
        ki = signature[key]
        out.kinds[ki].replicas += len(group.tasks)
        out.members[ki].append(gi)
        out.kind_of[gi] = ki
    return out


@dataclass
class _Packed:
    """What the MIP stage found: placed replicas (in units of the lowest priority), its proven bound, whether
    that is proven optimal, and its plan (the kinds' replicas dealt to their deployments)."""

    units: int
    bound: int
    optimal: bool
    assignments: list[tuple[ReplicaTask, ScoredCandidate | None]]


def _packing_stage(
    state: ClusterState,
    groups: list[_Group],
    kinds: _Kinds,
    start: list[tuple[ReplicaTask, ScoredCandidate | None]],
    time_limit_s: float,
    time_budget_s: float,
    lp_done: threading.Event | None = None,
) -> _Packed | None:
    """The MIP stage on the placed-replicas model from ``start`` (a plan of the model), or None without HiGHS:
    the configuration LP's bound, then the searches at it (``_race_at``), or the compact MIP alone where the LP
    does not apply (pipeline options). ``lp_done`` is set once the LP is done."""
    if time_limit_s <= 0.05 or not highs_available():
        return None
    initial: dict[tuple[int, int], KindSolution] = {}
    start_slots = _slots(state, groups, kinds, start)
    if start_slots is None:
        return None
    for ki, oi, node_gids in start_slots:
        solution = initial.setdefault((ki, oi), KindSolution())
        solution.count += 1
        pools_here = dict(kinds.kinds[ki].options[oi].nodes)
        for node, gids in node_gids:
            solution.stages[node] = solution.stages.get(node, 0) + 1
            for g in gids:
                solution.ranks[g] = solution.ranks.get(g, 0) + 1
            counted = solution.pools.setdefault(node, [(0, members_) for members_ in pools_here.get(node, [])])
            for i, (count, members_) in enumerate(counted):
                if set(gids) <= set(members_):
                    counted[i] = (count + 1, members_)
                    break
    device_units = {g: _units_down(free) for g, free in enumerate(state.free)}
    host_units = {node: _units_down(free) for node, free in state.host_free.items()}
    start_units = sum(kinds.kinds[ki].weight for ki, _, _ in start_slots)
    deadline = time.perf_counter() + time_limit_s
    # First the configuration LP (packing_config.py): its bound proves most starts optimal at once.
    node_limit = max(1, round(NODES_PER_BUDGET_SECOND * time_budget_s))
    lp = configuration_lp(kinds.kinds, device_units, host_units, initial, start_units, time_limit_s * CONFIG_LP_SHARE)
    if lp_done is not None:
        lp_done.set()
    if lp is None:  # pipeline options: the compact MIP alone, from the start
        result = solve_packing(kinds.kinds, device_units, host_units, initial, time_limit_s, node_limit)
        if result is None:
            return None
    else:
        bound = lp.bound
        result = PackingResult(initial, start_units, max(bound, start_units), bound <= start_units)
        # Below the bound: a placement at it is looked for by two searches side by side, the MIP over the
        # patterns near the bound and the compact MIP with the LP's duals as cuts (each finds placements the
        # other does not, within the budget); where either proves there is none, the bound drops by one.
        target_deadline = time.perf_counter() + (deadline - time.perf_counter()) * TARGET_WALL_SHARE
        while bound > result.value and target_deadline - time.perf_counter() > 0.05:
            found, infeasible = _race_at(lp, kinds.kinds, device_units, host_units, bound, target_deadline, node_limit)
            if found is not None:
                result = found
                break
            if not infeasible:
                break  # neither settled it in time
            bound -= 1
        if result.value < bound and deadline - time.perf_counter() > 0.05:
            # what is left: the compact MIP from the start, for any placement better than it
            improved = solve_packing(kinds.kinds, device_units, host_units, initial, deadline - time.perf_counter(),
                                     node_limit, cuts=lp.cuts)  # fmt: skip
            if improved is not None and improved.value > result.value:
                result = improved
        result = PackingResult(result.solutions, result.value, max(bound, result.value), result.value >= bound)
    if result.solutions is initial:  # the start stands
        return _Packed(result.value, result.bound, result.optimal, _deal(state, groups, kinds, start_slots))
    slots: list[tuple[int, int, list[tuple[int, list[int]]]]] = []
    for (ki, oi), solution in sorted(result.solutions.items()):
        option = groups[kinds.members[ki][0]].options[oi]
        for node_gids in _decompose(
            state.cluster, option, solution.count, solution.stages, solution.pools, solution.ranks
        ):
            slots.append((ki, oi, node_gids))
    return _Packed(result.value, result.bound, result.optimal, _deal(state, groups, kinds, slots))


def _race_at(
    lp: ConfigurationLP,
    kinds: list[PackingKind],
    device_units: dict[int, int],
    host_units: dict[int, int],
    target: int,
    deadline: float,
    node_limit: int,
) -> tuple[PackingResult | None, bool]:
    """A placement worth ``target`` from whichever of the two searches settles it first (the other is cancelled):
    (the placement, False), (None, True) where one proved there is none, (None, False) where neither settled it.
    Where both have found one by the time the compact MIP ends, the pattern search's is taken."""
    race = Race()

    def patterns() -> AtTarget | None:
        found = search_at(lp, target, deadline, race)
        if found is not None:
            race.stop()
        return found

    by_patterns_future = _in_thread(patterns)
    try:
        compact = solve_packing(kinds, device_units, host_units, None, deadline - time.perf_counter(), node_limit,
                                target=target, cuts=lp.cuts, race=race)  # fmt: skip
    except BaseException:
        race.stop()  # not waiting for the other search's time limit to raise this
        raise
    if compact is not None:  # settled: a placement at the target, or a proof that there is none
        race.stop()
        # HiGHS takes the interrupt only between its phases (a sub-MIP heuristic runs on: up to 1.6 s measured),
        # so the pattern search is not waited for unless it is done already; it ends by its deadline.
        by_patterns = by_patterns_future.result() if by_patterns_future.done() else None
    else:
        by_patterns = by_patterns_future.result()
    if by_patterns is not None and by_patterns.solutions is not None:
        return PackingResult(by_patterns.solutions, by_patterns.value, target, True), False
    if compact is not None and compact.value >= target:
        return compact, False
    proven = (by_patterns is not None and by_patterns.infeasible) or (compact is not None and compact.bound < target)
    return None, proven


def _in_thread(function: Callable[..., T], *args: object) -> Future[T]:
    """``function(*args)`` in a thread of its own (HiGHS releases the GIL while it solves); the future's
    ``result()`` waits for it and raises what it raised."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="placement-mip")
    try:
        return pool.submit(function, *args)
    finally:
        pool.shutdown(wait=False)  # the task runs on; the pool takes no more


def _slots(
    state: ClusterState,
    groups: list[_Group],
    kinds: _Kinds,
    assignments: list[tuple[ReplicaTask, ScoredCandidate | None]],
) -> list[tuple[int, int, list[tuple[int, list[int]]]]] | None:
    """The placed replicas of a plan of the model as (kind, option index, node_gids); None if one is not a
    point of the model (the plans the solver makes always are)."""
    group_of = {id(task): gi for gi, group in enumerate(groups) for task in group.tasks}
    out = []
    for task, chosen in assignments:
        if chosen is None:
            continue
        gi = group_of[id(task)]
        option = _model_option(state, groups[gi], chosen.candidate)
        if option is None:
            return None
        out.append((kinds.kind_of[gi], groups[gi].options.index(option), chosen.candidate.node_gids))
    return out


def _redeal(
    state: ClusterState,
    groups: list[_Group],
    kinds: _Kinds,
    assignments: list[tuple[ReplicaTask, ScoredCandidate | None]],
) -> list[tuple[ReplicaTask, ScoredCandidate | None]]:
    """The same placed slots dealt again to the kinds' deployments (``assignments`` itself if a replica is not
    a point of the model)."""
    slots = _slots(state, groups, kinds, assignments)
    return assignments if slots is None else _deal(state, groups, kinds, slots)


def _deal(
    state: ClusterState,
    groups: list[_Group],
    kinds: _Kinds,
    slots: list[tuple[int, int, list[tuple[int, list[int]]]]],
) -> list[tuple[ReplicaTask, ScoredCandidate | None]]:
    """Deal each kind's placed replicas to its deployments. They are interchangeable for the count, not for
    availability: each goes to the deployment with the fewest replicas on its GPUs, then on its nodes (counting
    replicas placed earlier), then with the most still to place."""
    assignments: list[tuple[ReplicaTask, ScoredCandidate | None]] = []
    next_task = {gi: 0 for gi in range(len(groups))}
    on_gpu = {gi: dict(state.dep_gpus.get(group.tasks[0].prepared.name, {})) for gi, group in enumerate(groups)}
    on_node = {gi: dict(state.dep_nodes.get(group.tasks[0].prepared.name, {})) for gi, group in enumerate(groups)}
    for ki, oi, node_gids in slots:
        gids = [g for _, found in node_gids for g in found]
        nodes = [node for node, _ in node_gids]
        _, gi = min(
            (
                (
                    sum(on_gpu[member].get(g, 0) for g in gids),
                    sum(on_node[member].get(n, 0) for n in nodes),
                    next_task[member] - len(groups[member].tasks),
                ),
                member,
            )
            for member in kinds.members[ki]
            if next_task[member] < len(groups[member].tasks)
        )
        for g in gids:
            on_gpu[gi][g] = on_gpu[gi].get(g, 0) + 1
        for n in nodes:
            on_node[gi][n] = on_node[gi].get(n, 0) + 1
        candidate = groups[gi].options[oi].candidate(node_gids)
        assignments.append((groups[gi].tasks[next_task[gi]], ScoredCandidate(candidate, 0, ())))
        next_task[gi] += 1
    for gi, group in enumerate(groups):
        assignments.extend((task, None) for task in group.tasks[next_task[gi] :])
    return assignments


def _model_option(state: ClusterState, group: _Group, candidate: Candidate) -> _Option | None:
    """The model's option that ``candidate`` is an instance of, if any (the heuristic may take a larger TP
    than the model offers, or split a replica over nodes where the model does not); its ranks on a node must
    stay within one of the model's rank pools."""
    for option in group.options:
        if (option.class_id, option.engine, option.tp, option.pp) != (
            candidate.class_id,
            candidate.engine,
            candidate.tp,
            candidate.pp,
        ):
            continue
        eligible = dict(option.nodes)
        if all(
            node in eligible
            and any(set(gids) <= set(members) for members in _rank_pools(state, eligible[node], option.tp))
            for node, gids in candidate.node_gids
        ):
            return option
    return None


def _hint_assignment(
    state: ClusterState,
    heuristic: list[tuple[ReplicaTask, ScoredCandidate | None]],
    groups: list[_Group],
    weight: list[int],
) -> tuple[list[tuple[ReplicaTask, ScoredCandidate | None]], int]:
    """A feasible point of the model to start the search from, the better (placed replicas by priority) of:
    the heuristic's assignment, less the replicas the model cannot express, with unplaced replicas fitted into
    what room is left; and a packing of the most valuable, smallest replicas (as many as best fit decreasing
    packs); with its placed-replicas objective."""
    group_of = {id(task): gi for gi, group in enumerate(groups) for task in group.tasks}
    room = {g: _units_down(free) for g, free in enumerate(state.free)}
    host_room = {node: _units_down(free) for node, free in state.host_free.items()}
    out: list[tuple[ReplicaTask, ScoredCandidate | None]] = []
    for task, chosen in heuristic:
        option = None if chosen is None else _model_option(state, groups[group_of[id(task)]], chosen.candidate)
        if option is None:
            out.append((task, None))
            continue
        _take(option, chosen.candidate.node_gids, room, host_room)
        out.append((task, chosen))
    unplaced = [i for i, (_, chosen) in enumerate(out) if chosen is None]
    _place(state, out, sorted(unplaced, key=lambda i: _size(state, groups[group_of[id(out[i][0])]])), groups,
           group_of, room, host_room)  # fmt: skip
    packed = _pack(state, [task for task, _ in heuristic], groups, group_of, weight)

    def value(assignments: list[tuple[ReplicaTask, ScoredCandidate | None]]) -> int:
        return sum(weight[group_of[id(task)]] for task, chosen in assignments if chosen is not None)

    return max((out, value(out)), (packed, value(packed)), key=lambda pair: pair[1])


def _take(option: _Option, node_gids: list[tuple[int, list[int]]], room: dict, host_room: dict) -> None:
    for node, gids in node_gids:
        if option.class_id is None:
            host_room[node] = host_room.get(node, 0) - _units_up(option.claim)
        for g in gids:
            room[g] -= _units_up(option.claim)


def _size(state: ClusterState, group: _Group) -> float:
    """A replica's smallest share of the devices it can go to (ranks × claim over the largest free memory)."""
    sizes = []
    for option in group.options:
        if option.class_id is None:
            largest = max((_units_down(state.host_free.get(node)) for node, _ in option.nodes), default=0)
        else:
            largest = max((_units_down(state.free[g]) for _, gids in option.nodes for g in gids), default=0)
        sizes.append(option.tp * option.pp * _units_up(option.claim) / max(1, largest))
    return min(sizes, default=float("inf"))


def _pack(
    state: ClusterState,
    tasks: list[ReplicaTask],
    groups: list[_Group],
    group_of: dict[int, int],
    weight: list[int],
) -> list[tuple[ReplicaTask, ScoredCandidate | None]]:
    """The most replicas best fit decreasing packs, taking them by priority, then smallest first: the largest
    ``k`` (binary search) whose ``k`` first replicas it packs all of, then whatever else fits after them."""
    size = [_size(state, group) for group in groups]
    ranked = sorted(range(len(tasks)), key=lambda i: (-weight[group_of[id(tasks[i])]], size[group_of[id(tasks[i])]]))

    def attempt(k: int) -> tuple[bool, list, dict, dict]:
        out: list[tuple[ReplicaTask, ScoredCandidate | None]] = [(task, None) for task in tasks]
        room = {g: _units_down(free) for g, free in enumerate(state.free)}
        host_room = {node: _units_down(free) for node, free in state.host_free.items()}
        chosen = sorted(ranked[:k], key=lambda i: -size[group_of[id(tasks[i])]])
        complete = _place(state, out, chosen, groups, group_of, room, host_room) == len(chosen)
        return complete, out, room, host_room

    low, high = 0, len(tasks)
    best = attempt(0)
    while low < high:
        middle = (low + high + 1) // 2
        result = attempt(middle)
        if result[0]:
            low, best = middle, result
        else:
            high = middle - 1
    _, out, room, host_room = best
    _place(state, out, ranked[low:], groups, group_of, room, host_room)
    return out


def _place(
    state: ClusterState,
    assignments: list[tuple[ReplicaTask, ScoredCandidate | None]],
    order: list[int],
    groups: list[_Group],
    group_of: dict[int, int],
    room: dict[int, int],
    host_room: dict[int, int],
) -> int:
    """Place ``assignments[i]`` for ``i`` in ``order`` (in place), each where it leaves the least room (single
    node options only). Returns how many were placed."""
    placed = 0
    for i in order:
        task = assignments[i][0]
        best: tuple[int, _Option, list[tuple[int, list[int]]]] | None = None
        for option in groups[group_of[id(task)]].options:
            if option.pp != 1:
                continue
            claim = _units_up(option.claim)
            for node, gids in option.nodes:
                if option.class_id is None:
                    left = host_room.get(node, 0) - claim
                    if left >= 0 and (best is None or left < best[0]):
                        best = (left, option, [(node, [])])
                    continue
                for members in _rank_pools(state, gids, option.tp):
                    fitting = sorted((g for g in members if room[g] >= claim), key=lambda g: room[g])
                    if len(fitting) >= option.tp:
                        chosen_gids = fitting[: option.tp]
                        left = sum(room[g] - claim for g in chosen_gids)
                        if best is None or left < best[0]:
                            best = (left, option, [(node, sorted(chosen_gids))])
        if best is None:
            continue
        _, option, node_gids = best
        _take(option, node_gids, room, host_room)
        assignments[i] = (task, ScoredCandidate(option.candidate(node_gids), 0, ()))
        placed += 1
    return placed


def _hint_from(
    model,
    heuristic: list[tuple[ReplicaTask, ScoredCandidate | None]],
    groups: list[_Group],
    extract: list,
    placed_vars: list,
    device_used: dict[int, object],
    node_used: dict[int, object],
    excess_of: dict[tuple[int, int], tuple[object, int]],
    gpu_excess_of: dict[tuple[int, int], tuple[object, int]],
    buckets: list[list[int]],
    pools: dict[tuple[int, int], list[tuple[object, list[int]]]],
) -> None:
    """The heuristic's assignment as a complete CP-SAT hint: the search starts from a feasible solution.

    Identical devices are re-ordered the way the symmetry-breaking constraints want (heaviest first)."""
    group_of = {id(task): gi for gi, group in enumerate(groups) for task in group.tasks}
    chosen_by_key: dict[tuple[int, int | None, int, int], list] = {}
    for task, chosen in heuristic:
        if chosen is not None:
            c = chosen.candidate
            chosen_by_key.setdefault((group_of[id(task)], c.class_id, c.engine, c.tp, c.pp), []).append(c.node_gids)
    placed = [0] * len(groups)
    ei_of = {id(c): ei for ei, (_, _, c, _, _) in enumerate(extract)}
    z_counts: dict[tuple[int, int], int] = {}
    device_ranks: dict[int, int] = {}
    node_stages: dict[int, int] = {}
    group_node: dict[tuple[int, int], int] = {}
    for gi, option, c, ys, zs in extract:
        key = (gi, option.class_id, option.engine, option.tp, option.pp)
        chosen = chosen_by_key.pop(key, [])
        if not all(node in ys and all(g in zs for g in gids) for ng in chosen for node, gids in ng):
            chosen = []
        placed[gi] += len(chosen)
        model.AddHint(c, len(chosen))
        for node, y in ys.items():
            count = sum(1 for ng in chosen for n, _ in ng if n == node)
            model.AddHint(y, count)
            for pool, members in pools.get((ei_of[id(c)], node), []):
                if pool is not y:
                    inside = sum(1 for ng in chosen for n, gids in ng if n == node and set(gids) <= set(members))
                    model.AddHint(pool, inside)
            node_stages[node] = node_stages.get(node, 0) + count
            group_node[(gi, node)] = group_node.get((gi, node), 0) + count
        for g in zs:
            count = sum(1 for ng in chosen for _, gids in ng if g in gids)
            z_counts[(ei_of[id(c)], g)] = count
    # permute the contents of identical devices so that loads are non-increasing in index order
    z_vars = {(ei_of[id(c)], g): z for _, _, c, _, zs in extract for g, z in zs.items()}
    claim_of = {ei_of[id(c)]: _units_up(option.claim) for _, option, c, _, _ in extract}
    for members in buckets:
        contents = [{ei: n for (ei, g), n in z_counts.items() if g == member} for member in members]
        contents.sort(key=lambda content: -sum(claim_of[ei] * n for ei, n in content.items()))
        for member, content in zip(members, contents, strict=True):
            for key in [key for key in z_counts if key[1] == member]:
                z_counts[key] = content.get(key[0], 0)
    for key, z in z_vars.items():
        count = z_counts.get(key, 0)
        model.AddHint(z, count)
        device_ranks[key[1]] = device_ranks.get(key[1], 0) + count
    for gi, var in enumerate(placed_vars):
        model.AddHint(var, placed[gi])
    for g, var in device_used.items():
        model.AddHint(var, 1 if device_ranks.get(g) else 0)
    for node, var in node_used.items():
        model.AddHint(var, 1 if node_stages.get(node) else 0)
    for (gi, node), (var, existing) in excess_of.items():
        model.AddHint(var, max(0, group_node.get((gi, node), 0) + existing - 1))
    group_device: dict[tuple[int, int], int] = {}
    for (ei, g), count in z_counts.items():
        key = (extract[ei][0], g)
        group_device[key] = group_device.get(key, 0) + count
    for (gi, g), (var, existing) in gpu_excess_of.items():
        model.AddHint(var, max(0, group_device.get((gi, g), 0) + existing - 1))


def _break_device_symmetry(
    model, state: ClusterState, load: dict[int, list], eligibility: dict[int, list], device_used: dict[int, object]
) -> list[list[int]]:
    """Identical unused devices of one node (class, free, group, eligibility) are interchangeable: order them
    by the bytes they receive."""
    cluster = state.cluster
    buckets: dict[tuple, list[int]] = {}
    for g in load:
        if state.users[g]:
            continue
        signature = (
            cluster.dev_node[g],
            cluster.dev_class[g],
            state.free[g],
            cluster.dev_group[g],
            tuple(eligibility[g]),
        )
        buckets.setdefault(signature, []).append(g)
    for members in buckets.values():
        members.sort(key=lambda g: cluster.dev_index[g])
        for first, second in itertools.pairwise(members):
            model.Add(sum(claim * z for z, claim in load[first]) >= sum(claim * z for z, claim in load[second]))
            if first in device_used and second in device_used:
                model.Add(device_used[first] >= device_used[second])
    return [members for members in buckets.values() if len(members) > 1]


def _rank_pools(state: ClusterState, gids: list[int], tp: int) -> list[list[int]]:
    """The device pools a replica's TP ranks must stay within on one node: each topology group that has
    ``tp`` eligible devices (an NVLink clique), or — when no group is big enough — all eligible devices."""
    if tp == 1:
        return [gids]
    groups: dict[str, list[int]] = {}
    for g in gids:
        group = state.cluster.dev_group[g]
        if group is not None:
            groups.setdefault(group, []).append(g)
    big_enough = [members for _, members in sorted(groups.items()) if len(members) >= tp]
    return big_enough or [gids]


def _decompose(
    cluster,
    option: _Option,
    count: int,
    stages: dict[int, int],
    pools: dict[int, list[tuple[int, list[int]]]],
    ranks: dict[int, int],
) -> list[list[tuple[int, list[int]]]]:
    """Turn per-node stage counts, per-pool stage counts and per-device rank counts into ``count`` replicas.

    Largest remaining first at every level: with ``Σ ranks = TP·stages`` and ``ranks ≤ stages`` in a pool,
    taking the TP devices with the most remaining ranks always leaves a decomposable rest.
    """
    if option.class_id is None:
        out = []
        for node in sorted(stages):
            out.extend([[(node, [])]] * stages[node])
        return out
    stages = dict(stages)
    pools = {node: [[n, list(members)] for n, members in node_pools] for node, node_pools in pools.items()}
    ranks = dict(ranks)
    replicas = []
    for _ in range(count):
        nodes = sorted((n for n in stages if stages[n] > 0), key=lambda n: (-stages[n], n))[: option.pp]
        node_gids = []
        for node in sorted(nodes):
            stages[node] -= 1
            pool = max((p for p in pools[node] if p[0] > 0), key=lambda p: (p[0], -min(p[1])))
            pool[0] -= 1
            chosen = sorted((g for g in pool[1] if ranks[g] > 0), key=lambda g: (-ranks[g], cluster.dev_index[g]))
            chosen = chosen[: option.tp]
            for g in chosen:
                ranks[g] -= 1
            node_gids.append((node, sorted(chosen, key=lambda g: cluster.dev_index[g])))
        replicas.append(node_gids)
    return replicas


def run_heuristic(
    state: ClusterState, tasks: list[ReplicaTask], strategy: Strategy
) -> list[tuple[ReplicaTask, ScoredCandidate | None]]:
    placer = Placer(state, ScorePipeline(strategy), strategy)
    return placer.place_all(tasks)


def _value(
    assignments: list[tuple[ReplicaTask, ScoredCandidate | None]],
    tier: dict[int, int],
    state: ClusterState,
    strategy: Strategy,
    weights: tuple[int, int, int, int, int],
) -> int:
    """The solver's objective for a given assignment (to compare the heuristic's on equal terms)."""
    latency_weight, gpu_spread_weight, spread_weight, device_weight, node_weight = weights
    value = 0
    devices: set[int] = set()
    nodes: set[int] = set()
    dep_nodes: dict[tuple[str, int], int] = {}
    dep_gpus: dict[tuple[str, int], int] = {}
    spreading: set[str] = set()
    for task, chosen in assignments:
        if chosen is None:
            continue
        c = chosen.candidate
        value += tier[task.prepared.deployment.priority] - c.tp * c.pp
        if c.class_id is None and task.prepared.deployment.mode == "latency":
            value -= latency_weight
        for node, gids in c.node_gids:
            if not state.node_users[node]:
                nodes.add(node)
            key = (task.prepared.name, node)
            dep_nodes[key] = dep_nodes.get(key, 0) + 1
            for g in gids:
                dep_gpus[(task.prepared.name, g)] = dep_gpus.get((task.prepared.name, g), 0) + 1
            devices.update(g for g in gids if not state.users[g])
        if spreads_replicas(task.prepared.deployment.pack_replicas, strategy):
            spreading.add(task.prepared.name)
    value -= device_weight * len(devices) + node_weight * len(nodes)
    for (deployment, node), count in dep_nodes.items():
        if deployment in spreading:
            existing = state.dep_nodes.get(deployment, {}).get(node, 0)
            value -= spread_weight * max(0, count + existing - 1)
    for (deployment, g), count in dep_gpus.items():
        if deployment in spreading:
            existing = state.dep_gpus.get(deployment, {}).get(g, 0)
            value -= gpu_spread_weight * max(0, count + existing - 1)
    return value
