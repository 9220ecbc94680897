"""SGLang memory model (0.5.23: ``arg_groups/memory_hook.py``, ``mem_cache/kv_cache_configurator.py``).

``mem_fraction_static`` is (weights + KV pool) / GPU memory. After loading, the KV budget is
``rest = free_after_load − free_before_load × (1 − mfs)`` and ``max_total_num_tokens = rest / cell_size``.
The other ``1 − mfs`` is left for activations (chunked prefill), CUDA graphs and non-torch memory.

When the user sets no fraction SGLang derives one from the GPU's memory (nvidia-smi total, MiB):
``mfs = (mem − reserved) / mem`` with ``reserved = 512 + 1.5·max(chunk, 2048) + 128·TP·PP + 2·max_bs +
prefill-graph term`` (1536 MiB instead of the last term for MLA models), floored at 10 GiB on GPUs over 60 GiB.
We map those reserve terms onto the breakdown: 512 + 128·TP·PP → non-torch, 1.5·chunk → activation,
2·max_bs + prefill graphs → CUDA graphs, and the floor's top-up → activation headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.placement.memory.base import GIB, MIB, FractionSearchMixin, MemoryBreakdown, MemoryRequest


@dataclass(frozen=True)
class SglangTier:
    """Automatic defaults for GPUs below ``below_gib`` of memory."""

    below_gib: float
    chunked_prefill_size: int
    cuda_graph_max_bs: int
    cuda_graph_max_bs_tp4: int  # when TP ≥ 4
    prefill_graph_sizes: int  # piecewise prefill graphs captured (8 MiB each in the reserve)


# 0.5.23 tiers [engines-and-memory.md §4]. The prefill-graph counts are back-solved from the fractions the
# reference computes (H100 TP1 0.830 and TP8 0.812, H200 0.903, A100-40 0.823, L40S 0.843, L4 0.684); the
# <20 GiB and ≥160 GiB counts are extrapolated (+6 sizes per doubling of the chunk).
SGLANG_TIERS = (
    SglangTier(20, 2048, 8, 8, 44),
    SglangTier(35, 4096, 48, 160, 50),
    SglangTier(60, 4096, 32, 160, 50),
    SglangTier(160, 8192, 256, 512, 56),
    SglangTier(math.inf, 16384, 512, 512, 62),
)
DEFAULT_SGLANG_VERSION = "0.5.23"
MLA_PREFILL_GRAPH_RESERVE_MIB = 1536
RESERVE_FLOOR_MIB = 10 * 1024  # on GPUs over 60 GiB
RESERVE_FLOOR_ABOVE_GIB = 60
SWA_FULL_TOKENS_RATIO = 0.8  # SWA pool sized at 0.8 × full-attention tokens
MAMBA_FULL_MEMORY_RATIO = 0.9  # hybrid models: mamba state pool : full-attention pool
# CUDA context before SGLang measures free memory (same measurement as vLLM's, see vllm.py).
PROCESS_OVERHEAD_BYTES = 548_995_072


def tier_for(gpu_memory_bytes: int) -> SglangTier:
    gib = gpu_memory_bytes / GIB
    return next(t for t in SGLANG_TIERS if gib < t.below_gib)


@dataclass(frozen=True)
class SglangReserve:
    non_torch_mib: float
    activation_mib: float
    cuda_graphs_mib: float
    floor_topup_mib: float

    @property
    def total_mib(self) -> float:
        return self.non_torch_mib + self.activation_mib + self.cuda_graphs_mib + self.floor_topup_mib


def reserved_memory(
    profile: ModelProfile, gpu_memory_bytes: int, tp: int, pp: int, chunked_prefill_size: int | None = None
) -> SglangReserve:
    tier = tier_for(gpu_memory_bytes)
    chunk = chunked_prefill_size or tier.chunked_prefill_size
    max_bs = tier.cuda_graph_max_bs_tp4 if tp >= 4 else tier.cuda_graph_max_bs
    prefill = MLA_PREFILL_GRAPH_RESERVE_MIB if profile.uses_mla else 8 * tier.prefill_graph_sizes
    non_torch = 512 + 128 * tp * pp
    activation = 1.5 * max(chunk, 2048)
    graphs = 2 * max_bs + prefill
    total = non_torch + activation + graphs
    floor = RESERVE_FLOOR_MIB if gpu_memory_bytes / GIB > RESERVE_FLOOR_ABOVE_GIB else 0
    return SglangReserve(non_torch, activation, graphs, max(0.0, floor - total))


def default_mem_fraction_static(profile: ModelProfile, gpu_memory_bytes: int, tp: int = 1, pp: int = 1) -> float:
    """SGLang's automatic ``mem_fraction_static`` (rounded to 3 decimals, as SGLang does)."""
    mem_mib = gpu_memory_bytes / MIB
    reserve = reserved_memory(profile, gpu_memory_bytes, tp, pp)
    return round((mem_mib - reserve.total_mib) / mem_mib, 3)


class SglangMemoryModel(FractionSearchMixin):
    """SGLang's memory semantics; ``gpu_memory_bytes`` is the device total (nvidia-smi)."""

    name = "sglang"

    def __init__(self, version: str = DEFAULT_SGLANG_VERSION) -> None:
        self.version = version

    def estimate(
        self, profile: ModelProfile, request: MemoryRequest, *, gpu_memory_bytes: int, gpu_key: str | None = None
    ) -> MemoryBreakdown:
        tp, pp = request.tp, request.pp
        max_len = request.max_model_len or profile.max_model_len
        fraction = request.memory_fraction or default_mem_fraction_static(profile, gpu_memory_bytes, tp, pp)
        reserve = reserved_memory(profile, gpu_memory_bytes, tp, pp, request.max_num_batched_tokens)
        free_before_load = gpu_memory_bytes - PROCESS_OVERHEAD_BYTES
        budget = math.ceil(free_before_load * fraction)
        weights = profile.weights_per_rank(tp, pp) + request.extra_weight_bytes
        rest = budget - weights  # = free_after_load − free_before_load × (1 − mfs)

        dtype = request.kv_cache_dtype if request.kv_cache_dtype != "auto" else profile.kv_cache_dtype_default
        full_cell = profile.kv_cache_bytes_per_token(tp, dtype) / pp
        swa_cell = profile.sliding_window_bytes_per_token(tp, dtype) / pp * SWA_FULL_TOKENS_RATIO
        cell = max(1.0, full_cell + swa_cell)
        attention_rest = rest
        state = profile.state_bytes_per_sequence(tp) / pp
        max_states = math.inf
        if state:
            # Hybrid models: the mamba state pool is carved out of the KV budget first.
            mamba_pool = rest * MAMBA_FULL_MEMORY_RATIO / (1 + MAMBA_FULL_MEMORY_RATIO)
            attention_rest = rest - mamba_pool
            max_states = mamba_pool // state if state else math.inf
        max_tokens = int(max(0, attention_rest) // cell)
        max_concurrency = min(max_tokens / max_len, max_states)
        kv_needed = math.ceil(request.concurrency * (max_len * cell + state))

        problems = [f"tensor parallel: {p}" for p in profile.constraints.tp_problems(tp)]
        if max_len > profile.max_model_len:
            problems.append(f"context length {max_len} exceeds the model's maximum {profile.max_model_len}")
        if rest <= 0:
            problems.append(
                f"Loaded weights ({weights / GIB:.2f} GiB per GPU) leave no GPU memory for the KV cache under "
                f"--mem-fraction-static={fraction:g}; raise --mem-fraction-static above "
                f"{weights / free_before_load:.3f} or raise tensor parallelism"
            )
        elif max_concurrency < request.concurrency:
            problems.append(
                f"KV cache for {request.concurrency} × {max_len} tokens needs {kv_needed / GIB:.2f} GiB but "
                f"{rest / GIB:.2f} GiB is available ({max_tokens} tokens); raise --mem-fraction-static or "
                "tensor parallelism, or lower context_length/concurrency"
            )
        return MemoryBreakdown(
            engine=self.name,
            version=request.version or self.version,
            gpu_memory_bytes=gpu_memory_bytes,
            tp=tp,
            pp=pp,
            fraction=fraction,
            budget=budget,
            weights=weights,
            activation=int((reserve.activation_mib + reserve.floor_topup_mib) * MIB),
            non_torch=int(reserve.non_torch_mib * MIB),
            cuda_graphs=int(reserve.cuda_graphs_mib * MIB),
            kv_cache=rest,
            process_overhead=PROCESS_OVERHEAD_BYTES,
            block_size=1,
            max_kv_tokens=max_tokens,
            max_concurrency=round(float(max_concurrency), 4),
            max_model_len=max_len,
            concurrency=request.concurrency,
            kv_needed=kv_needed,
            # SGLang uses its reserve (activations, graphs, non-torch) outside the fraction, plus the context.
            claim_bytes=budget + int(reserve.total_mib * MIB) + PROCESS_OVERHEAD_BYTES,
            fits=not problems,
            problems=problems,
        )
