"""Compatibility (FP8, MindIE, llama.cpp on CPU), selectors, binpack vs spread, and priority."""

from __future__ import annotations

import pytest
from placement_helpers import (
    A10G,
    ASCEND,
    GIB,
    H100,
    L40S,
    TINY_GGUF,
    claimed_per_device,
    dep,
    inventory,
    node,
    stub_factory,
    where,
)

from gpustack_pulumi.placement import plan


@pytest.mark.parametrize("fields", [{"quantization": "fp8"}, {"kv_cache_dtype": "fp8_e4m3"}])
def test_fp8_needs_compute_capability_8_9(fields):
    inv = inventory(node("ampere", A10G, 2), node("ada", L40S, 1))
    result = plan(inv, [dep("q", model="Qwen/Qwen3-8B", **fields)], demand_factory=stub_factory)
    assert [p.node for r in result.replicas for p in r.placements] == ["ada"]

    only_ampere = plan(
        inventory(node("ampere", A10G, 2)), [dep("q", model="Qwen/Qwen3-8B", **fields)], demand_factory=stub_factory
    )
    (unplaced,) = only_ampere.unplaced
    assert unplaced.constraint == "Fp8Capability"
    assert "compute capability ≥ 8.9" in unplaced.reason and "has 8.6" in unplaced.reason


def test_mindie_runs_only_on_ascend_and_auto_picks_it_there():
    nvidia = plan(inventory(node("n", H100, 1)), [dep("m", engine="mindie")], demand_factory=stub_factory)
    (unplaced,) = nvidia.unplaced
    assert unplaced.constraint == "EngineDevice"
    assert "mindie does not run on nvidia" in unplaced.reason

    ascend_inv = inventory(node("npu", ASCEND, 2, vendor="ascend"))
    placed = plan(ascend_inv, [dep("m", engine="mindie"), dep("auto")], demand_factory=stub_factory)
    assert sorted(r.engine for r in placed.replicas) == ["mindie", "mindie"]


def test_llama_cpp_runs_cpu_only_on_a_node_without_devices():
    inv = inventory(node("cpu", host_gib=64))
    result = plan(
        inv, [dep("l", TINY_GGUF, max_model_len=512, engine="llama.cpp", replicas=2)], demand_factory=stub_factory
    )
    assert [(r.engine, r.placements[0].node, r.placements[0].device_indices) for r in result.replicas] == [
        ("llama.cpp", "cpu", []),
        ("llama.cpp", "cpu", []),
    ]
    # host bytes: the stub demand of a model outside its table (1 GiB) plus its overhead (1 GiB)
    assert result.replicas[0].placements[0].memory_bytes_per_device == 2 * GIB
    assert result.replicas[0].memory_fraction is None

    vllm = plan(inv, [dep("v", engine="vllm")], demand_factory=stub_factory)
    assert vllm.unplaced[0].constraint == "EngineDevice"
    assert "CPU-only nodes run llama.cpp only" in vllm.unplaced[0].reason


def test_auto_engine_runs_a_gguf_model_with_llama_cpp(tmp_path):
    from gpustack_pulumi.tinymodel import main as write_tiny_gguf

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf([str(path)])
    result = plan(inventory(node("cpu", host_gib=8)), [dep("g", model=str(path), max_model_len=256)])
    (replica,) = result.replicas
    assert replica.engine == "llama.cpp"
    assert replica.placements[0].device_indices == []


def test_node_selector_and_gpu_selector_by_product_and_uuid():
    inv = inventory(
        node("a", H100, 2, labels={"pool": "a"}),
        node("b", L40S, 2, labels={"pool": "b"}),
    )
    by_label = plan(inv, [dep("x", replicas=3, node_selector={"pool": "b"})], demand_factory=stub_factory)
    assert {p.node for r in by_label.replicas for p in r.placements} == {"b"}

    by_product = plan(inv, [dep("x", replicas=2, gpu_selector=["L40S"])], demand_factory=stub_factory)
    assert {p.node for r in by_product.replicas for p in r.placements} == {"b"}

    by_uuid = plan(inv, [dep("x", replicas=2, gpu_selector=["GPU-a-1"])], demand_factory=stub_factory)
    assert set(map(tuple, (p for v in where(by_uuid).values() for p in [(v[0][0], tuple(v[0][1]))]))) == {("a", (1,))}

    nothing = plan(inv, [dep("x", node_selector={"pool": "z"})], demand_factory=stub_factory)
    assert nothing.unplaced[0].constraint == "NodeSelector"
    assert "0/2 nodes match node_selector {'pool': 'z'}" in nothing.unplaced[0].reason


def test_binpack_fills_fewest_gpus_and_spread_uses_different_nodes():
    inv = inventory(node("n1", H100, 2), node("n2", H100, 2), node("n3", H100, 2))
    packed = [dep("web", replicas=3, pack_replicas=True)]
    for exact in (False, True):
        binpack = plan(inv, packed, demand_factory=stub_factory, exact=exact)
        assert (binpack.summary.gpus_used, binpack.summary.nodes_used) == (1, 1)
        for deployments in (packed, [dep("web", replicas=3)]):  # spread ignores pack_replicas
            spread = plan(inv, deployments, strategy="spread", demand_factory=stub_factory, exact=exact)
            assert sorted(p.node for r in spread.replicas for p in r.placements) == ["n1", "n2", "n3"]


@pytest.mark.parametrize("exact", [False, True])
def test_replicas_of_one_deployment_keep_to_distinct_gpus_and_nodes_where_room_allows(exact):
    # Two nodes of 4 GPUs: 3 replicas take 3 GPUs on both nodes (node apart where room allows, then GPU apart);
    # another deployment still packs onto GPUs in use (binpack between deployments).
    inv = inventory(node("n1", H100, 4), node("n2", H100, 4))
    result = plan(inv, [dep("web", replicas=3), dep("other", replicas=1)], demand_factory=stub_factory, exact=exact)
    web = [where(result)[("web", i)] for i in range(3)]
    devices = [(n, g) for placement in web for n, gids in placement for g in gids]
    assert len(set(devices)) == 3, devices  # no GPU holds two replicas of web
    assert {n for n, _ in devices} == {"n1", "n2"}  # both nodes used
    other = where(result)[("other", 0)]
    assert next((n, g) for n, gids in other for g in gids) in devices  # other deployments still pack
    # More replicas than GPUs: they share GPUs rather than stay unplaced, and every GPU holds one.
    crowded = plan(inventory(node("n1", H100, 2)), [dep("web", replicas=5)], demand_factory=stub_factory, exact=exact)
    assert crowded.summary.placed == 5
    assert set(claimed_per_device(crowded)) == {("n1", 0), ("n1", 1)}


@pytest.mark.parametrize("exact", [False, True])
def test_spread_spreads_at_gpu_level_too(exact):
    # One node of 8 GPUs: spread puts three replicas on three GPUs, not all on GPU 0.
    inv = inventory(node("h200", H100, 8))
    for pack in (False, True):
        result = plan(
            inv,
            [dep("web", replicas=3, pack_replicas=pack)],
            strategy="spread",
            demand_factory=stub_factory,
            exact=exact,
        )
        devices = {
            (n, g) for r in result.replicas for n, gids in where(result)[(r.deployment, r.replica)] for g in gids
        }
        assert len(devices) == 3


@pytest.mark.parametrize("exact", [False, True])
def test_priority_decides_who_wins(exact):
    # One 80 GiB GPU: 32B (71 GiB) or gpt-oss-120b (61 GiB), not both.
    inv = inventory(node("n", H100, 1))
    deployments = [
        dep("low", model="openai/gpt-oss-120b", priority=0),
        dep("high", model="Qwen/Qwen3-32B", priority=10),
    ]
    result = plan(inv, deployments, demand_factory=stub_factory, exact=exact)
    assert [r.deployment for r in result.replicas] == ["high"]
    (unplaced,) = result.unplaced
    assert unplaced.deployment == "low"
    assert unplaced.constraint == "InsufficientMemory"
    assert "requested 61.00 GiB on 1 GPU" in unplaced.reason
    assert "best available 9.00 GiB free on n GPU 0 (used 71.00 of 80.00 GiB)" in unplaced.reason


@pytest.mark.parametrize("exact", [False, True])
def test_llama_cpp_prefers_cpu_to_save_gpus_unless_mode_is_latency(exact):
    inv = inventory(node("gpu", H100, 1), node("cpu", host_gib=64))
    balanced = plan(
        inv, [dep("l", TINY_GGUF, max_model_len=512, engine="llama.cpp")], demand_factory=stub_factory, exact=exact
    )
    assert balanced.replicas[0].placements[0].node == "cpu"
    latency = plan(
        inv,
        [dep("l", TINY_GGUF, max_model_len=512, engine="llama.cpp", mode="latency")],
        demand_factory=stub_factory,
        exact=exact,
    )
    assert latency.replicas[0].placements[0].node == "gpu"
