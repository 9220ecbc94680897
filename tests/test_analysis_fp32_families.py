"""fp32 checkpoints load in 16 bits (issue 12 item 2), and more families (item 8): Falcon, OLMo 2, Phi-4,
Command-R, InternLM 2/3, Baichuan. The configs carry the public config.json fields of each model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from gpustack_pulumi import catalog
from gpustack_pulumi.analysis import analyze, profile_from_config

GIB = 1024**3


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    sizes = {"BF16": 2, "F32": 4}
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in sorted(tensors.items()):
        size = sizes[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)
    return offset


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
    on_disk = _write_safetensors(tmp_path / "model.safetensors", tensors)
    profile = analyze(tmp_path)
    assert profile.exact_weights
    assert profile.weight_bytes == on_disk // 2
    assert profile.weight_bytes == profile_from_config(config, model_id="x").weight_bytes
    assert profile.kv_cache_bytes_per_token() == 2 * layers * kv * d * 2
