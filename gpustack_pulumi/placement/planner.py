"""``plan()``: inventory + deployments (+ previous plan) → Plan. Pure and deterministic.

Pipeline, top to bottom:

1. index the inventory (``cluster.build_cluster``) and prepare each deployment once (filters + sizing);
2. keep every replica of the previous plan that is still valid where it is — first those whose claim is
   unchanged, then those whose claim changed (resized in place) — so an unrelated change moves nothing;
3. place the rest: exactly (CP-SAT) when the problem is small, else first-fit decreasing with best fit;
4. explain every unplaced replica with the constraint and the numbers.

A ``Planner`` keeps the index and the state of its last plan: planning again with that plan as
``previous`` re-plans only the deployments that changed (and replicas that were unplaced), which gives the
same Plan as planning from scratch with that previous plan, in milliseconds at 100,000 GPUs.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gpustack_runtime.wire import Inventory

from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.placement.cluster import Cluster, ClusterState, build_cluster
from gpustack_pulumi.placement.demand import GIB, DemandCache, DemandFactory, default_demand_model
from gpustack_pulumi.placement.filters import ClassOption, PreparedDeployment, PrepareMemo, Rejection, prepare
from gpustack_pulumi.placement.heuristic import Placer, ReplicaTask, order_key
from gpustack_pulumi.placement.models import (
    Deployment,
    NodePlacement,
    PlacedReplica,
    Plan,
    PlanSummary,
    Strategy,
    UnplacedReplica,
)
from gpustack_pulumi.placement.scorers import ScoredCandidate, ScorePipeline

# Wall-clock budget of the exact solver per plan. Inside it the solver stops at a deterministic work limit
# derived from the budget (solver.DETERMINISTIC_SHARE_PER_SOLVE), so plans stay reproducible; the wall
# clock is the guarantee that a plan never takes longer.
DEFAULT_TIME_BUDGET_S = 2.0

# "Small" enough for the exact solver: on ≤ 64 GPUs and ≤ 128 new replicas it proves most placements
# optimal within the default budget (benchmarks/placement_bench.py, table 2); above, the heuristic decides.
EXACT_MAX_DEVICES = 64
EXACT_MAX_REPLICAS = 128

# The incremental path re-plans at most this share of the deployments; beyond, from scratch is as fast.
INCREMENTAL_MAX_CHANGED_SHARE = 0.05


def _solver_available() -> bool:
    """OR-Tools is a dependency, but a missing wheel (an unusual platform) degrades to the heuristic."""
    try:
        import ortools.sat.python.cp_model  # noqa: F401
    except ImportError:  # pragma: no cover - ortools is installed in every supported environment
        return False
    return True


@contextmanager
def _without_gc_pauses() -> Iterator[None]:
    """Suspend the cyclic garbage collector while a plan allocates its ~10^5 small objects.

    Planning creates no reference cycles, but at 100,000 GPUs the collector's full passes over every live
    object (the inventory included) cost about a third of the plan's time. Reference counting still frees
    everything; the collector is restored (and so runs) afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class _Record:
    """A placed replica as the planner tracks it: output model + what it holds in the state."""

    replica: PlacedReplica
    class_id: int | None
    node_gids: list[tuple[int, list[int]]]
    claim: int


@dataclass
class _Run:
    plan: Plan
    strategy: Strategy
    deployments: dict[str, Deployment]
    prepared: dict[str, PreparedDeployment]
    state: ClusterState
    records: dict[tuple[str, int], _Record]
    unplaced: list[tuple[str, int]]


@dataclass
class _Outcome:
    records: dict[tuple[str, int], _Record] = field(default_factory=dict)
    kept: int = 0
    moved: int = 0
    unplaced: list[tuple[ReplicaTask, None]] = field(default_factory=list)


class Planner:
    """Plans on one inventory; remembers its last plan to re-plan incrementally."""

    def __init__(
        self,
        inventory: Inventory,
        *,
        own_owner_prefix: str | None = None,
        demand_factory: DemandFactory = default_demand_model,
        profile_loader: Callable[[str, str | None], ModelProfile] | None = None,
    ) -> None:
        self.cluster: Cluster = build_cluster(inventory, own_owner_prefix)
        self.cache = DemandCache(demand_factory, profile_loader)
        self._last: _Run | None = None
        self.last_exact = None  # the exact solver's result of the last plan (diagnostics: optimal, bound)

    # --- public ------------------------------------------------------------------------------------------
    def plan(
        self,
        deployments: Iterable[Deployment],
        previous: Plan | None = None,
        strategy: Strategy = "binpack",
        *,
        time_budget_s: float = DEFAULT_TIME_BUDGET_S,
        exact: bool | None = None,
    ) -> Plan:
        """Place every replica. ``exact``: None decides by size; True/False forces the method (benchmarks)."""
        if previous is not None and not isinstance(previous, Plan):
            raise TypeError(f"previous must be a Plan (or None), got {type(previous).__name__}")
        if strategy not in ("binpack", "spread"):
            raise ValueError(f"strategy must be 'binpack' or 'spread', got '{strategy}'")
        deployment_list = list(deployments)
        by_name: dict[str, Deployment] = {}
        for deployment in deployment_list:
            if deployment.name in by_name:
                raise ValueError(f"deployment name '{deployment.name}' appears twice; names must be unique")
            by_name[deployment.name] = deployment
        with _without_gc_pauses():
            return self._plan(by_name, previous, strategy, time_budget_s, exact)

    def _plan(
        self,
        by_name: dict[str, Deployment],
        previous: Plan | None,
        strategy: Strategy,
        time_budget_s: float,
        exact: bool | None,
    ) -> Plan:
        last = self._last
        if (
            previous is not None
            and last is not None
            and previous is last.plan
            and strategy == last.strategy
            and exact is not True
            and self.cluster.device_count > EXACT_MAX_DEVICES
        ):
            incremental = self._incremental(last, by_name)
            if incremental is not None:
                return incremental
        return self._full(by_name, previous, strategy, time_budget_s, exact)

    # --- from scratch ------------------------------------------------------------------------------------
    def _full(
        self,
        by_name: dict[str, Deployment],
        previous: Plan | None,
        strategy: Strategy,
        time_budget_s: float,
        exact: bool | None,
    ) -> Plan:
        memo = PrepareMemo()
        prepared = {name: prepare(dep, self.cluster, self.cache, memo) for name, dep in by_name.items()}
        state = ClusterState(self.cluster)
        state.packed = {name for name, dep in by_name.items() if dep.pack_replicas and strategy == "binpack"}
        outcome = _Outcome()
        previous_by_key: dict[tuple[str, int], PlacedReplica] = {}
        if previous is not None:
            previous_by_key = {(r.deployment, r.replica): r for r in previous.replicas}
        moves = self._keep_previous(state, prepared, list(previous_by_key.values()), outcome)
        tasks = [
            ReplicaTask(prep, index, moves.get((name, index)))
            for name, prep in prepared.items()
            for index in range(prep.deployment.replicas)
            if (name, index) not in outcome.records
        ]
        tasks.sort(key=order_key)
        method = "heuristic"
        use_exact = (
            exact
            if exact is not None
            else (self.cluster.device_count <= EXACT_MAX_DEVICES and len(tasks) <= EXACT_MAX_REPLICAS)
        )
        placed: list[tuple[ReplicaTask, ScoredCandidate | None]]
        self.last_exact = None
        if use_exact and tasks and _solver_available():
            from gpustack_pulumi.placement.solver import solve_exact

            result = solve_exact(state, tasks, strategy, time_budget_s)
            self.last_exact = result
            placed = result.assignments
            method = "exact" if result.used_exact else "heuristic"
            self._apply_all(state, placed)
        else:
            placed = Placer(state, ScorePipeline(strategy), strategy).place_all(tasks)
        placed = self._preempt(state, prepared, outcome, placed, strategy)
        self._record(outcome, placed, strategy, method)
        proven = self.last_exact.optimal if method == "exact" and self.last_exact is not None else None
        run = self._finish(by_name, prepared, state, outcome, strategy, method, proven)
        self._last = run
        return run.plan

    def _apply_all(self, state: ClusterState, placed: list[tuple[ReplicaTask, ScoredCandidate | None]]) -> None:
        placer = Placer(state, ScorePipeline("binpack"), "binpack")
        for task, chosen in placed:
            if chosen is not None:
                placer.apply(task.prepared.name, chosen.candidate)

    # --- incremental -------------------------------------------------------------------------------------
    def _incremental(self, last: _Run, by_name: dict[str, Deployment]) -> Plan | None:
        old = last.deployments
        changed = {
            name
            for name in by_name.keys() | old.keys()
            if name not in old or name not in by_name or (old[name] is not by_name[name] and old[name] != by_name[name])
        }
        if len(changed) > max(1, INCREMENTAL_MAX_CHANGED_SHARE * len(by_name)):
            return None
        state = last.state
        records = dict(last.records)
        previous_of_changed: list[PlacedReplica] = []
        for key, record in last.records.items():
            if key[0] in changed:
                previous_of_changed.append(record.replica)
                self._release(state, key[0], record)
                del records[key]
        memo = PrepareMemo()
        prepared = dict(last.prepared)
        for name in changed:
            prepared.pop(name, None)
            if name in by_name:
                prepared[name] = prepare(by_name[name], self.cluster, self.cache, memo)
        outcome = _Outcome(records=records)
        moves = self._keep_previous(state, prepared, previous_of_changed, outcome)
        outcome.kept += len(last.records) - len(previous_of_changed)
        tasks = [
            ReplicaTask(prepared[name], index, moves.get((name, index)))
            for name in sorted(changed)
            if name in by_name
            for index in range(by_name[name].replicas)
            if (name, index) not in records
        ]
        tasks += [ReplicaTask(prepared[name], index) for name, index in last.unplaced if name not in changed]
        tasks.sort(key=order_key)
        placed = Placer(state, ScorePipeline(last.strategy), last.strategy).place_all(tasks)
        placed = self._preempt(state, prepared, outcome, placed, last.strategy)
        self._record(outcome, placed, last.strategy, "heuristic")
        run = self._finish(by_name, prepared, state, outcome, last.strategy, "heuristic", None)
        self._last = run
        return run.plan

    def _release(self, state: ClusterState, deployment: str, record: _Record) -> None:
        if record.class_id is None:
            state.claim_host(deployment, record.node_gids[0][0], record.claim, sign=-1)
        else:
            state.release(deployment, record.node_gids, record.claim)

    # --- priority ------------------------------------------------------------------------------------------
    def _preempt(
        self,
        state: ClusterState,
        prepared: dict[str, PreparedDeployment],
        outcome: _Outcome,
        placed: list[tuple[ReplicaTask, ScoredCandidate | None]],
        strategy: Strategy,
    ) -> list[tuple[ReplicaTask, ScoredCandidate | None]]:
        """Priority beats stability, as k8s preemption: when a replica could not be placed, replicas of lower
        priority kept from the previous plan make way. They are all lifted, the higher-priority replicas
        placed, and each lower one put back where it was if it still fits, else placed anew with the reason
        (moved) or left unplaced."""
        waiting = [task for task, chosen in placed if chosen is None and task.prepared.error is None]
        if not waiting:
            return placed
        top = max(task.prepared.deployment.priority for task in waiting)

        def priority(name: str) -> int:
            return prepared[name].deployment.priority

        lower_kept = sorted(
            ((key, record) for key, record in outcome.records.items() if priority(key[0]) < top),
            key=lambda item: (-priority(item[0][0]), item[0]),
        )
        if not lower_kept:
            # New placements were made in priority order already (and the exact solver weighs priority
            # first): only replicas kept from the previous plan can stand in a higher priority's way.
            return placed
        lower_new = [(t, c) for t, c in placed if c is not None and t.prepared.deployment.priority < top]
        floor = min(
            [priority(key[0]) for key, _ in lower_kept] + [t.prepared.deployment.priority for t, _ in lower_new]
        )
        contenders = sorted((t for t in waiting if t.prepared.deployment.priority > floor), key=order_key)
        contender_ids = {id(t) for t in contenders}
        placer = Placer(state, ScorePipeline(strategy), strategy)
        for key, record in lower_kept:
            self._release(state, key[0], record)
            del outcome.records[key]
        placer.undo(lower_new)
        won = placer.place_all(contenders)
        winners = ", ".join(sorted({t.prepared.name for t, c in won if c is not None})) or "none"

        # Put the lifted replicas back tier by tier, highest priority first: a tier's replicas return where they
        # were if they still fit, and those that do not are placed anew before any lower tier returns — so a
        # replica is only ever displaced by replicas of a higher priority, never by a lower one.
        restored: list[tuple[ReplicaTask, ScoredCandidate | None]] = []
        replaced: list[tuple[ReplicaTask, ScoredCandidate | None]] = []
        new_order = sorted(lower_new, key=lambda item: order_key(item[0]))
        tiers = {priority(key[0]) for key, _ in lower_kept} | {t.prepared.deployment.priority for t, _ in lower_new}
        for tier in sorted(tiers, reverse=True):
            displaced: list[ReplicaTask] = []
            for key, record in lower_kept:
                if priority(key[0]) != tier:
                    continue
                check = _Check(record.class_id, record.node_gids, record.claim, record.replica.memory_fraction, "")
                if _shortfall(state, check) is None:
                    self._claim_check(state, key[0], check)
                    outcome.records[key] = record
                else:
                    outcome.kept -= 1
                    where = _where(record.replica)
                    displaced.append(
                        ReplicaTask(
                            prepared[key[0]],
                            key[1],
                            f"moved from {where}: preempted by higher-priority {winners} (priority {top})",
                        )
                    )
            for task, chosen in new_order:
                if task.prepared.deployment.priority != tier:
                    continue
                assert chosen is not None
                candidate = chosen.candidate
                check = _Check(candidate.class_id, candidate.node_gids, candidate.claim, candidate.fraction, "")
                if _shortfall(state, check) is None:
                    placer.apply(task.prepared.name, candidate)
                    restored.append((task, chosen))
                else:
                    displaced.append(task)
            replaced += placer.place_all(sorted(displaced, key=order_key))
        lower_ids = {id(t) for t, _ in lower_new}
        untouched = [(t, c) for t, c in placed if id(t) not in contender_ids and id(t) not in lower_ids]
        return untouched + won + restored + replaced

    def _claim_check(self, state: ClusterState, deployment: str, check: _Check) -> None:
        if check.class_id is None:
            state.claim_host(deployment, check.node_gids[0][0], check.claim)
        else:
            state.claim(deployment, check.node_gids, check.claim)

    # --- stability -----------------------------------------------------------------------------------------
    def _keep_previous(
        self,
        state: ClusterState,
        prepared: dict[str, PreparedDeployment],
        previous: list[PlacedReplica],
        outcome: _Outcome,
    ) -> dict[tuple[str, int], str]:
        """Keep valid previous replicas in place; return why each other one must move."""
        moves: dict[tuple[str, int], str] = {}
        checked: list[tuple[int, PlacedReplica, _Check]] = []
        for replica in previous:
            prep = prepared.get(replica.deployment)
            if prep is None or replica.replica >= prep.deployment.replicas:
                continue  # deployment removed or scaled down: the replica simply goes
            check = _check_previous(self.cluster, prep, replica)
            if isinstance(check, str):
                moves[(replica.deployment, replica.replica)] = check
                continue
            phase = 0 if check.claim == replica.placements[0].memory_bytes_per_device else 1
            checked.append((phase, replica, check))
        checked.sort(
            key=lambda item: (
                item[0],
                -prepared[item[1].deployment].deployment.priority,
                item[1].deployment,
                item[1].replica,
            )
        )
        for phase, replica, check in checked:
            key = (replica.deployment, replica.replica)
            short = _shortfall(state, check)
            if short:
                moves[key] = short
                continue
            if check.class_id is None:
                state.claim_host(replica.deployment, check.node_gids[0][0], check.claim)
            else:
                state.claim(replica.deployment, check.node_gids, check.claim)
            if phase == 0:
                output = replica
            else:
                old = replica.placements[0].memory_bytes_per_device
                output = replica.model_copy(
                    update={
                        "placements": _placements(self.cluster, check.node_gids, check.claim),
                        "memory_fraction": check.fraction,
                        "reason": f"kept in place, claim resized from {old / GIB:.2f} to "
                        f"{check.claim / GIB:.2f} GiB per device ({check.detail})",
                    }
                )
            outcome.records[key] = _Record(output, check.class_id, check.node_gids, check.claim)
            outcome.kept += 1
        return moves

    # --- output --------------------------------------------------------------------------------------------
    def _record(
        self,
        outcome: _Outcome,
        placed: list[tuple[ReplicaTask, ScoredCandidate | None]],
        strategy: Strategy,
        method: str,
    ) -> None:
        for task, chosen in placed:
            if chosen is None:
                outcome.unplaced.append((task, None))
                continue
            candidate = chosen.candidate
            reason = _placed_reason(self.cluster, task, chosen, strategy, method)
            replica = PlacedReplica.model_construct(
                deployment=task.prepared.name,
                replica=task.replica,
                engine=candidate.engine,
                placements=_placements(self.cluster, candidate.node_gids, candidate.claim),
                tensor_parallel_size=candidate.tp,
                pipeline_parallel_size=candidate.pp,
                memory_fraction=candidate.fraction,
                reason=reason,
            )
            outcome.records[(task.prepared.name, task.replica)] = _Record(
                replica, candidate.class_id, candidate.node_gids, candidate.claim
            )
            if task.previous is not None:
                outcome.moved += 1

    def _finish(
        self,
        by_name: dict[str, Deployment],
        prepared: dict[str, PreparedDeployment],
        state: ClusterState,
        outcome: _Outcome,
        strategy: Strategy,
        method: str,
        proven_optimal: bool | None,
    ) -> _Run:
        unplaced_models = []
        unplaced_keys = []
        explained: dict[int, tuple[str, str]] = {}  # replicas of one deployment share the explanation
        for task, _ in outcome.unplaced:
            found = explained.get(id(task.prepared))
            if found is None:
                found = explained[id(task.prepared)] = explain_unplaced(state, task.prepared)
            constraint, reason = found
            if task.previous is not None:
                reason = f"{task.previous}; and no other place: {reason}"
            unplaced_models.append(
                UnplacedReplica.model_construct(
                    deployment=task.prepared.name, replica=task.replica, constraint=constraint, reason=reason
                )
            )
            unplaced_keys.append((task.prepared.name, task.replica))
        unplaced_models.sort(key=lambda u: (u.deployment, u.replica))
        unplaced_keys.sort()
        replicas = [record.replica for _, record in sorted(outcome.records.items())]
        summary = PlanSummary.model_construct(
            placed=len(replicas),
            unplaced=len(unplaced_models),
            gpus_used=sum(1 for users in state.users if users),
            nodes_used=sum(1 for users in state.node_users if users),
            kept=outcome.kept,
            moved=outcome.moved,
            method=method,
            proven_optimal=proven_optimal,
        )
        plan = Plan.model_construct(strategy=strategy, replicas=replicas, unplaced=unplaced_models, summary=summary)
        return _Run(plan, strategy, dict(by_name), prepared, state, outcome.records, unplaced_keys)


@dataclass
class _Check:
    class_id: int | None
    node_gids: list[tuple[int, list[int]]]
    claim: int
    fraction: float | None
    detail: str


def _where(replica: PlacedReplica) -> str:
    return ", ".join(f"{p.node} {_devices(p.device_indices)}" for p in replica.placements)


def _devices(indices: list[int]) -> str:
    return f"GPU {indices[0]}" if len(indices) == 1 else ("CPU" if not indices else f"GPUs {indices}")


def _check_previous(cluster: Cluster, prepared: PreparedDeployment, replica: PlacedReplica) -> _Check | str:
    """Whether a previous replica may stay where it is (capacity aside); else why it must move."""
    where = _where(replica)
    if prepared.error is not None:
        return f"moved from {where}: {prepared.error.message}"
    if not replica.placements:
        return f"moved from {where}: the previous plan lists no placement"
    node_gids: list[tuple[int, list[int]]] = []
    class_ids: set[int] = set()
    for placement in replica.placements:
        node_id = cluster.node_id.get(placement.node)
        if node_id is None:
            return f"moved from {where}: node {placement.node} is no longer in the inventory"
        if prepared.eligible_nodes is not None and node_id not in prepared.eligible_nodes:
            return f"moved from {where}: node {placement.node} no longer matches node_selector"
        gids = []
        for index in placement.device_indices:
            gid = cluster.gid_of.get((node_id, index))
            if gid is None:
                return f"moved from {where}: {placement.node} has no device {index} any more"
            if prepared.eligible_gids is not None and gid not in prepared.eligible_gids:
                return f"moved from {where}: {placement.node} GPU {index} is not in gpu_selector"
            gids.append(gid)
            class_ids.add(cluster.dev_class[gid])
        node_gids.append((node_id, gids))
    if not class_ids:  # CPU-only
        node_id = node_gids[0][0]
        if len(node_gids) != 1 or node_id not in cluster.cpu_nodes:
            return f"moved from {where}: not a CPU-only node"
        if prepared.cpu_request is None or prepared.cpu_request.engine != replica.engine:
            return f"moved from {where}: the deployment no longer runs on CPU"
        return _Check(None, node_gids, prepared.cpu_host_bytes, None, "host memory")
    if len(class_ids) != 1:
        return f"moved from {where}: its devices are of different products"
    class_id = class_ids.pop()
    option = next((o for o in prepared.options + prepared.multi_node_options if o.class_id == class_id), None)
    if option is None:
        why = "; ".join(r.message for r in prepared.rejections) or "not eligible"
        return f"moved from {where}: {cluster.classes[class_id].product} is no longer eligible ({why})"
    if option.engine != replica.engine:
        return f"moved from {where}: engine changed from {replica.engine} to {option.engine}"
    tp, pp = replica.tensor_parallel_size, replica.pipeline_parallel_size
    if len(node_gids) != pp or any(len(gids) != tp for _, gids in node_gids):
        return f"moved from {where}: its devices do not match TP={tp} × PP={pp}"
    assert prepared.profile is not None
    problems = prepared.profile.constraints.tp_problems(tp)
    if problems:
        return f"moved from {where}: TP={tp} is no longer valid ({problems[0]})"
    demand = prepared.demand(option, tp, pp)
    if not demand.fits:
        return f"moved from {where}: at TP={tp} it needs {demand.claim_bytes / GIB:.2f} GiB per GPU ({demand.detail})"
    return _Check(class_id, node_gids, demand.claim_bytes, demand.memory_fraction, demand.detail)


def _shortfall(state: ClusterState, check: _Check) -> str | None:
    cluster = state.cluster
    if check.class_id is None:
        node_id = check.node_gids[0][0]
        free = state.host_free.get(node_id)
        if free is None or free < check.claim:
            return (
                f"moved from {cluster.nodes[node_id].name} CPU: needs {check.claim / GIB:.2f} GiB host memory, "
                f"{(free or 0) / GIB:.2f} GiB free"
            )
        return None
    for _, gids in check.node_gids:
        for gid in gids:
            if state.free[gid] < check.claim:
                return (
                    f"moved from {cluster.describe_device(gid)}: needs {check.claim / GIB:.2f} GiB, "
                    f"{max(0, state.free[gid]) / GIB:.2f} GiB free now (others claim or use the rest)"
                )
    return None


def _placements(cluster: Cluster, node_gids: list[tuple[int, list[int]]], claim: int) -> list[NodePlacement]:
    return [
        NodePlacement.model_construct(
            node=cluster.nodes[node].name,
            device_indices=sorted(cluster.dev_index[g] for g in gids),
            memory_bytes_per_device=claim,
        )
        for node, gids in sorted(node_gids, key=lambda item: cluster.nodes[item[0]].name)
    ]


def _placed_reason(
    cluster: Cluster, task: ReplicaTask, chosen: ScoredCandidate, strategy: Strategy, method: str
) -> str:
    candidate = chosen.candidate
    if candidate.class_id is None:
        node = cluster.nodes[candidate.node_gids[0][0]].name
        text = f"{candidate.engine} on CPU-only node {node}: {candidate.detail}"
    else:
        dclass = cluster.classes[candidate.class_id]
        shape = f"TP={candidate.tp}" + (f" × PP={candidate.pp} across nodes" if candidate.pp > 1 else "")
        text = (
            f"{candidate.engine} {shape} on {dclass.product}: {candidate.claim / GIB:.2f} GiB per GPU "
            f"({candidate.detail})"
        )
        if candidate.pp > 1:
            text += "; no single node can hold it"
        if candidate.tp > 1:
            groups = {cluster.dev_group[g] for _, gids in candidate.node_gids for g in gids}
            if len(groups) == 1 and None not in groups:
                text += f"; all in topology group {groups.pop()}"
            elif any(group is not None for group in groups):
                text += "; spans topology groups (no group had enough room)"
    text = f"{method} {strategy}: {text}"
    if chosen.breakdown:
        text += "; scores " + " ".join(f"{name}={value}" for name, value in chosen.breakdown)
    if task.previous is not None:
        text = f"{task.previous}; {text}"
    return text


def explain_unplaced(state: ClusterState, prepared: PreparedDeployment) -> tuple[str, str]:
    """(constraint, reason with the numbers: needed vs best available, where)."""
    if prepared.error is not None:
        return prepared.error.constraint, prepared.error.message
    cluster = state.cluster
    parts: list[str] = []
    for option in prepared.options + prepared.multi_node_options:
        tp, pp = option.multi_node or (option.tps[0], 1)
        claim = prepared.demand(option, tp, pp).claim_bytes
        text = _explain_option(state, prepared, option, tp, pp, claim)
        if text:
            parts.append(text)
    if prepared.cpu_request is not None:
        hosts = [n for n in cluster.cpu_nodes if prepared.eligible_nodes is None or n in prepared.eligible_nodes]
        known = [(state.host_free[n] or 0, -n) for n in hosts if state.host_free.get(n) is not None]
        if known:
            free, neg = max(known)
            parts.append(
                f"CPU: requested {prepared.cpu_host_bytes / GIB:.2f} GiB host memory, best available "
                f"{max(0, free) / GIB:.2f} GiB on {cluster.nodes[-neg].name}"
            )
        else:
            parts.append("CPU: no CPU-only node reports memory_total")
    if prepared.rejections:
        parts.append("not eligible: " + "; ".join(r.message for r in prepared.rejections))
    return "InsufficientMemory", "; ".join(parts) or "no device left"


def _explain_option(
    state: ClusterState, prepared: PreparedDeployment, option: ClassOption, tp: int, pp: int, claim: int
) -> str | None:
    """Requested vs best available for one device class, from the indices (O(log n) at any scale)."""
    cluster = state.cluster
    free = state.free
    label = option.dclass.product
    need = f"{claim / GIB:.2f} GiB"
    if prepared.eligible_gids is not None:  # a UUID selector: a handful of devices, scan them
        gids = sorted(prepared.eligible_gids, key=lambda g: (-free[g], g))
        gids = [g for g in gids if cluster.dev_class[g] == option.class_id]
        if not gids:
            return None
        top = gids[0]
    else:
        index = state.device_index(option.class_id, prepared.scope_key, prepared.eligible_nodes)
        if not index:
            return None
        most = index[-1][0]
        top = index[index.bisect_left((most, -1))][1]
    if tp == 1 and pp == 1:
        return (
            f"{label}: requested {need} on 1 GPU ({option.engine} TP=1), best available "
            f"{max(0, free[top]) / GIB:.2f} GiB free on {cluster.describe_device(top)} "
            f"(used {(cluster.dev_total[top] - free[top]) / GIB:.2f} of {cluster.dev_total[top] / GIB:.2f} GiB)"
        )
    shape = f"{option.engine} TP={tp}" + (f" PP={pp}" if pp > 1 else "")
    where = f" on each of {pp} nodes" if pp > 1 else " on one node"
    if prepared.eligible_gids is not None:
        return f"{label}: requested {need} on each of {tp} GPUs{where} ({shape}) among the gpu_selector's devices"
    index = state.kth_index(option.class_id, tp, prepared.scope_key, prepared.eligible_nodes)
    if not index:
        return f"{label}: requested {need} on each of {tp} GPUs{where} ({shape}), no node has {tp} such GPUs"
    kth_free, node = index[-1]
    node_gids = cluster.nodes[node].gids_by_class[option.class_id]
    enough = sum(1 for g in node_gids if free[g] >= claim)
    text = (
        f"{label}: requested {need} on each of {tp} GPUs{where} ({shape}), best node {cluster.nodes[node].name} "
        f"has {enough} such GPU(s), its {_ordinal(tp)} freest {max(0, kth_free) / GIB:.2f} GiB"
    )
    if pp > 1:
        nodes = len(index) - index.bisect_left((claim, -1))
        text += f"; {nodes} node(s) can hold a stage, {pp} needed"
    return text


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def plan(
    inventory: Inventory,
    deployments: Iterable[Deployment],
    previous: Plan | None = None,
    strategy: Strategy = "binpack",
    *,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    own_owner_prefix: str | None = None,
    demand_factory: DemandFactory = default_demand_model,
    profile_loader: Callable[[str, str | None], ModelProfile] | None = None,
    exact: bool | None = None,
) -> Plan:
    """Place the replicas of ``deployments`` on ``inventory``. Same inputs → byte-identical ``Plan.to_json()``.

    ``previous``: replicas stay where they are while still valid. ``own_owner_prefix``: allocations whose
    owner starts with it belong to this planner (the previous plan already accounts for them).
    """
    with _without_gc_pauses():
        planner = Planner(
            inventory, own_owner_prefix=own_owner_prefix, demand_factory=demand_factory, profile_loader=profile_loader
        )
    return planner.plan(deployments, previous, strategy, time_budget_s=time_budget_s, exact=exact)


__all__ = ["DEFAULT_TIME_BUDGET_S", "Planner", "Rejection", "explain_unplaced", "plan"]
