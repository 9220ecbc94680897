"""Demands: how many bytes one replica rank claims on one device of a given class.

vLLM and SGLang use the engine memory models (``placement/memory``): the smallest memory fraction whose KV
pool holds ``max_model_len × concurrency`` and the claim ``fraction·total + process overhead``. Engines
without such a model (llama.cpp on GPU or CPU, MindIE, TensorRT-LLM, custom) use :class:`SimpleDemand`:
weights per rank + KV for ``max_model_len × concurrency`` + a fixed overhead.

Demands are per device *class* (vendor, product, total memory, compute capability): a fleet of 100,000
GPUs has a handful of classes, so every (deployment, class, TP, PP) is computed once (``DemandCache``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from gpustack_pulumi.analysis.profile import ModelProfile

GIB = 1024**3
MIB = 1024**2

# Claims are whole MiB (rounded up) and free memory whole MiB (rounded down, cluster.py): the heuristic and
# the exact solver then see the same integers, and the solver can count in MiB without rounding errors.
CLAIM_GRANULARITY_BYTES = MIB


def round_up_claim(value: int) -> int:
    return -(-value // CLAIM_GRANULARITY_BYTES) * CLAIM_GRANULARITY_BYTES


# Fixed per-instance overhead for engines without a memory model: GPUStack's "framework_overhead" for LLMs
# (2 GiB; gpustack/policies/utils.py estimate_model_vram, "CUDA graphs can take additional 1~3 GiB"). It
# covers the CUDA context / compute buffers that llama.cpp, MindIE and custom engines add to weights + KV.
SIMPLE_OVERHEAD_BYTES = 2 * GIB

# FP8 weights or KV need FP8 tensor cores: Ada (8.9) and Hopper (9.0) onward (vLLM's fp8 kernels check
# capability ≥ 89; Ampere 8.0/8.6 has none).
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)

# Which device vendors each engine runs on. "cpu" = a node without accelerators (host memory).
# vLLM/SGLang: CUDA and ROCm builds; MindIE: Ascend only; TensorRT-LLM: NVIDIA only; llama.cpp: CUDA,
# ROCm or CPU; custom: any accelerator (the user's container decides).
ENGINE_VENDORS: dict[str, frozenset[str]] = {
    "vllm": frozenset({"nvidia", "amd"}),
    "sglang": frozenset({"nvidia", "amd"}),
    "mindie": frozenset({"ascend"}),
    "tensorrt-llm": frozenset({"nvidia"}),
    "llama.cpp": frozenset({"nvidia", "amd", "cpu"}),
    "custom": frozenset({"nvidia", "amd", "ascend"}),
}

# Engines whose memory models live in placement/memory.
MODELLED_ENGINES = frozenset({"vllm", "sglang"})


def _capability(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    major, _, minor = value.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return None


@dataclass(frozen=True, order=True)
class DeviceClass:
    """Devices that are interchangeable for sizing: same vendor, product, total memory and capability."""

    vendor: str
    product: str
    memory_total: int
    compute_capability: str | None

    @cached_property
    def catalog_key(self) -> str | None:
        from gpustack_pulumi.catalog import gpu_for_product

        spec = gpu_for_product(self.product, self.memory_total) if self.vendor != "cpu" else None
        return spec.key if spec else None

    @cached_property
    def fp8(self) -> bool | None:
        """FP8 support: from the compute capability when reported, else the catalog; None when unknown."""
        capability = _capability(self.compute_capability)
        if capability is not None:
            return capability >= FP8_MIN_COMPUTE_CAPABILITY
        if self.catalog_key is not None:
            from gpustack_pulumi.catalog import gpu

            return gpu(self.catalog_key).fp8
        return None

    def label(self) -> str:
        return f"{self.product} ({self.memory_total / GIB:.1f} GiB)"


def needs_fp8(quantization: str | None, kv_cache_dtype: str) -> str | None:
    """Why a deployment needs FP8 hardware ('quantization fp8', 'kv_cache_dtype fp8_e4m3'), or None."""
    if quantization and quantization.lower().startswith("fp8"):
        return f"quantization {quantization}"
    if kv_cache_dtype.lower().startswith("fp8"):
        return f"kv_cache_dtype {kv_cache_dtype}"
    return None


@dataclass(frozen=True)
class DemandRequest:
    """The part of a deployment that changes its memory."""

    engine: str
    max_model_len: int
    concurrency: int
    kv_cache_dtype: str
    mode: str = "balanced"  # throughput doubles vLLM's batch sizes (--performance-mode throughput)
    extra_weight_bytes: int = 0  # all ranks together: speculative draft / MTP weights (divided by TP)


@dataclass(frozen=True)
class DeviceDemand:
    """One rank on one device: what it claims (or would need, when it does not fit even alone)."""

    fits: bool
    claim_bytes: int  # bytes taken from the device when it fits; what it would need otherwise
    memory_fraction: float | None
    detail: str

    @staticmethod
    def rejected(needed: int, detail: str) -> DeviceDemand:
        return DeviceDemand(fits=False, claim_bytes=needed, memory_fraction=None, detail=detail)


class DemandModel(Protocol):
    """Sizes one engine. Implementations are pure and deterministic."""

    def device_demand(
        self, profile: ModelProfile, request: DemandRequest, tp: int, pp: int, device_memory_bytes: int
    ) -> DeviceDemand:
        """Claim of each rank of a TP×PP replica on a device of ``device_memory_bytes`` total memory."""
        ...

    def host_demand(self, profile: ModelProfile, request: DemandRequest) -> int:
        """Host bytes for a CPU-only instance (only engines that can run on CPU are asked)."""
        ...


def kv_bytes_per_rank(profile: ModelProfile, request: DemandRequest, tp: int, pp: int) -> int:
    """KV for ``max_model_len × concurrency`` on one rank: layers split over PP stages, heads over TP."""
    per_token = profile.kv_cache_bytes_per_token(tp, request.kv_cache_dtype)
    tokens = request.max_model_len * request.concurrency
    state = profile.state_bytes_per_sequence(tp) * request.concurrency
    return math.ceil((per_token * tokens + state) / pp)


class SimpleDemand:
    """Weights per rank + KV for ``max_model_len × concurrency`` + ``overhead_bytes`` (no fraction)."""

    def __init__(self, overhead_bytes: int = SIMPLE_OVERHEAD_BYTES) -> None:
        self.overhead_bytes = overhead_bytes

    def _need(self, profile: ModelProfile, request: DemandRequest, tp: int, pp: int) -> tuple[int, str]:
        weights = profile.weights_per_rank(tp, pp)
        kv = kv_bytes_per_rank(profile, request, tp, pp)
        total = weights + kv + self.overhead_bytes
        detail = f"weights {weights / GIB:.2f} + KV {kv / GIB:.2f} + overhead {self.overhead_bytes / GIB:.2f} GiB"
        return total, detail

    def device_demand(
        self, profile: ModelProfile, request: DemandRequest, tp: int, pp: int, device_memory_bytes: int
    ) -> DeviceDemand:
        need, detail = self._need(profile, request, tp, pp)
        if need > device_memory_bytes:
            return DeviceDemand.rejected(need, detail)
        return DeviceDemand(fits=True, claim_bytes=need, memory_fraction=None, detail=detail)

    def host_demand(self, profile: ModelProfile, request: DemandRequest) -> int:
        return self._need(profile, request, 1, 1)[0]


class EngineMemoryDemand:
    """vLLM / SGLang through their memory models: minimal fraction, claim = fraction·total + overhead."""

    def __init__(self, engine: str) -> None:
        from gpustack_pulumi.placement.memory import memory_model

        self.engine = engine
        self.model = memory_model(engine)

    def device_demand(
        self, profile: ModelProfile, request: DemandRequest, tp: int, pp: int, device_memory_bytes: int
    ) -> DeviceDemand:
        from gpustack_pulumi.placement.memory import MemoryRequest

        memory_request = MemoryRequest(
            tp=tp,
            pp=pp,
            max_model_len=request.max_model_len,
            concurrency=request.concurrency,
            kv_cache_dtype=request.kv_cache_dtype,
            performance_mode="throughput" if request.mode == "throughput" and self.engine == "vllm" else None,
            extra_weight_bytes=-(-request.extra_weight_bytes // (tp * pp)),
        )
        fraction = self.model.min_fraction(profile, memory_request, gpu_memory_bytes=device_memory_bytes)
        if fraction is None:
            at_full = self.model.estimate(
                profile,
                memory_request.model_copy(update={"memory_fraction": 1.0}),
                gpu_memory_bytes=device_memory_bytes,
            )
            need = (
                at_full.weights
                + at_full.activation
                + at_full.non_torch
                + at_full.cuda_graphs
                + at_full.kv_needed
                + at_full.process_overhead
            )
            detail = (
                f"weights {at_full.weights / GIB:.2f} + activation {at_full.activation / GIB:.2f} + non-torch "
                f"{at_full.non_torch / GIB:.2f} + CUDA graphs {at_full.cuda_graphs / GIB:.2f} + KV "
                f"{at_full.kv_needed / GIB:.2f} + process {at_full.process_overhead / GIB:.2f} GiB"
            )
            return DeviceDemand.rejected(need, detail)
        sized = memory_request.model_copy(update={"memory_fraction": fraction})
        claim = self.model.claim_bytes(profile, sized, gpu_memory_bytes=device_memory_bytes)
        detail = f"{self.engine} fraction {fraction:g} of {device_memory_bytes / GIB:.1f} GiB + process overhead"
        return DeviceDemand(fits=True, claim_bytes=claim, memory_fraction=fraction, detail=detail)

    def host_demand(self, profile: ModelProfile, request: DemandRequest) -> int:  # pragma: no cover - GPU only
        raise ValueError(f"{self.engine} cannot run on CPU")


DemandFactory = Callable[[str], DemandModel]


def default_demand_model(engine: str) -> DemandModel:
    """The demand model of ``engine``: the engine memory model where one exists, else SimpleDemand."""
    if engine in MODELLED_ENGINES:
        return EngineMemoryDemand(engine)
    return SimpleDemand()


class DemandCache:
    """Memoises demands and profiles for one planning run: 10,000 deployments share few (model, class) pairs."""

    def __init__(
        self,
        demand_factory: DemandFactory = default_demand_model,
        profile_loader: Callable[[str, str | None], ModelProfile] | None = None,
    ) -> None:
        self._factory = demand_factory
        self._models: dict[str, DemandModel] = {}
        self._profiles: dict[tuple[str, str | None], ModelProfile | Exception] = {}
        self._device: dict[tuple, DeviceDemand] = {}
        self._host: dict[tuple, int] = {}
        self._loader = profile_loader

    def profile(self, model: str, quantization: str | None) -> ModelProfile:
        """The profile of ``model`` (analysis errors are cached too, and re-raised)."""
        key = (model, quantization)
        found = self._profiles.get(key)
        if found is None:
            try:
                if self._loader is not None:
                    found = self._loader(model, quantization)
                else:
                    from gpustack_pulumi.analysis import analyze

                    found = analyze(model, quantization=quantization)
            except Exception as error:  # analysis errors become an unplaced reason, not a crash
                found = error
            self._profiles[key] = found
        if isinstance(found, Exception):
            raise found
        return found

    def engine_model(self, engine: str) -> DemandModel:
        model = self._models.get(engine)
        if model is None:
            model = self._models[engine] = self._factory(engine)
        return model

    def device(
        self, profile_key: tuple, profile: ModelProfile, request: DemandRequest, tp: int, pp: int, memory: int
    ) -> DeviceDemand:
        key = (profile_key, request, tp, pp, memory)
        found = self._device.get(key)
        if found is None:
            found = self.engine_model(request.engine).device_demand(profile, request, tp, pp, memory)
            if found.fits:
                rounded = round_up_claim(found.claim_bytes)
                found = DeviceDemand(rounded <= memory, rounded, found.memory_fraction, found.detail)
            self._device[key] = found
        return found

    def host(self, profile_key: tuple, profile: ModelProfile, request: DemandRequest) -> int:
        key = (profile_key, request)
        found = self._host.get(key)
        if found is None:
            found = self._host[key] = round_up_claim(self.engine_model(request.engine).host_demand(profile, request))
        return found
