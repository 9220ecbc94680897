"""The placed-replicas problem as a compact mixed-integer program for HiGHS.

CP-SAT (``solver.py``) proves small placements optimal quickly, but on tight oversubscribed packings of 40–64
GPUs its search can stall one or two replicas short of the optimum, where a MIP solver's LP relaxation, cuts and
heuristics reach it. This module states the same model as the CP-SAT one's placed-replicas part, with one change
that only a MIP needs: deployments that are interchangeable for that objective (same priority and the same
options: device class, TP × PP, claim, eligible devices) are one *kind* with their replica counts added, which
removes their symmetry. Any solution of one is a solution of the other (the kind's replicas are dealt to its
deployments afterwards), so values and bounds carry over.

Per kind and option: a count ``c``; per node ``y`` (pipeline stages there), per rank pool ``p`` and per device
``z`` (ranks there) with ``Σ_pool z = TP·p``, ``z ≤ p``, ``Σ p = y``, ``Σ y = PP·c`` (``y ≤ c`` for PP > 1); CPU
options put ``y`` replicas' host memory on a node. Device and host capacities in MiB, as the CP-SAT model.

Its own LP bound is weak (replicas split over devices); with the configuration LP's duals as cuts
(``DeviceValueCuts``, from ``packing_config.py``) it is as tight as that LP, and in target mode it looks for a
placement worth the LP's bound or proves there is none. A ``Race`` runs it beside the pattern search.

Pure: no I/O. HiGHS (highspy) is optional: without it ``solve_packing`` returns None.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field

import numpy as np

# Branch-and-bound nodes per second of budget: the work limit that stops HiGHS before the wall clock does on
# an unloaded machine (so the result depends on the input, not on the machine's load); the time limit stays
# the hard stop behind it.
NODES_PER_BUDGET_SECOND = 100


@dataclass
class PackingOption:
    """One option of a kind, as the MIP sees it (the solver's ``_Option`` reduced to what the model needs)."""

    class_id: int | None
    tp: int
    pp: int
    claim_units: int
    nodes: list[tuple[int, list[list[int]]]]  # (node, rank pools: devices a replica's ranks stay within)


@dataclass
class PackingKind:
    replicas: int
    weight: int  # objective weight of one replica (its priority tier, in units of the lowest)
    options: list[PackingOption]


@dataclass
class KindSolution:
    """How many replicas of one kind's option, and where: stages per node, per rank pool, ranks per device."""

    count: int = 0
    stages: dict[int, int] = field(default_factory=dict)
    pools: dict[int, list[tuple[int, list[int]]]] = field(default_factory=dict)
    ranks: dict[int, int] = field(default_factory=dict)


class Race:
    """HiGHS solves that run side by side (in threads: HiGHS releases the GIL) until one settles the question:
    ``stop`` cancels every solve registered, and one registered after that does not start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[object] = []
        self.stopped = False

    def enter(self, highs) -> bool:
        with self._lock:
            if self.stopped:
                return False
            highs.HandleUserInterrupt = True
            self._running.append(highs)
            return True

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            for highs in self._running:
                highs.cancelSolve()


def host_key(node: int) -> int:
    """The key of CPU node ``node``'s host memory where it sits among devices (GPU ids are ≥ 0)."""
    return -(node + 1)


@dataclass
class DeviceValueCuts:
    """Valid inequalities from the configuration LP's duals: at ``rank_values`` per rank of a (kind, option), no
    device's ranks are worth more than ``value_caps`` of it (the best pattern of its type, a knapsack optimum, so
    every integer point satisfies them); CPU nodes' host memory is keyed ``host_key(node)``."""

    rank_values: dict[tuple[int, int], float]
    value_caps: dict[int, float]


@dataclass
class PackingResult:
    solutions: dict[tuple[int, int], KindSolution]  # (kind, option) -> where its replicas go
    value: int  # Σ weight · placed
    bound: int  # proven upper bound of the value
    optimal: bool


_BANNER_LOCK = threading.Lock()
_banner_written = False


def _quiet_highs(highspy):
    """A silent ``Highs``. Its first construction in a process prints HiGHS's banner on the C-level standard
    output whatever the options (which would corrupt ``plan --json``), so that one runs with fd 1 on /dev/null."""
    global _banner_written
    with _BANNER_LOCK:
        if _banner_written:
            highs = highspy.Highs()
        else:
            sys.stdout.flush()
            saved = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
                highs = highspy.Highs()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(devnull)
            _banner_written = True
    highs.setOptionValue("output_flag", False)
    return highs


def highs_available() -> bool:
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return True


# per (kind, option): the columns whose sum is its replicas, its count column (pipelines only), its stage
# column per node, its pools' columns per node, its rank column per device
_Where = tuple[dict[int, float], int | None, dict[int, int], dict[int, list[tuple[int, list[int]]]], dict[int, int]]


class _Columns:
    def __init__(self) -> None:
        self.upper: list[float] = []
        self.cost: list[float] = []

    def add(self, upper: int, cost: float = 0.0) -> int:
        self.upper.append(float(upper))
        self.cost.append(cost)
        return len(self.upper) - 1


class _Rows:
    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.starts: list[int] = [0]
        self.index: list[int] = []
        self.value: list[float] = []

    def add(self, terms: dict[int, float], lower: float, upper: float) -> None:
        for column, coefficient in terms.items():
            self.index.append(column)
            self.value.append(float(coefficient))
        self.starts.append(len(self.index))
        self.lower.append(lower)
        self.upper.append(upper)


def solve_packing(
    kinds: list[PackingKind],
    device_units: dict[int, int],
    host_units: dict[int, int],
    start: dict[tuple[int, int], KindSolution] | None,
    time_limit_s: float,
    node_limit: int,
    target: int | None = None,
    cuts: DeviceValueCuts | None = None,
    race: Race | None = None,
) -> PackingResult | None:
    """Maximise Σ weight · placed replicas over ``kinds`` on devices with ``device_units`` MiB free (and CPU
    nodes with ``host_units``), from the feasible ``start``; None without HiGHS or without a solution.

    With ``target`` (the configuration LP's bound, rounded down) it looks for a placement worth exactly that, which
    is then optimal: the value ≥ target is a row (the start, below it, is not passed), HiGHS stops at the first such
    placement, and where it proves there is none the result has no solutions and ``bound = target - 1``. ``cuts``
    are the configuration LP's duals (see ``DeviceValueCuts``): with them HiGHS's LP bound is as tight as that LP.
    In a ``race``, it returns None when cancelled.
    """
    try:
        import highspy
    except ImportError:
        return None
    inf = highspy.kHighsInf
    columns = _Columns()
    rows = _Rows()
    load: dict[int, dict[int, float]] = {}
    host_load: dict[int, dict[int, float]] = {}
    where: dict[tuple[int, int], _Where] = {}
    objective_terms: dict[int, float] = {}
    for ki, kind in enumerate(kinds):
        weight = float(kind.weight)
        kind_terms: dict[int, float] = {}
        for oi, option in enumerate(kind.options):
            # The replicas of this option are Σ count_terms: the columns that each stand for whole replicas
            # carry the objective (a count column only where pipeline stages need one: y ≤ c).
            count_terms: dict[int, float] = {}
            c: int | None = None
            stages: dict[int, int] = {}
            pools: dict[int, list[tuple[int, list[int]]]] = {}
            ranks: dict[int, int] = {}
            if option.class_id is None:
                for node, _ in option.nodes:
                    cap = min(kind.replicas, host_units.get(node, 0) // max(1, option.claim_units))
                    y = columns.add(cap, weight)
                    stages[node] = y
                    count_terms[y] = 1.0
                    host_load.setdefault(node, {})[y] = option.claim_units
            elif option.tp == 1 and option.pp == 1:
                # one device per replica: its ranks are its replicas (stages and pools are read back from them)
                for _node, node_pools in option.nodes:
                    for members in node_pools:
                        for g in members:
                            cap = min(kind.replicas, device_units[g] // max(1, option.claim_units))
                            z = columns.add(cap, weight)
                            ranks[g] = z
                            count_terms[z] = 1.0
                            load.setdefault(g, {})[z] = option.claim_units
            else:
                c = columns.add(kind.replicas, weight) if option.pp > 1 else None
                for node, node_pools in option.nodes:
                    pool_columns = []
                    for members in node_pools:
                        p = columns.add(kind.replicas, 0.0 if c is not None else weight)
                        pool_columns.append((p, members))
                        rank_terms = {p: -float(option.tp)}
                        for g in members:
                            cap = min(kind.replicas, device_units[g] // max(1, option.claim_units))
                            z = columns.add(cap)
                            ranks[g] = z
                            rank_terms[z] = 1.0
                            load.setdefault(g, {})[z] = option.claim_units
                            rows.add({z: 1.0, p: -1.0}, -inf, 0.0)  # one rank of a replica per device
                        rows.add(rank_terms, 0.0, 0.0)  # a replica's ranks stay in one pool
                    pools[node] = pool_columns
                    if len(pool_columns) == 1:
                        y = pool_columns[0][0]  # the node's one pool holds its stages
                    else:
                        y = columns.add(kind.replicas)
                        rows.add({**{p: 1.0 for p, _ in pool_columns}, y: -1.0}, 0.0, 0.0)
                    stages[node] = y
                    if c is None:
                        count_terms.update({p: 1.0 for p, _ in pool_columns})
                    else:
                        rows.add({y: 1.0, c: -1.0}, -inf, 0.0)  # one stage of a replica per node
                if c is not None:
                    count_terms[c] = 1.0
                    rows.add({**{y: 1.0 for y in stages.values()}, c: -float(option.pp)}, 0.0, 0.0)
            where[(ki, oi)] = (count_terms, c, stages, pools, ranks)
            kind_terms.update(count_terms)
        rows.add(kind_terms, -inf, float(kind.replicas))
        objective_terms.update({column: weight for column in kind_terms})
    for g, terms in load.items():
        rows.add(terms, -inf, float(device_units[g]))
    for node, terms in host_load.items():
        rows.add(terms, -inf, float(host_units.get(node, 0)))
    if cuts is not None:
        worth: dict[int, dict[int, float]] = {}
        for (ki, oi), (_, _, stages, _, ranks) in where.items():
            value = cuts.rank_values.get((ki, oi), 0.0)
            if value <= 0:
                continue
            if kinds[ki].options[oi].class_id is None:
                for node, y in stages.items():
                    worth.setdefault(host_key(node), {})[y] = value
            else:
                for g, z in ranks.items():
                    worth.setdefault(g, {})[z] = value
        for key, terms in worth.items():
            if key in cuts.value_caps:
                rows.add(terms, -inf, cuts.value_caps[key] + 1e-6)
    if target is not None:
        rows.add(objective_terms, float(target), inf)
    if not columns.upper:
        return None

    lp = highspy.HighsLp()
    lp.num_col_ = len(columns.upper)
    lp.num_row_ = len(rows.lower)
    lp.col_cost_ = np.array(columns.cost)
    lp.col_lower_ = np.zeros(lp.num_col_)
    lp.col_upper_ = np.array(columns.upper)
    lp.row_lower_ = np.array(rows.lower)
    lp.row_upper_ = np.array(rows.upper)
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.array(rows.starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(rows.index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(rows.value)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * lp.num_col_
    highs = _quiet_highs(highspy)
    highs.setOptionValue("threads", 1)
    highs.setOptionValue("random_seed", 0)
    highs.setOptionValue("mip_rel_gap", 0.0)
    highs.setOptionValue("mip_abs_gap", 0.5)  # integer objective: a gap below one replica is closed
    highs.setOptionValue("time_limit", max(0.01, time_limit_s))
    highs.setOptionValue("mip_max_nodes", max(1, node_limit))
    if target is not None:
        highs.setOptionValue("objective_target", float(target) - 0.5)
    highs.passModel(lp)
    if start and target is None:
        solution = highspy.HighsSolution()
        solution.col_value = _start_values(lp.num_col_, where, start)
        solution.value_valid = True
        highs.setSolution(solution)
    if race is not None and not race.enter(highs):
        return None
    highs.run()
    if highs.getModelStatus() == highspy.HighsModelStatus.kInterrupt:
        return None
    info = highs.getInfo()
    if target is not None and highs.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
        return PackingResult({}, 0, target - 1, False)
    if info.primal_solution_status != 2:  # kSolutionStatusFeasible
        return None
    values = np.rint(highs.getSolution().col_value).astype(int)
    solutions: dict[tuple[int, int], KindSolution] = {}
    value = 0
    for (ki, oi), (count_terms, _, stages, pools, ranks) in where.items():
        count = sum(int(values[column]) for column in count_terms)
        value += kinds[ki].weight * count
        if not count:
            continue
        rank_counts = {g: int(values[z]) for g, z in ranks.items()}
        option = kinds[ki].options[oi]
        if option.class_id is not None and option.tp == 1 and option.pp == 1:
            devices = {node: [g for members in found for g in members] for node, found in option.nodes}
            node_ranks = {node: sum(rank_counts[g] for g in gids) for node, gids in devices.items()}
            pools_used = {node: [(node_ranks[node], gids)] for node, gids in devices.items()}
            solutions[(ki, oi)] = KindSolution(count, node_ranks, pools_used, rank_counts)
        else:
            solutions[(ki, oi)] = KindSolution(
                count,
                {node: int(values[y]) for node, y in stages.items()},
                {node: [(int(values[p]), members) for p, members in found] for node, found in pools.items()},
                rank_counts,
            )
    optimal = highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
    bound = value if optimal else int(np.floor(info.mip_dual_bound + 1e-6))
    return PackingResult(solutions, value, max(value, bound), optimal)


def _start_values(
    width: int,
    where: dict[tuple[int, int], _Where],
    start: dict[tuple[int, int], KindSolution],
) -> np.ndarray:
    values = np.zeros(width)
    for key, solution in start.items():
        _, c, stages, pools, ranks = where[key]
        if c is not None:
            values[c] = solution.count
        for node, y in stages.items():
            values[y] = solution.stages.get(node, 0)
        for node, found in pools.items():
            given = {tuple(members): count for count, members in solution.pools.get(node, [])}
            for p, members in found:
                values[p] = given.get(tuple(members), 0)
        for g, z in ranks.items():
            values[z] = solution.ranks.get(g, 0)
    return values
