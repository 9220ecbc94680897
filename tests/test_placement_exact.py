"""The exact solver: optimal where the heuristic is not, lexicographic objective, bounded time."""

from __future__ import annotations

import time

from placement_helpers import H100, TEST_GPU, dep, inventory, len_factory, node, stub_factory

from gpustack_pulumi.placement import plan
from gpustack_pulumi.placement.models import Deployment


def _bin_packing_instance() -> list[Deployment]:
    # Two 10 GiB GPUs, items 5, 4, 3, 3, 3, 2 GiB (LenDemand: claim = max_model_len GiB). Best fit decreasing
    # and smallest-first both place 5; the optimum places all 6 (5+3+2 and 4+3+3).
    return [
        dep("five", max_model_len=5),
        dep("four", max_model_len=4),
        dep("three", max_model_len=3, replicas=3),
        dep("two", max_model_len=2),
    ]


def test_exact_solver_finds_the_optimum_the_heuristic_misses():
    inv = inventory(node("n", TEST_GPU, 2))
    heuristic = plan(inv, _bin_packing_instance(), demand_factory=len_factory, exact=False)
    exact = plan(inv, _bin_packing_instance(), demand_factory=len_factory, exact=True)
    assert heuristic.summary.placed == 5
    assert (exact.summary.placed, exact.summary.method, exact.summary.proven_optimal) == (6, "exact", True)
    assert heuristic.summary.proven_optimal is None
    assert exact.replicas[0].reason.startswith("exact binpack:")
    # small problems use the exact solver by default
    assert plan(inv, _bin_packing_instance(), demand_factory=len_factory).to_json() == exact.to_json()


def test_exact_solver_minimises_gpus_then_nodes_after_placing_everything():
    inv = inventory(node("n1", H100, 2), node("n2", H100, 2))
    result = plan(
        inv,
        [dep("a", replicas=6, pack_replicas=True), dep("b", model="Qwen/Qwen3-8B", replicas=2, pack_replicas=True)],
        demand_factory=stub_factory,
        exact=True,
    )
    # 6 × 5 + 2 × 20 = 70 GiB fit on one 80 GiB GPU
    assert (result.summary.placed, result.summary.gpus_used, result.summary.nodes_used) == (8, 1, 1)


def test_exact_solver_respects_priority_tiers():
    # One replica of priority 1 outweighs any number of priority 0 ones.
    inv = inventory(node("n", TEST_GPU, 1))
    deployments = [dep("many", max_model_len=2, replicas=5), dep("vip", max_model_len=9, priority=1)]
    result = plan(inv, deployments, demand_factory=len_factory, exact=True)
    assert [r.deployment for r in result.replicas] == ["vip"]


def test_exact_solver_stays_within_its_time_budget():
    inv = inventory(*(node(f"n{i}", H100, 8) for i in range(8)))  # 64 GPUs
    deployments = [
        dep(f"d{i}", model=m, replicas=4)
        for i, m in enumerate(["Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B", "Qwen/Qwen3-32B", "openai/gpt-oss-120b"] * 6)
    ]
    plan(inventory(node("warm", TEST_GPU, 1)), [dep("w")], demand_factory=stub_factory, exact=True)  # import
    budget = 0.5
    started = time.perf_counter()
    result = plan(inv, deployments, demand_factory=stub_factory, exact=True, time_budget_s=budget)
    elapsed = time.perf_counter() - started
    assert elapsed < budget * 1.5  # the solver's own limit is 80 % of what is left of the budget
    assert result.summary.placed > 0
    # the solver stops on a work limit, not the clock: the same inputs give the same plan
    again = plan(inv, deployments, demand_factory=stub_factory, exact=True, time_budget_s=budget)
    assert again.to_json() == result.to_json()
