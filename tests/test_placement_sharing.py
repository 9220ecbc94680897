"""GPU sharing, existing allocations, foreign memory, sizing (TP/PP/multi-node) and heterogeneous fleets."""

from __future__ import annotations

import pytest
from gpustack_runtime.wire import Allocation
from placement_helpers import (
    A10G,
    GIB,
    H100,
    L40S,
    assert_capacity_respected,
    claimed_per_device,
    dep,
    inventory,
    node,
    stub_factory,
    where,
)

from gpustack_pulumi.placement import plan


def test_small_models_share_one_gpu_and_fractions_sum_within_the_device():
    inv = inventory(node("n1", H100, 2))
    result = plan(inv, [dep("small", replicas=10, pack_replicas=True)], demand_factory=stub_factory)
    assert result.summary.placed == 10
    assert all(v == [("n1", [0])] for v in where(result).values())
    assert all(r.memory_fraction == round(5 * GIB / (80 * GIB), 3) for r in result.replicas)
    assert sum(r.memory_fraction for r in result.replicas) <= 1.0
    assert claimed_per_device(result) == {("n1", 0): 50 * GIB}
    assert result.summary.gpus_used == 1


def test_foreign_memory_in_use_is_respected():
    # 70 GiB used by a process no allocation explains: only 10 GiB left → two 5 GiB replicas.
    inv = inventory(node("n1", H100, 1, used_gib={0: 70}))
    result = plan(inv, [dep("small", replicas=3)], demand_factory=stub_factory)
    assert result.summary.placed == 2
    assert [u.replica for u in result.unplaced] == [2]
    assert_capacity_respected(result, inv)


def test_existing_allocations_of_others_are_respected_and_own_ones_are_not():
    other = Allocation(owner="other-stack/embedder", device_indices=[0], memory_bytes_per_device=60 * GIB)
    inv = inventory(node("n1", H100, 1, allocations=[other], used_gib={0: 60}))
    result = plan(inv, [dep("small", replicas=5)], demand_factory=stub_factory)
    assert result.summary.placed == 4  # 20 GiB left for 5 GiB replicas
    assert_capacity_respected(result, inv)

    own = Allocation(owner="mystack/small", device_indices=[0], memory_bytes_per_device=60 * GIB)
    inv_own = inventory(node("n1", H100, 1, allocations=[own], used_gib={0: 60}))
    assert plan(inv_own, [dep("small", replicas=5)], demand_factory=stub_factory).summary.placed == 4
    mine = plan(inv_own, [dep("small", replicas=5)], demand_factory=stub_factory, own_owner_prefix="mystack/")
    assert mine.summary.placed == 5  # our own allocation is what the previous plan accounts for


def test_smallest_tp_that_fits_per_product():
    # Qwen3-32B: 71 GiB at TP1 fits an 80 GiB H100, not a 48 GiB L40S (TP2: 36 GiB each).
    inv = inventory(node("h", H100, 1), node("l", L40S, 2))
    result = plan(inv, [dep("big", model="Qwen/Qwen3-32B", replicas=2)], demand_factory=stub_factory)
    shapes = sorted(
        (r.placements[0].node, r.tensor_parallel_size, r.placements[0].memory_bytes_per_device) for r in result.replicas
    )
    assert shapes == [("h", 1, 71 * GIB), ("l", 2, 36 * GIB)]
    fractions = {r.placements[0].node: r.memory_fraction for r in result.replicas}
    assert fractions == {"h": round(71 / 80, 3), "l": round(36 / 48, 3)}


def test_tp_must_divide_heads_so_three_gpus_are_never_used():
    # 32B does not fit 24 GiB A10Gs at TP1/TP2; TP3 is invalid (64 heads): unplaced, with the numbers.
    inv = inventory(node("a", A10G, 3))
    result = plan(inv, [dep("big", model="Qwen/Qwen3-32B")], demand_factory=stub_factory)
    assert result.summary.placed == 0
    (unplaced,) = result.unplaced
    assert unplaced.constraint == "DeviceMemory"
    assert "needs 36.00 GiB per GPU at TP=2" in unplaced.reason
    assert "24.00 GiB" in unplaced.reason


@pytest.mark.parametrize("exact", [False, True])
def test_same_topology_group_is_preferred(exact):
    # GLM-4.5-Air: 51 GiB per GPU at TP4. GPU 0 has 40 GiB used by someone else, so the NVLink group g0
    # (0-3) has only 3 fitting GPUs; the whole of g1 (4-7) is chosen rather than the tightest four [1-4].
    groups = ["g0"] * 4 + ["g1"] * 4
    inv = inventory(node("n", H100, 8, groups=groups, used_gib={0: 40}))
    result = plan(inv, [dep("glm", model="zai-org/GLM-4.5-Air")], demand_factory=stub_factory, exact=exact)
    (replica,) = result.replicas
    assert replica.tensor_parallel_size == 4
    assert replica.placements[0].device_indices == [4, 5, 6, 7]
    assert "all in topology group g1" in replica.reason


def test_multi_node_only_when_no_single_node_holds_it_and_unequal_nodes_are_fine():
    # 235B: 126 GiB per GPU at TP4 → no 4- or 6-GPU node holds it; TP4 × PP2 across a 4- and a 6-GPU node.
    inv = inventory(node("four", H100, 4), node("six", H100, 6))
    result = plan(inv, [dep("huge", model="Qwen/Qwen3-235B-A22B")], demand_factory=stub_factory)
    (replica,) = result.replicas
    assert (replica.tensor_parallel_size, replica.pipeline_parallel_size) == (4, 2)
    assert sorted(p.node for p in replica.placements) == ["four", "six"]
    assert all(len(p.device_indices) == 4 for p in replica.placements)
    assert "no single node can hold it" in replica.reason

    # With an 8-GPU node present, the replica stays on one node (TP8) instead.
    inv8 = inventory(node("four", H100, 4), node("six", H100, 6), node("eight", H100, 8))
    (single,) = plan(inv8, [dep("huge", model="Qwen/Qwen3-235B-A22B")], demand_factory=stub_factory).replicas
    assert (single.tensor_parallel_size, single.pipeline_parallel_size) == (8, 1)
    assert [p.node for p in single.placements] == ["eight"]


def test_real_memory_models_size_vllm_and_sglang_replicas():
    """Without a stub: the engine memory models decide the fraction and the claim."""
    from gpustack_pulumi.analysis import analyze
    from gpustack_pulumi.placement.memory import MemoryRequest, memory_model

    inv = inventory(node("h", H100, 1))
    result = plan(
        inv,
        [
            dep("v", model="Qwen/Qwen3-8B", max_model_len=8192),
            dep("s", model="Qwen/Qwen3-8B", max_model_len=8192, engine="sglang"),
        ],
    )
    assert result.summary.placed == 2
    by_engine = {r.engine: r for r in result.replicas}
    profile = analyze("Qwen/Qwen3-8B")
    model = memory_model("vllm")
    request = MemoryRequest(tp=1, max_model_len=8192, concurrency=1)
    fraction = model.min_fraction(profile, request, gpu_memory_bytes=80 * GIB)
    assert by_engine["vllm"].memory_fraction == fraction
    claim = model.claim_bytes(
        profile, request.model_copy(update={"memory_fraction": fraction}), gpu_memory_bytes=80 * GIB
    )
    assert claim <= by_engine["vllm"].placements[0].memory_bytes_per_device < claim + 2**20
    assert_capacity_respected(result, inv)


def test_exact_solver_keeps_each_replica_inside_one_nvlink_group():
    # Two TP4 replicas on an 8-GPU node with two 4-GPU cliques: each replica takes one whole clique.
    groups = ["g0"] * 4 + ["g1"] * 4
    inv = inventory(node("n", H100, 8, groups=groups))
    result = plan(inv, [dep("glm", model="zai-org/GLM-4.5-Air", replicas=2)], demand_factory=stub_factory, exact=True)
    assert result.summary.method == "exact"
    assert sorted(r.placements[0].device_indices for r in result.replicas) == [[0, 1, 2, 3], [4, 5, 6, 7]]
