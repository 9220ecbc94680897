"""The interface of an engine memory model, and the types it takes and returns.

An engine memory model answers, for one model profile on one GPU: how much memory does each term take
(weights, activation peak, non-torch memory, CUDA graphs), how much KV cache is left, how many tokens it
holds, and whether ``max_model_len × concurrency`` fits. All terms are bytes per GPU (per rank).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from gpustack_pulumi.analysis.profile import ModelProfile

GIB = 1024**3
MIB = 1024**2


class MemoryRequest(BaseModel):
    """How an instance will be run: the knobs that change its memory."""

    model_config = ConfigDict(frozen=True)

    tp: int = Field(default=1, ge=1, description="Tensor-parallel size.")
    pp: int = Field(default=1, ge=1, description="Pipeline-parallel size.")
    max_model_len: int | None = Field(default=None, ge=1, description="None: the model's own maximum.")
    concurrency: int = Field(default=1, ge=1, description="Full-length sequences that must fit at once.")
    kv_cache_dtype: str = Field(default="auto", description="auto | fp8 | fp8_e4m3 | fp8_e5m2 | bf16")
    memory_fraction: float | None = Field(
        default=None, gt=0, le=1, description="vLLM gpu_memory_utilization / SGLang mem_fraction_static."
    )
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    enforce_eager: bool = Field(default=False, description="No CUDA graphs.")
    performance_mode: str | None = Field(
        default=None, description="vLLM --performance-mode (throughput doubles batches)."
    )
    version: str | None = Field(default=None, description="Engine version; None: the pinned default.")
    extra_weight_bytes: int = Field(
        default=0, ge=0, description="Per rank: weights loaded beside the model (speculative draft or MTP layers)."
    )


class MemoryBreakdown(BaseModel):
    """Memory of one instance on each of its GPUs, term by term (bytes)."""

    model_config = ConfigDict(frozen=True)

    engine: str
    version: str
    gpu_memory_bytes: int = Field(description="Total memory of the GPU as NVML (and the agent) report it.")
    tp: int
    pp: int
    fraction: float = Field(description="gpu_memory_utilization (vLLM) or mem_fraction_static (SGLang).")
    budget: int = Field(description="What the fraction grants the instance.")
    weights: int
    activation: int
    non_torch: int
    cuda_graphs: int
    kv_cache: int = Field(description="KV cache pool (0 or negative means nothing is left).")
    process_overhead: int = Field(description="Per-process memory outside the budget (CUDA context).")
    block_size: int
    max_kv_tokens: int = Field(description="Tokens the pool holds at max_model_len (the engine's log figure).")
    max_concurrency: float = Field(description="Full-length sequences the pool holds at once.")
    max_model_len: int
    concurrency: int
    kv_needed: int = Field(description="KV bytes for max_model_len × concurrency.")
    fits: bool
    problems: list[str] = Field(default_factory=list)

    claim_bytes: int = Field(
        description="What the instance takes from the device: its budget, the memory the engine uses outside it "
        "(SGLang's reserve) and the per-process overhead."
    )

    def terms(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "activation": self.activation,
            "non_torch": self.non_torch,
            "cuda_graphs": self.cuda_graphs,
            "kv_cache": self.kv_cache,
        }


@runtime_checkable
class EngineMemoryModel(Protocol):
    """One engine's memory semantics. Implementations are pure: no I/O, deterministic."""

    name: str

    def estimate(self, profile: ModelProfile, request: MemoryRequest, *, gpu_memory_bytes: int) -> MemoryBreakdown:
        """Each term per GPU for ``request`` on a GPU of ``gpu_memory_bytes`` total memory."""
        ...

    def min_fraction(self, profile: ModelProfile, request: MemoryRequest, *, gpu_memory_bytes: int) -> float | None:
        """The smallest memory fraction whose KV pool holds ``max_model_len × concurrency``; None if none does."""
        ...

    def claim_bytes(self, profile: ModelProfile, request: MemoryRequest, *, gpu_memory_bytes: int) -> int:
        """Bytes the instance takes from the device at ``request.memory_fraction`` (budget + process overhead)."""
        ...


class FractionSearchMixin:
    """``min_fraction`` and ``claim_bytes`` for any model whose ``estimate`` is monotone in the fraction."""

    def estimate(self, profile: ModelProfile, request: MemoryRequest, *, gpu_memory_bytes: int,
                 gpu_key: str | None = None) -> MemoryBreakdown:  # fmt: skip
        raise NotImplementedError

    def min_fraction(
        self, profile: ModelProfile, request: MemoryRequest, *, gpu_memory_bytes: int, gpu_key: str | None = None
    ) -> float | None:
        if profile.constraints.tp_problems(request.tp):
            return None

        def fits(fraction: float) -> bool:
            sized = request.model_copy(update={"memory_fraction": fraction})
            return self.estimate(profile, sized, gpu_memory_bytes=gpu_memory_bytes, gpu_key=gpu_key).fits

        return fraction_search(fits)

    def claim_bytes(
        self, profile: ModelProfile, request: MemoryRequest, *, gpu_memory_bytes: int, gpu_key: str | None = None
    ) -> int:
        return self.estimate(profile, request, gpu_memory_bytes=gpu_memory_bytes, gpu_key=gpu_key).claim_bytes


def fraction_search(fits, low: float = 0.01, high: float = 1.0, *, step: float = 0.001) -> float | None:
    """Smallest fraction on a ``step`` grid in [low, high] for which ``fits(fraction)`` holds (monotone)."""
    grid_high = round(high / step)
    grid_low = max(1, round(low / step))
    if not fits(grid_high * step):
        return None
    while grid_low < grid_high:
        mid = (grid_low + grid_high) // 2
        if fits(mid * step):
            grid_high = mid
        else:
            grid_low = mid + 1
    return round(grid_high * step, 6)
