"""One ``auto`` resolver: the engine placement sizes a replica for is the engine its launch spec starts."""

from __future__ import annotations

import pytest
from gpustack_runtime.wire import Inventory

from gpustack_pulumi.analysis import analyze
from gpustack_pulumi.catalog import gpu
from gpustack_pulumi.cluster_plan import plan_cluster
from gpustack_pulumi.engines.auto import select_engine
from gpustack_pulumi.engines.base import NodeAccelerator
from gpustack_pulumi.engines.options import EngineOptions
from gpustack_pulumi.placement import Deployment
from gpustack_pulumi.placement.engine_catalog import EngineCatalog, default_catalog

H100 = {"vendor": "nvidia", "product": "NVIDIA H100 80GB HBM3", "memory_total": 85_520_809_984,
        "memory_used": 0, "compute_capability": "9.0"}  # fmt: skip


def inventory(gpus: int) -> Inventory:
    devices = [{**H100, "index": i, "uuid": f"GPU-{i}"} for i in range(gpus)]
    return Inventory.model_validate({"nodes": [{"name": "h", "devices": devices}]})


def test_the_registry_implements_the_placement_protocol() -> None:
    catalog = default_catalog()
    assert isinstance(catalog, EngineCatalog)
    assert catalog.names() == ("custom", "llama.cpp", "mindie", "sglang", "tensorrt-llm", "vllm")
    assert catalog.vendors("mindie") == frozenset({"ascend"})
    assert "cpu" in catalog.vendors("llama.cpp")


@pytest.mark.parametrize(
    ("model", "mode", "gpus"),
    [
        ("Qwen/Qwen3-8B", "latency", 1),
        ("Qwen/Qwen3-8B", "throughput", 1),
        ("Qwen/Qwen3-32B", "balanced", 2),
        ("openai/gpt-oss-120b", "latency", 2),
        ("zai-org/GLM-4.5-Air", "throughput", 4),
    ],
)
def test_placement_and_launch_agree_on_auto(model: str, mode: str, gpus: int) -> None:
    deployment = Deployment(name="d", model=model, mode=mode, max_model_len=8192)
    result = plan_cluster(inventory(gpus), [deployment], owner_prefix="p/s/")
    assert result.ok, result.failures
    (replica,) = result.replicas.values()
    assert replica.placement is not None
    expected = select_engine(
        deployment,
        analyze(model),
        NodeAccelerator.from_gpu(gpu("H100-SXM")),
        EngineOptions(),
        gpu_count=replica.placement.tensor_parallel_size * replica.placement.pipeline_parallel_size,
    )
    assert replica.placement.engine == expected.engine
    assert replica.launch[0]["engine"] == expected.engine
    assert any(reason.startswith(f"engine {expected.engine} (auto)") for reason in replica.launch[0]["reasons"])


def test_a_deployment_validates_its_engine_options_once_and_types_them() -> None:
    with pytest.raises(ValueError, match=r"engine_options\n.*speculative"):
        Deployment(name="d", model="Qwen/Qwen3-8B", engine_options={"speculative": {"method": "telepathy"}})
    deployment = Deployment(name="d", model="Qwen/Qwen3-8B", engine_options={"n_gpu_layers": 0})
    assert deployment.options.n_gpu_layers == 0
