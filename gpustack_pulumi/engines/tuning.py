"""Engine-neutral tuning: what the mode, the model, the GPU and a measured preset decide, with reasons.

Engines call :func:`tune` once and render its decisions with their own flag spellings, so a rule (for example
"MoE under block-FP8 at this TP needs expert parallel") is written once for every engine.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from gpustack_pulumi.engines.base import EngineContext, EngineRefusal
from gpustack_pulumi.engines.options import SECRET_FLAGS, SpeculativeOptions
from gpustack_pulumi.engines.presets import Preset, find_preset

# Checkpoint formats that are already quantized: online FP8 on top of them is neither possible nor useful.
PREQUANTIZED_FORMATS = ("fp8", "mxfp4", "nvfp4", "awq", "gptq", "int4", "int8", "w8a8", "gguf")

# GPUStack performance lab, "The impact of quantization on vLLM inference performance" (H100): dynamic
# (online) FP8 +14.8% tokens/s, static FP8 checkpoints +26.7%.
ONLINE_FP8_SOURCE = (
    "https://github.com/gpustack/gpustack/blob/main/docs/performance-lab/references/"
    "the-impact-of-quantization-on-vllm-inference-performance.md"
)

# Multi-node rendezvous ports (vLLM --master-port, SGLang --dist-init-addr) are derived from the deployment
# and replica so two replicas on one head never collide: DISTRIBUTED_PORT_BASE + crc32 % DISTRIBUTED_PORT_SPAN.
DISTRIBUTED_PORT_BASE = 29500
DISTRIBUTED_PORT_SPAN = 1000


@dataclass
class Tuning:
    """Decisions for one replica, each with its reason in ``reasons``."""

    preset: Preset | None = None
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    speculative: SpeculativeOptions | None = None
    expert_parallel: bool = False
    attention_dp: bool = False
    async_scheduling: bool = False
    prefix_caching: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    reasons: list[str] = field(default_factory=list)


def distributed_port(context: EngineContext) -> int:
    if context.options.distributed_port:
        return context.options.distributed_port
    key = f"{context.deployment.name}/{context.replica.replica}".encode()
    return DISTRIBUTED_PORT_BASE + zlib.crc32(key) % DISTRIBUTED_PORT_SPAN


def fp8_refusals(engine: str, context: EngineContext) -> list[EngineRefusal]:
    """FP8 weights or KV cache on an accelerator without hardware FP8."""
    from gpustack_pulumi.catalog.capabilities import supports_fp8

    accelerator = context.head_accelerator
    if accelerator.vendor in ("cpu", "ascend"):
        return []
    # The one FP8 rule (catalog.capabilities), as placement and estimate apply it.
    capability = accelerator.spec.compute_capability if accelerator.spec else None
    if supports_fp8(compute_capability=capability, product=accelerator.product, memory_bytes=accelerator.memory_bytes):
        return []
    fp8_gpus = "H100, H200, L40S, L4, B200, MI300X"
    refusals = []
    if (context.deployment.quantization or "").lower().startswith("fp8"):
        refusals.append(
            EngineRefusal(
                engine,
                "quantization",
                f"fp8 needs hardware FP8, which {accelerator.product} lacks",
                ["quantization: null (serve the bf16 checkpoint)", "an AWQ/GPTQ int4 checkpoint", fp8_gpus],
            )
        )
    if context.deployment.kv_cache_dtype.lower().startswith("fp8"):
        refusals.append(
            EngineRefusal(
                engine,
                "kv_cache_dtype",
                f"{context.deployment.kv_cache_dtype} needs hardware FP8, which {accelerator.product} lacks",
                ["kv_cache_dtype: auto", fp8_gpus],
            )
        )
    return refusals


def tune(engine: str, context: EngineContext, *, online_fp8: bool = True) -> Tuning:
    """The rule- and preset-based decisions for ``engine`` (``online_fp8``: the engine can quantize a bf16
    checkpoint to FP8 at load time)."""
    deployment, profile, options = context.deployment, context.profile, context.options
    accelerator = context.head_accelerator
    tp = context.replica.tensor_parallel_size
    tuning = Tuning(kv_cache_dtype=deployment.kv_cache_dtype)

    if options.use_presets:
        tuning.preset = find_preset(profile.model_id, accelerator.key, deployment.mode, engine)
    preset = tuning.preset
    if preset is not None:
        shape = "" if preset.measured_tp == tp else f"; measured at TP{preset.measured_tp}, placed at TP{tp}"
        tuning.reasons.append(f"{preset.describe()}{shape}")

    # Quantization: the user's choice wins; otherwise a preset's or mode throughput's online FP8.
    tuning.quantization = deployment.quantization
    already_quantized = profile.weight_format.lower().startswith(PREQUANTIZED_FORMATS)
    wants_fp8 = preset is not None and preset.knobs.quantization == "fp8"
    if tuning.quantization is None and not already_quantized and options.auto_fp8 and online_fp8 and accelerator.fp8:
        if wants_fp8:
            tuning.quantization = "fp8"
            checkpoint = f" (measured with {preset.fp8_checkpoint}; set model_path to it for static FP8)"
            tuning.reasons.append(f"quantization fp8: from the preset{checkpoint if preset.fp8_checkpoint else ''}")
        elif deployment.mode == "throughput":
            tuning.quantization = "fp8"
            tuning.reasons.append(
                f"quantization fp8: mode throughput on {accelerator.product} (hardware FP8) serves the "
                f"{profile.weight_format} checkpoint with online FP8, +14.8% tokens/s on H100 ({ONLINE_FP8_SOURCE})"
            )
    if preset is not None and preset.knobs.kv_cache_dtype and tuning.kv_cache_dtype == "auto" and accelerator.fp8:
        tuning.kv_cache_dtype = preset.knobs.kv_cache_dtype
        tuning.reasons.append(f"kv_cache_dtype {tuning.kv_cache_dtype}: from the preset")

    _tune_speculative(tuning, context)
    _tune_parallel(tuning, context)

    tuning.async_scheduling = bool(preset and preset.knobs.async_scheduling)
    if tuning.async_scheduling:
        tuning.reasons.append("async scheduling: from the preset")
    tuning.prefix_caching = bool(preset and preset.knobs.prefix_caching)
    tuning.tool_call_parser = options.tool_call_parser or (preset.knobs.tool_call_parser if preset else None)
    tuning.reasoning_parser = options.reasoning_parser or (preset.knobs.reasoning_parser if preset else None)
    return tuning


def _tune_speculative(tuning: Tuning, context: EngineContext) -> None:
    options, profile, mode = context.options, context.profile, context.deployment.mode
    preset = tuning.preset
    if isinstance(options.speculative, SpeculativeOptions):
        tuning.speculative = options.speculative
        tuning.reasons.append(f"speculative decoding {options.speculative.method}: set in the options")
    elif options.speculative == "off":
        tuning.reasons.append("speculative decoding off: set in the options")
    elif context.replica.pipeline_parallel_size > 1:
        if mode == "latency" or (preset is not None and preset.knobs.speculative is not None):
            tuning.reasons.append("speculative decoding off: the replica uses pipeline parallelism")
    elif preset is not None and preset.knobs.speculative is not None:
        tuning.speculative = preset.knobs.speculative
        tuning.reasons.append(f"speculative decoding {tuning.speculative.method}: from the preset")
    elif mode == "latency" and profile.mtp_parameters > 0:
        tuning.speculative = SpeculativeOptions(method="mtp")
        tuning.reasons.append(
            f"speculative decoding mtp: mode latency and the checkpoint ships MTP layers "
            f"({profile.mtp_parameters / 1e9:.1f}B parameters), so no draft model is needed"
        )
    elif mode == "latency":
        tuning.reasons.append(
            "speculative decoding off: mode latency, but the model has no MTP layers and no measured preset "
            "names a draft model; set speculative {method: eagle3, draft_model: ...} or {method: ngram} to opt in"
        )


def _tune_parallel(tuning: Tuning, context: EngineContext) -> None:
    profile, mode = context.profile, context.deployment.mode
    tp = context.replica.tensor_parallel_size
    preset = tuning.preset
    if profile.is_moe and tp > 1:
        block_fp8 = (tuning.quantization or profile.weight_format).lower().startswith("fp8")
        problems = profile.constraints.tp_problems(tp, block_fp8_moe=block_fp8)
        fp8_problem = next((p for p in problems if "block-FP8" in p), None)
        if fp8_problem:
            tuning.expert_parallel = True
            tuning.reasons.append(f"expert parallel: required, {fp8_problem}")
        elif preset is not None and preset.knobs.expert_parallel:
            tuning.expert_parallel = True
            tuning.reasons.append(f"expert parallel EP{tp}: from the preset")
        elif mode == "throughput":
            tuning.expert_parallel = True
            tuning.reasons.append(
                f"expert parallel EP{tp}: mode throughput, MoE with {profile.num_experts} experts over TP{tp} "
                "keeps whole experts per GPU instead of slicing every expert (GLM-4.5-Air H100: TP4+EP4 +3.5%)"
            )
    if profile.is_moe and profile.uses_mla and tp > 1:
        if preset is not None and preset.knobs.attention_dp:
            tuning.attention_dp = True
            tuning.reasons.append(f"attention data parallel DP{tp}: from the preset")
        elif mode == "throughput":
            tuning.attention_dp = True
            tuning.reasons.append(
                f"attention data parallel DP{tp}: mode throughput, MLA keeps one latent KV head that every TP "
                "rank would replicate; DP attention shards requests instead (DeepSeek-R1 8xH200: +30.3%)"
            )


def merge_extra_args(engine: str, generated: list[str], extra: list[str]) -> list[str]:
    """``generated`` followed by the user's ``extra`` args, where a user flag replaces the generated flag of
    the same name (and its value). Unknown flags are caught by the caller's flag-table check."""
    for argument in extra:
        if argument.split("=", 1)[0] in SECRET_FLAGS:
            raise EngineRefusal(engine, "extra_args", f"{argument.split('=', 1)[0]} would put a secret in argv")
    overridden = {argument.split("=", 1)[0] for argument in extra if argument.startswith("-")}
    result: list[str] = []
    index = 0
    while index < len(generated):
        token = generated[index]
        index += 1
        if token.startswith("-") and token.split("=", 1)[0] in overridden:
            if "=" not in token and index < len(generated) and _is_value(generated[index]):
                index += 1  # the generated flag's value goes with it
            continue
        result.append(token)
    return [*result, *extra]


def _is_value(token: str) -> bool:
    return not token.startswith("-") or token[1:2].isdigit()
