"""Unplaced replicas name the constraint and the numbers: needed vs best available, where."""

from __future__ import annotations

from placement_helpers import H100, L40S, dep, inventory, node, stub_factory

from gpustack_pulumi.placement import plan


def _only_unplaced(result):
    assert result.summary.placed == 0
    (unplaced,) = result.unplaced
    return unplaced


def test_insufficient_memory_names_requested_and_best_available_per_product():
    inv = inventory(node("h", H100, 1, used_gib={0: 70}), node("l", L40S, 1, used_gib={0: 40}))
    unplaced = _only_unplaced(plan(inv, [dep("b", model="Qwen/Qwen3-8B")], demand_factory=stub_factory))
    assert unplaced.constraint == "InsufficientMemory"
    assert (
        "NVIDIA H100 80GB HBM3: requested 20.00 GiB on 1 GPU (vllm TP=1), best available 10.00 GiB free on "
        "h GPU 0 (used 70.00 of 80.00 GiB)" in unplaced.reason
    )
    assert (
        "NVIDIA L40S: requested 20.00 GiB on 1 GPU (vllm TP=1), best available 8.00 GiB free on l GPU 0"
        in unplaced.reason
    )


def test_insufficient_memory_for_multi_gpu_counts_the_gpus_that_would_do():
    inv = inventory(node("l", L40S, 2, used_gib={1: 30}))  # 32B needs TP2 × 36 GiB on 48 GiB L40S
    unplaced = _only_unplaced(plan(inv, [dep("c", model="Qwen/Qwen3-32B")], demand_factory=stub_factory))
    assert unplaced.constraint == "InsufficientMemory"
    assert (
        "requested 36.00 GiB on each of 2 GPUs on one node (vllm TP=2), best node l has 1 such GPU(s), "
        "its 2nd freest 18.00 GiB" in unplaced.reason
    )


def test_model_too_big_for_any_device():
    unplaced = _only_unplaced(
        plan(inventory(node("l", L40S, 1)), [dep("c", model="Qwen/Qwen3-32B")], demand_factory=stub_factory)
    )
    assert unplaced.constraint == "DeviceMemory"
    assert (
        "needs 71.00 GiB per GPU at TP=1 (the most NVIDIA L40S on one node) but a GPU has 48.00 GiB" in unplaced.reason
    )


def test_unknown_model_and_impossible_context():
    inv = inventory(node("h", H100, 1))
    unknown = _only_unplaced(plan(inv, [dep("x", model="no-such/model")], demand_factory=stub_factory))
    assert unknown.constraint == "ModelAnalysis"
    assert "no-such/model" in unknown.reason
    too_long = _only_unplaced(plan(inv, [dep("y", max_model_len=10**7)], demand_factory=stub_factory))
    assert too_long.constraint == "ModelConfig"
    assert "max_model_len 10000000 exceeds the model's maximum context 40960" in too_long.reason


def test_every_replica_gets_its_own_entry_and_the_plan_still_places_the_rest():
    inv = inventory(node("h", H100, 1))
    result = plan(inv, [dep("big", model="Qwen/Qwen3-32B", replicas=3)], demand_factory=stub_factory)
    assert [r.replica for r in result.replicas] == [0]
    assert [(u.replica, u.constraint) for u in result.unplaced] == [
        (1, "InsufficientMemory"),
        (2, "InsufficientMemory"),
    ]
