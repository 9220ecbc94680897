"""TensorRT-LLM, MindIE, llama.cpp (both front ends) and custom launch specs, and their refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gpustack_pulumi.analysis import analyze
from gpustack_pulumi.catalog import gpu
from gpustack_pulumi.engines import EngineContext, EngineOptions, EngineRefusal, NodeAccelerator, SpeculativeOptions
from gpustack_pulumi.engines.registry import get_engine
from gpustack_pulumi.engines.versions import engine_version
from gpustack_pulumi.placement.models import Deployment, NodePlacement, PlacedReplica
from gpustack_pulumi.tinymodel import write_tiny_gguf

GIB = 2**30


def context(
    model: str,
    engine: str,
    accelerator: NodeAccelerator,
    *,
    devices: list[int] | None = None,
    mode: str = "balanced",
    nodes: int = 1,
    quantization: str | None = None,
    concurrency: int = 1,
    **options: object,
) -> EngineContext:
    devices = [0] if devices is None else devices
    names = [f"n{index}" for index in range(nodes)]
    return EngineContext(
        replica=PlacedReplica(
            deployment="svc",
            replica=0,
            engine=engine,
            placements=[NodePlacement(node=n, device_indices=devices, memory_bytes_per_device=60 * GIB) for n in names],
            tensor_parallel_size=max(1, len(devices)),
            pipeline_parallel_size=nodes,
            memory_fraction=None,
            reason="test",
        ),
        deployment=Deployment(
            name="svc", model=model, mode=mode, max_model_len=8192, quantization=quantization, concurrency=concurrency
        ),
        profile=analyze(model),
        options=EngineOptions(**options),
        accelerators={n: accelerator for n in names},
        node_addresses={n: "10.2.0.1" for n in names},
    )


def refusal(ctx: EngineContext) -> EngineRefusal:
    with pytest.raises(EngineRefusal) as caught:
        get_engine(ctx.replica.engine).launch_specs(ctx)
    return caught.value


def checked(ctx: EngineContext):
    specs = get_engine(ctx.replica.engine).launch_specs(ctx)
    for spec in specs:
        table = engine_version(spec.engine, spec.engine_version).flag_table
        if table is not None:
            assert table.problems(spec.argv[spec.command_length :]) == [], spec.argv
    return specs


H100 = NodeAccelerator.from_gpu(gpu("H100-SXM"))
ASCEND = NodeAccelerator.from_gpu(gpu("Ascend-910B3"))


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


# --- TensorRT-LLM -------------------------------------------------------------------------------------------


def test_trtllm_argv_batch_and_kv_fraction_stay_inside_the_claim() -> None:
    ctx = context("Qwen/Qwen3-8B", "tensorrt-llm", H100, mode="throughput")
    (spec,) = checked(ctx)
    argv = spec.argv
    assert argv[:2] == ["trtllm-serve", "Qwen/Qwen3-8B"]
    assert argv[argv.index("--max_batch_size") + 1] == "1024" and argv[argv.index("--max_num_tokens") + 1] == "8192"
    fraction = float(argv[argv.index("--kv_cache_free_gpu_memory_fraction") + 1])
    weights = ctx.profile.weights_per_rank(1, 1)
    free_after_load = H100.memory_bytes - weights - 2 * GIB
    # the KV cache TensorRT-LLM takes plus weights and overhead is the placement's claim
    assert abs(fraction * free_after_load + weights + 2 * GIB - 60 * GIB) < 0.01 * GIB


def test_trtllm_speculative_goes_to_the_extra_options_file() -> None:
    ctx = context("Qwen/Qwen3-8B", "tensorrt-llm", H100, speculative=SpeculativeOptions(method="ngram"))
    (spec,) = checked(ctx)
    path = spec.argv[spec.argv.index("--extra_llm_api_options") + 1]
    (config_file,) = spec.config_files
    assert config_file.path == path
    assert yaml.safe_load(config_file.content) == {
        "speculative_config": {"decoding_type": "NGram", "max_draft_len": 3, "max_matching_ngram_size": 4}
    }


def test_trtllm_refuses_api_keys_multi_node_and_unknown_methods() -> None:
    assert refusal(context("Qwen/Qwen3-8B", "tensorrt-llm", H100, api_key_secret="k")).option == "api_key_secret"
    assert refusal(context("Qwen/Qwen3-32B", "tensorrt-llm", H100, devices=[0, 1], nodes=2)).option == "placement"
    eagle = SpeculativeOptions(method="eagle", draft_model="x/y")
    error = refusal(context("Qwen/Qwen3-8B", "tensorrt-llm", H100, speculative=eagle))
    assert error.option == "speculative.method" and error.alternatives == ["eagle3", "mtp", "ngram"]


# --- MindIE -------------------------------------------------------------------------------------------------


def test_mindie_config_is_generated_from_the_placement() -> None:
    ctx = context("Qwen/Qwen3-8B", "mindie", ASCEND, devices=[4, 5])
    (spec,) = get_engine("mindie").launch_specs(ctx)
    assert spec.argv == ["/usr/local/Ascend/mindie/latest/mindie-service/bin/mindieservice_daemon"]
    (config_file,) = spec.config_files
    config = json.loads(config_file.content.replace("{port}", "40123"))  # the agent fills the port
    assert config["ServerConfig"]["port"] == 40123
    backend = config["BackendConfig"]
    assert backend["npuDeviceIds"] == [[0, 1]]  # logical ids after ASCEND_RT_VISIBLE_DEVICES=4,5
    model = backend["ModelDeployConfig"]["ModelConfig"][0]
    assert model["worldSize"] == 2 and backend["ModelDeployConfig"]["maxSeqLen"] == 8192
    weights = ctx.profile.weights_per_rank(2, 1)
    assert model["npuMemSize"] == (60 * GIB - weights - 2 * GIB) // 10**9
    assert spec.visible_devices == [4, 5] and spec.health_path == "/info"
    assert spec.image and "mindie" in spec.image


def test_mindie_on_nvidia_is_refused_naming_the_alternatives() -> None:
    error = refusal(context("Qwen/Qwen3-8B", "mindie", H100))
    assert error.option == "engine" and "Ascend" in error.reason
    assert {"engine: vllm", "engine: sglang"} <= set(error.alternatives)


# --- llama.cpp ----------------------------------------------------------------------------------------------


def test_llama_server_context_covers_every_slot_and_key_goes_to_env(gguf: Path) -> None:
    ctx = context(
        str(gguf), "llama.cpp", H100, concurrency=4, llamacpp_server="llama-server", api_key_secret="prod/key"
    )
    (spec,) = checked(ctx)
    argv = spec.argv
    assert argv[0] == "llama-server" and argv[argv.index("-np") + 1] == "4"
    assert argv[argv.index("-c") + 1] == str(8192 * 4)
    assert argv[argv.index("-ngl") + 1] == "-1" and "--metrics" in argv
    assert spec.secret_env == {"LLAMA_API_KEY": "prod/key"} and spec.health_path == "/health"
    assert spec.image == "ghcr.io/ggml-org/llama.cpp:server-cuda"


def test_llamacpp_python_server_on_cpu_offloads_nothing(gguf: Path) -> None:
    (spec,) = checked(context(str(gguf), "llama.cpp", NodeAccelerator.cpu(), devices=[]))
    assert spec.argv[1:3] == ["-m", "llama_cpp.server"]
    assert spec.argv[spec.argv.index("--n_gpu_layers") + 1] == "0" and spec.image is None


def test_llamacpp_refusals(gguf: Path) -> None:
    assert refusal(context("Qwen/Qwen3-8B", "llama.cpp", H100)).option == "model"
    error = refusal(context(str(gguf), "llama.cpp", H100, api_key_secret="k"))
    assert error.option == "api_key_secret" and "llamacpp_server: llama-server" in error.alternatives[0]
    assert refusal(context(str(gguf), "llama.cpp", H100, quantization="fp8")).option == "quantization"


# --- custom ---------------------------------------------------------------------------------------------------


def test_custom_template_is_rendered_per_node() -> None:
    template = ["srv", "--model", "{model}", "--port", "{port}", "--tp", "{tp}", "--rank={node_rank}/{nnodes}"]
    head, worker = get_engine("custom").launch_specs(
        context("Qwen/Qwen3-8B", "custom", H100, devices=[0, 1], nodes=2, custom_argv=template, image="me/srv:1")
    )
    assert head.argv == ["srv", "--model", "Qwen/Qwen3-8B", "--port", "{port}", "--tp", "2", "--rank=0/2"]
    assert worker.argv[-1] == "--rank=1/2" and worker.health_path is None and head.image == "me/srv:1"


def test_custom_template_errors_name_the_placeholders() -> None:
    error = refusal(context("Qwen/Qwen3-8B", "custom", H100, custom_argv=["srv", "{modle}", "--port", "{port}"]))
    assert error.option == "custom_argv" and "{modle}" in error.reason and "{model}" in error.alternatives
    error = refusal(context("Qwen/Qwen3-8B", "custom", H100, custom_argv=["srv", "{model}"]))
    assert "{port}" in error.reason
    assert refusal(context("Qwen/Qwen3-8B", "custom", H100)).option == "custom_argv"
