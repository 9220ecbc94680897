"""Architecture families: config.json → parameter counts per component and KV-cache layout.

Each family is one function that reads the fields its architecture defines and returns an
:class:`ArchitectureShape`: plain integers, no dtype yet (the profile builder applies the weight format).
Formulas are the module shapes of the Hugging Face / vLLM implementations:

- attention  ``q: h·H·d, k/v: h·KV·d each, o: H·d·h`` (+ biases, + q/k norms where the model has them)
- gated MLP  ``3·h·I`` (gate, up, down); MoE layer ``E·3·h·I_moe + shared·3·h·I_shared + router h·E``
- embeddings ``V·h``, and another ``V·h`` for the LM head unless ``tie_word_embeddings``
- MLA (DeepSeek) ``q_a h·q_lora, q_b q_lora·H·(nope+rope), kv_a h·(kv_lora+rope), kv_b kv_lora·H·(nope+v),
  o H·v·h``; its cache is one latent of ``kv_lora + rope`` per token and layer, not divided by TP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpustack_pulumi.analysis.config_view import ConfigView
from gpustack_pulumi.analysis.profile import ComponentName, KvLayerGroup, ParallelConstraints, Sharding


@dataclass
class ComponentCount:
    """Parameters of one component; ``active`` is what one token touches."""

    name: ComponentName
    sharding: Sharding
    parameters: int = 0
    active: int = 0
    quantizable: bool = False  # linear weights that a weight format (fp8, int4...) applies to
    is_expert: bool = False  # routed experts (the only thing MXFP4 checkpoints quantize)
    # Parameters in each decoder layer (index = layer); empty for non-layer weights (embeddings, final norm).
    layer_parameters: list[int] = field(default_factory=list)

    @property
    def layers(self) -> int:
        """Decoder layers this component has weights in."""
        return sum(1 for p in self.layer_parameters if p)

    def add(self, parameters: int, active: int | None = None) -> None:
        self.parameters += parameters
        self.active += parameters if active is None else active


@dataclass
class ArchitectureShape:
    """What a family function returns: counts and cache layout, no bytes yet."""

    family: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    max_model_len: int
    components: dict[str, ComponentCount]
    kv_groups: list[KvLayerGroup]
    constraints: ParallelConstraints
    num_experts: int | None = None
    num_experts_per_token: int | None = None
    mtp_parameters: int = 0
    kv_cache_dtype_default: str = "auto"
    architecture: str = ""  # the config's architecture class, set by build_shape
    warnings: list[str] = field(default_factory=list)

    @property
    def parameters_total(self) -> int:
        return sum(c.parameters for c in self.components.values())

    @property
    def parameters_active(self) -> int:
        return sum(c.active for c in self.components.values())


class _Counter:
    """Accumulates component counts while a family function walks the layers.

    Per-layer components record which decoder layers hold them (``layers``: the layer indices, the parameters
    split evenly over them), so pipeline stages and mixed dense/MoE stacks get exactly their own weights.
    """

    def __init__(self, num_layers: int = 0) -> None:
        self.components: dict[str, ComponentCount] = {}
        self.num_layers = num_layers

    def add(
        self,
        name: ComponentName,
        sharding: Sharding,
        parameters: int,
        *,
        active: int | None = None,
        layers: Sequence[int] = (),
        quantizable: bool = False,
        is_expert: bool = False,
    ) -> None:
        if parameters <= 0:
            return
        comp = self.components.setdefault(
            name, ComponentCount(name, sharding, quantizable=quantizable, is_expert=is_expert)
        )
        if comp.sharding != sharding:
            raise AssertionError(f"component {name} mixes shardings {comp.sharding} and {sharding}")
        comp.add(parameters, active)
        if layers:
            if not comp.layer_parameters:
                comp.layer_parameters = [0] * self.num_layers
            per_layer, rest = divmod(parameters, len(layers))
            for position, layer in enumerate(layers):
                comp.layer_parameters[layer] += per_layer + (1 if position < rest else 0)


# ----- shared building blocks ---------------------------------------------------------------------------


def _embeddings(c: _Counter, cfg: ConfigView, hidden: int, vocab: int, *, tied_default: bool = False) -> None:
    c.add("embedding", "vocab", vocab * hidden)
    if not cfg.tie_word_embeddings(default=tied_default):
        c.add("lm_head", "vocab", vocab * hidden)


def _gqa_attention(
    c: _Counter,
    *,
    layers: Sequence[int],
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    qkv_bias: bool = False,
    o_bias: bool = False,
    qk_norm: bool = False,
    qk_norm_full: bool = False,
    gated_q: bool = False,
    sinks: bool = False,
) -> None:
    """Standard multi-head / grouped-query attention over ``layers`` layers.

    ``qk_norm``: one norm weight of ``head_dim`` for q and one for k (Qwen3, Gemma 3); ``qk_norm_full``: norms
    over the whole q and k projections (OLMo 2: ``H·d + KV·d``; Command R+: one per head, the same count).
    """
    q_out = heads * head_dim * (2 if gated_q else 1)  # Qwen3-Next's gated attention doubles q_proj
    q_o = hidden * q_out + heads * head_dim * hidden
    q_o += (q_out if qkv_bias else 0) + (hidden if o_bias else 0)
    n = len(layers)
    c.add("attention", "tp", q_o * n, layers=layers, quantizable=True)
    kv = 2 * hidden * kv_heads * head_dim + (2 * kv_heads * head_dim if qkv_bias else 0)
    c.add("attention_kv", "kv_heads", kv * n, layers=layers, quantizable=True)
    # q/k norms are replicated; gpt-oss's sinks are split by head (one per head, like q_proj's rows).
    qk = (2 * head_dim if qk_norm else 0) + ((heads + kv_heads) * head_dim if qk_norm_full else 0)
    c.add("norms", "replicated", qk * n, layers=layers)
    c.add("attention", "tp", (heads if sinks else 0) * n, layers=layers, quantizable=True)


def _dense_mlp(c: _Counter, *, layers: Sequence[int], hidden: int, intermediate: int, bias: bool = False) -> None:
    per_layer = 3 * hidden * intermediate + ((2 * intermediate + hidden) if bias else 0)
    c.add("mlp", "tp", per_layer * len(layers), layers=layers, quantizable=True)


def _moe(
    c: _Counter,
    *,
    layers: Sequence[int],
    hidden: int,
    experts: int,
    top_k: int,
    expert_intermediate: int,
    shared_experts: int = 0,
    shared_intermediate: int | None = None,
    expert_bias: bool = False,
    router_bias: bool = False,
    shared_gate: bool = False,
) -> None:
    n = len(layers)
    per_expert = 3 * hidden * expert_intermediate + ((2 * expert_intermediate + hidden) if expert_bias else 0)
    c.add(
        "experts",
        "tp",
        per_expert * experts * n,
        active=per_expert * top_k * n,
        layers=layers,
        quantizable=True,
        is_expert=True,
    )
    if shared_experts:
        shared = 3 * hidden * (shared_intermediate or expert_intermediate) * shared_experts
        c.add("shared_experts", "tp", shared * n, layers=layers, quantizable=True)
    router = hidden * experts + (experts if router_bias else 0) + (hidden if shared_gate else 0)
    c.add("router", "replicated", router * n, layers=layers)


def _layer_norms(c: _Counter, *, layers: Sequence[int], hidden: int, per_layer: int = 2) -> None:
    c.add("norms", "replicated", per_layer * hidden * len(layers), layers=layers)
    c.add("other", "replicated", hidden)  # final norm


def _layer_kinds(cfg: ConfigView, num_layers: int) -> list[str] | None:
    """``layer_types`` when the config lists them (newer transformers write it for hybrid models)."""
    kinds = cfg.get("layer_types")
    if isinstance(kinds, list) and len(kinds) >= num_layers:
        return [str(k) for k in kinds[:num_layers]]
    return None


def _attention_kv_groups(
    cfg: ConfigView, *, num_layers: int, kv_heads: int, head_dim: int, sliding_layers: list[bool]
) -> list[KvLayerGroup]:
    window = cfg.get("sliding_window")
    n_sliding = sum(sliding_layers) if window else 0
    groups = []
    if num_layers - n_sliding:
        groups.append(
            KvLayerGroup(
                kind="full_attention", num_layers=num_layers - n_sliding, num_kv_heads=kv_heads, head_size=2 * head_dim
            )
        )
    if n_sliding:
        groups.append(
            KvLayerGroup(
                kind="sliding_window",
                num_layers=n_sliding,
                num_kv_heads=kv_heads,
                head_size=2 * head_dim,
                sliding_window=int(window),
            )
        )
    return groups


def _dims(cfg: ConfigView) -> tuple[int, int, int, int, int, int]:
    """hidden size, layers, vocabulary, attention heads, KV heads, head dim: what every GQA family reads first."""
    return (cfg.hidden_size(), cfg.num_layers(), cfg.vocab_size(), cfg.num_attention_heads(), cfg.num_kv_heads(),
            cfg.head_dim())  # fmt: skip


def _moe_shape(
    family: str, cfg: ConfigView, c: _Counter, groups: list[KvLayerGroup], *, experts: int, top_k: int,
    moe_intermediate: int, **extra: Any,
) -> ArchitectureShape:  # fmt: skip
    """The shape of a MoE family: expert counts and the MoE tensor-parallel constraint."""
    constraints = extra.pop("constraints", None) or _constraints(
        cfg, moe_intermediate_size=moe_intermediate, num_experts=experts
    )
    return _shape(family, cfg, c, groups, num_experts=experts, num_experts_per_token=top_k,
                  constraints=constraints, **extra)  # fmt: skip


def _constraints(cfg: ConfigView, **extra: Any) -> ParallelConstraints:
    return ParallelConstraints(
        num_attention_heads=cfg.num_attention_heads(),
        num_kv_heads=cfg.num_kv_heads(),
        vocab_size=cfg.vocab_size(),
        **extra,
    )


def _shape(family: str, cfg: ConfigView, c: _Counter, kv_groups: list[KvLayerGroup], **kw: Any) -> ArchitectureShape:
    constraints = kw.pop("constraints", None) or _constraints(cfg)
    return ArchitectureShape(
        family=family,
        hidden_size=cfg.hidden_size(),
        num_layers=cfg.num_layers(),
        vocab_size=cfg.vocab_size(),
        num_attention_heads=cfg.num_attention_heads(),
        num_kv_heads=cfg.num_kv_heads(),
        head_dim=kw.pop("head_dim", None) or cfg.head_dim(),
        max_model_len=cfg.max_model_len(),
        components=c.components,
        kv_groups=kv_groups,
        constraints=constraints,
        **kw,
    )


# ----- dense families ------------------------------------------------------------------------------------


# Dense families that differ from Llama only in counted details: norms per layer (Gemma: pre+post around attention
# and MLP; Cohere: one shared by the parallel attention and MLP; OLMo 2: post-norms), whether the LM head is tied
# by default, q/k norms, and biases.
NORMS_PER_LAYER = {"gemma2": 4, "gemma3": 4, "cohere": 1, "cohere2": 1}
TIED_BY_DEFAULT = {"gemma2", "gemma3", "cohere", "cohere2"}


def dense_decoder(cfg: ConfigView, family: str) -> ArchitectureShape:
    """Llama, Mistral, Qwen2/2.5, Qwen3, Phi-3/Phi-4, Gemma 2/3, OLMo 2, Command R (Cohere), InternLM 1/2/3,
    Baichuan, and the generic fallback."""
    h, n, v, heads, kv, d = _dims(cfg)
    warnings: list[str] = []
    if family == "generic" and not cfg.has("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"):
        inter = 4 * h
        warnings.append(f"no intermediate_size in the config: the MLP is assumed to be 4 × hidden_size = {inter:,}")
    else:
        inter = cfg.require_int("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size")
    attention_bias = bool(cfg.get("attention_bias", default=False))
    internlm_bias = family == "internlm" and bool(cfg.get("bias", default=True))  # InternLM 1: biased q/k/v/o
    qkv_bias = family == "qwen2" or attention_bias or internlm_bias
    tied = family in TIED_BY_DEFAULT
    c = _Counter(n)
    _embeddings(c, cfg, h, v, tied_default=tied)
    _gqa_attention(
        c,
        layers=range(n),
        hidden=h,
        heads=heads,
        kv_heads=kv,
        head_dim=d,
        qkv_bias=qkv_bias,
        o_bias=(attention_bias and family != "qwen2") or internlm_bias,
        qk_norm=family in ("qwen3", "gemma3"),
        qk_norm_full=family == "olmo2" or (family.startswith("cohere") and bool(cfg.get("use_qk_norm"))),
    )
    _dense_mlp(c, layers=range(n), hidden=h, intermediate=inter, bias=bool(cfg.get("mlp_bias", default=False)))
    _layer_norms(c, layers=range(n), hidden=h, per_layer=NORMS_PER_LAYER.get(family, 2))

    sliding = _sliding_layers(cfg, family, n)
    groups = _attention_kv_groups(cfg, num_layers=n, kv_heads=kv, head_dim=d, sliding_layers=sliding)
    shape = _shape(family, cfg, c, groups)
    shape.warnings.extend(warnings)
    return shape


def falcon(cfg: ConfigView, family: str = "falcon") -> ArchitectureShape:
    """Falcon (7B/40B/180B, and Falcon 2/3 configs with model_type falcon): fused query_key_value, a plain
    (non-gated) MLP of ``ffn_hidden_size`` (default 4·h), LayerNorms with bias, LM head tied by default.

    KV heads: ``num_kv_heads`` with the new decoder architecture (40B, 180B), 1 with ``multi_query`` (7B),
    else one per attention head (vLLM's FalconAttention).
    """
    h, n, v, heads = cfg.hidden_size(), cfg.num_layers(), cfg.vocab_size(), cfg.num_attention_heads()
    d = cfg.head_dim()
    new_arch = bool(cfg.get("new_decoder_architecture", default=False))
    if new_arch:
        kv = cfg.require_int("num_kv_heads", "n_head_kv", "num_key_value_heads")
    elif cfg.get("multi_query", default=True):
        kv = 1
    else:
        kv = heads
    ffn = cfg.int_or("ffn_hidden_size", default=4 * h)
    bias = bool(cfg.get("bias", default=False))
    c = _Counter(n)
    _embeddings(c, cfg, h, v, tied_default=True)
    q_o = h * heads * d + heads * d * h + ((heads * d + h) if bias else 0)
    c.add("attention", "tp", q_o * n, layers=range(n), quantizable=True)
    kv_params = 2 * h * kv * d + (2 * kv * d if bias else 0)
    c.add("attention_kv", "kv_heads", kv_params * n, layers=range(n), quantizable=True)
    mlp = 2 * h * ffn + ((ffn + h) if bias else 0)
    c.add("mlp", "tp", mlp * n, layers=range(n), quantizable=True)
    if new_arch:
        layer_norms = cfg.int_or("num_ln_in_parallel_attn", default=2)
    else:
        layer_norms = 1 if cfg.get("parallel_attn", default=True) else 2
    c.add("norms", "replicated", layer_norms * 2 * h * n, layers=range(n))  # LayerNorm: weight and bias
    c.add("other", "replicated", 2 * h)  # ln_f
    groups = [KvLayerGroup(kind="full_attention", num_layers=n, num_kv_heads=kv, head_size=2 * d)]
    shape = _shape(
        family,
        cfg,
        c,
        groups,
        constraints=ParallelConstraints(num_attention_heads=heads, num_kv_heads=kv, vocab_size=v),
    )
    shape.num_kv_heads = kv
    return shape


def _sliding_layers(cfg: ConfigView, family: str, n: int) -> list[bool]:
    """Which layers use a sliding window (True) — from ``layer_types`` or the family's fixed pattern."""
    kinds = _layer_kinds(cfg, n)
    if kinds:
        return [k == "sliding_attention" for k in kinds]
    if not cfg.get("sliding_window"):
        return [False] * n
    if family == "gemma2":
        return [i % 2 == 0 for i in range(n)]  # Gemma 2 alternates local (even) and global (odd) layers
    if family == "gemma3":
        pattern = cfg.int_or("sliding_window_pattern", default=6)  # every 6th layer is global
        return [(i + 1) % pattern != 0 for i in range(n)]
    if family == "cohere2":
        pattern = cfg.int_or("sliding_window_pattern", default=4)  # Command R7B: 3 sliding layers, then 1 global
        return [(i + 1) % pattern != 0 for i in range(n)]
    if family == "mistral":
        return [True] * n  # Mistral 7B v0.1 used a 4096-token window on every layer
    if family == "qwen2" and cfg.get("use_sliding_window"):
        max_window_layers = cfg.int_or("max_window_layers", default=n)
        return [i >= max_window_layers for i in range(n)]
    return [False] * n


# ----- mixture-of-experts families -------------------------------------------------------------------


def mixtral(cfg: ConfigView, family: str = "mixtral") -> ArchitectureShape:
    h, n, v, heads, kv, d = _dims(cfg)
    experts = cfg.require_int("num_local_experts")
    top_k = cfg.require_int("num_experts_per_tok")
    inter = cfg.require_int("intermediate_size")
    c = _Counter(n)
    _embeddings(c, cfg, h, v)
    _gqa_attention(c, layers=range(n), hidden=h, heads=heads, kv_heads=kv, head_dim=d)
    _moe(c, layers=range(n), hidden=h, experts=experts, top_k=top_k, expert_intermediate=inter)
    _layer_norms(c, layers=range(n), hidden=h)
    groups = _attention_kv_groups(cfg, num_layers=n, kv_heads=kv, head_dim=d, sliding_layers=[True] * n)
    return _moe_shape(
        family,
        cfg,
        c,
        groups,
        experts=experts,
        top_k=top_k,
        moe_intermediate=inter,
    )


def qwen3_moe(cfg: ConfigView, family: str = "qwen3_moe") -> ArchitectureShape:
    """Qwen3-MoE (and Qwen2-MoE): sparse layers every ``decoder_sparse_step``, except ``mlp_only_layers``."""
    h, n, v, heads, kv, d = _dims(cfg)
    experts = cfg.require_int("num_experts")
    top_k = cfg.require_int("num_experts_per_tok")
    moe_inter = cfg.require_int("moe_intermediate_size")
    step = cfg.int_or("decoder_sparse_step", default=1) or 1
    mlp_only = set(cfg.get("mlp_only_layers", default=[]) or [])
    moe_ids = [i for i in range(n) if i not in mlp_only and (i + 1) % step == 0]
    dense_ids = [i for i in range(n) if i not in set(moe_ids)]
    shared_inter = cfg.int_or("shared_expert_intermediate_size", default=0)
    c = _Counter(n)
    _embeddings(c, cfg, h, v)
    _gqa_attention(
        c,
        layers=range(n),
        hidden=h,
        heads=heads,
        kv_heads=kv,
        head_dim=d,
        qkv_bias=family == "qwen2_moe",
        qk_norm=family == "qwen3_moe",
    )
    if dense_ids:
        _dense_mlp(c, layers=dense_ids, hidden=h, intermediate=cfg.require_int("intermediate_size"))
    _moe(
        c,
        layers=moe_ids,
        hidden=h,
        experts=experts,
        top_k=top_k,
        expert_intermediate=moe_inter,
        shared_experts=1 if shared_inter else 0,
        shared_intermediate=shared_inter or None,
        shared_gate=bool(shared_inter),
    )
    _layer_norms(c, layers=range(n), hidden=h)
    groups = _attention_kv_groups(cfg, num_layers=n, kv_heads=kv, head_dim=d, sliding_layers=[False] * n)
    return _moe_shape(
        family,
        cfg,
        c,
        groups,
        experts=experts,
        top_k=top_k,
        moe_intermediate=moe_inter,
    )


def glm4_moe(cfg: ConfigView, family: str = "glm4_moe") -> ArchitectureShape:
    """GLM-4.5 / 4.6: ``first_k_dense_replace`` dense layers, then MoE with one shared expert; MTP layers
    (``num_nextn_predict_layers``) are stored after the main layers."""
    h, n, v, heads, kv, d = _dims(cfg)
    experts = cfg.require_int("n_routed_experts")
    top_k = cfg.require_int("num_experts_per_tok")
    moe_inter = cfg.require_int("moe_intermediate_size")
    shared = cfg.int_or("n_shared_experts", default=0)
    dense_layers = min(n, cfg.int_or("first_k_dense_replace", default=0))
    qkv_bias = bool(cfg.get("attention_bias", default=False))
    qk_norm = bool(cfg.get("use_qk_norm", default=False))
    c = _Counter(n)
    _embeddings(c, cfg, h, v)
    _gqa_attention(
        c, layers=range(n), hidden=h, heads=heads, kv_heads=kv, head_dim=d, qkv_bias=qkv_bias, qk_norm=qk_norm
    )
    _dense_mlp(c, layers=range(dense_layers), hidden=h, intermediate=cfg.require_int("intermediate_size"))
    # e_score_correction_bias: one float per expert per MoE layer, counted with the router.
    _moe(
        c,
        layers=range(dense_layers, n),
        hidden=h,
        experts=experts,
        top_k=top_k,
        expert_intermediate=moe_inter,
        shared_experts=shared,
        router_bias=True,
    )
    _layer_norms(c, layers=range(n), hidden=h)

    mtp_layers = cfg.int_or("num_nextn_predict_layers", default=0)
    per_mtp = _mtp_layer_parameters(
        hidden=h,
        attention=_attention_layer_params(h, heads, kv, d, qkv_bias, qk_norm),
        moe=experts * 3 * h * moe_inter + shared * 3 * h * moe_inter + h * experts + experts,
    )
    groups = _attention_kv_groups(cfg, num_layers=n, kv_heads=kv, head_dim=d, sliding_layers=[False] * n)
    return _moe_shape(
        family,
        cfg,
        c,
        groups,
        experts=experts,
        top_k=top_k,
        moe_intermediate=moe_inter,
        mtp_parameters=mtp_layers * per_mtp,
    )


def _attention_layer_params(h: int, heads: int, kv: int, d: int, qkv_bias: bool, qk_norm: bool) -> int:
    return 2 * h * heads * d + 2 * h * kv * d + ((heads + 2 * kv) * d if qkv_bias else 0) + (2 * d if qk_norm else 0)


def _mtp_layer_parameters(*, hidden: int, attention: int, moe: int) -> int:
    """One MTP module: a full decoder layer, ``eh_proj`` (2h·h) and three norms (enorm, hnorm, shared head)."""
    return attention + moe + 2 * hidden * hidden + 5 * hidden


def gpt_oss(cfg: ConfigView, family: str = "gpt_oss") -> ArchitectureShape:
    """gpt-oss: biased attention with sinks, alternating sliding (128) and full layers, MXFP4 experts."""
    h, n, v, heads, kv, d = _dims(cfg)
    experts = cfg.require_int("num_local_experts", "num_experts")
    top_k = cfg.require_int("num_experts_per_tok", "experts_per_token")
    inter = cfg.require_int("intermediate_size")
    c = _Counter(n)
    _embeddings(c, cfg, h, v)
    _gqa_attention(
        c, layers=range(n), hidden=h, heads=heads, kv_heads=kv, head_dim=d, qkv_bias=True, o_bias=True, sinks=True
    )
    _moe(
        c,
        layers=range(n),
        hidden=h,
        experts=experts,
        top_k=top_k,
        expert_intermediate=inter,
        expert_bias=True,
        router_bias=True,
    )
    _layer_norms(c, layers=range(n), hidden=h)
    kinds = _layer_kinds(cfg, n) or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    sliding = [k == "sliding_attention" for k in kinds]
    cfg.require_int("sliding_window", hint="gpt-oss uses a 128-token window on alternate layers")
    groups = _attention_kv_groups(cfg, num_layers=n, kv_heads=kv, head_dim=d, sliding_layers=sliding)
    return _moe_shape(
        family,
        cfg,
        c,
        groups,
        experts=experts,
        top_k=top_k,
        moe_intermediate=inter,
    )


# ----- DeepSeek (MLA) ----------------------------------------------------------------------------------

DSV32_MLA_FP8_BYTES_PER_LAYER = 656  # fp8_ds_mla: 512 fp8 latent + 4×fp32 scales + 64 bf16 rope = 656 B
DSV32_INDEXER_BYTES_PER_LAYER = 132  # indexer key: 128 fp8 + one fp32 scale


def deepseek(cfg: ConfigView, family: str = "deepseek_v3") -> ArchitectureShape:
    """DeepSeek-V2/V3/R1 and V3.2: MLA attention, shared + routed experts, MTP layers after the main ones."""
    h, n, v = cfg.hidden_size(), cfg.num_layers(), cfg.vocab_size()
    heads = cfg.num_attention_heads()
    kv_lora = cfg.require_int("kv_lora_rank")
    rope = cfg.require_int("qk_rope_head_dim")
    nope = cfg.require_int("qk_nope_head_dim")
    v_dim = cfg.require_int("v_head_dim")
    q_lora = cfg.get("q_lora_rank")
    experts = cfg.require_int("n_routed_experts")
    top_k = cfg.require_int("num_experts_per_tok")
    moe_inter = cfg.require_int("moe_intermediate_size")
    shared = cfg.int_or("n_shared_experts", default=0)
    dense_layers = min(n, cfg.int_or("first_k_dense_replace", default=0))
    is_v32 = family == "deepseek_v32"

    c = _Counter(n)
    _embeddings(c, cfg, h, v)
    q_head = nope + rope
    # Split (column/row parallel) projections: q_b (or q_proj), kv_b, o_proj.
    split = (q_lora * heads * q_head if q_lora else h * heads * q_head) + kv_lora * heads * (nope + v_dim)
    split += heads * v_dim * h
    c.add("attention", "tp", split * n, layers=range(n), quantizable=True)
    # Replicated on every rank (ReplicatedLinear in vLLM): the down-projections q_a and kv_a (latent + shared
    # rope key); their RMSNorms are replicated norms.
    replicated = (h * q_lora if q_lora else 0) + h * (kv_lora + rope)
    mla_norms = (q_lora or 0) + kv_lora
    if is_v32:
        index_heads = cfg.require_int("index_n_heads")
        index_dim = cfg.require_int("index_head_dim")
        # Lightning indexer: wq_b (q_lora → heads·dim), wk (h → dim), weights_proj (h → heads); k_norm (LayerNorm).
        replicated += (q_lora or h) * index_heads * index_dim + h * index_dim + h * index_heads
        mla_norms += 2 * index_dim
    c.add("attention_replicated", "replicated", replicated * n, layers=range(n), quantizable=True)
    c.add("norms", "replicated", mla_norms * n, layers=range(n))
    _dense_mlp(c, layers=range(dense_layers), hidden=h, intermediate=cfg.require_int("intermediate_size"))
    _moe(
        c,
        layers=range(dense_layers, n),
        hidden=h,
        experts=experts,
        top_k=top_k,
        expert_intermediate=moe_inter,
        shared_experts=shared,
        router_bias=cfg.get("topk_method") == "noaux_tc",
    )
    _layer_norms(c, layers=range(n), hidden=h)

    mtp_layers = cfg.int_or("num_nextn_predict_layers", default=0)
    per_mtp = _mtp_layer_parameters(
        hidden=h,
        attention=split + replicated + mla_norms,
        moe=experts * 3 * h * moe_inter + shared * 3 * h * moe_inter + h * experts + experts,
    )
    # DeepSeek checkpoints store a copy of the embedding and LM head inside each MTP module.
    per_mtp += 2 * v * h

    group = KvLayerGroup(
        kind="mla",
        num_layers=n,
        num_kv_heads=1,
        head_size=kv_lora + rope,
        fixed_bytes_per_token_per_layer=DSV32_MLA_FP8_BYTES_PER_LAYER if is_v32 else None,
        extra_bytes_per_token_per_layer=DSV32_INDEXER_BYTES_PER_LAYER if is_v32 else 0,
    )
    return _shape(
        family,
        cfg,
        c,
        [group],
        head_dim=q_head,
        num_experts=experts,
        num_experts_per_token=top_k,
        mtp_parameters=mtp_layers * per_mtp,
        kv_cache_dtype_default="fp8_ds_mla" if is_v32 else "auto",
        constraints=ParallelConstraints(
            num_attention_heads=heads,
            num_kv_heads=heads,
            vocab_size=v,
            moe_intermediate_size=moe_inter,
            num_experts=experts,
            uses_mla=True,
        ),
    )


# ----- Qwen3-Next (hybrid linear attention) ---------------------------------------------------------


def qwen3_next(cfg: ConfigView, family: str = "qwen3_next") -> ArchitectureShape:
    """Qwen3-Next: 3 Gated-DeltaNet layers per gated full-attention layer, all layers MoE with a shared expert.

    Linear layers keep a constant state per sequence: conv ``(2·k_heads·k_dim + v_heads·v_dim)·(kernel−1)`` and
    ssm ``v_heads·v_dim·k_dim`` elements (both divided by TP).
    """
    h, n, v, heads, kv, d = _dims(cfg)
    kh = cfg.require_int("linear_num_key_heads")
    vh = cfg.require_int("linear_num_value_heads")
    kd = cfg.require_int("linear_key_head_dim")
    vd = cfg.require_int("linear_value_head_dim")
    kernel = cfg.require_int("linear_conv_kernel_dim")
    kinds = _layer_kinds(cfg, n)
    if kinds is None:
        interval = cfg.require_int("full_attention_interval", hint="or list layer_types")
        kinds = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n)]
    full_ids = [i for i, k in enumerate(kinds) if k == "full_attention"]
    linear_ids = [i for i, k in enumerate(kinds) if k != "full_attention"]
    n_full, n_linear = len(full_ids), len(linear_ids)
    experts = cfg.require_int("num_experts")
    top_k = cfg.require_int("num_experts_per_tok")
    moe_inter = cfg.require_int("moe_intermediate_size")
    shared_inter = cfg.int_or("shared_expert_intermediate_size", default=0)

    c = _Counter(n)
    _embeddings(c, cfg, h, v)
    _gqa_attention(c, layers=full_ids, hidden=h, heads=heads, kv_heads=kv, head_dim=d, qk_norm=True, gated_q=True)
    conv_dim = 2 * kh * kd + vh * vd
    # Split over TP ranks (vLLM's Qwen3NextGatedDeltaNet): in_proj_qkvz, in_proj_ba (column parallel), out_proj
    # (row parallel), the conv1d weights (column parallel over conv_dim), dt_bias and A_log (one per value head).
    linear = h * (2 * kh * kd + 2 * vh * vd) + h * 2 * vh + vh * vd * h + conv_dim * kernel + 2 * vh
    c.add("attention", "tp", linear * n_linear, layers=linear_ids, quantizable=True)
    # The gated RMSNorm over one value head is replicated.
    c.add("norms", "replicated", vd * n_linear, layers=linear_ids)
    _moe(
        c,
        layers=range(n),
        hidden=h,
        experts=experts,
        top_k=top_k,
        expert_intermediate=moe_inter,
        shared_experts=1 if shared_inter else 0,
        shared_intermediate=shared_inter or None,
        shared_gate=bool(shared_inter),
    )
    _layer_norms(c, layers=range(n), hidden=h)

    groups = [
        KvLayerGroup(kind="full_attention", num_layers=n_full, num_kv_heads=kv, head_size=2 * d),
        KvLayerGroup(
            kind="linear_attention",
            num_layers=n_linear,
            conv_state_elements=conv_dim * (kernel - 1),
            ssm_state_elements=vh * vd * kd,
        ),
    ]
    linear_heads = _constraints(
        cfg, moe_intermediate_size=moe_inter, num_experts=experts, linear_num_value_heads=vh, linear_num_key_heads=kh
    )
    return _moe_shape(
        family, cfg, c, groups, experts=experts, top_k=top_k, moe_intermediate=moe_inter, constraints=linear_heads
    )


# ----- registry ---------------------------------------------------------------------------------------

Family = Callable[[ConfigView, str], ArchitectureShape]

# model_type → (family name, function). Architectures listed in the issue are supported exactly; anything else
# goes through the generic dense estimate with a warning.
FAMILIES: dict[str, tuple[str, Family]] = {
    "llama": ("llama", dense_decoder),
    "mistral": ("mistral", dense_decoder),
    "qwen2": ("qwen2", dense_decoder),
    "qwen3": ("qwen3", dense_decoder),
    "phi3": ("phi3", dense_decoder),
    "gemma2": ("gemma2", dense_decoder),
    "gemma3": ("gemma3", dense_decoder),
    "gemma3_text": ("gemma3", dense_decoder),
    "olmo2": ("olmo2", dense_decoder),
    "cohere": ("cohere", dense_decoder),
    "cohere2": ("cohere2", dense_decoder),
    "internlm": ("internlm", dense_decoder),
    "internlm2": ("internlm2", dense_decoder),
    "internlm3": ("internlm3", dense_decoder),
    "baichuan": ("baichuan", dense_decoder),
    "falcon": ("falcon", falcon),
    "RefinedWeb": ("falcon", falcon),
    "RefinedWebModel": ("falcon", falcon),
    "mixtral": ("mixtral", mixtral),
    "qwen2_moe": ("qwen2_moe", qwen3_moe),
    "qwen3_moe": ("qwen3_moe", qwen3_moe),
    "qwen3_next": ("qwen3_next", qwen3_next),
    "gpt_oss": ("gpt_oss", gpt_oss),
    "glm4_moe": ("glm4_moe", glm4_moe),
    "deepseek_v2": ("deepseek_v2", deepseek),
    "deepseek_v3": ("deepseek_v3", deepseek),
    "deepseek_v32": ("deepseek_v32", deepseek),
}

# Architecture class names → model_type, for configs that lack model_type (GGUF-derived, hand-written).
ARCHITECTURE_CLASSES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Olmo2ForCausalLM": "olmo2",
    "CohereForCausalLM": "cohere",
    "Cohere2ForCausalLM": "cohere2",
    "InternLMForCausalLM": "internlm",
    "InternLM2ForCausalLM": "internlm2",
    "InternLM3ForCausalLM": "internlm3",
    "BaichuanForCausalLM": "baichuan",
    "BaiChuanForCausalLM": "baichuan",
    "FalconForCausalLM": "falcon",
    "RWForCausalLM": "falcon",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Qwen3NextForCausalLM": "qwen3_next",
    "GptOssForCausalLM": "gpt_oss",
    "Glm4MoeForCausalLM": "glm4_moe",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "DeepseekV32ForCausalLM": "deepseek_v32",
}


def resolve_family(raw: dict[str, Any]) -> tuple[str | None, str]:
    """(model_type we support or None, architecture class name for messages)."""
    archs = raw.get("architectures") or []
    arch = str(archs[0]) if archs else str(raw.get("model_type") or "unknown")
    model_type = str(raw.get("model_type") or "")
    model_type = model_type if model_type in FAMILIES else model_type.lower()
    if model_type == "deepseek_v3" and (raw.get("index_topk") or arch == "DeepseekV32ForCausalLM"):
        model_type = "deepseek_v32"  # V3.2 keeps model_type deepseek_v3 but adds the DSA indexer fields
    if model_type in FAMILIES:
        return model_type, arch
    if arch in ARCHITECTURE_CLASSES:
        return ARCHITECTURE_CLASSES[arch], arch
    return None, arch


def build_shape(raw: dict[str, Any], *, source: str) -> ArchitectureShape:
    """Dispatch a config to its family; unknown architectures get the generic dense estimate and a warning."""
    model_type, arch = resolve_family(raw)
    cfg = ConfigView(raw, source=source, architecture=arch)
    if model_type is None:
        shape = dense_decoder(cfg, "generic")
        shape.architecture = arch
        shape.warnings.append(
            f"architecture '{arch}' is not modelled exactly; parameters, weights and KV cache use a generic dense "
            "decoder estimate (Llama-like attention and gated MLP): check the numbers before relying on them"
        )
        return shape
    family, function = FAMILIES[model_type]
    shape = function(cfg, family)
    shape.architecture = arch
    return shape
