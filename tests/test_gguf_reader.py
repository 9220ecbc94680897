"""GGUF reader: reads real GGUF files written by the gguf package's own writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType
from gguf.quants import quantize

from gpustack_pulumi.analysis.gguf_reader import GgufModel, read_gguf
from gpustack_pulumi.analysis.tensors import ModelFileError
from gpustack_pulumi.tinymodel import tiny_vocabulary, write_tiny_gguf

TINY = {"n_embd": 96, "n_layer": 3, "n_head": 6, "n_head_kv": 3, "n_ff": 160, "n_ctx": 1024}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", **TINY)


@pytest.fixture(scope="module")
def tiny_model(tiny_gguf: Path) -> GgufModel:
    return read_gguf(tiny_gguf)


def test_tiny_gguf_identity(tiny_model: GgufModel) -> None:
    assert tiny_model.architecture == "llama"
    assert tiny_model.file_type == "ALL_F32"
    assert tiny_model.name == "gpustack-pulumi tiny llama"
    assert tiny_model.tensors.format == "gguf"
    assert tiny_model.tensors.files == ("tiny.gguf",)


def test_tiny_gguf_hf_config_matches_writer_arguments(tiny_model: GgufModel) -> None:
    n_vocab = len(tiny_vocabulary()[0])
    assert tiny_model.to_hf_config() == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": TINY["n_embd"],
        "num_hidden_layers": TINY["n_layer"],
        "num_attention_heads": TINY["n_head"],
        "num_key_value_heads": TINY["n_head_kv"],
        "intermediate_size": TINY["n_ff"],
        "max_position_embeddings": TINY["n_ctx"],
        "rms_norm_eps": 1e-5,
        "vocab_size": n_vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }


def test_tiny_gguf_tensor_table(tiny_model: GgufModel) -> None:
    n_embd, n_layer, n_head, n_head_kv, n_ff = (
        TINY[key] for key in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff")
    )
    head_dim = n_embd // n_head
    n_vocab = len(tiny_vocabulary()[0])
    tensors = {tensor.name: tensor for tensor in tiny_model.tensors.tensors}

    # token_embd, output and output_norm, plus nine tensors per block.
    assert len(tensors) == 3 + 9 * n_layer
    assert [tensor.name for tensor in tiny_model.tensors.tensors] == sorted(tensors)
    assert tensors["token_embd.weight"].shape == (n_vocab, n_embd)
    assert tensors["output.weight"].shape == (n_vocab, n_embd)
    assert tensors["blk.0.attn_q.weight"].shape == (n_head * head_dim, n_embd)
    assert tensors["blk.2.attn_k.weight"].shape == (n_head_kv * head_dim, n_embd)
    assert tensors["blk.1.attn_output.weight"].shape == (n_embd, n_head * head_dim)
    assert tensors["blk.1.ffn_down.weight"].shape == (n_embd, n_ff)
    assert tensors["output_norm.weight"].shape == (n_embd,)

    per_block = (
        2 * n_embd  # attn_norm, ffn_norm
        + n_head * head_dim * n_embd  # attn_q
        + 2 * n_head_kv * head_dim * n_embd  # attn_k, attn_v
        + n_embd * n_head * head_dim  # attn_output
        + 3 * n_ff * n_embd  # ffn_gate, ffn_up, ffn_down
    )
    expected_params = 2 * n_vocab * n_embd + n_embd + n_layer * per_block
    assert tiny_model.tensors.total_params == expected_params
    assert all(tensor.dtype == "F32" and tensor.nbytes == 4 * tensor.numel for tensor in tensors.values())
    assert tiny_model.tensors.bytes_by_dtype() == {"F32": 4 * expected_params}


def test_metadata_keeps_scalars_and_small_numeric_arrays_and_counts_the_rest(tiny_model: GgufModel) -> None:
    tokens, scores, token_types = tiny_vocabulary()
    metadata = tiny_model.metadata
    assert metadata["llama.embedding_length"] == TINY["n_embd"]
    assert metadata["tokenizer.ggml.add_bos_token"] is True
    assert metadata["tokenizer.ggml.model"] == "llama"
    assert metadata["tokenizer.ggml.tokens"] == len(tokens)  # string array: its length
    assert metadata["tokenizer.ggml.token_type"] == token_types  # small numeric array: kept
    assert metadata["tokenizer.ggml.scores"] == pytest.approx(scores)
    assert not any(key.startswith("GGUF.") for key in metadata)
    # The inventory's metadata is the scalar subset, as strings.
    assert tiny_model.tensors.metadata["llama.block_count"] == str(TINY["n_layer"])
    assert "tokenizer.ggml.token_type" not in tiny_model.tensors.metadata


def test_long_numeric_arrays_are_reported_as_their_length(tmp_path: Path) -> None:
    def add_metadata(writer: GGUFWriter) -> None:
        writer.add_array("test.long_array", list(range(1025)))
        writer.add_array("test.layer_heads", [8, 8, 4])
        writer.add_array("test.flags", [True, False])
        writer.add_token_list([f"piece{index}" for index in range(5000)])
        writer.add_token_merges([f"p{index} q{index}" for index in range(3000)])
        writer.add_uint32("test.after_arrays", 7)

    model = read_gguf(write_gguf(tmp_path / "arrays.gguf", "llama", add_metadata))
    assert model.metadata["test.long_array"] == 1025
    assert model.metadata["test.layer_heads"] == [8, 8, 4]
    assert model.metadata["test.flags"] == [True, False]
    assert model.metadata["tokenizer.ggml.tokens"] == 5000
    assert model.metadata["tokenizer.ggml.merges"] == 3000
    # Skipping over the arrays lands exactly on the next key.
    assert model.metadata["test.after_arrays"] == 7
    assert model.to_hf_config()["vocab_size"] == 5000


def test_metadata_agrees_with_gguf_packages_own_reader(tiny_gguf: Path, tiny_model: GgufModel) -> None:
    reference = GGUFReader(tiny_gguf)
    for key, field in reference.fields.items():
        if key.startswith("GGUF."):
            continue
        expected = field.contents()
        if isinstance(expected, list) and (not expected or isinstance(expected[0], str)):
            expected = len(expected)
        assert tiny_model.metadata[key] == pytest.approx(expected), key
    assert len(tiny_model.metadata) == len(reference.fields) - 3  # GGUF.version, tensor_count, kv_count


def write_gguf(
    path: Path,
    arch: str,
    add_metadata: Callable[[GGUFWriter], None],
    tensors: dict[str, np.ndarray] | None = None,
    *,
    raw_dtypes: dict[str, GGMLQuantizationType] | None = None,
    split_max_tensors: int = 0,
) -> Path:
    """Write a GGUF with the given metadata and tensors (a tiny token_embd if none)."""
    writer = GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    add_metadata(writer)
    for name, array in (tensors or {"token_embd.weight": np.zeros((10, 4), dtype=np.float32)}).items():
        writer.add_tensor(name, array, raw_dtype=(raw_dtypes or {}).get(name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_quantized_tensor_bytes_follow_ggml_block_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 256)).astype(np.float32)

    def add_metadata(writer: GGUFWriter) -> None:
        writer.add_file_type(LlamaFileType.MOSTLY_Q8_0)

    path = write_gguf(
        tmp_path / "q8.gguf",
        "llama",
        add_metadata,
        {
            "blk.0.ffn_up.weight": quantize(weight, GGMLQuantizationType.Q8_0),
            "blk.0.ffn_down.weight": weight.T.astype(np.float16),
            "blk.0.ffn_norm.weight": np.ones(64, dtype=np.float32),
        },
        raw_dtypes={"blk.0.ffn_up.weight": GGMLQuantizationType.Q8_0},
    )

    model = read_gguf(path)

    tensors = {tensor.name: tensor for tensor in model.tensors.tensors}
    q8 = tensors["blk.0.ffn_up.weight"]
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0]
    assert (block_size, type_size) == (32, 34)  # 32 int8 weights + one f16 scale per block
    assert (q8.dtype, q8.shape) == ("Q8_0", (64, 256))
    assert q8.nbytes == 64 * 256 // block_size * type_size
    assert (tensors["blk.0.ffn_down.weight"].dtype, tensors["blk.0.ffn_down.weight"].nbytes) == (
        "F16",
        256 * 64 * 2,
    )
    assert model.file_type == "MOSTLY_Q8_0"
    assert model.tensors.params_by_dtype() == {"F16": 256 * 64, "F32": 64, "Q8_0": 64 * 256}
    assert model.tensors.bytes_by_dtype() == {"F16": 256 * 64 * 2, "F32": 64 * 4, "Q8_0": 64 * 256 // 32 * 34}
    assert model.to_hf_config()["tie_word_embeddings"] is True  # no output.weight


def test_deepseek_v3_mla_and_moe_keys(tmp_path: Path) -> None:
    # DeepSeek-V3's config.json values, written the way current llama.cpp converters write them (absorbed MLA
    # head sizes in key_length/value_length, the original ones in *_mla).
    def add_metadata(writer: GGUFWriter) -> None:
        arch = "deepseek2"
        writer.add_uint32(f"{arch}.embedding_length", 7168)
        writer.add_uint32(f"{arch}.block_count", 61)
        writer.add_uint32(f"{arch}.context_length", 163840)
        writer.add_uint32(f"{arch}.feed_forward_length", 18432)
        writer.add_uint32(f"{arch}.attention.head_count", 128)
        writer.add_uint32(f"{arch}.attention.head_count_kv", 1)
        writer.add_uint32(f"{arch}.attention.key_length", 576)
        writer.add_uint32(f"{arch}.attention.value_length", 512)
        writer.add_uint32(f"{arch}.attention.key_length_mla", 192)
        writer.add_uint32(f"{arch}.attention.value_length_mla", 128)
        writer.add_uint32(f"{arch}.attention.q_lora_rank", 1536)
        writer.add_uint32(f"{arch}.attention.kv_lora_rank", 512)
        writer.add_uint32(f"{arch}.rope.dimension_count", 64)
        writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
        writer.add_string(f"{arch}.rope.scaling.type", "yarn")
        writer.add_float32(f"{arch}.rope.scaling.factor", 40.0)
        writer.add_uint32(f"{arch}.rope.scaling.original_context_length", 4096)
        writer.add_uint32(f"{arch}.leading_dense_block_count", 3)
        writer.add_uint32(f"{arch}.expert_count", 256)
        writer.add_uint32(f"{arch}.expert_used_count", 8)
        writer.add_uint32(f"{arch}.expert_shared_count", 1)
        writer.add_uint32(f"{arch}.expert_feed_forward_length", 2048)
        writer.add_uint32(f"{arch}.expert_gating_func", 2)
        writer.add_uint32(f"{arch}.nextn_predict_layers", 1)
        writer.add_uint32(f"{arch}.vocab_size", 129280)

    config = read_gguf(write_gguf(tmp_path / "dsv3.gguf", "deepseek2", add_metadata)).to_hf_config()

    assert config["architectures"] == ["DeepseekV3ForCausalLM"]
    assert config["model_type"] == "deepseek_v3"
    expected = {
        "hidden_size": 7168,
        "num_hidden_layers": 61,
        "intermediate_size": 18432,
        "num_attention_heads": 128,
        "max_position_embeddings": 163840,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "num_experts": 256,
        "n_routed_experts": 256,
        "num_experts_per_tok": 8,
        "n_shared_experts": 1,
        "moe_intermediate_size": 2048,
        "first_k_dense_replace": 3,
        "num_nextn_predict_layers": 1,
        "vocab_size": 129280,
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096},
    }
    assert {key: config.get(key) for key in expected} == expected
    assert "head_dim" not in config


def test_deepseek_v2_lite_old_style_mla_keys(tmp_path: Path) -> None:
    # DeepSeek-V2-Lite as older converters wrote it: per-head sizes in key_length/value_length, no
    # q_lora_rank.
    def add_metadata(writer: GGUFWriter) -> None:
        arch = "deepseek2"
        writer.add_uint32(f"{arch}.block_count", 27)
        writer.add_uint32(f"{arch}.attention.key_length", 192)
        writer.add_uint32(f"{arch}.attention.value_length", 128)
        writer.add_uint32(f"{arch}.attention.q_lora_rank", 0)
        writer.add_uint32(f"{arch}.attention.kv_lora_rank", 512)
        writer.add_uint32(f"{arch}.rope.dimension_count", 64)
        writer.add_uint32(f"{arch}.expert_count", 64)
        writer.add_uint32(f"{arch}.expert_gating_func", 1)

    config = read_gguf(write_gguf(tmp_path / "dsv2.gguf", "deepseek2", add_metadata)).to_hf_config()

    assert (config["architectures"], config["model_type"]) == (["DeepseekV2ForCausalLM"], "deepseek_v2")
    assert config["q_lora_rank"] is None
    assert (config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]) == (128, 64, 128)
    # No token list and no vocab_size key: the embedding rows give the vocabulary size.
    assert config["vocab_size"] == 10


def test_gpt_oss_sliding_window_layers_and_experts(tmp_path: Path) -> None:
    def add_metadata(writer: GGUFWriter) -> None:
        arch = "gpt-oss"
        writer.add_uint32(f"{arch}.block_count", 4)
        writer.add_uint32(f"{arch}.embedding_length", 2880)
        writer.add_uint32(f"{arch}.attention.head_count", 64)
        writer.add_uint32(f"{arch}.attention.head_count_kv", 8)
        writer.add_uint32(f"{arch}.attention.key_length", 64)
        writer.add_uint32(f"{arch}.attention.sliding_window", 128)
        writer.add_uint32(f"{arch}.expert_count", 32)
        writer.add_uint32(f"{arch}.expert_used_count", 4)
        writer.add_uint32(f"{arch}.expert_feed_forward_length", 2880)

    tensors = {
        "token_embd.weight": np.zeros((10, 4), dtype=np.float32),
        "output.weight": np.zeros((10, 4), dtype=np.float32),
    }
    config = read_gguf(write_gguf(tmp_path / "gpt-oss.gguf", "gpt-oss", add_metadata, tensors)).to_hf_config()

    assert (config["architectures"], config["model_type"]) == (["GptOssForCausalLM"], "gpt_oss")
    assert config["head_dim"] == 64
    assert config["num_key_value_heads"] == 8
    assert config["sliding_window"] == 128
    # llama.cpp's rule for gpt-oss (swa pattern 2): even layers sliding, odd layers full.
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 2
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["moe_intermediate_size"]) == (
        32,
        4,
        2880,
    )
    assert config["tie_word_embeddings"] is False


def test_explicit_sliding_window_pattern_and_per_layer_heads(tmp_path: Path) -> None:
    def add_metadata(writer: GGUFWriter) -> None:
        writer.add_uint32("gemma3.block_count", 3)
        writer.add_uint32("gemma3.attention.sliding_window", 512)
        writer.add_array("gemma3.attention.sliding_window_pattern", [True, False, True])
        writer.add_array("gemma3.attention.head_count", [8, 8, 8])
        writer.add_array("gemma3.attention.head_count_kv", [4, 2, 4])

    config = read_gguf(write_gguf(tmp_path / "gemma3.gguf", "gemma3", add_metadata)).to_hf_config()

    assert config["model_type"] == "gemma3_text"
    assert config["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert config["num_attention_heads"] == 8  # uniform per-layer array collapses to one number
    assert config["num_key_value_heads"] == [4, 2, 4]


def test_mixtral_and_unknown_architectures(tmp_path: Path) -> None:
    def mixtral(writer: GGUFWriter) -> None:
        writer.add_uint32("llama.expert_count", 8)
        writer.add_uint32("llama.expert_used_count", 2)

    config = read_gguf(write_gguf(tmp_path / "mixtral.gguf", "llama", mixtral)).to_hf_config()
    assert (config["architectures"], config["model_type"], config["num_local_experts"]) == (
        ["MixtralForCausalLM"],
        "mixtral",
        8,
    )

    def novel(writer: GGUFWriter) -> None:
        writer.add_uint32("novelarch.block_count", 5)

    config = read_gguf(write_gguf(tmp_path / "novel.gguf", "novelarch", novel)).to_hf_config()
    assert config["model_type"] == "novelarch"
    assert "architectures" not in config
    assert config["num_hidden_layers"] == 5


def test_split_gguf_is_read_as_one_model_from_any_split(tmp_path: Path) -> None:
    def add_metadata(writer: GGUFWriter) -> None:
        writer.add_uint32("llama.block_count", 1)

    tensors = {f"blk.0.t{index}.weight": np.full((4, 8), index, dtype=np.float32) for index in range(3)}
    write_gguf(tmp_path / "model.gguf", "llama", add_metadata, tensors, split_max_tensors=1)
    split_names = [f"model-{index:05d}-of-00003.gguf" for index in range(1, 4)]
    assert sorted(path.name for path in tmp_path.iterdir()) == split_names

    from_first = read_gguf(tmp_path / split_names[0])
    from_last = read_gguf(tmp_path / split_names[2])

    assert from_first == from_last
    assert from_first.tensors.files == tuple(split_names)
    assert [tensor.name for tensor in from_first.tensors.tensors] == sorted(tensors)
    assert from_first.to_hf_config()["num_hidden_layers"] == 1

    (tmp_path / split_names[1]).unlink()
    with pytest.raises(ModelFileError, match=f"split files missing next to it: {split_names[1]}"):
        read_gguf(tmp_path / split_names[0])


@pytest.mark.parametrize("kept_fraction", [0.0, 0.001, 0.01, 0.02, 0.5, 0.999])
def test_truncated_gguf_is_an_error_naming_the_file(
    tiny_gguf: Path, tmp_path: Path, kept_fraction: float
) -> None:
    data = tiny_gguf.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: max(4, int(len(data) * kept_fraction))])
    with pytest.raises(ModelFileError) as raised:
        read_gguf(truncated)
    assert str(truncated) in str(raised.value)


@pytest.mark.parametrize("content", [b"", b"GG", b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}  '])
def test_non_gguf_file_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_gguf(path)


def test_missing_gguf_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such GGUF file"):
        read_gguf(tmp_path / "absent.gguf")
