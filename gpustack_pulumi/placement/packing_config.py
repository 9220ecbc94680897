"""Placed replicas by configurations: the configuration LP's bound, and the placements near it.

The compact MIP (``packing_mip.py``) counts ranks per device; its LP relaxation splits replicas over devices, so
on tight oversubscribed packings of 40–64 GPUs its bound stays a replica or two above the optimum and HiGHS can
spend the whole budget without finding or proving it. The configuration (Gilmore–Gomory) LP is much tighter:
devices with the same free MiB and the same eligible options form a *type*, a *pattern* is what one device of a
type holds (ranks per option, within its MiB), and the LP chooses how many devices of each type use each pattern.
On the generated cases of ``benchmarks/exact_optimum_bench.py`` whose optimum is known, its bound, rounded down,
is the optimum.

``configuration_lp`` solves it by column generation (HiGHS's simplex for the master, an exact bounded knapsack
per type for pricing). For any duals ``π ≥ 0`` of the rank rows, ``D(π) = Σ_kind replicas·max(0, max_option
weight − TP·π) + Σ_type devices·knapsack(π)`` bounds every placement from above (weak duality), and a placement
worth ``target`` uses only patterns whose reduced cost is at most ``gap = D(π) − target`` (its value is ``D(π)``
minus the reduced costs of what it uses). ``search_at`` enumerates those patterns exactly and solves a MIP over
them, with the devices of each node's rank pools put back (a TP replica's ranks on distinct devices of one pool):
it finds a placement worth ``target`` or proves there is none. Where the gap holds more than ``MAX_PATTERNS``,
the patterns of a smaller gap are searched instead (a placement found is one; none found proves nothing).
Options whose dual is 0 (*free*: any number of them is within the gap) are left out of the patterns and get
per-device variables in the room a pattern leaves.
The duals also give the compact MIP its cuts (``DeviceValueCuts``): no device's ranks are worth more than its
type's best pattern.

Pipeline-parallel options (a replica's stages on several nodes) are not modelled here: with one,
``configuration_lp`` returns None and the compact MIP stands alone. Pure: no I/O; HiGHS (highspy) optional.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from gpustack_pulumi.placement.packing_mip import (
    DeviceValueCuts,
    KindSolution,
    PackingKind,
    Race,
    _quiet_highs,
    host_key,
)

# A column improves the master LP only if its reduced cost exceeds this (duals are floats).
PRICING_TOLERANCE = 1e-7
# Slack added to the dual bound before rounding it down to whole replicas (float error of the duals).
BOUND_SLACK = 1e-6
# At most this many patterns in the MIP over them (more would not fit the budget; see the gap halving below).
# Measured on the benchmark's hardest cases: with 1500, a placement at the bound in 0.05-1.15 s; with 3000 and no
# halving, 2.9-20 s or none where 5,800-23,800 patterns were within the gap.
MAX_PATTERNS = 1500
# More columns than this in the MIP over them (patterns × cells, free items × devices) and it gives up too.
MAX_COLUMNS = 20000


@dataclass
class _Item:
    """One option of one kind, as rank items on devices."""

    kind: int
    option: int
    weight: int
    replicas: int
    claim: int
    tp: int
    host: bool  # a CPU option: its "devices" are nodes' host memory
    pools: list[tuple[int, list[int]]]  # (node, devices a replica's ranks stay within); TP 1: a node's devices


@dataclass
class _Type:
    capacity: int
    items: list[int]  # item indices eligible on it
    devices: list[int]  # device keys
    bounds: list[int] = field(default_factory=list)  # per item: ranks one device can hold


class _Knapsack:
    """Bounded knapsack over one type's MiB: ``best[i][c]`` is the most value items ``i..`` give in ``c`` MiB."""

    def __init__(self, capacity: int, claims: list[int], bounds: list[int], values: list[float]) -> None:
        self.capacity = capacity
        self.claims = claims
        self.bounds = bounds
        self.values = values
        n = len(claims)
        best = [np.zeros(capacity + 1)]
        for i in reversed(range(n)):
            after = best[-1]
            here = after.copy()
            if values[i] > 0:
                for j in range(1, bounds[i] + 1):
                    shift = j * claims[i]
                    if shift > capacity:
                        break
                    np.maximum(here[shift:], after[: capacity + 1 - shift] + j * values[i], out=here[shift:])
            best.append(here)
        best.reverse()
        self.best = best  # best[i]: items i.. ; best[n] = 0

    @property
    def value(self) -> float:
        return float(self.best[0][self.capacity])

    def argmax(self) -> list[int]:
        counts = []
        room = self.capacity
        for i in range(len(self.claims)):
            target = self.best[i][room]
            chosen = 0
            if self.values[i] > 0:
                for j in range(min(self.bounds[i], room // self.claims[i]), 0, -1):
                    rest = room - j * self.claims[i]
                    if abs(self.best[i + 1][rest] + j * self.values[i] - target) <= 1e-9 * max(1.0, abs(target)):
                        chosen = j
                        break
            counts.append(chosen)
            room -= chosen * self.claims[i]
        return counts

    def near(self, floor: float, limit: int, allowed: list[bool]) -> list[list[int]] | None:
        """Every pattern worth at least ``floor`` of the ``allowed`` items with a value (the others are left out),
        or None past ``limit`` patterns. ``best`` bounds what the rest can add, so no branch is explored in vain."""
        found: list[list[int]] = []
        n = len(self.claims)
        counts = [0] * n

        def visit(i: int, room: int, value: float) -> bool:
            if value + self.best[i][room] < floor - 1e-9:
                return True
            if i == n:
                found.append(counts.copy())
                return len(found) <= limit
            top = min(self.bounds[i], room // self.claims[i]) if allowed[i] and self.values[i] > 0 else 0
            for j in range(top, -1, -1):
                counts[i] = j
                if not visit(i + 1, room - j * self.claims[i], value + j * self.values[i]):
                    return False
            counts[i] = 0
            return True

        return found if visit(0, self.capacity, 0.0) else None


def _items_and_types(
    kinds: list[PackingKind], device_units: dict[int, int], host_units: dict[int, int]
) -> tuple[list[_Item], list[_Type], dict[int, int]] | None:
    """The rank items, device types, each device's capacity and node; None where a pipeline option exists."""
    items: list[_Item] = []
    eligible: dict[int, list[int]] = {}  # device key -> items
    capacity: dict[int, int] = {}
    node_of: dict[int, int] = {}
    for ki, kind in enumerate(kinds):
        for oi, option in enumerate(kind.options):
            if option.pp > 1:
                return None
            host = option.class_id is None
            index = len(items)
            if option.tp > 1:
                pools = [(node, members) for node, found in option.nodes for members in found]
            else:  # one pool per node: its eligible devices (as the compact MIP reads TP = 1 solutions)
                pools = [(node, [g for members in found for g in members]) for node, found in option.nodes]
            items.append(_Item(ki, oi, kind.weight, kind.replicas, max(1, option.claim_units), option.tp, host, pools))
            for node, found in option.nodes:
                keys = [host_key(node)] if host else sorted({g for members in found for g in members})
                for key in keys:
                    eligible.setdefault(key, []).append(index)
                    capacity[key] = host_units.get(node, 0) if host else device_units[key]
                    node_of[key] = node
    types: dict[tuple, _Type] = {}
    for key in sorted(eligible):
        fitting = [i for i in eligible[key] if items[i].claim <= capacity[key]]
        if not fitting:
            continue
        signature = (capacity[key], tuple(fitting))
        if signature not in types:
            bounds = [min(items[i].replicas, capacity[key] // items[i].claim) for i in fitting]
            types[signature] = _Type(capacity[key], fitting, [], bounds)
        types[signature].devices.append(key)
    return items, list(types.values()), node_of


@dataclass
class _Master:
    """The configuration LP: columns x_i (replicas of item i), then λ (devices of a type using a pattern)."""

    items: list[_Item]
    types: list[_Type]
    kinds: int
    highs: object
    patterns: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # (type, counts per type item)
    known: set[tuple[int, tuple[int, ...]]] = field(default_factory=set)

    # rows: kinds 0..K-1, then items K..K+I-1 (TP·x_i − supply ≤ 0), then types
    def item_row(self, i: int) -> int:
        return self.kinds + i

    def type_row(self, t: int) -> int:
        return self.kinds + len(self.items) + t

    def add(self, t: int, counts: tuple[int, ...]) -> bool:
        if (t, counts) in self.known or not any(counts):
            return False
        self.known.add((t, counts))
        self.patterns.append((t, counts))
        rows = [self.type_row(t)] + [self.item_row(i) for i, a in zip(self.types[t].items, counts, strict=True) if a]
        values = [1.0] + [-float(a) for a in counts if a]
        self.highs.addCol(0.0, 0.0, float(len(self.types[t].devices)), len(rows), np.array(rows, dtype=np.int32),
                          np.array(values))  # fmt: skip
        return True


def _duals(master: _Master) -> np.ndarray:
    """π ≥ 0 of the item rows (the master minimises −value, so a binding ≤ row has a dual ≤ 0)."""
    row_dual = np.array(master.highs.getSolution().row_dual)
    return np.maximum(0.0, -row_dual[master.kinds : master.kinds + len(master.items)])


def _certificate(
    items: list[_Item], types: list[_Type], kinds: int, pi: np.ndarray
) -> tuple[float, list[_Knapsack], list[float]]:
    """D(π) and, for it, each type's knapsack and each kind's dual."""
    sigma = [0.0] * kinds
    for i, item in enumerate(items):
        sigma[item.kind] = max(sigma[item.kind], item.weight - item.tp * pi[i])
    replicas = {item.kind: item.replicas for item in items}
    knapsacks = [
        _Knapsack(t.capacity, [items[i].claim for i in t.items], t.bounds, [float(pi[i]) for i in t.items])
        for t in types
    ]
    value = sum(replicas[k] * sigma[k] for k in replicas) + sum(
        len(t.devices) * sack.value for t, sack in zip(types, knapsacks, strict=True)
    )
    return value, knapsacks, sigma


@dataclass
class ConfigResult:
    """What the configuration stage found: a placement worth more than the start (or None), and the bound."""

    solutions: dict[tuple[int, int], KindSolution] | None
    value: int  # of ``solutions``, else of the start
    bound: int  # proven upper bound of the value (the configuration LP's dual bound, or the MIP's proof)
    optimal: bool
    iterations: int = 0
    patterns: int = 0


def _start_patterns(
    items: list[_Item], types: list[_Type], start: dict[tuple[int, int], KindSolution] | None
) -> list[tuple[int, tuple[int, ...]]]:
    """Each device's pattern in the start, and per type and item the pattern holding as many of it as fit."""
    index = {(item.kind, item.option): i for i, item in enumerate(items)}
    held: dict[int, dict[int, int]] = {}  # device key -> item -> ranks
    for key, solution in (start or {}).items():
        i = index.get(key)
        if i is None:
            continue
        if items[i].host:
            for node, count in solution.stages.items():
                if count:
                    held.setdefault(host_key(node), {})[i] = count
        else:
            for g, count in solution.ranks.items():
                if count:
                    held.setdefault(g, {})[i] = count
    out = []
    for t, dtype in enumerate(types):
        position = {i: n for n, i in enumerate(dtype.items)}
        for key in dtype.devices:
            if key in held:
                counts = [0] * len(dtype.items)
                for i, count in held[key].items():
                    counts[position[i]] = count
                out.append((t, tuple(counts)))
        for n in range(len(dtype.items)):
            counts = [0] * len(dtype.items)
            counts[n] = dtype.bounds[n]
            out.append((t, tuple(counts)))
    return out


@dataclass
class ConfigurationLP:
    """The configuration LP solved: its bound (rounded down), the duals behind it (as cuts for the compact MIP)
    and what ``search_at`` needs to enumerate the patterns near it."""

    bound: int
    dual_bound: float  # D(π), before rounding
    cuts: DeviceValueCuts
    iterations: int
    items: list[_Item]
    types: list[_Type]
    kinds: int
    node_of: dict[int, int]
    pi: np.ndarray
    knapsacks: list[_Knapsack]  # per type, at ``pi``
    sigma: list[float]  # per kind, at ``pi``


def configuration_lp(
    kinds: list[PackingKind],
    device_units: dict[int, int],
    host_units: dict[int, int],
    start: dict[tuple[int, int], KindSolution] | None,
    start_value: int,
    time_limit_s: float,
) -> ConfigurationLP | None:
    """Column generation from the start's patterns until no column improves the LP (or the bound proves the
    start optimal, or time runs out); None where it does not apply (pipeline options, no HiGHS, no time)."""
    try:
        import highspy
    except ImportError:
        return None
    deadline = time.perf_counter() + time_limit_s
    built = _items_and_types(kinds, device_units, host_units)
    if built is None or not built[1]:
        return None
    items, types, node_of = built
    n_kinds = len(kinds)
    inf = highspy.kHighsInf
    highs = _quiet_highs(highspy)
    highs.setOptionValue("threads", 1)
    highs.setOptionValue("random_seed", 0)
    for kind in kinds:
        highs.addRow(-inf, float(kind.replicas), 0, np.array([], dtype=np.int32), np.array([]))
    for _ in items:
        highs.addRow(-inf, 0.0, 0, np.array([], dtype=np.int32), np.array([]))
    for dtype in types:
        highs.addRow(-inf, float(len(dtype.devices)), 0, np.array([], dtype=np.int32), np.array([]))
    master = _Master(items, types, n_kinds, highs)
    for i, item in enumerate(items):
        rows = np.array([item.kind, master.item_row(i)], dtype=np.int32)
        highs.addCol(-float(item.weight), 0.0, float(item.replicas), 2, rows, np.array([1.0, float(item.tp)]))
    for t, counts in _start_patterns(items, types, start):
        master.add(t, counts)

    best_bound = math.inf
    best: tuple[np.ndarray, list[_Knapsack], list[float]] | None = None
    iterations = 0
    while time.perf_counter() <= deadline:
        highs.run()
        iterations += 1
        pi = _duals(master)
        value, knapsacks, sigma = _certificate(items, types, n_kinds, pi)
        if value < best_bound:
            best_bound, best = value, (pi, knapsacks, sigma)
        if math.floor(best_bound + BOUND_SLACK) <= start_value:
            break  # the start is proven optimal
        row_dual = np.array(highs.getSolution().row_dual)
        added = False
        for t, sack in enumerate(knapsacks):
            mu = max(0.0, -row_dual[master.type_row(t)])
            if sack.value - mu > PRICING_TOLERANCE:
                added |= master.add(t, tuple(sack.argmax()))
        if not added:
            break
    if best is None:
        return None
    pi, knapsacks, sigma = best
    cuts = DeviceValueCuts(
        {(item.kind, item.option): float(pi[i]) for i, item in enumerate(items)},
        {key: sack.value for dtype, sack in zip(types, knapsacks, strict=True) for key in dtype.devices},
    )
    bound = math.floor(best_bound + BOUND_SLACK)
    return ConfigurationLP(bound, best_bound, cuts, iterations, items, types, n_kinds, node_of, pi, knapsacks, sigma)


@dataclass
class AtTarget:
    """What a search at a target found: a placement worth at least it, or a proof that there is none."""

    solutions: dict[tuple[int, int], KindSolution] | None
    value: int
    infeasible: bool
    patterns: int


def search_at(lp: ConfigurationLP, target: int, deadline: float, race: Race | None = None) -> AtTarget | None:
    """The MIP over the patterns within ``lp.dual_bound - target`` of each type's best (module docs); None
    where they are too many, time ran out or the race was stopped."""
    return _enumerated_mip(lp, target, deadline, race)


def solve_config(lp: ConfigurationLP | None, start_value: int, time_limit_s: float) -> ConfigResult | None:
    """The pattern searches alone, one after the other from the LP's bound down (one replica lower each time one
    proves there is nothing at it), within ``time_limit_s``: the stage without the compact MIP (the solver runs
    both, ``solver._race_at``); None where the LP did not apply."""
    deadline = time.perf_counter() + time_limit_s
    if lp is None:
        return None
    if lp.bound <= start_value:
        return ConfigResult(None, start_value, start_value, True, lp.iterations, 0)
    bound = lp.bound
    patterns = 0
    while bound > start_value and time.perf_counter() < deadline:
        found = search_at(lp, bound, deadline)
        if found is None:
            break
        patterns = found.patterns
        if found.solutions is not None:
            return ConfigResult(found.solutions, found.value, bound, found.value >= bound, lp.iterations, patterns)
        bound -= 1
    return ConfigResult(None, start_value, max(bound, start_value), bound <= start_value, lp.iterations, patterns)


def _enumerated_mip(lp: ConfigurationLP, target: int, deadline: float, race: Race | None) -> AtTarget | None:
    """A placement worth at least ``target`` from the patterns within ``gap = lp.dual_bound − target`` of each
    type's knapsack optimum, with each node's rank pools put back; or a proof that there is none (where every
    pattern in the gap was searched); None where time ran out, the race was stopped or nothing could be searched."""
    import highspy

    items, types, n_kinds, node_of, pi = lp.items, lp.types, lp.kinds, lp.node_of, lp.pi
    knapsacks, sigma = lp.knapsacks, lp.sigma
    gap = lp.dual_bound - target + BOUND_SLACK
    reduced_x = [sigma[item.kind] + item.tp * pi[i] - item.weight for i, item in enumerate(items)]
    allowed = [d <= gap for d in reduced_x]
    # An item whose dual is 0 adds nothing to a pattern's value, so patterns are enumerated without such *free*
    # items (any number of them would be within the gap); each device of a type they fit gets its own variables
    # for them instead, within the room its pattern leaves.
    free = {i for i in range(len(items)) if allowed[i] and pi[i] <= 0}
    # Where the gap holds more patterns than the limit, those of a smaller gap (halved until they fit) are
    # searched instead: a placement found among them is still one at the target, but finding none proves nothing.
    pattern_gap = gap
    complete = True
    while True:
        enumerated: list[list[tuple[tuple[int, ...], float]]] = []  # per type: (counts, reduced cost)
        total = 0
        for dtype, sack in zip(types, knapsacks, strict=True):
            found = sack.near(sack.value - pattern_gap, MAX_PATTERNS - total, [allowed[i] for i in dtype.items])
            if found is None:
                break
            total += len(found)
            enumerated.append(
                [(tuple(c), sack.value - sum(a * pi[i] for i, a in zip(dtype.items, c, strict=True))) for c in found]
            )
        else:
            break
        if time.perf_counter() > deadline or pattern_gap < BOUND_SLACK:
            return None  # out of time, or too many patterns even at (nearly) no reduced cost
        pattern_gap /= 2
        complete = False
    if time.perf_counter() > deadline:
        return None
    inf = highspy.kHighsInf
    cost: list[float] = []
    upper: list[float] = []
    integer: list[int] = []
    rows: list[tuple[float, float, dict[int, float]]] = []

    def column(cap: float, objective: float = 0.0) -> int:
        cost.append(objective)
        upper.append(cap)
        integer.append(1)
        return len(cost) - 1

    x = [
        column(min(item.replicas, math.floor(gap / reduced_x[i]) if reduced_x[i] > 0 else item.replicas), item.weight)
        if allowed[i]
        else column(0.0)
        for i, item in enumerate(items)
    ]
    supply: dict[int, dict[int, float]] = {i: {} for i in range(len(items))}  # TP 1: x_i = Σ a λ
    pool_supply: dict[tuple[int, int], dict[int, float]] = {}  # (item, pool): Σ a λ = TP · w
    pool_column: dict[tuple[int, int], int] = {}
    # per cell: (type, devices, [(λ, pattern)], {free item: its ranks' column} where the cell is one device)
    cells_out: list[tuple[int, list[int], list[tuple[int, tuple[int, ...]]], dict[int, int]]] = []
    width = 0
    for t, dtype in enumerate(types):
        cells: dict[tuple, list[int]] = {}
        free_here = [(n, i) for n, i in enumerate(dtype.items) if i in free]
        for key in dtype.devices:
            memberships = tuple(
                (i, p)
                for i in dtype.items
                if items[i].tp > 1
                for p, (_, members) in enumerate(items[i].pools)
                if key in members
            )
            # devices only TP 1 items use are interchangeable across nodes; TP > 1 ranks need their node's pools
            # devices only TP 1 items use are interchangeable across nodes; TP > 1 ranks need their node's pools;
            # free items need each device's own room
            where = key if free_here else node_of[key] if memberships else None
            cells.setdefault((where, memberships), []).append(key)
        width += len(cells) * (len(enumerated[t]) + len(free_here))
        if width > MAX_COLUMNS:
            return None
        for (_, memberships), devices in cells.items():
            pool_of = dict(memberships)
            chosen = []
            row: dict[int, float] = {}
            for counts, reduced in enumerated[t]:
                cap = len(devices) if reduced <= 0 else min(len(devices), math.floor(gap / reduced))
                if cap <= 0:
                    continue
                lam = column(float(cap))
                row[lam] = 1.0
                chosen.append((lam, counts))
                for i, a in zip(dtype.items, counts, strict=True):
                    if not a:
                        continue
                    if items[i].tp == 1:
                        supply[i][lam] = supply[i].get(lam, 0.0) + a
                        continue
                    key = (i, pool_of[i])
                    if key not in pool_column:
                        pool_column[key] = column(float(items[i].replicas))
                    pool_supply.setdefault(key, {})[lam] = float(a)
                    if a >= 2:  # a device holds ranks of a replicas, so at least a replicas in this pool
                        used = column(1.0)
                        rows.append((-inf, 0.0, {lam: 1.0, used: -float(len(devices))}))
                        rows.append((-inf, 0.0, {used: float(a), pool_column[key]: -1.0}))
            rows.append((len(devices), len(devices), row))
            free_columns: dict[int, int] = {}
            if free_here:  # the cell is one device
                room = {lam: float(sum(a * items[i].claim for i, a in zip(dtype.items, counts, strict=True)))
                        for lam, counts in chosen}  # fmt: skip
                for n, i in free_here:
                    f = column(float(dtype.bounds[n]))
                    free_columns[i] = f
                    room[f] = float(items[i].claim)
                    if items[i].tp == 1:
                        supply[i][f] = 1.0
                        continue
                    key = (i, pool_of[i])
                    if key not in pool_column:
                        pool_column[key] = column(float(items[i].replicas))
                    pool_supply.setdefault(key, {})[f] = 1.0
                    rows.append((-inf, 0.0, {f: 1.0, pool_column[key]: -1.0}))  # one rank of a replica per device
                rows.append((-inf, float(dtype.capacity), room))
            cells_out.append((t, devices, chosen, free_columns))
    for i, item in enumerate(items):
        if item.tp == 1:
            rows.append((0.0, 0.0, {x[i]: 1.0, **{lam: -a for lam, a in supply[i].items()}}))
        else:
            pools = {key: col for key, col in pool_column.items() if key[0] == i}
            rows.append((0.0, 0.0, {x[i]: 1.0, **{col: -1.0 for col in pools.values()}}))
    for key, terms in pool_supply.items():
        rows.append((0.0, 0.0, {**terms, pool_column[key]: -float(items[key[0]].tp)}))
    for k in range(n_kinds):
        terms = {x[i]: 1.0 for i, item in enumerate(items) if item.kind == k}
        rows.append((-inf, float(max(item.replicas for item in items if item.kind == k)), terms))
    rows.append((float(target), inf, {x[i]: float(item.weight) for i, item in enumerate(items)}))

    lp = highspy.HighsLp()
    lp.num_col_ = len(cost)
    lp.num_row_ = len(rows)
    lp.col_cost_ = np.array(cost, dtype=float)
    lp.col_lower_ = np.zeros(len(cost))
    lp.col_upper_ = np.array(upper, dtype=float)
    lp.row_lower_ = np.array([r[0] for r in rows], dtype=float)
    lp.row_upper_ = np.array([r[1] for r in rows], dtype=float)
    starts, index, values = [0], [], []
    for _, _, terms in rows:
        for col, coefficient in terms.items():
            index.append(col)
            values.append(coefficient)
        starts.append(len(index))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(values, dtype=float)
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.integrality_ = [highspy.HighsVarType.kInteger] * len(cost)
    highs = _quiet_highs(highspy)
    highs.setOptionValue("threads", 1)
    highs.setOptionValue("random_seed", 0)
    highs.setOptionValue("mip_rel_gap", 0.0)
    highs.setOptionValue("mip_abs_gap", 0.5)
    highs.setOptionValue("time_limit", max(0.01, deadline - time.perf_counter()))
    highs.setOptionValue("objective_target", float(target) - 0.5)  # any placement at the target will do
    # presolve off: measured 2-2.5x faster to a placement at the target on the benchmark cases that need this search
    highs.setOptionValue("presolve", "off")
    highs.passModel(lp)
    if race is not None and not race.enter(highs):
        return None
    highs.run()
    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return AtTarget(None, target - 1, True, total) if complete else None
    if status == highspy.HighsModelStatus.kInterrupt or highs.getInfo().primal_solution_status != 2:
        return None
    solved = np.rint(highs.getSolution().col_value).astype(int)
    value = sum(item.weight * int(solved[x[i]]) for i, item in enumerate(items))
    return AtTarget(_decode(items, types, node_of, cells_out, pool_column, solved), value, False, total)


def _decode(
    items: list[_Item],
    types: list[_Type],
    node_of: dict[int, int],
    cells: list[tuple[int, list[int], list[tuple[int, tuple[int, ...]]], dict[int, int]]],
    pool_column: dict[tuple[int, int], int],
    solved: np.ndarray,
) -> dict[tuple[int, int], KindSolution]:
    """The MIP's patterns given to devices (a cell's devices are interchangeable), as the compact MIP's
    solutions: replicas, stages per node, replicas per rank pool, ranks per device."""
    ranks: dict[int, dict[int, int]] = {}  # item -> device key -> ranks
    for t, devices, chosen, free_columns in cells:
        unused = iter(devices)
        for lam, counts in chosen:
            for _ in range(int(solved[lam])):
                key = next(unused)
                for i, a in zip(types[t].items, counts, strict=True):
                    if a:
                        ranks.setdefault(i, {})[key] = a
        for i, f in free_columns.items():
            if solved[f]:
                ranks.setdefault(i, {})[devices[0]] = int(solved[f])
    out: dict[tuple[int, int], KindSolution] = {}
    for i, item in enumerate(items):
        held = ranks.get(i, {})
        if item.host:
            stages = {node_of[key]: count for key, count in held.items()}
            if stages:
                out[(item.kind, item.option)] = KindSolution(sum(stages.values()), stages, {}, {})
            continue
        if item.tp == 1:
            count = sum(held.values())
            if not count:
                continue
            stages: dict[int, int] = {}
            for g, a in held.items():
                stages[node_of[g]] = stages.get(node_of[g], 0) + a
            used = {node: [(stages[node], members)] for node, members in item.pools if stages.get(node)}
            every = {g: held.get(g, 0) for _, members in item.pools for g in members}
            out[(item.kind, item.option)] = KindSolution(count, stages, used, every)
            continue
        per_pool = [(int(solved[pool_column[(i, p)]]) if (i, p) in pool_column else 0) for p in range(len(item.pools))]
        count = sum(per_pool)
        if not count:
            continue
        stages = {}
        pools: dict[int, list[tuple[int, list[int]]]] = {}
        for (node, members), w in zip(item.pools, per_pool, strict=True):
            stages[node] = stages.get(node, 0) + w
            pools.setdefault(node, []).append((w, members))
        every = {g: held.get(g, 0) for _, members in item.pools for g in members}
        out[(item.kind, item.option)] = KindSolution(count, stages, pools, every)
    return out
