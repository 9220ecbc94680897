"""vLLM (V1 engine) memory model.

vLLM's startup (``v1/worker/gpu_worker.py``, ``utils/mem_utils.py``; engines-and-memory.md §1):

1. CUDA context and NCCL are created, then a memory snapshot is taken. What was used before the snapshot
   (≈0.5 GiB) is outside the budget: our ``process_overhead``.
2. ``requested = ceil(total × gpu_memory_utilization)``: a fraction of the GPU's **total** memory, per instance.
3. Weights load; ``profile_run`` does a dummy forward of ``max_num_batched_tokens`` tokens and a dummy sampler
   run over ``max_num_seqs`` logits: the activation peak.
4. ``non_kv = weights + activation peak + non-torch increase``.
5. ``KV = requested − non_kv − cudagraph_estimate`` (the estimate is subtracted since v0.21.0; before, graphs
   were captured after the KV cache and lived in the ``1 − gmu`` slack).
6. ``num_blocks = KV // page bytes``; the log's "GPU KV cache size: N tokens" is group-aware.

The activation and CUDA-graph terms are calibrated on a real startup log (Llama-3.1-8B, H100, gmu 0.95,
vLLM 0.19: weights 14.99, activation 1.89, non-torch 0.25, CUDA graphs 0.91, KV 58.11 GiB) and cross-checked
against llm-d's measurement of Qwen3-14B (activation 2.23 GiB on vLLM ≥ 0.17).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpustack_pulumi.analysis.profile import VOCAB_PADDING, ModelProfile
from gpustack_pulumi.placement.memory.base import GIB, FractionSearchMixin, MemoryBreakdown, MemoryRequest


@dataclass(frozen=True)
class VllmVersionDefaults:
    """Defaults that change between vLLM releases (each read in that release's source or docs)."""

    gpu_memory_utilization: float
    block_size: int
    mla_block_size: int  # FlashMLA needs 64-token blocks
    cudagraphs_in_budget: bool  # VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS default on since v0.21.0
    max_cudagraph_capture_size: int


VLLM_VERSIONS: dict[str, VllmVersionDefaults] = {
    # 0.19: the calibration log's release; gmu default 0.9, graphs outside the budget.
    "0.19.0": VllmVersionDefaults(0.90, 16, 64, False, 512),
    # 0.25: gmu default already 0.92 [docs], graph estimate in the budget since 0.21.
    "0.25.0": VllmVersionDefaults(0.92, 16, 64, True, 512),
    # 0.33.0: the pinned target (read in the wheel's source).
    "0.33.0": VllmVersionDefaults(0.92, 16, 64, True, 512),
}
DEFAULT_VLLM_VERSION = "0.33.0"

# --- calibrated constants (see module docstring) ----------------------------------------------------
ACTIVATION_DTYPE_BYTES = 2  # activations run in bf16/fp16 even for fp8/int4 weights
# Scale on the structural activation estimate (forward intermediates + sampler logits) that reproduces the
# 1.89 GiB of the Llama-3.1-8B log (structural estimate 1.979 GiB).
ACTIVATION_CALIBRATION = 0.9553
# Non-torch memory (NCCL, custom all-reduce buffers, cuBLAS workspaces) that grows during startup:
# 0.25 GiB at TP1 [log]; about 2.1 GiB per rank at TP ≥ 2 (llm-d's 61-run study).
NON_TORCH_TP1_BYTES = int(0.25 * GIB)
NON_TORCH_MULTI_GPU_BYTES = int(2.1 * GIB)
# CUDA-graph memory per captured size and decoder layer: 0.91 GiB / (51 sizes × 32 layers) [log].
CUDA_GRAPH_BYTES_PER_SIZE_PER_LAYER = int(0.91 * GIB / (51 * 32))
# CUDA context created before vLLM's memory snapshot: outside the budget. The log puts it at ≈0.5 GiB; a bare
# context measured 548,995,072 B on an H100 (benchmarks/gpu_memory_probe.py, driver 580.159.04).
PROCESS_OVERHEAD_BYTES = 548_995_072
# In-flight tokens a sliding-window request may hold beyond its window under async scheduling (×mnbt).
SLIDING_IN_FLIGHT_FACTOR = 2


# The driver keeps part of the memory NVML reports as total out of CUDA's reach: vLLM sizes its budget from
# ``torch.cuda.mem_get_info()`` total, NVML (and nvidia-smi, and the agent) report the larger figure.
# Measured with benchmarks/gpu_memory_probe.py on an H100 80GB HBM3 (driver 580.159.04, 2026-11-28): NVML total
# 85,520,809,984 B, cuMemGetInfo total 85,017,493,504 B (79.18 GiB, the calibration log's 79.19) → 0.994115.
# The 480 MiB difference is what NVML already reports as used on an idle GPU.
CUDA_VISIBLE_RATIO = 0.994115


def cuda_visible_memory(nvml_total_bytes: int) -> int:
    """The total CUDA reports for a device whose NVML total is ``nvml_total_bytes``."""
    return int(nvml_total_bytes * CUDA_VISIBLE_RATIO)


def batch_defaults(gpu_memory_bytes: int, gpu_key: str | None) -> tuple[int, int]:
    """vLLM's (max_num_batched_tokens, max_num_seqs) for the API server by device memory
    (``get_batch_defaults``): ≥160 GiB 16384/1024; ≥70 GiB except A100 8192/1024; else 2048/256."""
    gib = gpu_memory_bytes / GIB
    if gib >= 160:
        return 16384, 1024
    if gib >= 70 and not (gpu_key or "").upper().startswith("A100"):
        return 8192, 1024
    return 2048, 256


def cudagraph_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int, *, family: str = "") -> list[int]:
    """The batch sizes vLLM captures: ``[1, 2, 4] + range(8, 256, 8) + range(256, max+1, 16)`` up to
    ``max = min(2·max_num_seqs, 512)`` (gpt-oss forces 1024), capped at max_num_batched_tokens."""
    limit = 1024 if family == "gpt_oss" else min(2 * max_num_seqs, 512)
    limit = min(limit, max_num_batched_tokens)
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, limit + 1, 16)]
    return [s for s in sizes if s <= limit]


@dataclass(frozen=True)
class KvCapacity:
    block_size: int
    block_bytes: int
    num_blocks: int
    blocks_per_request: int
    max_kv_tokens: int
    max_concurrency: float
    kv_needed: int


def kv_capacity(
    profile: ModelProfile,
    kv_pool: int,
    *,
    tp: int,
    pp: int,
    kv_cache_dtype: str,
    max_model_len: int,
    concurrency: int,
    max_num_batched_tokens: int,
    block_size: int,
) -> KvCapacity:
    """Group-aware block accounting (``v1/core/kv_cache_planning.py``).

    Each attention type forms groups of equal layer count (the smallest type's count; others padded), all
    groups share one pool of equal-size pages. A request needs ``cdiv(L, bs)`` blocks per full-attention group,
    ``cdiv(min(W − 1 + 2·mnbt, L), bs) + 1`` per sliding group and one block per linear-attention group.
    """
    dtype = kv_cache_dtype if kv_cache_dtype != "auto" else profile.kv_cache_dtype_default
    layer_fraction = 1 / pp  # layers are split over PP stages; each stage holds its layers' cache
    types: list[tuple[str, int, float]] = []  # (kind, layers on this stage, per-token bytes per layer)
    by_kind = profile.kv_cache_bytes_per_token_by_kind(tp, dtype)
    for group in profile.kv_groups:
        layers = max(1, math.ceil(group.num_layers * layer_fraction))
        if group.kind == "linear_attention":
            types.append((group.kind, layers, group.state_bytes_per_sequence(tp) / group.num_layers))
        else:
            types.append((group.kind, layers, by_kind[group.kind] / group.num_layers))
    group_size = min(layers for _, layers, _ in types)
    state_page = max((v for kind, _, v in types if kind == "linear_attention"), default=0.0)
    attention_token_bytes = max((v for kind, _, v in types if kind != "linear_attention"), default=0.0)
    bs = block_size
    if state_page and attention_token_bytes:
        # vLLM raises the attention block size so an attention page is at least a mamba state page.
        bs = max(bs, math.ceil(state_page / attention_token_bytes / 16) * 16)
    page = max(bs * attention_token_bytes, state_page)
    block_bytes = max(1, math.ceil(page * group_size))
    num_blocks = max(0, kv_pool) // block_bytes

    window = profile.sliding_window() or 0
    blocks_per_request = 0
    for kind, layers, _ in types:
        groups = math.ceil(layers / group_size)
        if kind == "linear_attention":
            per_group = 1
        elif kind == "sliding_window":
            held = min(window - 1 + SLIDING_IN_FLIGHT_FACTOR * max_num_batched_tokens, max_model_len)
            per_group = min(math.ceil(held / bs) + 1, math.ceil(max_model_len / bs))
        else:
            per_group = math.ceil(max_model_len / bs)
        blocks_per_request += groups * per_group
    max_concurrency = num_blocks / blocks_per_request if blocks_per_request else 0.0
    return KvCapacity(
        block_size=bs,
        block_bytes=block_bytes,
        num_blocks=num_blocks,
        blocks_per_request=blocks_per_request,
        max_kv_tokens=int(max_concurrency * max_model_len),
        max_concurrency=max_concurrency,
        kv_needed=blocks_per_request * concurrency * block_bytes,
    )


class VllmMemoryModel(FractionSearchMixin):
    """vLLM's memory semantics. ``gpu_memory_bytes`` is the device total as NVML reports it (the agent's capacity
    document and the catalog carry that figure); vLLM sizes its budget from CUDA's smaller total, so the model
    converts with :func:`cuda_visible_memory` first."""

    name = "vllm"

    def __init__(self, version: str = DEFAULT_VLLM_VERSION) -> None:
        if version not in VLLM_VERSIONS:
            raise KeyError(f"unknown vLLM version '{version}'; known: {', '.join(sorted(VLLM_VERSIONS))}")
        self.version = version

    def _defaults(self, request: MemoryRequest) -> tuple[str, VllmVersionDefaults]:
        version = request.version or self.version
        if version not in VLLM_VERSIONS:
            raise KeyError(f"unknown vLLM version '{version}'; known: {', '.join(sorted(VLLM_VERSIONS))}")
        return version, VLLM_VERSIONS[version]

    def estimate(
        self, profile: ModelProfile, request: MemoryRequest, *, gpu_memory_bytes: int, gpu_key: str | None = None
    ) -> MemoryBreakdown:
        version, defaults = self._defaults(request)
        tp, pp = request.tp, request.pp
        max_len = request.max_model_len or profile.max_model_len
        fraction = request.memory_fraction or defaults.gpu_memory_utilization
        mnbt, seqs = self._batch(request, cuda_visible_memory(gpu_memory_bytes), gpu_key, max_len)

        cuda_total = cuda_visible_memory(gpu_memory_bytes)
        budget = math.ceil(cuda_total * fraction)
        weights = profile.weights_per_rank(tp, pp) + request.extra_weight_bytes
        activation = activation_peak(profile, tp=tp, max_num_batched_tokens=mnbt, max_num_seqs=seqs)
        non_torch = NON_TORCH_TP1_BYTES if tp * pp == 1 else NON_TORCH_MULTI_GPU_BYTES
        layers_per_stage = math.ceil(profile.num_layers / pp)
        sizes = [] if request.enforce_eager else cudagraph_capture_sizes(seqs, mnbt, family=profile.family)
        cuda_graphs = len(sizes) * layers_per_stage * CUDA_GRAPH_BYTES_PER_SIZE_PER_LAYER
        kv_pool = budget - weights - activation - non_torch - (cuda_graphs if defaults.cudagraphs_in_budget else 0)
        overhead = PROCESS_OVERHEAD_BYTES + (0 if defaults.cudagraphs_in_budget else cuda_graphs)

        block_size = defaults.mla_block_size if profile.uses_mla else defaults.block_size
        cap = kv_capacity(
            profile,
            kv_pool,
            tp=tp,
            pp=pp,
            kv_cache_dtype=request.kv_cache_dtype,
            max_model_len=max_len,
            concurrency=request.concurrency,
            max_num_batched_tokens=mnbt,
            block_size=block_size,
        )
        problems = self._problems(profile, request, fraction, weights, kv_pool, cap, max_len, cuda_total)
        return MemoryBreakdown(
            engine=self.name,
            version=version,
            gpu_memory_bytes=gpu_memory_bytes,
            tp=tp,
            pp=pp,
            fraction=fraction,
            budget=budget,
            weights=weights,
            activation=activation,
            non_torch=non_torch,
            cuda_graphs=cuda_graphs,
            kv_cache=kv_pool,
            process_overhead=overhead,
            block_size=cap.block_size,
            max_kv_tokens=cap.max_kv_tokens,
            max_concurrency=round(cap.max_concurrency, 4),
            max_model_len=max_len,
            concurrency=request.concurrency,
            kv_needed=cap.kv_needed,
            claim_bytes=budget + overhead,
            fits=not problems,
            problems=problems,
        )

    def _batch(
        self, request: MemoryRequest, gpu_memory_bytes: int, gpu_key: str | None, max_len: int
    ) -> tuple[int, int]:
        mnbt, seqs = batch_defaults(gpu_memory_bytes, gpu_key)
        if request.performance_mode == "throughput":
            mnbt, seqs = 2 * mnbt, 2 * seqs
        mnbt = request.max_num_batched_tokens or mnbt
        seqs = request.max_num_seqs or seqs
        # vLLM caps both: mnbt ≤ seqs × max_model_len, seqs ≤ mnbt.
        if request.max_num_batched_tokens is None:
            mnbt = min(mnbt, seqs * max_len)
        seqs = min(seqs, mnbt)
        return mnbt, seqs

    def _problems(
        self,
        profile: ModelProfile,
        request: MemoryRequest,
        fraction: float,
        weights: int,
        kv_pool: int,
        cap: KvCapacity,
        max_len: int,
        gpu_memory_bytes: int,
    ) -> list[str]:
        problems = [f"tensor parallel: {p}" for p in profile.constraints.tp_problems(request.tp)]
        if max_len > profile.max_model_len:
            problems.append(f"max_model_len {max_len} exceeds the model's maximum {profile.max_model_len}")
        if weights > gpu_memory_bytes * fraction:
            problems.append(
                f"weights per GPU {_gib(weights)} exceed the budget {_gib(gpu_memory_bytes * fraction)} "
                f"(gpu_memory_utilization {fraction:g} × {_gib(gpu_memory_bytes)}); raise tensor parallelism"
            )
        elif kv_pool <= 0:
            problems.append(
                "No available memory for the cache blocks: weights, activation and graphs take "
                f"{_gib(gpu_memory_bytes * fraction - kv_pool)} of the {_gib(gpu_memory_bytes * fraction)} budget; "
                "increase gpu_memory_utilization or tensor parallelism"
            )
        elif cap.max_concurrency < request.concurrency:
            fitting_len = _largest_fitting_len(cap, max_len)
            problems.append(
                f"KV cache for {request.concurrency} × {max_len} tokens needs {_gib(cap.kv_needed)} but "
                f"{_gib(kv_pool)} is available (holds {cap.max_concurrency:.2f} such sequences; estimated "
                f"maximum model length {fitting_len}); increase gpu_memory_utilization or tensor parallelism, "
                "or decrease max_model_len/concurrency"
            )
        return problems


def activation_peak(profile: ModelProfile, *, tp: int, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Peak activation of vLLM's profile run on one rank.

    Forward: per token the residual stream and norms (≈4·h), the MLP intermediates of the active experts
    (3·I/TP: gate, up and their product) and the attention projections ((H + 2·KV)·d/TP), in bf16.
    Sampler: ``max_num_seqs`` logit rows of the rank's vocabulary shard in fp32, twice (logits and probs).
    Scaled by the calibration on the Llama-3.1-8B log.
    """
    h = profile.hidden_size
    intermediate = _active_intermediate(profile)
    kv_heads_rank = max(1, profile.num_kv_heads // tp)
    attention = (profile.num_attention_heads // max(1, tp) + 2 * kv_heads_rank) * profile.head_dim
    per_token = ACTIVATION_DTYPE_BYTES * (4 * h + 3 * intermediate / tp + attention)
    padded_vocab = math.ceil(profile.vocab_size / VOCAB_PADDING) * VOCAB_PADDING
    sampler = max_num_seqs * math.ceil(padded_vocab / tp) * 4 * 2
    return math.ceil(ACTIVATION_CALIBRATION * (max_num_batched_tokens * per_token + sampler))


def _active_intermediate(profile: ModelProfile) -> int:
    """MLP width one token activates: the dense width, or top-k × expert width plus the shared experts."""

    def width(name: str) -> int:
        comp = profile.component(name)  # type: ignore[arg-type]
        return comp.active_parameters // comp.layers // (3 * profile.hidden_size) if comp and comp.layers else 0

    return max(width("mlp"), width("experts") + width("shared_experts"), 1)


def _largest_fitting_len(cap: KvCapacity, max_len: int) -> int:
    """vLLM's 'estimated maximum model length': tokens one request can hold with the pool."""
    if cap.blocks_per_request == 0:
        return 0
    return min(max_len, int(cap.num_blocks / cap.blocks_per_request * max_len))


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"
