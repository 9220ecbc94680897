"""Placement counts what the engine adds: speculative draft / MTP weights and vLLM's throughput batches."""

from __future__ import annotations

from placement_helpers import GIB, H100, dep, inventory, node

from gpustack_pulumi.placement import plan


def claim(deployment) -> int:
    result = plan(inventory(node("n1", H100, 1)), [deployment])
    assert not result.unplaced, result.unplaced
    return result.replicas[0].placements[0].memory_bytes_per_device


def test_eagle3_draft_weights_are_claimed() -> None:
    base = dep("chat", "Qwen/Qwen3-8B", max_model_len=8192, engine="vllm")
    draft = {"speculative": {"method": "eagle3", "draft_model": "org/eagle3-draft", "draft_model_bytes": 2 * GIB}}
    with_draft = base.model_copy(update={"engine_options": draft})
    assert claim(with_draft) - claim(base) >= 2 * GIB * 0.99


def test_mode_throughput_sizes_vllm_for_doubled_batches() -> None:
    balanced = dep("chat", "Qwen/Qwen3-8B", max_model_len=8192, engine="vllm")
    throughput = balanced.model_copy(update={"mode": "throughput"})
    assert claim(throughput) > claim(balanced)  # --performance-mode throughput: bigger activation peak


def test_llama_cpp_needs_a_gguf_model() -> None:
    cpu = node("cpu", host_gib=64)
    result = plan(inventory(cpu), [dep("chat", "Qwen/Qwen3-0.6B", engine="llama.cpp", max_model_len=4096)])
    [unplaced] = result.unplaced
    assert unplaced.constraint == "EngineModel" and "GGUF" in unplaced.reason
