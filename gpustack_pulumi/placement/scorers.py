"""Scorers: rank the feasible candidates of one replica (one best fit per device class and shape).

Each ``Scorer`` returns 0–100 (checked); the pipeline multiplies by the strategy's weight, sums, keeps the
per-scorer breakdown for the Plan reason, and breaks ties on (class, node, device) numbers, which follow
from the inventory's names. A registry maps scorer names to factories (k8s ``plugins/registry.go``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gpustack_pulumi.placement.cluster import ClusterState
from gpustack_pulumi.placement.models import Strategy

MAX_SCORE = 100


@dataclass
class Candidate:
    """One feasible way to place a replica now."""

    class_id: int | None  # None: CPU-only
    engine: str
    tp: int
    pp: int
    claim: int  # bytes per device (host bytes when CPU-only)
    fraction: float | None
    node_gids: list[tuple[int, list[int]]]  # (node, devices) per stage; devices empty when CPU-only
    detail: str

    @property
    def gpu_count(self) -> int:
        return sum(len(gids) for _, gids in self.node_gids)

    def tie_key(self) -> tuple:
        return (self.class_id if self.class_id is not None else -1, self.node_gids)


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, candidate: Candidate, state: ClusterState, deployment: str, mode: str) -> int:
        """0–100, higher is better; pure."""
        ...


class SmallestTensorParallel:
    """The smallest TP (and PP) that fits: fewer ranks, less communication."""

    name = "smallest-tp"

    def score(self, candidate: Candidate, state: ClusterState, deployment: str, mode: str) -> int:
        return MAX_SCORE // (candidate.tp * candidate.pp)


class FewestNewGpus:
    """Binpack: use GPUs that already hold replicas before opening empty ones."""

    name = "fewest-new-gpus"

    def score(self, candidate: Candidate, state: ClusterState, deployment: str, mode: str) -> int:
        count = candidate.gpu_count
        if count == 0:
            return MAX_SCORE
        new = sum(1 for _, gids in candidate.node_gids for g in gids if state.users[g] == 0)
        return MAX_SCORE * (count - new) // count


class FewestNewNodes:
    """Binpack: use nodes that already hold replicas before opening empty ones."""

    name = "fewest-new-nodes"

    def score(self, candidate: Candidate, state: ClusterState, deployment: str, mode: str) -> int:
        nodes = len(candidate.node_gids)
        new = sum(1 for node, _ in candidate.node_gids if state.node_users[node] == 0)
        return MAX_SCORE * (nodes - new) // nodes


class MostAllocated:
    """Best fit on GPUs already in use: the fuller after the claim the better (k8s MostAllocated). When the
    candidate opens empty GPUs, the roomiest wins instead: a big empty GPU takes more replicas later, so the
    fleet ends up using fewer GPUs (largest-bin-first for bins of several sizes)."""

    name = "most-allocated"

    def score(self, candidate: Candidate, state: ClusterState, deployment: str, mode: str) -> int:
        cluster = state.cluster
        if candidate.class_id is None:
            node = candidate.node_gids[0][0]
            total = cluster.nodes[node].host_total or 1
            free = (state.host_free.get(node) or 0) - candidate.claim
            return max(0, min(MAX_SCORE, MAX_SCORE * (total - free) // total))
        gids = [g for _, gids in candidate.node_gids for g in gids]
        opens = any(state.users[g] == 0 for g in gids)
        total_ratio = 0.0
        for g in gids:
            free_after = state.free[g] - candidate.claim
            total_ratio += free_after / cluster.dev_total[g] if opens else 1 - free_after / cluster.dev_total[g]
        return max(0, min(MAX_SCORE, int(MAX_SCORE * total_ratio / len(gids))))


class SameTopologyGroup:
    """All ranks of a node in one NVLink clique (topology group)."""

    name = "topology"

    def score(self, candidate: Candidate, state: ClusterState, deployment: str, mode: str) -> int:
        groups = state.cluster.dev_group
        for _, gids in candidate.node_gids:
            if len(gids) > 1 and (groups[gids[0]] is None or len({groups[g] for g in gids}) > 1):
                return 0
        return MAX_SCORE


class SpreadReplicas:
    """Spread: nodes holding fewer replicas of this deployment first."""

    name = "spread"

    def score(self, candidate: Candidate, state: ClusterState, deployment: str, mode: str) -> int:
        counts = state.dep_nodes.get(deployment, {})
        worst = max(counts.get(node, 0) for node, _ in candidate.node_gids)
        return MAX_SCORE // (1 + worst)


def spreads_replicas(pack_replicas: bool, strategy: str) -> bool:
    """Whether replicas of one deployment keep apart (distinct GPUs, and nodes where room allows): always under
    spread; under binpack unless the deployment asks to pack them."""
    return strategy == "spread" or not pack_replicas


class ReplicaAntiAffinity:
    """Availability: a replica away from the GPUs (100) and nodes (50 when only the node is shared) that
    already hold replicas of its deployment, unless the deployment packs its replicas (binpack only)."""

    name = "anti-affinity"

    def score(self, candidate: Candidate, state: ClusterState, deployment: str, mode: str) -> int:
        if deployment in state.packed:
            return MAX_SCORE
        gpus = state.dep_gpus.get(deployment, {})
        if any(g in gpus for _, gids in candidate.node_gids for g in gids):
            return 0
        nodes = state.dep_nodes.get(deployment, {})
        if any(node in nodes for node, _ in candidate.node_gids):
            return MAX_SCORE // 2
        return MAX_SCORE


class AcceleratorForLatency:
    """mode=latency: an accelerator beats a CPU-only node (llama.cpp is the engine that can do both)."""

    name = "accelerator-for-latency"

    def score(self, candidate: Candidate, state: ClusterState, deployment: str, mode: str) -> int:
        if mode == "latency" and candidate.class_id is None:
            return 0
        return MAX_SCORE


SCORER_REGISTRY: dict[str, Callable[[], Scorer]] = {
    scorer.name: scorer
    for scorer in (
        SmallestTensorParallel,
        FewestNewGpus,
        FewestNewNodes,
        MostAllocated,
        SameTopologyGroup,
        SpreadReplicas,
        ReplicaAntiAffinity,
        AcceleratorForLatency,
    )
}

# Weights per strategy. Ordered so that each heavier concern dominates: an accelerator for latency, then
# replicas of one deployment apart (distinct GPUs, then nodes), then (spread) distinct nodes, then the
# smallest TP, then not opening GPUs and nodes, then the NVLink clique, then the tightest fit.
STRATEGY_WEIGHTS: dict[str, dict[str, int]] = {
    "binpack": {
        "accelerator-for-latency": 128,
        "anti-affinity": 64,
        "smallest-tp": 16,
        "fewest-new-gpus": 8,
        "fewest-new-nodes": 4,
        "topology": 2,
        "most-allocated": 1,
    },
    "spread": {
        "accelerator-for-latency": 256,
        "anti-affinity": 128,
        "spread": 32,
        "smallest-tp": 16,
        "fewest-new-gpus": 8,
        "topology": 2,
        "most-allocated": 1,
    },
}


@dataclass(frozen=True)
class ScoredCandidate:
    candidate: Candidate
    total: int
    breakdown: tuple[tuple[str, int], ...]


class ScorePipeline:
    def __init__(self, strategy: Strategy, weights: dict[str, int] | None = None) -> None:
        chosen = weights if weights is not None else STRATEGY_WEIGHTS[strategy]
        unknown = sorted(set(chosen) - set(SCORER_REGISTRY))
        if unknown:
            raise ValueError(f"unknown scorers {unknown}; valid: {sorted(SCORER_REGISTRY)}")
        self.scorers = [(SCORER_REGISTRY[name](), weight) for name, weight in chosen.items()]

    def select(self, candidates: list[Candidate], state: ClusterState, deployment: str, mode: str) -> ScoredCandidate:
        """The best candidate; ties go to the lowest (class, node, devices)."""
        if len(candidates) == 1:
            return ScoredCandidate(candidates[0], 0, ())
        best: ScoredCandidate | None = None
        for candidate in candidates:
            breakdown = []
            total = 0
            for scorer, weight in self.scorers:
                value = scorer.score(candidate, state, deployment, mode)
                if not 0 <= value <= MAX_SCORE:
                    raise ValueError(f"scorer {scorer.name} returned {value}, outside 0–{MAX_SCORE}")
                breakdown.append((scorer.name, value))
                total += weight * value
            scored = ScoredCandidate(candidate, total, tuple(breakdown))
            if (
                best is None
                or total > best.total
                or (total == best.total and candidate.tie_key() < best.candidate.tie_key())
            ):
                best = scored
        assert best is not None
        return best
