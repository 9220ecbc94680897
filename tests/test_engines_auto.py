"""``engine: auto``: what it picks and the reason it gives (GGUF, vendor, preset, architecture, mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpustack_pulumi.analysis import analyze
from gpustack_pulumi.catalog import gpu
from gpustack_pulumi.engines import EngineOptions, EngineRefusal, NodeAccelerator
from gpustack_pulumi.engines.auto import select_engine
from gpustack_pulumi.engines.launch import launch_specs
from gpustack_pulumi.placement.models import Deployment, NodePlacement, PlacedReplica
from gpustack_pulumi.tinymodel import write_tiny_gguf


def pick(model: str, gpu_key: str | None, mode: str = "balanced", gpus: int = 1, **options: object):
    accelerator = NodeAccelerator.from_gpu(gpu(gpu_key)) if gpu_key else NodeAccelerator.cpu()
    deployment = Deployment(name="d", model=model, mode=mode)
    return select_engine(deployment, analyze(model), accelerator, EngineOptions(**options), gpu_count=gpus)


def test_gguf_goes_to_llamacpp(tmp_path: Path) -> None:
    path = str(write_tiny_gguf(tmp_path / "m.gguf"))
    choice = pick(path, None)
    assert choice.engine == "llama.cpp" and "GGUF" in choice.reason and "CPU" in choice.reason
    assert pick(path, "H100-SXM").engine == "llama.cpp"


def test_cpu_only_without_gguf_is_refused_with_alternatives() -> None:
    with pytest.raises(EngineRefusal) as caught:
        pick("Qwen/Qwen3-8B", None)
    assert caught.value.option == "placement" and any("GGUF" in a for a in caught.value.alternatives)


def test_ascend_goes_to_mindie_with_the_measured_reason() -> None:
    choice = pick("Qwen/Qwen3-8B", "Ascend-910B3")
    assert choice.engine == "mindie" and "Ascend" in choice.reason and "+284%" in choice.reason


def test_measured_preset_picks_its_engine_and_names_the_gain() -> None:
    choice = pick("zai-org/GLM-4.5-Air", "H100-SXM", "throughput", gpus=4)
    assert (choice.engine, choice.preset) == ("sglang", "glm-4.5-air-h100-throughput")
    assert "+56.9%" in choice.reason and "glm-4.5-air/h100.md" in choice.reason


def test_preset_engine_without_api_keys_is_skipped_when_a_key_is_required() -> None:
    assert pick("Qwen/Qwen3-32B", "H100-SXM", "throughput").engine == "tensorrt-llm"
    assert pick("Qwen/Qwen3-32B", "H100-SXM", "throughput", api_key_secret="k").engine == "vllm"


def test_mla_moe_throughput_without_preset_goes_to_sglang() -> None:
    choice = pick("deepseek-ai/DeepSeek-R1", "H100-SXM", "throughput", gpus=8)
    assert choice.engine == "sglang" and choice.preset is None and "MLA" in choice.reason


def test_default_is_vllm_and_says_so() -> None:
    choice = pick("meta-llama/Llama-3.1-8B-Instruct", "L40S")
    assert choice.engine == "vllm" and "LlamaForCausalLM" in choice.reason and "no measured preset" in choice.reason


def test_amd_goes_to_vllm() -> None:
    assert pick("Qwen/Qwen3-8B", "MI300X").engine == "vllm"


def test_auto_replica_gets_the_choice_as_its_first_reason() -> None:
    profile = analyze("Qwen/Qwen3-8B")
    replica = PlacedReplica(
        deployment="d",
        replica=0,
        engine="auto",
        placements=[NodePlacement(node="a", device_indices=[0], memory_bytes_per_device=70 * 2**30)],
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        memory_fraction=0.85,
        reason="t",
    )
    deployment = Deployment(name="d", model="Qwen/Qwen3-8B", mode="latency")
    (spec,) = launch_specs(replica, profile, deployment, accelerators={"a": NodeAccelerator.from_gpu(gpu("H100-SXM"))})
    assert spec.engine == "sglang" and spec.reasons[0].startswith("engine sglang (auto): measured preset")
