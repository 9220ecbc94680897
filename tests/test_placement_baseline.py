"""The GPUStack baseline follows GPUStack's documented rules; the planner beats it on sharing."""

from __future__ import annotations

from placement_helpers import GIB, H100, L40S, dep, inventory, node

from gpustack_pulumi.analysis import analyze
from gpustack_pulumi.placement import plan
from gpustack_pulumi.placement.baseline_gpustack import gpustack_claim, gpustack_plan


def test_gpustack_claim_formula():
    # policies/utils.py: int(weights × 1.2) + 2 GiB
    assert gpustack_claim(10 * GIB) == int(12 * GIB) + 2 * GIB


def test_gpustack_gives_every_vllm_replica_whole_gpus():
    inv = inventory(node("n", H100, 2))
    deployments = [dep("small", replicas=10, max_model_len=8192, pack_replicas=True)]
    baseline = gpustack_plan(inv, deployments)
    assert baseline.summary.placed == 2  # one replica per GPU: allocatable falls to 10 % after the first
    assert {r.placements[0].memory_bytes_per_device for r in baseline.replicas} == {int(80 * GIB * 0.9)}
    ours = plan(inv, deployments)
    assert ours.summary.placed == 10
    assert ours.summary.gpus_used == 1


def test_gpustack_uses_two_gpus_where_the_kv_aware_planner_needs_one():
    # Qwen3-32B bf16: 61 GiB × 1.2 + 2 GiB = 75.2 GiB > 0.9 × 80 GiB → GPUStack takes 2 GPUs.
    inv = inventory(node("n", H100, 2))
    deployments = [dep("big", model="Qwen/Qwen3-32B", max_model_len=8192)]
    assert gpustack_claim(analyze("Qwen/Qwen3-32B").weight_bytes) > 0.9 * 80 * GIB
    (baseline,) = gpustack_plan(inv, deployments).replicas
    assert baseline.tensor_parallel_size == 2
    (ours,) = plan(inv, deployments).replicas
    assert ours.tensor_parallel_size == 1


def test_never_fewer_replicas_than_gpustack_on_a_mixed_workload():
    inv = inventory(node("h", H100, 4), node("l", L40S, 4))
    deployments = [
        dep("a", replicas=6, max_model_len=8192),
        dep("b", model="Qwen/Qwen3-8B", replicas=4, max_model_len=8192),
        dep("c", model="Qwen/Qwen3-32B", replicas=2, max_model_len=8192),
        dep("d", model="openai/gpt-oss-120b", replicas=1, max_model_len=8192),
    ]
    baseline = gpustack_plan(inv, deployments)
    ours = plan(inv, deployments)
    assert ours.summary.placed >= baseline.summary.placed
    assert ours.summary.placed == sum(d.replicas for d in deployments)
