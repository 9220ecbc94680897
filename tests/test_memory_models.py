"""Engine memory models, calibrated on a real vLLM startup log and SGLang's own default formula."""

from __future__ import annotations

import pytest

from gpustack_pulumi import catalog
from gpustack_pulumi.analysis import analyze, profile_from_config
from gpustack_pulumi.placement.memory import EngineMemoryModel, MemoryRequest, memory_model
from gpustack_pulumi.placement.memory.sglang import default_mem_fraction_static
from gpustack_pulumi.placement.memory.vllm import (
    activation_peak,
    batch_defaults,
    cuda_visible_memory,
    cudagraph_capture_sizes,
)

GIB = 1024**3
H100_NVML_TOTAL = 81559 * 1024**2  # what NVML reports; CUDA (and vLLM) see 79.18 GiB of it

# Real vLLM 0.19 startup log, Llama-3.1-8B bf16 on one H100, gpu_memory_utilization 0.95 (GiB).
LLAMA_LOG = {"weights": 14.99, "activation": 1.89, "non_torch": 0.25, "cuda_graphs": 0.91, "kv_cache": 58.11}
LLAMA_LOG_BLOCKS = 29_751


@pytest.fixture(scope="module")
def llama():
    return analyze("meta-llama/Llama-3.1-8B-Instruct")


def test_registry_and_protocol() -> None:
    for name in ("vllm", "sglang"):
        model = memory_model(name)
        assert isinstance(model, EngineMemoryModel)
        assert model.name == name
    with pytest.raises(KeyError, match="valid: sglang, vllm"):
        memory_model("trtllm-nope")


def test_vllm_reproduces_the_llama_startup_log_within_5_percent(llama) -> None:
    model = memory_model("vllm", "0.19.0")
    b = model.estimate(llama, MemoryRequest(memory_fraction=0.95), gpu_memory_bytes=H100_NVML_TOTAL, gpu_key="H100-SXM")
    assert b.budget / GIB == pytest.approx(75.23, abs=0.02)
    for term, logged in LLAMA_LOG.items():
        assert getattr(b, term) / GIB == pytest.approx(logged, rel=0.05), term
    # The pool at 128 KiB per token in 16-token blocks: the log's block count within 0.5 %.
    blocks = b.kv_cache // (16 * 128 * 1024)
    assert blocks == pytest.approx(LLAMA_LOG_BLOCKS, rel=0.005)
    assert b.max_kv_tokens == pytest.approx(LLAMA_LOG_BLOCKS * 16, rel=0.005)
    assert b.fits and not b.problems


def test_vllm_0_33_subtracts_cuda_graphs_from_the_budget(llama) -> None:
    old = memory_model("vllm", "0.19.0").estimate(
        llama, MemoryRequest(memory_fraction=0.95), gpu_memory_bytes=H100_NVML_TOTAL, gpu_key="H100-SXM"
    )
    new = memory_model("vllm", "0.33.0").estimate(
        llama, MemoryRequest(memory_fraction=0.95), gpu_memory_bytes=H100_NVML_TOTAL, gpu_key="H100-SXM"
    )
    assert old.kv_cache - new.kv_cache == new.cuda_graphs
    # Before 0.21 graphs lived in the slack, so they count outside the budget.
    assert old.process_overhead - new.process_overhead == old.cuda_graphs


def test_vllm_default_utilization_by_version(llama) -> None:
    b = memory_model("vllm").estimate(llama, MemoryRequest(), gpu_memory_bytes=H100_NVML_TOTAL)
    assert b.fraction == 0.92 and b.version == "0.33.0"


def test_activation_cross_check_qwen3_14b() -> None:
    # llm-d measured 2.23 GiB of activation for Qwen3-14B on H100 with vLLM ≥ 0.17.
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 5120,
        "head_dim": 128,
        "intermediate_size": 17408,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
    }
    profile = profile_from_config(config, model_id="Qwen3-14B")
    assert activation_peak(profile, tp=1, max_num_batched_tokens=8192, max_num_seqs=1024) / GIB == pytest.approx(
        2.23, rel=0.05
    )


def test_batch_defaults_and_capture_sizes() -> None:
    assert batch_defaults(H100_NVML_TOTAL, "H100-SXM") == (8192, 1024)
    assert batch_defaults(int(79.1 * GIB), "A100-80GB-SXM") == (2048, 256)  # A100 excluded from the 70 GiB tier
    assert batch_defaults(int(139 * GIB), "H200") == (8192, 1024)
    assert batch_defaults(int(178 * GIB), "B200") == (16384, 1024)
    assert batch_defaults(int(22 * GIB), "L4") == (2048, 256)
    sizes = cudagraph_capture_sizes(1024, 8192)
    assert len(sizes) == 51 and sizes[:4] == [1, 2, 4, 8] and sizes[-1] == 512
    assert cudagraph_capture_sizes(1024, 8192, family="gpt_oss")[-1] == 1024
    assert cudagraph_capture_sizes(256, 2048)[-1] == 512


def test_vllm_does_not_fit_says_why_with_numbers() -> None:
    profile = analyze("Qwen/Qwen3-32B")  # 61 GiB of bf16 weights
    l4 = catalog.gpu("L4")
    b = memory_model("vllm").estimate(profile, MemoryRequest(), gpu_memory_bytes=l4.memory_bytes)
    assert not b.fits
    assert "weights per GPU 61.02 GiB exceed the budget" in b.problems[0]
    assert "raise tensor parallelism" in b.problems[0]


def test_vllm_context_too_long_for_the_pool() -> None:
    profile = analyze("Qwen/Qwen3-8B")
    total = catalog.gpu("L4").memory_bytes
    b = memory_model("vllm").estimate(
        profile, MemoryRequest(max_model_len=40960, concurrency=4), gpu_memory_bytes=total, gpu_key="L4"
    )
    assert not b.fits
    assert "KV cache for 4 × 40960 tokens needs" in b.problems[0]
    assert "estimated maximum model length" in b.problems[0]


def test_min_fraction_is_the_smallest_that_fits() -> None:
    profile = analyze("Qwen/Qwen3-0.6B")
    model = memory_model("vllm")
    request = MemoryRequest(max_model_len=8192, concurrency=4)
    fraction = model.min_fraction(profile, request, gpu_memory_bytes=H100_NVML_TOTAL, gpu_key="H100-SXM")
    assert fraction is not None and 0 < fraction < 0.2  # a small model takes a sliver of an H100
    at = model.estimate(
        profile,
        request.model_copy(update={"memory_fraction": fraction}),
        gpu_memory_bytes=H100_NVML_TOTAL,
        gpu_key="H100-SXM",
    )
    below = model.estimate(
        profile,
        request.model_copy(update={"memory_fraction": fraction - 0.001}),
        gpu_memory_bytes=H100_NVML_TOTAL,
        gpu_key="H100-SXM",
    )
    assert at.fits and not below.fits
    assert at.max_concurrency >= 4
    assert (
        model.claim_bytes(
            profile, request.model_copy(update={"memory_fraction": fraction}), gpu_memory_bytes=H100_NVML_TOTAL
        )
        == at.budget + at.process_overhead
    )


def test_tensor_parallel_divides_weights_and_adds_nccl() -> None:
    profile = analyze("Qwen/Qwen3-32B")
    model = memory_model("vllm")
    one = model.estimate(profile, MemoryRequest(max_model_len=8192), gpu_memory_bytes=H100_NVML_TOTAL)
    two = model.estimate(profile, MemoryRequest(tp=2, max_model_len=8192), gpu_memory_bytes=H100_NVML_TOTAL)
    assert two.weights == pytest.approx(one.weights / 2, rel=0.01)
    assert two.non_torch > one.non_torch
    assert two.kv_cache > one.kv_cache


def test_pipeline_parallel_splits_layers() -> None:
    profile = analyze("Qwen/Qwen3-32B")
    assert profile.weights_per_rank(1, 2) < 0.52 * profile.weight_bytes
    assert profile.weights_per_rank(1, 2) > 0.48 * profile.weight_bytes


def test_gpt_oss_sliding_layers_hold_a_window_per_request() -> None:
    profile = analyze("openai/gpt-oss-120b")
    b = memory_model("vllm").estimate(
        profile, MemoryRequest(max_model_len=131072), gpu_memory_bytes=H100_NVML_TOTAL, gpu_key="H100-SXM"
    )
    assert b.fits
    # Full layers: 131072/16 blocks; window layers: cdiv(min(127 + 2·8192, L), 16) + 1 blocks.
    full_blocks, window_blocks = 131072 // 16, -(-(127 + 2 * 8192) // 16) + 1
    per_request_bytes = (full_blocks + window_blocks) * 16 * 18 * 2 * 8 * 64 * 2
    assert b.max_concurrency == pytest.approx(b.kv_cache // (16 * 18 * 2048) / (full_blocks + window_blocks), rel=1e-3)
    assert b.kv_needed == per_request_bytes


def test_qwen3_next_block_size_is_raised_to_the_state_page() -> None:
    profile = analyze("Qwen/Qwen3-Next-80B-A3B-Instruct")
    b = memory_model("vllm").estimate(
        profile, MemoryRequest(tp=4, max_model_len=32768), gpu_memory_bytes=H100_NVML_TOTAL
    )
    state_page = profile.state_bytes_per_sequence(4) / 36
    attention_token_bytes = profile.kv_cache_bytes_per_token(4) / 12
    assert b.block_size * attention_token_bytes >= state_page
    assert b.block_size % 16 == 0 and b.fits


def test_deepseek_needs_more_than_eight_h100s() -> None:
    profile = analyze("deepseek-ai/DeepSeek-R1")
    model = memory_model("vllm")
    h100 = model.estimate(profile, MemoryRequest(tp=8, max_model_len=32768), gpu_memory_bytes=H100_NVML_TOTAL)
    assert not h100.fits
    h200 = catalog.gpu("H200").memory_bytes
    b = model.estimate(profile, MemoryRequest(tp=8, max_model_len=32768), gpu_memory_bytes=h200, gpu_key="H200")
    assert b.fits and b.block_size == 64  # MLA backends use 64-token blocks
    # MLA cache is not divided by TP: each rank holds the full latent per token.
    assert b.kv_needed == 32768 // 64 * 64 * 70_272


@pytest.mark.parametrize(
    ("gpu", "tp", "expected"),
    [
        ("H100-SXM", 1, 0.830),
        ("H100-SXM", 8, 0.812),
        ("H200", 1, 0.903),
        ("A100-40GB-SXM", 1, 0.823),
        ("L40S", 1, 0.843),
        ("L4", 1, 0.684),
    ],
)
def test_sglang_default_mem_fraction_static(gpu: str, tp: int, expected: float) -> None:
    profile = analyze("meta-llama/Llama-3.1-8B-Instruct")
    assert default_mem_fraction_static(profile, catalog.gpu(gpu).memory_bytes, tp) == expected


def test_sglang_kv_pool_follows_its_formula() -> None:
    profile = analyze("meta-llama/Llama-3.1-8B-Instruct")
    total = catalog.gpu("H100-SXM").memory_bytes
    b = memory_model("sglang").estimate(profile, MemoryRequest(max_model_len=8192), gpu_memory_bytes=total)
    assert b.fraction == 0.830
    free_before = total - b.process_overhead
    assert b.kv_cache == pytest.approx(free_before * 0.830 - b.weights, abs=1)
    assert b.max_kv_tokens == int(b.kv_cache // (128 * 1024))
    assert b.fits
    low = memory_model("sglang").estimate(profile, MemoryRequest(memory_fraction=0.15), gpu_memory_bytes=total)
    assert not low.fits and "Raise --mem-fraction-static".lower() in low.problems[0].lower()


def test_sglang_mla_reserve_and_swa_ratio() -> None:
    deepseek = analyze("deepseek-ai/DeepSeek-R1")
    llama = analyze("meta-llama/Llama-3.1-8B-Instruct")
    total = catalog.gpu("H200").memory_bytes
    # MLA replaces the prefill-graph term with 1536 MiB, so its default fraction is lower.
    assert default_mem_fraction_static(deepseek, total, 8) < default_mem_fraction_static(llama, total, 8)
    gpt = analyze("openai/gpt-oss-120b")
    b = memory_model("sglang").estimate(gpt, MemoryRequest(max_model_len=8192), gpu_memory_bytes=total)
    cell = 36 * 1024 + 0.8 * 36 * 1024
    assert b.max_kv_tokens == int(b.kv_cache // cell)


def test_cuda_visible_total_from_nvml_total() -> None:
    # NVML reports 81,559 MiB for an H100 80GB HBM3; CUDA (and so vLLM) sees 79.18 GiB of it (measured).
    h100 = catalog.gpu("NVIDIA H100 80GB HBM3")
    assert cuda_visible_memory(h100.memory_bytes) / GIB == pytest.approx(79.18, abs=0.01)
