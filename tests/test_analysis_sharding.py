"""Weights per GPU follow how vLLM shards each tensor (issue 12, item 1).

The reference here is independent of the profile's component sums: it lists every tensor of one decoder layer
the way vLLM's model classes create them (column/row parallel, KV-head sharded, replicated, vocab parallel)
and adds up what one rank holds, layer by layer, over the layers of its pipeline stage.
"""

from __future__ import annotations

import math

import pytest

from gpustack_pulumi import catalog
from gpustack_pulumi.analysis import analyze
from gpustack_pulumi.analysis.profile import pp_layer_bounds

GIB = 1024**3
FP8 = 1.0 + 4.0 / (128 * 128)  # block-128² FP8 with one fp32 scale per block
BF16 = 2.0

# A tensor: (elements, rule, bytes per element). Rules: "tp" split evenly over ranks, "rep" replicated,
# ("kv", heads, per_head) K/V heads split up to the KV head count, "vocab" rows padded to 64 then split.
Tensor = tuple[int, object, float]


def _rank_elements(elements: int, rule: object, tp: int, vocab: int) -> float:
    if rule == "rep":
        return elements
    if rule == "tp":
        return elements / tp
    if rule == "vocab":
        padded = math.ceil(vocab / 64) * 64
        return elements / vocab * math.ceil(padded / tp)
    _, heads, per_head = rule  # type: ignore[misc]
    return max(1, heads // tp) * per_head


def _deepseek_layer(cfg: dict, i: int) -> list[Tensor]:
    h, H = cfg["hidden_size"], cfg["num_attention_heads"]
    ql, kl, rope, nope, vd = (cfg["q_lora_rank"], cfg["kv_lora_rank"], cfg["qk_rope_head_dim"],
                              cfg["qk_nope_head_dim"], cfg["v_head_dim"])  # fmt: skip
    lin = FP8 if cfg.get("quantization_config") else BF16
    out: list[Tensor] = [
        (h, "rep", BF16), (h, "rep", BF16),  # input / post-attention norms
        (h * ql, "rep", lin), (ql, "rep", BF16),  # q_a_proj (ReplicatedLinear), q_a_layernorm
        (ql * H * (nope + rope), "tp", lin),  # q_b_proj (ColumnParallel)
        (h * (kl + rope), "rep", lin), (kl, "rep", BF16),  # kv_a_proj_with_mqa (Replicated), kv_a_layernorm
        (kl * H * (nope + vd), "tp", lin),  # kv_b_proj (ColumnParallel)
        (H * vd * h, "tp", lin),  # o_proj (RowParallel)
    ]  # fmt: skip
    if i < cfg["first_k_dense_replace"]:
        return [*out, (3 * h * cfg["intermediate_size"], "tp", lin)]
    E, mi = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    return [
        *out,
        (E * h, "rep", BF16), (E, "rep", BF16),  # gate (ReplicatedLinear) + e_score_correction_bias
        (E * 3 * h * mi, "tp", lin),  # FusedMoE: every expert's intermediate split over TP
        (cfg["n_shared_experts"] * 3 * h * mi, "tp", lin),  # shared experts (column/row parallel MLP)
    ]  # fmt: skip


def _glm4_moe_layer(cfg: dict, i: int) -> list[Tensor]:
    h, H, kv, d = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    out: list[Tensor] = [
        (h, "rep", BF16), (h, "rep", BF16),
        (h * H * d + H * d, "tp", BF16),  # q_proj + bias
        (2 * (h * kv * d + kv * d), ("kv", kv, 2 * (h * d + d)), BF16),  # k/v proj + biases
        (H * d * h, "tp", BF16),  # o_proj
        (2 * d, "rep", BF16),  # q_norm, k_norm
    ]  # fmt: skip
    if i < cfg["first_k_dense_replace"]:
        return [*out, (3 * h * cfg["intermediate_size"], "tp", BF16)]
    E, mi = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    return [
        *out,
        (E * h + E, "rep", BF16),
        (E * 3 * h * mi, "tp", BF16),
        (cfg["n_shared_experts"] * 3 * h * mi, "tp", BF16),
    ]


def _qwen3_next_layer(cfg: dict, i: int) -> list[Tensor]:
    h, H, kv, d = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    kh, vh, kd, vd = (cfg["linear_num_key_heads"], cfg["linear_num_value_heads"], cfg["linear_key_head_dim"],
                      cfg["linear_value_head_dim"])  # fmt: skip
    out: list[Tensor] = [(h, "rep", BF16), (h, "rep", BF16)]
    if (i + 1) % cfg["full_attention_interval"] == 0:
        out += [
            (h * 2 * H * d, "tp", BF16),  # gated q_proj (query + gate)
            (2 * h * kv * d, ("kv", kv, 2 * h * d), BF16),
            (H * d * h, "tp", BF16),
            (2 * d, "rep", BF16),  # q_norm, k_norm
        ]
    else:
        conv_dim = 2 * kh * kd + vh * vd
        out += [
            (h * (2 * kh * kd + 2 * vh * vd), "tp", BF16),  # in_proj_qkvz (column parallel)
            (h * 2 * vh, "tp", BF16),  # in_proj_ba
            (conv_dim * cfg["linear_conv_kernel_dim"], "tp", BF16),  # conv1d (ColumnParallelLinear)
            (vh, "tp", BF16), (vh, "tp", BF16),  # dt_bias, A_log: num_v_heads // tp each
            (vd, "rep", BF16),  # gated RMSNorm over one value head
            (vh * vd * h, "tp", BF16),  # out_proj (row parallel)
        ]  # fmt: skip
    E, mi, si = cfg["num_experts"], cfg["moe_intermediate_size"], cfg["shared_expert_intermediate_size"]
    return [*out, (E * h, "rep", BF16), (h, "rep", BF16),  # router gate, shared_expert_gate
            (E * 3 * h * mi, "tp", BF16), (3 * h * si, "tp", BF16)]  # fmt: skip


LAYERS = {
    "deepseek-ai/DeepSeek-R1": _deepseek_layer,
    "zai-org/GLM-4.6": _glm4_moe_layer,
    "Qwen/Qwen3-Next-80B-A3B-Instruct": _qwen3_next_layer,
}


def _stage_bytes(model: str, tp: int, pp: int) -> list[float]:
    """What one TP rank of each PP stage holds, tensor by tensor."""
    cfg = catalog.catalog_model(model).config()
    h, vocab, n = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    # vLLM's get_pp_indices: even split, leftovers one each to the stages before the last.
    sizes = [n // pp] * pp
    for k in range(2, n % pp + 2):
        sizes[-k] += 1
    stages, start = [], 0
    for stage, size in enumerate(sizes):
        tensors = [t for i in range(start, start + size) for t in LAYERS[model](cfg, i)]
        if stage == 0:
            tensors.append((vocab * h, "vocab", BF16))  # VocabParallelEmbedding
        if stage == pp - 1:
            tensors += [(vocab * h, "vocab", BF16), (h, "rep", BF16)]  # ParallelLMHead, final norm
        stages.append(sum(_rank_elements(e, rule, tp, vocab) * b for e, rule, b in tensors))
        start += size
    return stages


@pytest.mark.parametrize("model", sorted(LAYERS))
@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (4, 1), (8, 1), (2, 4), (8, 2), (1, 5)])
def test_weights_per_gpu_equal_what_each_rank_holds(model: str, tp: int, pp: int) -> None:
    profile = analyze(model)
    expected = _stage_bytes(model, tp, pp)
    got = profile.weights_per_stage(tp, pp)
    assert len(got) == pp
    for stage_got, stage_expected in zip(got, expected, strict=True):
        assert abs(stage_got - stage_expected) < 64, (stage_got, stage_expected)  # ceil rounding per component
    assert profile.weights_per_rank(tp, pp) == max(got)


@pytest.mark.parametrize("model", sorted(LAYERS))
def test_tp1_holds_exactly_the_whole_model(model: str) -> None:
    profile = analyze(model)  # vocabularies are multiples of 64, so TP1 holds no padding
    assert profile.weights_per_rank(1) == profile.weight_bytes == sum(c.bytes for c in profile.components)


def test_deepseek_r1_tp8_is_the_sum_of_its_components() -> None:
    profile = analyze("deepseek-ai/DeepSeek-R1")
    # The hand sum: 79.29 GiB per GPU on TP8 (the old layer scaling said 85.93 GiB).
    assert round(profile.weights_per_rank(8) / GIB, 2) == 79.29
    replicated = sum(c.bytes for c in profile.components if c.sharding == "replicated")
    split = sum(c.bytes for c in profile.components if c.sharding != "replicated")
    assert profile.weights_per_rank(8) == pytest.approx(replicated + split / 8, abs=16)


def test_pp_layer_bounds_follow_vllm() -> None:
    assert pp_layer_bounds(61, 4) == [(0, 15), (15, 30), (30, 46), (46, 61)]
    assert pp_layer_bounds(36, 5) == [(0, 7), (7, 14), (14, 21), (21, 29), (29, 36)]
    assert pp_layer_bounds(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert pp_layer_bounds(8, 1) == [(0, 8)]


def test_pp_larger_than_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds the model's 36 layers"):
        analyze("Qwen/Qwen3-8B").weights_per_rank(1, 37)
