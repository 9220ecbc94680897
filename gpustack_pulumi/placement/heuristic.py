"""The fast placer: first-fit decreasing by priority, best fit per device class through the indices.

For one replica: per allowed device class, try its TP sizes smallest first and take the best-fit devices
(one bisect); CPU-only nodes for llama.cpp likewise; only when no single node can take it, try the
multi-node shape (TP within a node, PP across nodes). The scorers then pick among the per-class winners.
Each decision is O(classes × log devices), so 20,000 replicas on 100,000 GPUs take about a second.

When not everything fits: a second pass smallest-first (more replicas), keep the better pass, then a
bounded local search (Rebalancer-style moves): lift one bigger replica to make room for a waiting one, or
clear the least-loaded GPUs a waiting replica needs and re-place what was there.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpustack_pulumi.placement.cluster import ClusterState
from gpustack_pulumi.placement.demand import GIB
from gpustack_pulumi.placement.filters import ClassOption, PreparedDeployment
from gpustack_pulumi.placement.scorers import Candidate, ScoredCandidate, ScorePipeline

# The local search for unplaced replicas stops after this much work: one unit per placed replica or device
# looked at, PLACE_ATTEMPT_WORK per placement tried. A work limit, not a clock, so plans stay deterministic;
# about half a second on the 2-core reference machine in the worst case.
MAX_REPAIR_WORK = 300_000
PLACE_ATTEMPT_WORK = 50

# Multi-GPU best fit looks at this many feasible nodes (tightest first) for one whose devices share a
# topology group, before settling for the tightest: the k8s "score a bounded number of nodes" idea.
TOPOLOGY_LOOKAHEAD_NODES = 8


@dataclass
class ReplicaTask:
    prepared: PreparedDeployment
    replica: int
    previous: str | None = None  # why it left its previous place ("moved from ...: ...")


def order_key(task: ReplicaTask) -> tuple:
    """Priority first, then the biggest demand (first-fit decreasing), then names: fully deterministic."""
    return (-task.prepared.deployment.priority, -task.prepared.size_key(), task.prepared.name, task.replica)


def smallest_first_key(task: ReplicaTask) -> tuple:
    """Priority first, then the smallest demand: places the most replicas when not everything fits."""
    return (-task.prepared.deployment.priority, task.prepared.size_key(), task.prepared.name, task.replica)


class Placer:
    def __init__(self, state: ClusterState, pipeline: ScorePipeline, strategy: str) -> None:
        self.state = state
        self.pipeline = pipeline
        self.strategy = strategy
        self._avoid_gpus: dict[int, int] | None = None  # set per replica by candidates()

    # --- one replica ---------------------------------------------------------------------------------
    def candidates(self, prepared: PreparedDeployment) -> list[Candidate]:
        # Availability: keep replicas of one deployment off the nodes and GPUs that hold its other replicas,
        # where room allows (every deployment under spread; those not packing their replicas under binpack).
        apart = prepared.name not in self.state.packed
        avoid = self.state.dep_nodes.get(prepared.name) if apart else None
        avoid_gpus = self.state.dep_gpus.get(prepared.name) if apart else None
        self._avoid_gpus = avoid_gpus or None
        found: list[Candidate] = []
        for option in prepared.options:
            for tp in option.tps:
                demand = prepared.demand(option, tp)
                if not demand.fits:
                    continue
                node_gids = self.pick_devices(prepared, option, tp, 1, demand.claim_bytes, avoid)
                if node_gids is not None:
                    found.append(
                        Candidate(
                            option.class_id,
                            option.engine,
                            tp,
                            1,
                            demand.claim_bytes,
                            demand.memory_fraction,
                            node_gids,
                            demand.detail,
                        )
                    )
                    break
        if prepared.cpu_request is not None:
            node = self.pick_cpu(prepared, avoid)
            if node is not None:
                found.append(
                    Candidate(
                        None,
                        prepared.cpu_request.engine,
                        1,
                        1,
                        prepared.cpu_host_bytes,
                        None,
                        [(node, [])],
                        f"{prepared.cpu_host_bytes / GIB:.2f} GiB of host memory",
                    )
                )
        if found:
            return found
        for option in prepared.multi_node_options:
            assert option.multi_node is not None
            tp, pp = option.multi_node
            demand = prepared.demand(option, tp, pp)
            node_gids = self.pick_devices(prepared, option, tp, pp, demand.claim_bytes, avoid)
            if node_gids is not None:
                found.append(
                    Candidate(
                        option.class_id,
                        option.engine,
                        tp,
                        pp,
                        demand.claim_bytes,
                        demand.memory_fraction,
                        node_gids,
                        demand.detail,
                    )
                )
        return found

    def place_all(self, tasks: list[ReplicaTask]) -> list[tuple[ReplicaTask, ScoredCandidate | None]]:
        """Place ``tasks`` (sorted by ``order_key``). When some do not fit, also try smallest-first and keep
        the better result: more replicas per priority tier, then fewer GPUs, then fewer nodes."""
        first = [(task, self.place(task.prepared)) for task in tasks]
        if all(chosen is not None for _, chosen in first):
            return first
        first_quality = self._quality(first)
        self.undo(first)
        second = [(task, self.place(task.prepared)) for task in sorted(tasks, key=smallest_first_key)]
        if self._quality(second) > first_quality:
            return self.repair(second)
        self.undo(second)
        return self.repair([(task, self.place(task.prepared)) for task in tasks])

    def repair(
        self, placed: list[tuple[ReplicaTask, ScoredCandidate | None]]
    ) -> list[tuple[ReplicaTask, ScoredCandidate | None]]:
        """Local search for unplaced replicas, smallest first: lift one bigger placed replica of the same
        priority whose devices could take it, place the unplaced one, re-place the lifted one; keep the move
        only when both land (one more replica placed), else put everything back."""
        placed = list(placed)
        waiting = sorted(
            (i for i, (task, chosen) in enumerate(placed) if chosen is None and task.prepared.error is None),
            key=lambda i: smallest_first_key(placed[i][0]),
        )
        work = 0
        for ui in waiting:
            task = placed[ui][0]
            priority = task.prepared.deployment.priority
            size = task.prepared.size_key()
            classes = {option.class_id for option in task.prepared.options + task.prepared.multi_node_options}
            for vi, (victim, chosen) in enumerate(placed):
                work += 1
                if work > MAX_REPAIR_WORK:
                    return placed
                if (
                    chosen is None
                    or victim.prepared.deployment.priority != priority
                    or victim.prepared.size_key() <= size
                    or chosen.candidate.class_id not in classes
                ):
                    continue
                work += PLACE_ATTEMPT_WORK
                self.undo([(victim, chosen)])
                mine = self.place(task.prepared)
                if mine is not None:
                    moved = self.place(victim.prepared)
                    if moved is not None:  # both fit: one more placed, nothing lost
                        placed[ui] = (task, mine)
                        placed[vi] = (victim, moved)
                        break
                    # the lifted one is bigger: two smaller waiting replicas in its room are still one more
                    second = self._place_another(placed, waiting, ui)
                    if second is not None:
                        wi, other = second
                        placed[ui] = (task, mine)
                        placed[wi] = (placed[wi][0], other)
                        placed[vi] = (victim, None)
                        work += PLACE_ATTEMPT_WORK * len(waiting)
                        break
                    self.undo([(task, mine)])
                self.apply(victim.prepared.name, chosen.candidate)
            else:
                work = self._make_room(placed, ui, work)
                if work > MAX_REPAIR_WORK:
                    return placed
        return placed

    def _make_room(self, placed: list[tuple[ReplicaTask, ScoredCandidate | None]], ui: int, work: int) -> int:
        """Clear the GPUs a waiting replica needs: lift the replicas (same or lower priority) on the
        least-loaded fitting devices, place the waiting one, re-place every lifted one elsewhere. Kept only
        when all of them land. Returns the work done so far."""
        task = placed[ui][0]
        priority = task.prepared.deployment.priority
        cluster = self.state.cluster
        free = self.state.free
        on_device: dict[int, list[int]] = {}
        for vi, (_victim, chosen) in enumerate(placed):
            if chosen is not None and chosen.candidate.class_id is not None:
                for _, gids in chosen.candidate.node_gids:
                    for g in gids:
                        on_device.setdefault(g, []).append(vi)
        work += len(placed)
        spots = []
        for option in task.prepared.options:
            tp = option.tps[0]
            claim = task.prepared.demand(option, tp).claim_bytes
            for node in cluster.class_nodes.get(option.class_id, []):
                if task.prepared.eligible_nodes is not None and node not in task.prepared.eligible_nodes:
                    continue
                work += len(cluster.nodes[node].gids_by_class[option.class_id])
                if work > MAX_REPAIR_WORK:
                    return work
                fitting = []
                for g in cluster.nodes[node].gids_by_class[option.class_id]:
                    if task.prepared.eligible_gids is not None and g not in task.prepared.eligible_gids:
                        continue
                    victims = on_device.get(g, [])
                    if any(placed[vi][0].prepared.deployment.priority > priority for vi in victims):
                        continue
                    lifted = sum(placed[vi][1].candidate.claim for vi in victims)  # type: ignore[union-attr]
                    if free[g] + lifted >= claim:
                        fitting.append((lifted, g))
                if len(fitting) >= tp:
                    fitting.sort()
                    chosen_devices = fitting[:tp]
                    spots.append((sum(lifted for lifted, _ in chosen_devices), node, [g for _, g in chosen_devices]))
        spots.sort()
        for _, _, gids in spots[:TOPOLOGY_LOOKAHEAD_NODES]:
            victims = sorted({vi for g in gids for vi in on_device.get(g, [])})
            work += PLACE_ATTEMPT_WORK * (1 + len(victims))
            if work > MAX_REPAIR_WORK:
                return work
            lifted = [placed[vi] for vi in victims]
            self.undo(lifted)
            mine = self.place(task.prepared)
            replaced: list[tuple[int, ScoredCandidate]] = []
            if mine is not None:
                for vi in sorted(victims, key=lambda i: order_key(placed[i][0])):
                    again = self.place(placed[vi][0].prepared)
                    if again is None:
                        break
                    replaced.append((vi, again))
            if mine is not None and len(replaced) == len(victims):
                placed[ui] = (task, mine)
                for vi, again in replaced:
                    placed[vi] = (placed[vi][0], again)
                return work
            self.undo([(placed[vi][0], again) for vi, again in replaced])
            if mine is not None:
                self.undo([(task, mine)])
            for victim, chosen in lifted:
                assert chosen is not None
                self.apply(victim.prepared.name, chosen.candidate)
        return work

    def _place_another(
        self, placed: list[tuple[ReplicaTask, ScoredCandidate | None]], waiting: list[int], taken: int
    ) -> tuple[int, ScoredCandidate] | None:
        """Place the first still-waiting replica (smallest first) other than ``taken``."""
        for wi in waiting:
            if wi == taken or placed[wi][1] is not None:
                continue
            chosen = self.place(placed[wi][0].prepared)
            if chosen is not None:
                return wi, chosen
        return None

    def _quality(self, placed: list[tuple[ReplicaTask, ScoredCandidate | None]]) -> tuple:
        tiers: dict[int, int] = {}
        for task, chosen in placed:
            if chosen is not None:
                priority = task.prepared.deployment.priority
                tiers[priority] = tiers.get(priority, 0) + 1
        by_tier = tuple(
            tiers.get(p, 0) for p in sorted({t.prepared.deployment.priority for t, _ in placed}, reverse=True)
        )
        gpus = sum(1 for users in self.state.users if users)
        nodes = sum(1 for users in self.state.node_users if users)
        return (*by_tier, -gpus, -nodes)

    def undo(self, placed: list[tuple[ReplicaTask, ScoredCandidate | None]]) -> None:
        for task, chosen in reversed(placed):
            if chosen is None:
                continue
            candidate = chosen.candidate
            if candidate.class_id is None:
                self.state.claim_host(task.prepared.name, candidate.node_gids[0][0], candidate.claim, sign=-1)
            else:
                self.state.release(task.prepared.name, candidate.node_gids, candidate.claim)

    def place(self, prepared: PreparedDeployment) -> ScoredCandidate | None:
        candidates = self.candidates(prepared)
        if not candidates:
            return None
        chosen = self.pipeline.select(candidates, self.state, prepared.name, prepared.deployment.mode)
        self.apply(prepared.name, chosen.candidate)
        return chosen

    def apply(self, deployment: str, candidate: Candidate) -> None:
        if candidate.class_id is None:
            self.state.claim_host(deployment, candidate.node_gids[0][0], candidate.claim)
        else:
            self.state.claim(deployment, candidate.node_gids, candidate.claim)

    # --- device choice -------------------------------------------------------------------------------

    def pick_devices(
        self,
        prepared: PreparedDeployment,
        option: ClassOption,
        tp: int,
        pp: int,
        claim: int,
        avoid: dict[int, int] | None,
    ) -> list[tuple[int, list[int]]] | None:
        """Best fit: ``pp`` distinct nodes, each with ``tp`` devices of the class having ≥ claim free."""
        if prepared.eligible_gids is not None:
            return self._scan_pick(prepared, option, tp, pp, claim, avoid)
        scope_key, scope = prepared.scope_key, prepared.eligible_nodes
        if tp == 1 and pp == 1:
            index = self.state.device_index(option.class_id, scope_key, scope)
            own_node = shared_gpu = None  # fallbacks: another GPU of a node it is on; a GPU it is on
            node_of = self.state.cluster.dev_node
            avoid_gpus = self._avoid_gpus
            for _, gid in index.irange((claim, -1)):
                node = node_of[gid]
                if avoid_gpus and gid in avoid_gpus:
                    if shared_gpu is None:
                        shared_gpu = (node, [gid])
                    continue
                if avoid and node in avoid:
                    if own_node is None:
                        own_node = (node, [gid])
                    continue
                return [(node, [gid])]
            fallback = own_node or shared_gpu
            return [fallback] if fallback is not None else None
        index = self.state.kth_index(option.class_id, tp, scope_key, scope)
        chosen: list[tuple[int, list[int]]] = []
        avoided: list[tuple[int, list[int]]] = []
        looked = 0
        first: tuple[int, list[int]] | None = None
        grouped = self.state.cluster.class_has_groups[option.class_id]
        for _, node in index.irange((claim, -1)):
            gids, single_group = self._devices_on_node(node, option.class_id, tp, claim, None)
            single_group = single_group or not grouped  # no NVLink anywhere in the class: nothing to prefer
            if pp == 1:
                if avoid and node in avoid:
                    if not avoided:
                        avoided.append((node, gids))
                    continue
                if single_group:
                    return [(node, gids)]
                if first is None:
                    first = (node, gids)
                looked += 1
                if looked >= TOPOLOGY_LOOKAHEAD_NODES:
                    break
                continue
            chosen.append((node, gids))
            if len(chosen) == pp:
                return sorted(chosen)
        if pp == 1:
            if first is not None:
                return [first]
            return avoided or None
        return None

    def _scan_pick(
        self,
        prepared: PreparedDeployment,
        option: ClassOption,
        tp: int,
        pp: int,
        claim: int,
        avoid: dict[int, int] | None,
    ) -> list[tuple[int, list[int]]] | None:
        """The same rule as the indices, by scanning the few devices a UUID selector allows."""
        cluster = self.state.cluster
        allowed = prepared.eligible_gids or frozenset()
        nodes = sorted({cluster.dev_node[g] for g in allowed if cluster.dev_class[g] == option.class_id})
        ranked = []
        for node in nodes:
            if prepared.eligible_nodes is not None and node not in prepared.eligible_nodes:
                continue
            gids, single = self._devices_on_node(node, option.class_id, tp, claim, allowed)
            if len(gids) < tp:
                continue
            kth = min(self.state.free[g] for g in gids) if tp > 1 else self.state.free[gids[0]]
            ranked.append((bool(avoid and node in avoid), not single, kth, node, gids))
        ranked.sort()
        if len(ranked) < pp:
            return None
        return sorted((node, gids) for *_, node, gids in ranked[:pp])

    def _devices_on_node(
        self, node: int, class_id: int, tp: int, claim: int, allowed: frozenset[int] | None
    ) -> tuple[list[int], bool]:
        """The ``tp`` tightest devices with ≥ claim free, inside one topology group when one has enough."""
        cluster = self.state.cluster
        free = self.state.free
        fitting = [
            (free[g], g)
            for g in cluster.nodes[node].gids_by_class[class_id]
            if free[g] >= claim and (allowed is None or g in allowed)
        ]
        fitting.sort()
        if tp == 1:
            return ([fitting[0][1]] if fitting else []), True
        groups: dict[str | None, list[int]] = {}
        for _, g in fitting:
            groups.setdefault(cluster.dev_group[g], []).append(g)
        best: list[int] | None = None
        for group, members in sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or "")):
            if group is None or len(members) < tp:
                continue
            pick = members[:tp]
            if best is None or sum(free[g] for g in pick) < sum(free[g] for g in best):
                best = pick
        if best is not None:
            return sorted(best, key=lambda g: cluster.dev_index[g]), True
        pick = [g for _, g in fitting[:tp]]
        return sorted(pick, key=lambda g: cluster.dev_index[g]), False

    def pick_cpu(self, prepared: PreparedDeployment, avoid: dict[int, int] | None) -> int | None:
        index = self.state.cpu_index()
        fallback = None
        for _, node in index.irange((prepared.cpu_host_bytes, -1)):
            if prepared.eligible_nodes is not None and node not in prepared.eligible_nodes:
                continue
            if avoid and node in avoid:
                fallback = node if fallback is None else fallback
                continue
            return node
        return fallback
