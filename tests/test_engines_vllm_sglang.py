"""vLLM and SGLang launch specs: placement, multi-node, modes, speculative decoding, KV offload, secrets,
version spellings, and the refusals users see. Every argv is checked against the pinned flag table."""

from __future__ import annotations

import json

import pytest

from gpustack_pulumi.analysis import analyze
from gpustack_pulumi.catalog import gpu
from gpustack_pulumi.engines import (
    EngineContext,
    EngineOptions,
    EngineRefusal,
    KvOffloadOptions,
    LaunchSpec,
    NodeAccelerator,
    SpeculativeOptions,
)
from gpustack_pulumi.engines.registry import get_engine
from gpustack_pulumi.engines.versions import engine_version
from gpustack_pulumi.placement.models import Deployment, NodePlacement, PlacedReplica

GIB = 2**30


def context(
    model: str = "Qwen/Qwen3-8B",
    *,
    engine: str = "vllm",
    gpu_key: str = "H100-SXM",
    tp: int = 1,
    nodes: int = 1,
    mode: str = "balanced",
    quantization: str | None = None,
    addresses: dict[str, str] | None = None,
    **options: object,
) -> EngineContext:
    names = [f"gpu-{index}" for index in range(nodes)]
    spec = gpu(gpu_key)
    return EngineContext(
        replica=PlacedReplica(
            deployment="chat",
            replica=0,
            engine=engine,
            placements=[
                NodePlacement(node=name, device_indices=list(range(tp)), memory_bytes_per_device=60 * GIB)
                for name in names
            ],
            tensor_parallel_size=tp,
            pipeline_parallel_size=nodes,
            memory_fraction=0.82,
            reason="test",
        ),
        deployment=Deployment(name="chat", model=model, mode=mode, max_model_len=16384, quantization=quantization),
        profile=analyze(model),
        options=EngineOptions(**options),
        accelerators={name: NodeAccelerator.from_gpu(spec) for name in names},
        node_addresses=addresses
        if addresses is not None
        else {name: f"10.1.0.{i + 1}" for i, name in enumerate(names)},
    )


def specs_of(ctx: EngineContext) -> list[LaunchSpec]:
    engine = get_engine(ctx.replica.engine)
    specs = engine.launch_specs(ctx)
    for spec in specs:  # every argv of these tests must be accepted by the pinned version's parser
        table = engine_version(spec.engine, spec.engine_version).flag_table
        assert table.problems(spec.argv[spec.command_length :]) == [], spec.argv
    return specs


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def refusal(ctx: EngineContext) -> EngineRefusal:
    with pytest.raises(EngineRefusal) as caught:
        get_engine(ctx.replica.engine).launch_specs(ctx)
    return caught.value


# --- placement to flags ---------------------------------------------------------------------------------


def test_vllm_uses_the_placement_fraction_length_and_tp() -> None:
    (spec,) = specs_of(context(tp=2))
    assert spec.argv[:3] == ["vllm", "serve", "Qwen/Qwen3-8B"]
    assert flag_value(spec.argv, "--gpu-memory-utilization") == "0.82"
    assert flag_value(spec.argv, "--max-model-len") == "16384"
    assert flag_value(spec.argv, "--tensor-parallel-size") == "2"
    assert flag_value(spec.argv, "--port") == "{port}" and spec.port == 0
    assert spec.visible_devices == [0, 1] and spec.memory_bytes_per_device == 60 * GIB
    assert (spec.health_path, spec.metrics_path, spec.image) == ("/health", "/metrics", "vllm/vllm-openai:v0.33.0")


def test_sglang_uses_the_placement_fraction_and_context_length() -> None:
    (spec,) = specs_of(context(engine="sglang", tp=2))
    assert spec.argv[1:3] == ["-m", "sglang.launch_server"]
    assert flag_value(spec.argv, "--mem-fraction-static") == "0.82"
    assert flag_value(spec.argv, "--context-length") == "16384"
    assert flag_value(spec.argv, "--tp-size") == "2"
    assert "--enable-metrics" in spec.argv and spec.metrics_path == "/metrics"


def test_vllm_multi_node_head_and_headless_worker() -> None:
    head, worker = specs_of(context("Qwen/Qwen3-32B", tp=4, nodes=2))
    assert (head.node, head.node_role, worker.node, worker.node_role) == ("gpu-0", "head", "gpu-1", "worker")
    for rank, spec in enumerate((head, worker)):
        assert flag_value(spec.argv, "--nnodes") == "2"
        assert flag_value(spec.argv, "--node-rank") == str(rank)
        assert flag_value(spec.argv, "--master-addr") == "10.1.0.1"
        assert flag_value(spec.argv, "--pipeline-parallel-size") == "2"
    assert flag_value(head.argv, "--master-port") == flag_value(worker.argv, "--master-port")
    assert "--headless" not in head.argv and "--headless" in worker.argv
    assert worker.health_path is None and worker.metrics_path is None


def test_vllm_multi_node_over_ray() -> None:
    head, worker = specs_of(context("Qwen/Qwen3-32B", tp=4, nodes=2, multi_node_backend="ray", distributed_port=31500))
    assert head.argv[:2] == ["/bin/sh", "-c"] and head.argv[2].startswith("ray start --head --port=31500")
    assert head.argv[head.command_length - 2 : head.command_length] == ["vllm", "serve"]
    assert flag_value(head.argv, "--distributed-executor-backend") == "ray" and "--nnodes" not in head.argv
    assert worker.argv == ["ray", "start", "--address=10.1.0.1:31500", "--block"]
    assert worker.health_path is None and "VLLM_API_KEY" not in worker.secret_env


def test_sglang_multi_node_dist_init_addr_on_every_node() -> None:
    head, worker = specs_of(context("Qwen/Qwen3-32B", engine="sglang", tp=4, nodes=2, distributed_port=31000))
    assert flag_value(head.argv, "--dist-init-addr") == flag_value(worker.argv, "--dist-init-addr") == "10.1.0.1:31000"
    assert [flag_value(s.argv, "--node-rank") for s in (head, worker)] == ["0", "1"]


def test_multi_node_without_the_head_address_is_refused_naming_the_option() -> None:
    error = refusal(context("Qwen/Qwen3-32B", tp=4, nodes=2, addresses={}))
    assert error.option == "node_addresses" and "gpu-0" in str(error)


def test_distributed_port_differs_between_replicas_of_one_deployment() -> None:
    first = context("Qwen/Qwen3-32B", tp=4, nodes=2)
    second = first.model_copy(update={"replica": first.replica.model_copy(update={"replica": 1})})
    ports = {flag_value(specs_of(c)[0].argv, "--master-port") for c in (first, second)}
    assert len(ports) == 2


# --- secrets --------------------------------------------------------------------------------------------


def test_api_key_and_hf_token_only_through_env_references() -> None:
    (spec,) = specs_of(context(api_key_secret="prod/api-key", hf_token_secret="prod/hf"))
    assert spec.secret_env == {"VLLM_API_KEY": "prod/api-key", "HF_TOKEN": "prod/hf"}
    assert "--api-key" not in spec.argv and not any("prod/" in a for a in spec.argv)
    assert not any("prod/" in value for value in spec.to_launch_body().env.values())


def test_sglang_api_key_is_appended_in_process_not_in_argv() -> None:
    (spec,) = specs_of(context(engine="sglang", api_key_secret="prod/api-key"))
    assert spec.argv_from_env == {"--api-key": "SGLANG_API_KEY"}
    assert spec.secret_env["SGLANG_API_KEY"] == "prod/api-key"
    body = spec.to_launch_body()
    assert body.argv[1] == "-c" and "--api-key" not in body.argv
    assert body.env["GPUSTACK_ARGV_FROM_ENV"] == "--api-key=SGLANG_API_KEY"


def test_context_needs_an_accelerator_for_every_placed_node() -> None:
    ctx = context("Qwen/Qwen3-32B", tp=4, nodes=2)
    with pytest.raises(ValueError, match="accelerators: no entry for node.*gpu-1"):
        EngineContext(**{**dict(ctx), "accelerators": {"gpu-0": ctx.accelerators["gpu-0"]}})


def test_secret_flags_are_rejected_from_extra_args() -> None:
    with pytest.raises(ValueError, match="api_key_secret"):
        EngineOptions(extra_args=["--api-key", "sk-123"])
    with pytest.raises(ValueError, match="secret"):
        EngineOptions(extra_env={"HF_TOKEN": "hf_abc"})


# --- modes, presets and tuning ----------------------------------------------------------------------------


def test_modes_change_real_knobs_with_reasons() -> None:
    latency, balanced, throughput = (specs_of(context("Qwen/Qwen3-32B", mode=m))[0] for m in MODES)
    assert flag_value(latency.argv, "--performance-mode") == "interactivity"
    assert flag_value(latency.argv, "--max-num-seqs") == "32" and "--max-num-seqs" not in throughput.argv
    assert "--performance-mode" not in balanced.argv
    assert flag_value(throughput.argv, "--performance-mode") == "throughput"
    assert flag_value(throughput.argv, "--quantization") == "fp8"  # online FP8 on an FP8 GPU
    assert any("online FP8" in reason for reason in throughput.reasons)
    assert "--quantization" not in balanced.argv


MODES = ("latency", "balanced", "throughput")


def test_throughput_on_a_gpu_without_fp8_keeps_bf16() -> None:
    (spec,) = specs_of(context("Qwen/Qwen3-32B", gpu_key="A100-80GB-SXM", mode="throughput"))
    assert "--quantization" not in spec.argv


def test_block_fp8_moe_at_tp4_needs_expert_parallel_even_when_balanced() -> None:
    (spec,) = specs_of(context("zai-org/GLM-4.5-Air", tp=4, quantization="fp8"))
    assert "--enable-expert-parallel" in spec.argv
    assert any("block-FP8" in reason for reason in spec.reasons)


def test_measured_preset_applies_with_its_source_and_gain() -> None:
    (spec,) = specs_of(context("openai/gpt-oss-120b", tp=2, mode="throughput"))
    assert "--async-scheduling" in spec.argv
    preset_reason = next(r for r in spec.reasons if r.startswith("preset gpt-oss-120b-h100-throughput"))
    assert "+31.6%" in preset_reason and "performance-lab/gpt-oss-120b/h100.md" in preset_reason


def test_sglang_preset_qwen3_8b_latency_is_eagle3_with_its_shape() -> None:
    (spec,) = specs_of(context(engine="sglang", mode="latency"))
    assert flag_value(spec.argv, "--speculative-algorithm") == "EAGLE3"
    assert flag_value(spec.argv, "--speculative-draft-model-path") == "Tengyunw/qwen3_8b_eagle3"
    assert [flag_value(spec.argv, f) for f in ("--speculative-num-steps", "--speculative-eagle-topk")] == ["4", "4"]
    assert flag_value(spec.argv, "--speculative-num-draft-tokens") == "16"


def test_presets_can_be_turned_off() -> None:
    (spec,) = specs_of(context(engine="sglang", mode="latency", use_presets=False))
    assert "--speculative-algorithm" not in spec.argv


def test_latency_turns_on_mtp_for_models_that_ship_mtp_layers() -> None:
    ctx = context("deepseek-ai/DeepSeek-R1", gpu_key="H200", tp=8, mode="latency")
    (vllm,) = specs_of(ctx)
    config = json.loads(flag_value(vllm.argv, "--speculative-config"))
    assert config == {"method": "mtp", "num_speculative_tokens": 1}
    (sglang,) = specs_of(ctx.model_copy(update={"replica": ctx.replica.model_copy(update={"engine": "sglang"})}))
    assert flag_value(sglang.argv, "--speculative-algorithm") == "NEXTN"
    assert flag_value(sglang.argv, "--speculative-num-draft-tokens") == "4"  # SGLang's default (3, 1, 4)
    extra = get_engine("vllm").extra_memory(ctx)
    assert extra.device_bytes_per_gpu == -(-ctx.profile.mtp_bytes // 8)  # MTP weights over TP8


def test_sglang_attention_dp_spelling_follows_the_version() -> None:
    new = specs_of(context("deepseek-ai/DeepSeek-R1", engine="sglang", gpu_key="H200", tp=8, mode="throughput"))[0]
    old = specs_of(
        context("deepseek-ai/DeepSeek-R1", engine="sglang", gpu_key="H200", tp=8, mode="throughput", version="0.5.10")
    )[0]
    assert flag_value(new.argv, "--attn-dp-size") == "8" and "--enable-dp-attention" not in new.argv
    assert "--enable-dp-attention" in old.argv and flag_value(old.argv, "--dp-size") == "8"
    assert "--attn-dp-size" not in old.argv


# --- speculative decoding and KV offload ---------------------------------------------------------------


def test_vllm_eagle3_and_ngram_configs() -> None:
    eagle = SpeculativeOptions(method="eagle3", draft_model="org/draft", num_speculative_tokens=4)
    (spec,) = specs_of(context(speculative=eagle))
    assert json.loads(flag_value(spec.argv, "--speculative-config")) == {
        "method": "eagle3",
        "model": "org/draft",
        "num_speculative_tokens": 4,
    }
    ngram = SpeculativeOptions(method="ngram", prompt_lookup_max=5, prompt_lookup_min=2)
    (spec,) = specs_of(context(speculative=ngram))
    assert json.loads(flag_value(spec.argv, "--speculative-config"))["prompt_lookup_max"] == 5


def test_draft_model_memory_is_reported_for_placement() -> None:
    eagle = SpeculativeOptions(method="eagle3", draft_model="org/draft", draft_model_bytes=2 * GIB)
    extra = get_engine("vllm").extra_memory(context(tp=2, speculative=eagle))
    assert extra.device_bytes_per_gpu == GIB and "org/draft" in extra.reasons[0]


def test_mtp_on_a_model_without_mtp_layers_is_refused_with_alternatives() -> None:
    error = refusal(context(speculative=SpeculativeOptions(method="mtp")))
    assert error.option == "speculative.method" and "eagle3 with a draft_model" in error.alternatives


def test_speculative_with_pipeline_parallel_is_refused() -> None:
    error = refusal(context("Qwen/Qwen3-32B", tp=4, nodes=2, speculative=SpeculativeOptions(method="ngram")))
    assert error.option == "speculative" and "pipeline" in error.reason


def test_lmcache_offload_flags_env_and_host_memory() -> None:
    offload = KvOffloadOptions(backend="lmcache", host_bytes=40 * 10**9)
    ctx = context(kv_offload=offload)
    (spec,) = specs_of(ctx)
    assert json.loads(flag_value(spec.argv, "--kv-transfer-config")) == {
        "kv_connector": "LMCacheConnectorV1",
        "kv_role": "kv_both",
    }
    assert spec.env["LMCACHE_MAX_LOCAL_CPU_SIZE"] == "40" and spec.env["LMCACHE_LOCAL_CPU"] == "True"
    assert get_engine("vllm").extra_memory(ctx).host_bytes_per_node == 40 * 10**9


def test_sglang_hicache_by_size_and_vllm_refuses_it() -> None:
    ctx = context(engine="sglang", kv_offload=KvOffloadOptions(backend="hicache", host_bytes=64 * 10**9))
    (spec,) = specs_of(ctx)
    assert "--enable-hierarchical-cache" in spec.argv and flag_value(spec.argv, "--hicache-size") == "64"
    error = refusal(context(kv_offload=KvOffloadOptions(backend="hicache")))
    assert error.option == "kv_offload.backend" and "lmcache" in error.alternatives


# --- bad options --------------------------------------------------------------------------------------------


def test_fp8_on_a_gpu_without_fp8_is_refused_naming_option_and_alternatives() -> None:
    error = refusal(context(gpu_key="A100-80GB-SXM", quantization="fp8"))
    assert error.option == "quantization" and "A100" in error.reason
    assert any("H100" in alternative for alternative in error.alternatives)


def test_a_misspelt_extra_flag_is_refused_with_the_closest_spelling() -> None:
    error = refusal(context(extra_args=["--max-num-seq", "64"]))
    assert error.option == "argv" and "--max-num-seqs" in error.reason


def test_extra_args_replace_the_generated_flag() -> None:
    (spec,) = specs_of(context(extra_args=["--max-model-len", "8192", "--max-num-seqs", "64"]))
    assert spec.argv.count("--max-model-len") == 1 and flag_value(spec.argv, "--max-model-len") == "8192"
    assert flag_value(spec.argv, "--max-num-seqs") == "64"


def test_unknown_version_is_refused_listing_the_pinned_ones() -> None:
    error = refusal(context(version="0.1.0"))
    assert error.option == "version" and "0.33.0" in error.reason and "0.19.0" in error.reason


def test_older_vllm_version_renders_with_its_own_table() -> None:
    (spec,) = specs_of(context(version="0.19.0"))
    assert spec.engine_version == "0.19.0" and spec.image == "vllm/vllm-openai:v0.19.0"


def test_check_reports_every_problem_not_just_the_first() -> None:
    ctx = context(gpu_key="A100-80GB-SXM", quantization="fp8", kv_offload=KvOffloadOptions(backend="hicache"))
    options = {problem.option for problem in get_engine("vllm").check(ctx)}
    assert {"quantization", "kv_offload.backend"} <= options
