"""fp32 checkpoints load in 16 bits (issue 12 item 2), and more families (item 8): Falcon, OLMo 2, Phi-4,
Command-R, InternLM 2/3, Baichuan. The configs carry the public config.json fields of each model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors_support import write_safetensors

from gpustack_pulumi import catalog
from gpustack_pulumi.analysis import analyze, profile_from_config

GIB = 1024**3


# ----- item 2: fp32 checkpoints ----------------------------------------------------------------------------


def test_fp32_config_counts_weights_and_kv_at_two_bytes() -> None:
    config = dict(catalog.catalog_model("Qwen/Qwen3-8B").config(), torch_dtype="float32")
    fp32 = profile_from_config(config, model_id="qwen3-8b-fp32")
    bf16 = analyze("Qwen/Qwen3-8B")
    assert fp32.checkpoint_dtype == "fp32" and fp32.dtype == "bf16"
    assert fp32.weight_bytes == bf16.weight_bytes == 16_381_470_720  # 8.19B parameters × 2 bytes
    assert fp32.kv_cache_bytes_per_token() == 144 * 1024  # not 288 KiB
    assert fp32.kv_cache_bytes_per_token(1, "fp8") == 72 * 1024
    assert any("vLLM and SGLang load it in 16 bits" in w for w in fp32.warnings)


def test_fp32_safetensors_are_cast_to_16_bits(tmp_path: Path) -> None:
    h, inter, layers, heads, kv, vocab = 64, 128, 2, 4, 2, 256
    d = h // heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
        "max_position_embeddings": 2048, "torch_dtype": "float32",
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = {"model.embed_tokens.weight": ("F32", (vocab, h)), "lm_head.weight": ("F32", (vocab, h)),
               "model.norm.weight": ("F32", (h,))}  # fmt: skip
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": ("F32", (heads * d, h)),
            p + "self_attn.k_proj.weight": ("F32", (kv * d, h)),
            p + "self_attn.v_proj.weight": ("F32", (kv * d, h)),
            p + "self_attn.o_proj.weight": ("F32", (h, heads * d)),
            p + "mlp.gate_proj.weight": ("F32", (inter, h)),
            p + "mlp.up_proj.weight": ("F32", (inter, h)),
            p + "mlp.down_proj.weight": ("F32", (h, inter)),
            p + "input_layernorm.weight": ("F32", (h,)),
            p + "post_attention_layernorm.weight": ("F32", (h,)),
        }
    on_disk = write_safetensors(tmp_path / "model.safetensors", tensors)
    profile = analyze(tmp_path)
    assert profile.exact_weights
    assert profile.weight_bytes == on_disk // 2
    assert profile.weight_bytes == profile_from_config(config, model_id="x").weight_bytes
    assert profile.kv_cache_bytes_per_token() == 2 * layers * kv * d * 2


# ----- item 8: families users deploy (public config.json fields; published parameter counts) ----------------

FALCON_7B = {  # tiiuae/falcon-7b: multi-query attention, parallel attention/MLP, no intermediate_size
    "architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71,
    "num_hidden_layers": 32, "vocab_size": 65024, "multi_query": True, "parallel_attn": True,
    "new_decoder_architecture": False, "bias": False, "alibi": False, "torch_dtype": "bfloat16",
}  # fmt: skip
FALCON_40B = {  # tiiuae/falcon-40b: the new decoder architecture with 8 KV heads
    "architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 8192, "num_attention_heads": 128,
    "num_kv_heads": 8, "num_hidden_layers": 60, "vocab_size": 65024, "new_decoder_architecture": True,
    "parallel_attn": True, "bias": False, "alibi": False, "torch_dtype": "bfloat16",
}  # fmt: skip
OLMO2_7B = {  # allenai/OLMo-2-1124-7B
    "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 100352,
    "max_position_embeddings": 4096, "tie_word_embeddings": False, "torch_dtype": "float32",
}  # fmt: skip
OLMO2_13B = {**OLMO2_7B, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
             "num_attention_heads": 40, "num_key_value_heads": 40}  # fmt: skip
PHI_4 = {  # microsoft/phi-4 (a Phi-3 architecture)
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 5120, "intermediate_size": 17920,
    "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 10, "vocab_size": 100352,
    "max_position_embeddings": 16384, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip
COMMAND_R = {  # CohereForAI/c4ai-command-r-v01: one LayerNorm per layer, tied embeddings
    "architectures": ["CohereForCausalLM"], "model_type": "cohere", "hidden_size": 8192, "intermediate_size": 22528,
    "num_hidden_layers": 40, "num_attention_heads": 64, "num_key_value_heads": 64, "vocab_size": 256000,
    "max_position_embeddings": 8192, "use_qk_norm": False, "logit_scale": 0.0625, "torch_dtype": "float16",
}  # fmt: skip
INTERNLM2_5_7B = {  # internlm/internlm2_5-7b-chat
    "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 92544, "max_position_embeddings": 32768, "bias": False, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}  # fmt: skip
BAICHUAN2_7B = {  # baichuan-inc/Baichuan2-7B-Chat: multi-head attention, fused W_pack
    "architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 125696,
    "model_max_length": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip
BAICHUAN2_13B = {**BAICHUAN2_7B, "hidden_size": 5120, "intermediate_size": 13696, "num_hidden_layers": 40,
                 "num_attention_heads": 40}  # fmt: skip

FAMILIES = [
    # (config, family, published parameters, KV bytes per token at bf16, TP1)
    (FALCON_7B, "falcon", 6.92e9, 2 * 32 * 1 * 64 * 2),
    (OLMO2_7B, "olmo2", 7.30e9, 2 * 32 * 32 * 128 * 2),
    (OLMO2_13B, "olmo2", 13.7e9, 2 * 40 * 40 * 128 * 2),
    (PHI_4, "phi3", 14.7e9, 2 * 40 * 10 * 128 * 2),
    (COMMAND_R, "cohere", 35.0e9, 2 * 40 * 64 * 128 * 2),
    (INTERNLM2_5_7B, "internlm2", 7.74e9, 2 * 32 * 8 * 128 * 2),
    (BAICHUAN2_7B, "baichuan", 7.51e9, 2 * 32 * 32 * 128 * 2),
    (BAICHUAN2_13B, "baichuan", 13.9e9, 2 * 40 * 40 * 128 * 2),
]


@pytest.mark.parametrize(("config", "family", "published", "kv_bytes"), FAMILIES,
                         ids=[f"{f[1]}-{f[2] / 1e9:g}B" for f in FAMILIES])  # fmt: skip
def test_families_match_published_counts(config: dict, family: str, published: float, kv_bytes: int) -> None:
    profile = profile_from_config(config, model_id=family)
    assert profile.family == family
    assert not any("not modelled exactly" in w for w in profile.warnings)
    assert abs(profile.parameters_total - published) <= 0.005 * published, profile.parameters_total
    assert profile.kv_cache_bytes_per_token() == kv_bytes
    assert profile.weights_per_rank(1) == profile.weight_bytes == profile.parameters_total * 2


def test_falcon_7b_exact_count_and_multi_query_tp() -> None:
    profile = profile_from_config(FALCON_7B, model_id="falcon-7b")
    # word_embeddings 65024·4544 (tied LM head) + 32 × (qkv 4544·4672 + dense 4544² + MLP 2·4544·18176 + LN 2·4544)
    # + ln_f 2·4544.
    per_layer = 4544 * 4672 + 4544 * 4544 + 2 * 4544 * 18176 + 2 * 4544
    assert profile.parameters_total == 65024 * 4544 + 32 * per_layer + 2 * 4544 == 6_921_720_704
    assert profile.num_kv_heads == 1 and profile.max_model_len == 2048  # vLLM's default without a length key
    assert profile.constraints.valid_tp_sizes(limit=80) == [1]  # 71 heads; the padded vocabulary is not 71·k


def test_falcon_40b_new_decoder_architecture() -> None:
    profile = profile_from_config(FALCON_40B, model_id="falcon-40b")
    assert profile.num_kv_heads == 8
    assert profile.kv_cache_bytes_per_token() == 2 * 60 * 8 * 64 * 2
    # qkv (128 + 2·8 heads of 64), dense, 4h MLP, two LayerNorms (ln_attn, ln_mlp) with bias, per layer.
    per_layer = 8192 * (128 + 16) * 64 + 8192 * 8192 + 2 * 8192 * 32768 + 2 * 2 * 8192
    assert profile.parameters_total == 65024 * 8192 + 60 * per_layer + 2 * 8192
    assert profile.weights_per_rank(8) == (
        65024 * 8192 // 8 * 2 + 60 * (8192 * 128 * 64 * 2 // 8 + 8192 * 64 * 2 + 2 * 8192 * 32768 // 8) * 2
        + 60 * 4 * 8192 * 2 + 2 * 8192 * 2
    )  # fmt: skip


def test_generic_architecture_without_intermediate_size_is_estimated_with_a_warning() -> None:
    config = {**FALCON_7B, "architectures": ["SomethingNewForCausalLM"], "model_type": "something_new"}
    profile = profile_from_config(config, model_id="new")
    assert profile.family == "generic"
    assert any("4 × hidden_size" in w for w in profile.warnings)
    assert any("not modelled exactly" in w for w in profile.warnings)


def test_command_r_plus_qk_norm_and_command_r7b_sliding_layers() -> None:
    plus = profile_from_config({**COMMAND_R, "use_qk_norm": True, "num_key_value_heads": 8}, model_id="r-plus")
    base = profile_from_config({**COMMAND_R, "num_key_value_heads": 8}, model_id="r")
    assert plus.parameters_total - base.parameters_total == 40 * (64 + 8) * 128
    r7b = profile_from_config(
        {**COMMAND_R, "architectures": ["Cohere2ForCausalLM"], "model_type": "cohere2", "hidden_size": 4096,
         "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
         "sliding_window": 4096, "sliding_window_pattern": 4},
        model_id="r7b",
    )  # fmt: skip
    kinds = {g.kind: g.num_layers for g in r7b.kv_groups}
    assert kinds == {"full_attention": 8, "sliding_window": 24}
