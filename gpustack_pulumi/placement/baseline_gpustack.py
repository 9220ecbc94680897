"""GPUStack's scheduling policy, re-implemented from its documented rules, as the benchmark baseline.

Source: shared reference notes on gpustack/gpustack v2.x (``policies/utils.py`` estimate_model_vram,
``policies/candidate_selectors/vllm_resource_fit_selector.py``, ``policies/scorers/placement_scorer.py``):

- VRAM claim = int(weights × 1.2) + 2 GiB (LLM); the KV cache is not modelled.
- vLLM / SGLang: a GPU qualifies iff ``claim ≤ total × 0.9`` and ``allocatable / total ≥ 0.9``; the claim
  recorded on each chosen GPU is ``total × 0.9`` — so an LLM replica takes its GPUs exclusively.
- One worker, several GPUs: GPUs with allocatable ratio ≥ 0.9 sorted by allocatable (descending), added
  until Σ total × 0.9 ≥ claim and the count is a valid TP size (heads, vocab divisible).
- Several workers (equal GPU counts, all GPUs of each worker): not implemented — every benchmark cluster
  has nodes of 8 GPUs, where no workload model needs more than one node under GPUStack's estimate.
- Allocatable = total − Σ claims recorded (bindings, not live usage). Binpack picks the fullest candidate.
- Other engines (llama.cpp, custom): the estimate itself is claimed, so they can share.

Not modelled: model-file locality scoring, GGUF's gguf-parser estimate (weights × 1.2 + 2 GiB instead).
The output is a :class:`Plan` so the benchmark compares like with like.
"""

from __future__ import annotations

from gpustack_runtime.wire import Inventory

from gpustack_pulumi.placement.cluster import build_cluster
from gpustack_pulumi.placement.demand import GIB, DemandCache
from gpustack_pulumi.placement.filters import product_selected, vendor_default_engine
from gpustack_pulumi.placement.models import (
    Deployment,
    NodePlacement,
    PlacedReplica,
    Plan,
    PlanSummary,
    UnplacedReplica,
)

GPUSTACK_ACTIVATION_FACTOR = 1.2  # policies/utils.py: activation_overhead_factor
GPUSTACK_FRAMEWORK_OVERHEAD = 2 * GIB  # policies/utils.py: framework_overhead for LLMs
GPUSTACK_GPU_MEMORY_UTILIZATION = 0.9  # vllm_resource_fit_selector.py default
GMU_ENGINES = frozenset({"vllm", "sglang", "mindie"})


def gpustack_claim(weight_bytes: int) -> int:
    return int(weight_bytes * GPUSTACK_ACTIVATION_FACTOR) + GPUSTACK_FRAMEWORK_OVERHEAD


def gpustack_plan(inventory: Inventory, deployments: list[Deployment]) -> Plan:
    """Place replicas in list order (GPUStack schedules instances as they are created)."""
    cluster = build_cluster(inventory)
    cache = DemandCache()
    allocatable = list(cluster.dev_base_free)
    totals = cluster.dev_total
    used: set[int] = set()
    replicas: list[PlacedReplica] = []
    unplaced: list[UnplacedReplica] = []
    for deployment in deployments:
        try:
            profile = cache.profile(deployment.model, deployment.quantization)
        except Exception as error:
            for index in range(deployment.replicas):
                unplaced.append(
                    UnplacedReplica(
                        deployment=deployment.name, replica=index, constraint="ModelAnalysis", reason=str(error)
                    )
                )
            continue
        claim = gpustack_claim(profile.weight_bytes)
        valid_tp = set(profile.constraints.valid_tp_sizes(64))
        nodes = [
            node for node in cluster.nodes if all(node.labels.get(k) == v for k, v in deployment.node_selector.items())
        ]
        for index in range(deployment.replicas):
            best: tuple[float, list[int], str, float | None] | None = None
            for node in nodes:
                gids = [
                    g
                    for g in node.gids
                    if not deployment.gpu_selector
                    or product_selected(deployment.gpu_selector, cluster.classes[cluster.dev_class[g]])
                ]
                if not gids:
                    continue
                vendor = cluster.classes[cluster.dev_class[gids[0]]].vendor
                engine = vendor_default_engine(deployment, profile, vendor) or "vllm"
                if engine in GMU_ENGINES:
                    gmu = GPUSTACK_GPU_MEMORY_UTILIZATION
                    ok = [g for g in gids if allocatable[g] / totals[g] >= gmu]
                    single = [g for g in ok if claim <= totals[g] * gmu]
                    if single:
                        g = min(single, key=lambda g: (allocatable[g], g))
                        choice = [g]
                    else:
                        ok.sort(key=lambda g: (-allocatable[g], g))
                        choice = []
                        total = 0.0
                        for g in ok:
                            choice.append(g)
                            total += totals[g] * gmu
                            if total >= claim and len(choice) in valid_tp:
                                break
                        else:
                            continue
                    score = sum(1 - allocatable[g] / totals[g] for g in choice) / len(choice)
                    candidate = (score, choice, engine, gmu)
                else:
                    fitting = [g for g in gids if allocatable[g] >= claim]
                    if not fitting:
                        continue
                    g = min(fitting, key=lambda g: (allocatable[g], g))
                    candidate = (1 - (allocatable[g] - claim) / totals[g], [g], engine, None)
                if best is None or (candidate[0], -len(candidate[1])) > (best[0], -len(best[1])):
                    best = candidate
            if best is None:
                unplaced.append(
                    UnplacedReplica(
                        deployment=deployment.name,
                        replica=index,
                        constraint="InsufficientMemory",
                        reason=f"GPUStack: needs {claim / GIB:.1f} GiB and GPUs with ≥ 90 % allocatable VRAM",
                    )
                )
                continue
            _, choice, engine, gmu = best
            per_gpu = int(totals[choice[0]] * gmu) if gmu else claim
            for g in choice:
                allocatable[g] -= per_gpu
                used.add(g)
            node = cluster.nodes[cluster.dev_node[choice[0]]]
            replicas.append(
                PlacedReplica(
                    deployment=deployment.name,
                    replica=index,
                    engine=engine,
                    placements=[
                        NodePlacement(
                            node=node.name,
                            device_indices=sorted(cluster.dev_index[g] for g in choice),
                            memory_bytes_per_device=per_gpu,
                        )
                    ],
                    tensor_parallel_size=len(choice),
                    pipeline_parallel_size=1,
                    memory_fraction=gmu,
                    reason=f"GPUStack policy: claim {claim / GIB:.1f} GiB",
                )
            )
    replicas.sort(key=lambda r: (r.deployment, r.replica))
    unplaced.sort(key=lambda u: (u.deployment, u.replica))
    summary = PlanSummary(
        placed=len(replicas),
        unplaced=len(unplaced),
        gpus_used=len(used),
        nodes_used=len({cluster.dev_node[g] for g in used}),
        kept=0,
        moved=0,
        method="heuristic",
    )
    return Plan(strategy="binpack", replicas=replicas, unplaced=unplaced, summary=summary)
