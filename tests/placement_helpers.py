"""Builders for placement tests: capacity documents and a demand model with round, known numbers.

``StubDemand`` sizes a replica as ``GIB_AT_TP1[model] / (tp·pp)`` GiB per device (+1 GiB overhead), so a test
can state the expected packing in its head. Profiles (TP divisibility, GGUF detection) stay real: they come
from the catalog's shipped config.json files.
"""

from __future__ import annotations

import math
from pathlib import Path

from gpustack_runtime.wire import Allocation, CapacityDocument, DeviceCapacity, Inventory

from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.placement import Deployment, Plan
from gpustack_pulumi.placement.demand import DemandRequest, DeviceDemand
from gpustack_pulumi.placement.packing_mip import PackingKind

GIB = 1024**3
TINY_GGUF = str(Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny-llama.gguf")
"""A real (tiny) GGUF model: llama.cpp deployments need one."""

H100 = ("NVIDIA H100 80GB HBM3", 80 * GIB, "9.0")
L40S = ("NVIDIA L40S", 48 * GIB, "8.9")
A10G = ("NVIDIA A10G", 24 * GIB, "8.6")
ASCEND = ("910B3", 64 * GIB, None)

# Per-device GiB at TP=1 (whole model): the stub's only input.
GIB_AT_TP1 = {
    "Qwen/Qwen3-0.6B": 4,
    "Qwen/Qwen3-8B": 19,
    "Qwen/Qwen3-32B": 70,
    "openai/gpt-oss-120b": 60,
    "Qwen/Qwen3-235B-A22B": 500,
    "zai-org/GLM-4.5-Air": 200,
}
DEFAULT_GIB_AT_TP1 = 1  # models not in the table (a generated GGUF)
STUB_OVERHEAD_GIB = 1


def node(
    name: str,
    gpu: tuple[str, int, str | None] | None = None,
    count: int = 0,
    *,
    labels: dict[str, str] | None = None,
    groups: list[str | None] | None = None,
    used_gib: dict[int, float] | None = None,
    allocations: list[Allocation] | None = None,
    vendor: str = "nvidia",
    host_gib: int | None = None,
) -> CapacityDocument:
    devices = []
    for index in range(count if gpu else 0):
        assert gpu is not None
        product, memory, capability = gpu
        devices.append(
            DeviceCapacity(
                index=index,
                uuid=f"GPU-{name}-{index}",
                vendor=vendor,
                product=product,
                memory_total=memory,
                memory_used=int((used_gib or {}).get(index, 0) * GIB),
                memory_allocated=sum(a.memory_bytes_per_device for a in allocations or [] if index in a.device_indices),
                compute_capability=capability,
                topology_group=(groups[index] if groups else None),
            )
        )
    return CapacityDocument(
        name=name,
        labels=labels or {},
        devices=devices,
        allocations=allocations or [],
        memory_total=None if host_gib is None else host_gib * GIB,
    )


def inventory(*nodes: CapacityDocument) -> Inventory:
    return Inventory(nodes=list(nodes))


def dep(name: str, model: str = "Qwen/Qwen3-0.6B", replicas: int = 1, **fields) -> Deployment:
    return Deployment(
        name=name, model=model, replicas=replicas, max_model_len=fields.pop("max_model_len", 4096), **fields
    )


class StubDemand:
    """Claims ``GIB_AT_TP1[model] / (tp·pp) + 1 + (concurrency − 1)`` GiB per device; fraction = claim / memory."""

    def device_demand(
        self, profile: ModelProfile, request: DemandRequest, tp: int, pp: int, device_memory_bytes: int
    ) -> DeviceDemand:
        base = GIB_AT_TP1.get(profile.model_id, DEFAULT_GIB_AT_TP1)
        claim = math.ceil((base / (tp * pp) + STUB_OVERHEAD_GIB + request.concurrency - 1) * GIB)
        detail = f"stub {claim / GIB:g} GiB"
        if claim > device_memory_bytes:
            return DeviceDemand.rejected(claim, detail)
        return DeviceDemand(True, claim, round(claim / device_memory_bytes, 3), detail)

    def host_demand(self, profile: ModelProfile, request: DemandRequest) -> int:
        return math.ceil((GIB_AT_TP1.get(profile.model_id, DEFAULT_GIB_AT_TP1) + STUB_OVERHEAD_GIB) * GIB)


def stub_factory(engine: str) -> StubDemand:
    return StubDemand()


class LenDemand:
    """Claims ``max_model_len`` GiB per device (a knob to build bin-packing instances by hand)."""

    def device_demand(
        self, profile: ModelProfile, request: DemandRequest, tp: int, pp: int, device_memory_bytes: int
    ) -> DeviceDemand:
        claim = request.max_model_len * GIB
        if claim > device_memory_bytes:
            return DeviceDemand.rejected(claim, "len")
        return DeviceDemand(True, claim, None, "len")

    def host_demand(self, profile: ModelProfile, request: DemandRequest) -> int:
        return request.max_model_len * GIB


def len_factory(engine: str) -> LenDemand:
    return LenDemand()


TEST_GPU = ("Test GPU 10G", 10 * GIB, "9.0")


def where(plan: Plan) -> dict[tuple[str, int], list[tuple[str, list[int]]]]:
    """(deployment, replica) -> [(node, device indices)]."""
    return {(r.deployment, r.replica): [(p.node, list(p.device_indices)) for p in r.placements] for r in plan.replicas}


def claimed_per_device(plan: Plan) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for replica in plan.replicas:
        for placement in replica.placements:
            for index in placement.device_indices:
                key = (placement.node, index)
                out[key] = out.get(key, 0) + placement.memory_bytes_per_device
    return out


def assert_capacity_respected(plan: Plan, inv: Inventory) -> None:
    """Sum of claims ≤ total − other allocations − foreign usage on every device."""
    claimed = claimed_per_device(plan)
    for doc in inv.nodes:
        for device in doc.devices:
            foreign = max(0, device.memory_used - device.memory_allocated)
            limit = device.memory_total - device.memory_allocated - foreign
            assert claimed.get((doc.name, device.index), 0) <= limit, (doc.name, device.index)


def check_packing(kinds: list[PackingKind], devices: dict[int, int], hosts: dict[int, int], result) -> None:
    """Every constraint of the model, re-checked on the returned solution (not trusted from HiGHS)."""
    load = dict.fromkeys(devices, 0)
    host_load = dict.fromkeys(hosts, 0)
    per_kind: dict[int, int] = {}
    value = 0
    for (ki, oi), solution in result.solutions.items():
        kind, option = kinds[ki], kinds[ki].options[oi]
        per_kind[ki] = per_kind.get(ki, 0) + solution.count
        value += kind.weight * solution.count
        assert sum(solution.stages.values()) == option.pp * solution.count
        if option.class_id is None:
            for node, replicas in solution.stages.items():
                host_load[node] += replicas * option.claim_units
            continue
        eligible = dict(option.nodes)
        for node, stages in solution.stages.items():
            if option.pp > 1:
                assert stages <= solution.count  # one stage of a replica per node
            pools = solution.pools.get(node, [])
            assert sum(count for count, _ in pools) == stages
            for count, members in pools:
                assert members in eligible[node]
                ranks = [solution.ranks.get(g, 0) for g in members]
                assert sum(ranks) == option.tp * count  # a replica's ranks stay in one pool
                assert all(r <= count for r in ranks)  # one rank of a replica per device
        for g, ranks in solution.ranks.items():
            load[g] += ranks * option.claim_units
    assert all(load[g] <= devices[g] for g in devices)
    assert all(host_load[n] <= hosts[n] for n in hosts)
    assert all(per_kind.get(ki, 0) <= kind.replicas for ki, kind in enumerate(kinds))
    assert value == result.value <= result.bound
