"""Stability with a previous plan, incremental re-planning, and byte-identical output."""

from __future__ import annotations

import random

from placement_helpers import H100, L40S, dep, inventory, node, stub_factory, where

from gpustack_pulumi.placement import Plan, Planner, plan


def _fleet(nodes: int = 3):
    return inventory(*(node(f"n{i}", H100, 2) for i in range(nodes)), node("l", L40S, 2))


def _deployments():
    return [
        dep("a", replicas=4),
        dep("b", model="Qwen/Qwen3-8B", replicas=3),
        dep("c", model="Qwen/Qwen3-32B", replicas=2),
    ]


def test_same_inputs_give_byte_identical_json_whatever_the_input_order():
    inv = _fleet()
    first = plan(inv, _deployments(), demand_factory=stub_factory).to_json()
    assert plan(inv, _deployments(), demand_factory=stub_factory).to_json() == first
    shuffled_nodes = list(inv.nodes)
    random.Random(3).shuffle(shuffled_nodes)
    shuffled_deployments = list(reversed(_deployments()))
    again = plan(inv.model_copy(update={"nodes": shuffled_nodes}), shuffled_deployments, demand_factory=stub_factory)
    assert again.to_json() == first
    # a Plan survives a JSON round trip unchanged (the CLI's --previous)
    assert Plan.model_validate_json(first).to_json() == first


def test_unrelated_change_moves_nothing():
    inv = _fleet()
    before = plan(inv, _deployments(), demand_factory=stub_factory, exact=False)
    changed = [*_deployments(), dep("d", model="openai/gpt-oss-120b")]
    changed[1] = changed[1].model_copy(update={"replicas": 4})  # b scales up: its 3 replicas stay too
    after = plan(inv, changed, previous=before, demand_factory=stub_factory, exact=False)
    old = {key: replica for key, replica in zip(where(before), before.replicas, strict=True)}
    for replica in after.replicas:
        key = (replica.deployment, replica.replica)
        if key in old:
            assert replica == old[key]  # same place, same claim, same reason
    assert after.summary.kept == before.summary.placed
    assert after.summary.moved == 0


def test_a_replica_on_a_removed_node_moves_with_a_reason_and_nothing_else_moves():
    inv = _fleet()
    before = plan(
        inv,
        [dep("a", replicas=2), dep("b", model="Qwen/Qwen3-8B")],
        strategy="spread",
        demand_factory=stub_factory,
        exact=False,
    )
    lost = before.replicas[0].placements[0].node
    smaller = inv.model_copy(update={"nodes": [n for n in inv.nodes if n.name != lost]})
    after = plan(
        smaller,
        [dep("a", replicas=2), dep("b", model="Qwen/Qwen3-8B")],
        previous=before,
        strategy="spread",
        demand_factory=stub_factory,
        exact=False,
    )
    old = where(before)
    moved = [r for r in after.replicas if where(after)[(r.deployment, r.replica)] != old[(r.deployment, r.replica)]]
    assert [r.placements[0].node != lost for r in moved] == [True] * len(moved)
    assert all(f"node {lost} is no longer in the inventory" in r.reason for r in moved)
    assert len(moved) == sum(1 for r in before.replicas if r.placements[0].node == lost)
    assert after.summary.moved == len(moved)


def test_a_changed_deployment_is_resized_in_place_when_it_still_fits():
    inv = inventory(node("n", H100, 1))
    before = plan(inv, [dep("a")], demand_factory=stub_factory)
    after = plan(inv, [dep("a", concurrency=3)], previous=before, demand_factory=stub_factory)
    (replica,) = after.replicas
    assert replica.placements[0].device_indices == before.replicas[0].placements[0].device_indices
    assert replica.reason.startswith("kept in place, claim resized from 5.00 to 7.00 GiB")
    assert after.summary.kept == 1


def test_previous_replica_that_no_longer_fits_moves_and_says_why():
    inv = inventory(node("n1", H100, 1), node("n2", H100, 1))
    before = plan(inv, [dep("a")], demand_factory=stub_factory)
    home = before.replicas[0].placements[0].node
    crowded = inventory(
        node("n1", H100, 1, used_gib={0: 78} if home == "n1" else None),
        node("n2", H100, 1, used_gib={0: 78} if home == "n2" else None),
    )
    after = plan(crowded, [dep("a")], previous=before, demand_factory=stub_factory)
    (replica,) = after.replicas
    assert replica.placements[0].node != home
    assert replica.reason.startswith(f"moved from {home} GPU 0: needs 5.00 GiB, 2.00 GiB free now")


def test_incremental_planner_equals_planning_from_scratch():
    # > 64 GPUs, so the heuristic decides and the Planner re-plans incrementally.
    inv = inventory(*(node(f"n{i:02d}", H100, 8) for i in range(9)))
    deployments = [
        dep(f"d{i}", model=m, replicas=1 + i % 3)
        for i, m in enumerate(["Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B", "Qwen/Qwen3-32B"] * 8)
    ]
    planner = Planner(inv, demand_factory=stub_factory)
    first = planner.plan(deployments)
    changed = list(deployments)
    changed[4] = changed[4].model_copy(update={"replicas": 5, "concurrency": 4})
    del changed[7]
    incremental = planner.plan(changed, previous=first)
    scratch = plan(inv, changed, previous=first, demand_factory=stub_factory)
    assert incremental.to_json() == scratch.to_json()
    unrelated = {d.name for d in changed} - {changed[4].name}
    before = where(first)
    assert all(
        before[(r.deployment, r.replica)] == [(p.node, p.device_indices) for p in r.placements]
        for r in incremental.replicas
        if r.deployment in unrelated
    )


def test_higher_priority_preempts_a_kept_lower_priority_replica_and_says_so():
    inv = inventory(node("n", H100, 1))
    before = plan(inv, [dep("low", model="openai/gpt-oss-120b")], demand_factory=stub_factory)
    deployments = [dep("low", model="openai/gpt-oss-120b"), dep("high", model="Qwen/Qwen3-32B", priority=10)]
    for exact in (False, True):
        after = plan(inv, deployments, previous=before, demand_factory=stub_factory, exact=exact)
        assert [r.deployment for r in after.replicas] == ["high"]
        (unplaced,) = after.unplaced
        assert unplaced.deployment == "low"
        assert unplaced.reason.startswith("moved from n GPU 0: preempted by higher-priority high (priority 10)")
        assert after.summary.kept == 0


def test_lower_priority_replicas_that_still_fit_stay_in_place_after_preemption():
    inv = inventory(node("n1", H100, 1), node("n2", H100, 1))
    lows = [dep("low-a", model="openai/gpt-oss-120b"), dep("low-b", model="openai/gpt-oss-120b")]
    before = plan(inv, lows, strategy="spread", demand_factory=stub_factory)
    assert sorted(r.placements[0].node for r in before.replicas) == ["n1", "n2"]
    after = plan(
        inv,
        [*lows, dep("high", model="Qwen/Qwen3-32B", priority=1)],
        previous=before,
        demand_factory=stub_factory,
        exact=False,
    )
    assert after.summary.placed == 2
    survivor = next(r for r in after.replicas if r.deployment.startswith("low"))
    assert survivor in before.replicas  # untouched: same place, claim and reason
    (evicted,) = after.unplaced
    assert "preempted by higher-priority high (priority 1)" in evicted.reason
    assert after.summary.kept == 1
