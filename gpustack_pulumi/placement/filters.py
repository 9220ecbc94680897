"""Filters: which device classes, nodes and devices a deployment may use, and why not.

As in the k8s scheduling framework, a deployment is first prepared once (PreFilter: profile, engine,
request), then each ``Filter`` answers for one device class with ``None`` (pass) or a ``Rejection``
value that names the constraint and the numbers. Survivors are sized (smallest valid TP that fits an
empty device); the sizing failure is a rejection too. Every rejection is kept for the unplaced reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.catalog.capabilities import fp8_problem
from gpustack_pulumi.placement.cluster import Cluster
from gpustack_pulumi.placement.demand import (
    GIB,
    DemandCache,
    DemandRequest,
    DeviceClass,
    DeviceDemand,
)
from gpustack_pulumi.placement.engine_catalog import EngineCatalog, default_catalog
from gpustack_pulumi.placement.models import Deployment

# Pipeline stages across nodes are tried up to this many (vLLM/SGLang multi-node serving beyond 16 nodes
# per replica is not a deployment anyone runs; the bound keeps sizing O(1)).
MAX_PIPELINE_STAGES = 16


@dataclass(frozen=True)
class Rejection:
    """Why something cannot be used: the constraint's name and a message with the numbers."""

    constraint: str
    message: str


@dataclass
class ClassOption:
    """A device class a deployment may use, with its engine and the TP sizes to try (ascending)."""

    class_id: int
    dclass: DeviceClass
    engine: str
    request: DemandRequest
    tps: list[int]  # valid TP sizes that fit on one node, smallest first (first = the preferred shape)
    max_per_node: int
    multi_node: tuple[int, int] | None = None  # (tp, pp) when only a multi-node shape fits
    demands: dict[tuple[int, int], DeviceDemand] = field(default_factory=dict)  # memo per (tp, pp)


@dataclass
class PreparedDeployment:
    deployment: Deployment
    profile: ModelProfile | None
    profile_key: tuple
    cache: DemandCache
    error: Rejection | None = None
    eligible_nodes: frozenset[int] | None = None
    eligible_gids: frozenset[int] | None = None
    options: list[ClassOption] = field(default_factory=list)
    multi_node_options: list[ClassOption] = field(default_factory=list)
    cpu_request: DemandRequest | None = None
    cpu_host_bytes: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    scope_key: tuple = ()  # the sorted node_selector items: names the index scope
    catalog: EngineCatalog = field(default_factory=default_catalog)
    _size: int | None = None

    @property
    def name(self) -> str:
        return self.deployment.name

    def demand(self, option: ClassOption, tp: int, pp: int = 1) -> DeviceDemand:
        found = option.demands.get((tp, pp))
        if found is None:
            assert self.profile is not None
            found = self.cache.device(
                self.profile_key, self.profile, option.request, tp, pp, option.dclass.memory_total
            )
            option.demands[(tp, pp)] = found
        return found

    def size_key(self) -> int:
        """Bytes of the cheapest preferred shape: biggest first is first-fit decreasing."""
        if self._size is None:
            self._size = self._compute_size()
        return self._size

    def _compute_size(self) -> int:
        sizes = []
        for option in self.options:
            if option.tps:
                demand = self.demand(option, option.tps[0])
                sizes.append(demand.claim_bytes * option.tps[0])
        if self.cpu_request is not None:
            sizes.append(self.cpu_host_bytes)
        for option in self.multi_node_options:
            assert option.multi_node is not None
            tp, pp = option.multi_node
            sizes.append(self.demand(option, tp, pp).claim_bytes * tp * pp)
        return min(sizes) if sizes else 0


@runtime_checkable
class Filter(Protocol):
    """Rejects a device class for a deployment, or passes it (None)."""

    name: str

    def filter(self, prepared: PreparedDeployment, dclass: DeviceClass, engine: str | None) -> Rejection | None:
        """Contract: pure; the message names the class and the numbers that failed."""
        ...


def vendor_default_engine(deployment: Deployment, profile: ModelProfile, vendor: str) -> str | None:
    """GPUStack's own rule (the baseline scheduler models it): the deployment's engine, or for ``auto``
    llama.cpp for GGUF models, MindIE on Ascend, vLLM on NVIDIA/AMD; None for anything else. Placement itself
    resolves ``auto`` through the engine catalog (``engine_catalog``), as the launch specs do."""
    if deployment.engine != "auto":
        return deployment.engine
    if profile.source == "gguf":
        return "llama.cpp"
    if vendor == "ascend":
        return "mindie"
    if vendor in ("nvidia", "amd"):
        return "vllm"
    return None


class EngineDeviceFilter:
    name = "EngineDevice"

    def filter(self, prepared: PreparedDeployment, dclass: DeviceClass, engine: str | None) -> Rejection | None:
        vendors = prepared.catalog.vendors(engine) if engine is not None else frozenset()
        if engine is None or dclass.vendor not in vendors:
            allowed = ", ".join(sorted(vendors)) or "nothing for auto"
            return Rejection(
                self.name,
                f"engine {engine or 'auto'} does not run on {dclass.vendor} {dclass.product} (runs on: {allowed})",
            )
        return None


class Fp8Filter:
    name = "Fp8Capability"

    def filter(self, prepared: PreparedDeployment, dclass: DeviceClass, engine: str | None) -> Rejection | None:
        deployment = prepared.deployment
        problem = fp8_problem(
            deployment.quantization,
            deployment.kv_cache_dtype,
            product=dclass.product,
            compute_capability=dclass.compute_capability,
            memory_bytes=dclass.memory_total,
        )
        return Rejection(self.name, problem) if problem else None


class CpuOnlyOptionFilter:
    """llama.cpp told to offload no layer (``n_gpu_layers: 0``) runs on the CPU: a GPU would hold a claim for
    nothing, so only CPU-only nodes take it."""

    name = "CpuOnly"

    def filter(self, prepared: PreparedDeployment, dclass: DeviceClass, engine: str | None) -> Rejection | None:
        if engine == "llama.cpp" and prepared.deployment.engine_options.get("n_gpu_layers") == 0:
            return Rejection(self.name, f"n_gpu_layers 0: llama.cpp runs on the CPU, not on {dclass.product}")
        return None


class GpuSelectorFilter:
    name = "GpuSelector"

    def filter(self, prepared: PreparedDeployment, dclass: DeviceClass, engine: str | None) -> Rejection | None:
        selector = prepared.deployment.gpu_selector
        if not selector or dclass.vendor == "cpu":
            return None
        if product_selected(selector, dclass):
            return None
        return Rejection(self.name, f"{dclass.product} is not in gpu_selector {sorted(selector)}")


def _normal(name: str) -> str:
    from gpustack_pulumi.catalog import normalise_gpu_name

    return normalise_gpu_name(name)


def product_selected(selector: list[str], dclass: DeviceClass) -> bool:
    """A class matches a selector entry by product name (with or without the vendor word) or catalog key,
    case and separators ignored ('L40S', 'nvidia-l40s', 'H100-SXM'); UUID
    entries are matched per device elsewhere, so a selector of UUIDs alone passes every class here."""
    names = {_normal(dclass.product)}
    first, _, rest = dclass.product.partition(" ")
    if rest and first.lower() in _VENDOR_WORDS:
        names.add(_normal(rest))  # "L40S" selects "NVIDIA L40S"
    if dclass.catalog_key:
        names.add(_normal(dclass.catalog_key))
    product_entries = [entry for entry in selector if not _looks_like_uuid(entry)]
    if not product_entries:
        return True
    return any(_normal(entry) in names for entry in product_entries)


# Leading words of driver product names that name the vendor, not the product.
_VENDOR_WORDS = frozenset({"nvidia", "amd", "tesla", "huawei"})


def _looks_like_uuid(entry: str) -> bool:
    return entry.upper().startswith(("GPU-", "MIG-")) or entry.count("-") >= 4


CLASS_FILTERS: tuple[Filter, ...] = (EngineDeviceFilter(), Fp8Filter(), CpuOnlyOptionFilter(), GpuSelectorFilter())


@dataclass
class PrepareMemo:
    """Answers shared by many deployments of one plan: node_selector scopes, devices per node, TP sizes."""

    scopes: dict[tuple, frozenset[int]] = field(default_factory=dict)
    prepared: dict[tuple, PreparedDeployment] = field(default_factory=dict)  # by spec_key
    per_node: dict[tuple, int] = field(default_factory=dict)
    stage_nodes: dict[tuple, int] = field(default_factory=dict)
    valid_tps: dict[tuple, list[int]] = field(default_factory=dict)
    catalog: EngineCatalog = field(default_factory=default_catalog)


def spec_key(deployment: Deployment) -> tuple:
    """Everything but name, replicas and priority: deployments with equal keys are prepared once."""
    return (
        deployment.model,
        deployment.engine,
        deployment.max_model_len,
        deployment.concurrency,
        deployment.mode,
        deployment.quantization,
        deployment.kv_cache_dtype,
        tuple(sorted(deployment.node_selector.items())),
        tuple(deployment.gpu_selector),
    )


def prepare(
    deployment: Deployment, cluster: Cluster, cache: DemandCache, memo: PrepareMemo | None = None
) -> PreparedDeployment:
    """PreFilter + Filter + sizing for one deployment (shared with earlier deployments of the same spec)."""
    memo = memo if memo is not None else PrepareMemo()
    key = spec_key(deployment)
    template = memo.prepared.get(key)
    if template is None:
        template = memo.prepared[key] = _prepare(deployment, cluster, cache, memo)
    if template.deployment is deployment:
        return template
    return dataclasses.replace(template, deployment=deployment)


def engine_extra_weight_bytes(deployment: Deployment, profile: ModelProfile, engine: str, dclass: DeviceClass) -> int:
    """Weights the engine loads beside the model (speculative draft, MTP layers), all ranks together, as the
    engine itself states them (``Engine.extra_memory``) for one replica on a device of ``dclass``."""
    if engine not in ("vllm", "sglang") or (not deployment.engine_options and deployment.mode != "latency"):
        return 0  # speculative decoding is only turned on by mode latency or by explicit options
    from gpustack_pulumi.engines.base import EngineRefusal, NodeAccelerator
    from gpustack_pulumi.engines.launch import extra_memory
    from gpustack_pulumi.placement.models import NodePlacement, PlacedReplica

    probe = PlacedReplica(
        deployment=deployment.name, replica=0, engine=engine, tensor_parallel_size=1, pipeline_parallel_size=1,
        memory_fraction=None, reason="sizing probe",
        placements=[NodePlacement(node="probe", device_indices=[0], memory_bytes_per_device=0)],
    )  # fmt: skip
    accelerator = NodeAccelerator(vendor=dclass.vendor, product=dclass.product, memory_bytes=dclass.memory_total,
                                  spec=_catalog_spec(dclass))  # fmt: skip
    try:
        options = deployment.options
        extra = extra_memory(probe, profile, deployment, accelerators={"probe": accelerator}, options=options)
    except (EngineRefusal, ValueError):
        return 0  # the engine refuses these options; the launch spec step reports why
    return extra.device_bytes_per_gpu


def _catalog_spec(dclass: DeviceClass):
    from gpustack_pulumi.catalog import gpu

    return gpu(dclass.catalog_key) if dclass.catalog_key else None


def _prepare(deployment: Deployment, cluster: Cluster, cache: DemandCache, memo: PrepareMemo) -> PreparedDeployment:
    quantization = deployment.quantization
    prepared = PreparedDeployment(deployment, None, (deployment.model, quantization), cache, catalog=memo.catalog)
    try:
        profile = cache.profile(deployment.model, quantization)
    except Exception as error:
        prepared.error = Rejection("ModelAnalysis", f"model '{deployment.model}' cannot be analysed: {error}")
        return prepared
    prepared.profile = profile
    if deployment.engine == "llama.cpp" and profile.source != "gguf":
        prepared.error = Rejection(
            "EngineModel",
            f"llama.cpp serves GGUF files and '{deployment.model}' is not one; use engine vllm or sglang, or a "
            ".gguf conversion of the model",
        )
        return prepared
    prepared.scope_key = tuple(sorted(deployment.node_selector.items()))
    max_len = deployment.max_model_len or profile.max_model_len
    if max_len > profile.max_model_len:
        prepared.error = Rejection(
            "ModelConfig",
            f"max_model_len {max_len} exceeds the model's maximum context {profile.max_model_len}",
        )
        return prepared

    prepared.eligible_nodes = _selected_nodes(deployment, cluster, memo.scopes)
    if prepared.eligible_nodes is not None and not prepared.eligible_nodes:
        prepared.error = Rejection(
            "NodeSelector",
            f"0/{len(cluster.nodes)} nodes match node_selector {dict(sorted(deployment.node_selector.items()))}",
        )
        return prepared
    uuid_entries = [e for e in deployment.gpu_selector if _looks_like_uuid(e)]
    if uuid_entries:
        gids = {cluster.gid_by_uuid[u] for u in uuid_entries if u in cluster.gid_by_uuid}
        prepared.eligible_gids = frozenset(gids)

    for class_id, dclass in enumerate(cluster.classes):
        per_node = _devices_per_node(prepared, cluster, class_id, memo)
        engine, why = memo.catalog.resolve(deployment, profile, dclass, per_node)
        if engine is None:
            prepared.rejections.append(
                Rejection("EngineDevice", f"engine auto has nothing for {dclass.vendor} {dclass.product}: {why}")
            )
            continue
        rejection = next((r for f in CLASS_FILTERS if (r := f.filter(prepared, dclass, engine))), None)
        if rejection is not None:
            prepared.rejections.append(rejection)
            continue
        assert engine is not None
        request = DemandRequest(
            engine,
            max_len,
            deployment.concurrency,
            deployment.kv_cache_dtype,
            mode=deployment.mode,
            extra_weight_bytes=engine_extra_weight_bytes(deployment, profile, engine, dclass),
        )
        if per_node == 0:
            where = "selected nodes" if prepared.eligible_nodes is not None else "any node"
            prepared.rejections.append(
                Rejection("GpuSelector", f"no {dclass.product} device of the gpu_selector on {where}")
            )
            continue
        option = ClassOption(class_id, dclass, engine, request, [], per_node)
        tp_key = (prepared.profile_key, per_node)
        valid = memo.valid_tps.get(tp_key)
        if valid is None:
            valid = memo.valid_tps[tp_key] = profile.constraints.valid_tp_sizes(per_node)
        first_fit = next((tp for tp in valid if prepared.demand(option, tp).fits), None)
        if first_fit is not None:
            option.tps = [tp for tp in valid if tp >= first_fit]
            prepared.options.append(option)
            continue
        largest = valid[-1] if valid else None
        if largest is None:
            prepared.rejections.append(
                Rejection(
                    "TensorParallel",
                    f"no valid TP ≤ {per_node} for {dclass.product}: "
                    + "; ".join(profile.constraints.tp_problems(per_node)),
                )
            )
            continue
        single = prepared.demand(option, largest)
        prepared.rejections.append(
            Rejection(
                "DeviceMemory",
                f"needs {single.claim_bytes / GIB:.2f} GiB per GPU at TP={largest} (the most {dclass.product} on "
                f"one node) but a GPU has {dclass.memory_total / GIB:.2f} GiB ({single.detail})",
            )
        )
        multi = _multi_node_shape(prepared, option, cluster, class_id, largest, memo)
        if multi is not None:
            option.multi_node = multi
            prepared.multi_node_options.append(option)

    if cluster.cpu_nodes:
        engine, _ = memo.catalog.resolve(deployment, profile, None, 1)
        if engine is not None and "cpu" in memo.catalog.vendors(engine):
            cpu_nodes = [
                n for n in cluster.cpu_nodes if prepared.eligible_nodes is None or n in prepared.eligible_nodes
            ]
            if cpu_nodes and not deployment.gpu_selector:
                request = DemandRequest(engine, max_len, deployment.concurrency, deployment.kv_cache_dtype)
                prepared.cpu_request = request
                prepared.cpu_host_bytes = cache.host(prepared.profile_key, profile, request)
    if not prepared.options and not prepared.multi_node_options and prepared.cpu_request is None:
        if not cluster.classes and not cluster.cpu_nodes:
            prepared.error = Rejection("NoNodes", "the inventory has no nodes")
        elif not prepared.rejections:
            prepared.error = Rejection(
                "EngineDevice", "no node can run this engine (CPU-only nodes run llama.cpp only)"
            )
        else:
            constraint = _dominant(prepared.rejections)
            prepared.error = Rejection(constraint, "; ".join(r.message for r in prepared.rejections))
    return prepared


def _dominant(rejections: list[Rejection]) -> str:
    """The constraint to report first: the one that would still fail with the others lifted."""
    order = ("DeviceMemory", "TensorParallel", "Fp8Capability", "GpuSelector", "EngineDevice")
    names = {r.constraint for r in rejections}
    return next((name for name in order if name in names), rejections[0].constraint)


def _selected_nodes(deployment: Deployment, cluster: Cluster, cache: dict | None) -> frozenset[int] | None:
    if not deployment.node_selector:
        return None
    key = tuple(sorted(deployment.node_selector.items()))
    if cache is not None and key in cache:
        return cache[key]
    selected = frozenset(node.id for node in cluster.nodes if all(node.labels.get(k) == v for k, v in key))
    if cache is not None:
        cache[key] = selected
    return selected


def _scope_key(prepared: PreparedDeployment) -> tuple:
    return tuple(sorted(prepared.deployment.node_selector.items()))


def _devices_per_node(prepared: PreparedDeployment, cluster: Cluster, class_id: int, memo: PrepareMemo) -> int:
    """The most devices of the class one allowed node has (allowed devices only)."""
    if prepared.eligible_gids is None:
        key = (class_id, _scope_key(prepared))
        found = memo.per_node.get(key)
        if found is None:
            found = memo.per_node[key] = _count_per_node(prepared, cluster, class_id)
        return found
    return _count_per_node(prepared, cluster, class_id)


def _count_per_node(prepared: PreparedDeployment, cluster: Cluster, class_id: int) -> int:
    best = 0
    for node_id in cluster.class_nodes.get(class_id, []):
        if prepared.eligible_nodes is not None and node_id not in prepared.eligible_nodes:
            continue
        gids = cluster.nodes[node_id].gids_by_class[class_id]
        count = len(gids) if prepared.eligible_gids is None else sum(g in prepared.eligible_gids for g in gids)
        best = max(best, count)
    return best


def _multi_node_shape(
    prepared: PreparedDeployment, option: ClassOption, cluster: Cluster, class_id: int, tp: int, memo: PrepareMemo
) -> tuple[int, int] | None:
    """TP within a node, PP across nodes: the fewest stages (nodes with ≥ tp devices) that fit."""
    assert prepared.profile is not None
    key = (class_id, tp, _scope_key(prepared))
    nodes = memo.stage_nodes.get(key)
    if nodes is None:
        nodes = memo.stage_nodes[key] = sum(
            1
            for node_id in cluster.class_nodes.get(class_id, [])
            if (prepared.eligible_nodes is None or node_id in prepared.eligible_nodes)
            and len(cluster.nodes[node_id].gids_by_class[class_id]) >= tp
        )
    limit = min(nodes, MAX_PIPELINE_STAGES, prepared.profile.num_layers)
    for pp in range(2, limit + 1):
        if prepared.demand(option, tp, pp).fits:
            return tp, pp
    return None
