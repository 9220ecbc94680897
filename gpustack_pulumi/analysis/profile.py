"""ModelProfile: everything placement and the engines need to know about a model, as plain data.

A profile is computed once (``gpustack_pulumi.analysis.analyze``) and then queried with pure functions:
weights per rank for a TP/PP shape, KV bytes per token for a TP size and KV dtype, and the tensor-parallel
constraints.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ComponentName = Literal[
    "embedding",
    "lm_head",
    "attention",
    "attention_kv",
    "attention_replicated",
    "mlp",
    "experts",
    "shared_experts",
    "router",
    "norms",
    "other",
]

# How a component's weights divide over tensor-parallel ranks (vLLM/SGLang semantics).
#  - "tp": column/row parallel linear layers, split evenly.
#  - "vocab": embedding / LM head rows, padded to a multiple of 64 then split.
#  - "kv_heads": K/V projections: split while TP ≤ KV heads, replicated (one head per rank) beyond.
#  - "replicated": every rank holds a full copy (norms, routers, MLA down-projections).
Sharding = Literal["tp", "vocab", "kv_heads", "replicated"]

KvKind = Literal["full_attention", "sliding_window", "mla", "linear_attention"]

VOCAB_PADDING = 64  # vLLM pads the vocabulary to a multiple of 64 before splitting it (ParallelLMHead)


class WeightComponent(BaseModel):
    """One group of weights of the main model (MTP layers are kept apart, see ``ModelProfile.mtp``)."""

    model_config = ConfigDict(frozen=True)

    name: ComponentName
    parameters: int = Field(ge=0)
    bytes: int = Field(ge=0, description="Bytes on the GPU in the profile's weight format.")
    dtype: str = Field(description="Storage format label: bf16, fp8, mxfp4, awq-int4-g128...")
    sharding: Sharding
    active_parameters: int = Field(ge=0, description="Parameters one token touches (top-k of routed experts).")
    layers: int = Field(default=0, ge=0, description="Decoder layers this component spans (0: not per-layer).")
    layer_parameters: tuple[int, ...] = Field(
        default=(),
        description=(
            "Parameters in each decoder layer (index = layer), so a pipeline stage holds exactly its layers' "
            "share; empty for non-layer weights (embeddings, LM head, final norm)."
        ),
    )


class KvLayerGroup(BaseModel):
    """Layers that keep the same kind of per-token (or per-sequence) cache."""

    model_config = ConfigDict(frozen=True)

    kind: KvKind
    num_layers: int = Field(ge=1)
    num_kv_heads: int = Field(default=1, ge=1, description="KV heads (1 for MLA's single latent head).")
    head_size: int = Field(default=0, ge=0, description="K size + V size per head, in elements.")
    sliding_window: int | None = None
    fixed_bytes_per_token_per_layer: int | None = Field(
        default=None,
        description="A cache layout with a fixed size regardless of kv_cache_dtype (DeepSeek-V3.2 fp8_ds_mla).",
    )
    extra_bytes_per_token_per_layer: int = Field(
        default=0, description="Side caches per token and layer (DeepSeek-V3.2's indexer keys: 132 B)."
    )
    # Linear attention (Gated DeltaNet) keeps a constant state per sequence instead of per-token KV.
    conv_state_elements: int = Field(default=0, description="Conv state elements per sequence per layer, TP1.")
    ssm_state_elements: int = Field(default=0, description="SSM state elements per sequence per layer, TP1.")

    def kv_heads_per_rank(self, tp: int) -> int:
        if self.kind == "mla":
            return 1  # MLA keeps one latent vector per token; every rank holds all of it.
        # vLLM/SGLang: KV heads split while TP ≤ KV heads; beyond, each rank holds one replicated head.
        return max(1, self.num_kv_heads // tp)

    def bytes_per_token_per_layer(self, tp: int, kv_dtype_bytes: float, *, use_fixed: bool = True) -> float:
        """Per-token cache bytes of one layer on one rank (0 for linear attention).

        ``use_fixed`` is False when the user asked for a plain float cache instead of the model's fixed layout.
        """
        if self.kind == "linear_attention":
            return 0.0
        if self.fixed_bytes_per_token_per_layer is not None and use_fixed:
            base: float = self.fixed_bytes_per_token_per_layer
        else:
            base = self.kv_heads_per_rank(tp) * self.head_size * kv_dtype_bytes
        return base + self.extra_bytes_per_token_per_layer

    def state_bytes_per_sequence(self, tp: int, state_dtype_bytes: float = 2.0) -> float:
        """Constant per-sequence state of one rank over all layers of the group (linear attention only)."""
        if self.kind != "linear_attention":
            return 0.0
        per_layer = (self.conv_state_elements + self.ssm_state_elements) / tp * state_dtype_bytes
        return per_layer * self.num_layers


class ParallelConstraints(BaseModel):
    """The numbers that decide which tensor-parallel sizes are valid."""

    model_config = ConfigDict(frozen=True)

    num_attention_heads: int
    num_kv_heads: int
    vocab_size: int
    moe_intermediate_size: int | None = None
    num_experts: int | None = None
    uses_mla: bool = False
    linear_num_value_heads: int | None = None
    linear_num_key_heads: int | None = None

    def tp_problems(self, tp: int, *, block_fp8_moe: bool = False) -> list[str]:
        """Why ``tp`` is not a valid tensor-parallel size; empty when it is (vLLM's checks)."""
        problems: list[str] = []
        if tp < 1:
            return [f"tensor parallel size must be ≥ 1, got {tp}"]
        if self.num_attention_heads % tp:
            problems.append(
                f"attention heads ({self.num_attention_heads}) must be divisible by tensor parallel size ({tp})"
            )
        if not self.uses_mla and self.num_kv_heads % tp and tp % self.num_kv_heads:
            problems.append(f"KV heads ({self.num_kv_heads}) and tensor parallel size ({tp}) must divide one another")
        padded_vocab = math.ceil(self.vocab_size / VOCAB_PADDING) * VOCAB_PADDING
        if padded_vocab % tp:
            problems.append(f"padded vocabulary ({padded_vocab}) must be divisible by tensor parallel size ({tp})")
        for name, heads in (
            ("linear value heads", self.linear_num_value_heads),
            ("linear key heads", self.linear_num_key_heads),
        ):
            if heads and heads % tp:
                problems.append(f"{name} ({heads}) must be divisible by tensor parallel size ({tp})")
        if block_fp8_moe and self.moe_intermediate_size and (self.moe_intermediate_size // tp) % 128:
            problems.append(
                f"block-FP8 MoE needs moe_intermediate_size/TP divisible by 128: "
                f"{self.moe_intermediate_size}/{tp} = {self.moe_intermediate_size / tp:g}; use expert parallel"
            )
        return problems

    def valid_tp_sizes(self, limit: int = 64, *, block_fp8_moe: bool = False) -> list[int]:
        return [tp for tp in range(1, limit + 1) if not self.tp_problems(tp, block_fp8_moe=block_fp8_moe)]


class ModelProfile(BaseModel):
    """What a model is, as numbers. All byte counts are integers in bytes."""

    model_config = ConfigDict(frozen=True)

    model_id: str = Field(description="Catalog id, path or file the profile was computed from.")
    architecture: str = Field(description="Architecture class, e.g. 'Qwen3MoeForCausalLM'.")
    family: str = Field(description="The analysis family used: llama, qwen3_moe, deepseek_v3, generic...")
    source: Literal["catalog", "config", "safetensors", "gguf"]
    exact_weights: bool = Field(description="True when weight bytes come from file headers, not counting.")

    hidden_size: int
    num_layers: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int

    parameters_total: int = Field(description="Main model parameters (MTP layers excluded).")
    parameters_active: int = Field(description="Parameters one token touches, embeddings included.")
    parameters_embedding: int = Field(description="Input embedding parameters (part of both counts above).")
    num_experts: int | None = None
    num_experts_per_token: int | None = None

    checkpoint_dtype: str = Field(description="Float dtype of the checkpoint (torch_dtype).")
    dtype: str = Field(
        default="bf16",
        description="Float dtype the engines load weights and the KV cache in (--dtype auto: fp32 loads as bf16).",
    )
    weight_format: str = Field(description="Format of the linear weights as served (after quantization).")
    quantization: str | None = Field(default=None, description="Requested quantization, if any.")
    components: list[WeightComponent]
    weight_bytes: int = Field(description="Main model weights as served, all ranks together.")
    mtp_parameters: int = Field(default=0, description="Multi-token-prediction layers (loaded only for MTP).")
    mtp_bytes: int = 0

    kv_groups: list[KvLayerGroup]
    kv_cache_dtype_default: str = Field(default="auto", description="What 'auto' means for this model.")
    max_model_len: int = Field(description="Maximum context from the config, rope scaling included.")
    constraints: ParallelConstraints
    warnings: list[str] = Field(default_factory=list)

    # ----- KV cache -----------------------------------------------------------------------------------
    def kv_cache_bytes_per_token(self, tp: int = 1, kv_cache_dtype: str = "auto") -> int:
        """Per-token cache bytes on one rank of the layers whose cache grows with the sequence.

        These are the engines' formulas: MHA/GQA ``2·L·max(1, kv/TP)·head_dim·b``, MLA
        ``L·(kv_lora_rank + rope_dim)·b`` (not divided by TP). Sliding-window layers hold at most a window per
        sequence and linear-attention layers a constant state; see :meth:`sliding_window_bytes_per_token` and
        :meth:`state_bytes_per_sequence`.
        """
        return self._kv_bytes(tp, kv_cache_dtype, kinds=("full_attention", "mla"))

    def sliding_window_bytes_per_token(self, tp: int = 1, kv_cache_dtype: str = "auto") -> int:
        """Per-token cache bytes of the sliding-window layers (bounded by the window per sequence)."""
        return self._kv_bytes(tp, kv_cache_dtype, kinds=("sliding_window",))

    def kv_cache_bytes_per_token_by_kind(self, tp: int = 1, kv_cache_dtype: str = "auto") -> dict[str, int]:
        return {
            group.kind: self._kv_bytes(tp, kv_cache_dtype, kinds=(group.kind,))
            for group in self.kv_groups
            if group.kind != "linear_attention"
        }

    def _kv_bytes(self, tp: int, kv_cache_dtype: str, *, kinds: tuple[KvKind, ...]) -> int:
        b = kv_dtype_bytes(kv_cache_dtype, self.dtype)
        fixed = uses_fixed_layout(kv_cache_dtype)
        total = sum(
            group.bytes_per_token_per_layer(tp, b, use_fixed=fixed) * group.num_layers
            for group in self.kv_groups
            if group.kind in kinds
        )
        return math.ceil(total)

    def sliding_window(self) -> int | None:
        return next((g.sliding_window for g in self.kv_groups if g.kind == "sliding_window"), None)

    def kv_cache_bytes_for_sequences(
        self,
        tokens: int,
        *,
        sequences: int = 1,
        tp: int = 1,
        kv_cache_dtype: str = "auto",
        in_flight_tokens: int = 0,
    ) -> int:
        """Cache bytes on one rank for ``sequences`` sequences of ``tokens`` tokens, before block rounding.

        Sliding layers keep ``min(tokens, window − 1 + in_flight_tokens)`` tokens; linear layers their state.
        """
        window = self.sliding_window() or 0
        sliding_tokens = min(tokens, window - 1 + in_flight_tokens) if window else 0
        per_sequence = (
            self.kv_cache_bytes_per_token(tp, kv_cache_dtype) * tokens
            + self.sliding_window_bytes_per_token(tp, kv_cache_dtype) * sliding_tokens
            + self.state_bytes_per_sequence(tp)
        )
        return per_sequence * sequences

    def state_bytes_per_sequence(self, tp: int = 1) -> int:
        """Constant per-sequence state (linear-attention layers) on one rank."""
        return math.ceil(sum(group.state_bytes_per_sequence(tp) for group in self.kv_groups))

    # ----- weights --------------------------------------------------------------------------------------
    def weights_per_rank(self, tp: int = 1, pp: int = 1) -> int:
        """Weight bytes the most loaded GPU of a TP×PP replica holds.

        Each tensor is held as the engines shard it (:data:`Sharding`): linear layers split over TP ranks,
        K/V projections split up to the KV head count, the vocabulary padded then split, norms, routers and
        MLA's down-projections replicated. A rank of stage ``s`` holds exactly the layers of that stage (vLLM's
        ``get_pp_indices``: even split, leftovers to the stages before the last); the first stage also holds
        the embedding, the last the LM head and the final norm. We return the largest stage.
        """
        return max(self.weights_per_stage(tp, pp))

    def weights_per_stage(self, tp: int = 1, pp: int = 1) -> list[int]:
        """Weight bytes of one TP rank of each pipeline stage (see :meth:`weights_per_rank`)."""
        if tp < 1 or pp < 1:
            raise ValueError("tp and pp must be ≥ 1")
        if pp > self.num_layers:
            raise ValueError(f"pipeline parallel size {pp} exceeds the model's {self.num_layers} layers")
        bounds = pp_layer_bounds(self.num_layers, pp)
        stage_bytes = [0.0] * pp
        for comp in self.components:
            held = comp.bytes * self._rank_share(comp, tp)
            if comp.name == "embedding":
                stage_bytes[0] += held
            elif comp.layer_parameters and pp > 1:
                total = sum(comp.layer_parameters) or 1
                for stage, (start, end) in enumerate(bounds):
                    stage_bytes[stage] += held * sum(comp.layer_parameters[start:end]) / total
            elif comp.layer_parameters:
                stage_bytes[0] += held
            else:  # LM head, final norm and other non-layer weights: last stage
                stage_bytes[-1] += held
        return [math.ceil(b) for b in stage_bytes]

    def _rank_share(self, comp: WeightComponent, tp: int) -> float:
        match comp.sharding:
            case "replicated":
                return 1.0
            case "tp":
                return 1.0 / tp
            case "kv_heads":
                return max(1, self.num_kv_heads // tp) / self.num_kv_heads
            case "vocab":
                padded = math.ceil(self.vocab_size / VOCAB_PADDING) * VOCAB_PADDING
                return math.ceil(padded / tp) / self.vocab_size
        raise AssertionError(comp.sharding)  # pragma: no cover

    def component(self, name: ComponentName) -> WeightComponent | None:
        return next((c for c in self.components if c.name == name), None)

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    @property
    def has_sliding_window(self) -> bool:
        return any(g.kind == "sliding_window" for g in self.kv_groups)

    @property
    def has_linear_attention(self) -> bool:
        return any(g.kind == "linear_attention" for g in self.kv_groups)

    @property
    def uses_mla(self) -> bool:
        return any(g.kind == "mla" for g in self.kv_groups)


def pp_layer_bounds(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """[start, end) layer ranges of each pipeline stage, as vLLM's ``get_pp_indices`` splits them: an even
    split, with the leftover layers given one each to the stages before the last (from the second-to-last
    backwards)."""
    sizes = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        sizes[-i] += 1
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def uses_fixed_layout(kv_cache_dtype: str) -> bool:
    """Whether a model's fixed cache layout (DeepSeek-V3.2 ``fp8_ds_mla``) applies to this dtype choice."""
    return kv_cache_dtype.lower() in ("auto", "fp8", "fp8_e4m3", "fp8_ds_mla")


def kv_dtype_bytes(kv_cache_dtype: str, checkpoint_dtype: str) -> float:
    """Bytes per cached element for a ``--kv-cache-dtype`` value."""
    key = kv_cache_dtype.lower()
    if key == "auto":
        return 4.0 if checkpoint_dtype in ("fp32", "float32") else 2.0
    if key.startswith("fp8") or key == "int8":
        return 1.0
    if key in ("bf16", "bfloat16", "fp16", "float16", "half"):
        return 2.0
    if key in ("fp32", "float32", "float"):
        return 4.0
    raise ValueError(
        f"kv_cache_dtype '{kv_cache_dtype}' is not supported; valid choices: auto, fp8, fp8_e4m3, fp8_e5m2, bf16"
    )
