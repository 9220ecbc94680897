"""``engine: auto``: pick the engine by model file type, accelerator vendor, measured presets, architecture and
mode, and say why.

Order (first match wins):
1. a GGUF file -> llama.cpp (the only engine here that reads GGUF);
2. no accelerator (CPU-only node) -> llama.cpp, which needs a GGUF file;
3. Ascend NPUs -> MindIE (GPUStack's lab: +284% on Qwen3-30B-A3B and +99% on Qwen3-8B over vLLM-Ascend);
4. a measured preset for this model, GPU and mode -> the preset's engine, with the gain it claims;
5. AMD GPUs -> vLLM (its ROCm build is the maintained one);
6. mode throughput on an MLA mixture of experts (DeepSeek-V3/R1) with several GPUs -> SGLang, whose DP
   attention stops every TP rank from holding the same latent KV (DeepSeek-R1 8xH200: +30.3%);
7. otherwise vLLM, the engine with the widest architecture coverage.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.engines.base import EngineRefusal, NodeAccelerator
from gpustack_pulumi.engines.options import EngineOptions
from gpustack_pulumi.engines.presets import find_preset
from gpustack_pulumi.placement.models import Deployment

# Engines a measured preset may pick only when the deployment's options allow them.
_NO_API_KEY_ENGINES = frozenset({"tensorrt-llm", "mindie"})


class EngineChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: str
    reason: str
    preset: str | None = None


def is_gguf(profile: ModelProfile, model: str) -> bool:
    return profile.source == "gguf" or model.lower().endswith(".gguf")


def select_engine(
    deployment: Deployment,
    profile: ModelProfile,
    accelerator: NodeAccelerator | None,
    options: EngineOptions | None = None,
    *,
    gpu_count: int = 1,
) -> EngineChoice:
    """The engine for ``deployment`` on ``accelerator`` (None or vendor 'cpu': a CPU-only node)."""
    options = options or EngineOptions()
    model = options.model_path or deployment.model
    vendor = accelerator.vendor if accelerator else "cpu"
    if is_gguf(profile, model):
        where = "CPU" if vendor == "cpu" else accelerator.product if accelerator else "CPU"
        return EngineChoice(engine="llama.cpp", reason=f"GGUF model: llama.cpp is the engine that reads GGUF ({where})")
    if vendor == "cpu":
        raise EngineRefusal(
            "auto",
            "placement",
            f"{model} is not a GGUF file and the node has no accelerator; only llama.cpp runs on CPU here",
            ["a GGUF file of the model with engine llama.cpp", "a node with a GPU"],
        )
    assert accelerator is not None
    if vendor == "ascend":
        return EngineChoice(
            engine="mindie",
            reason=f"Ascend NPU ({accelerator.product}): MindIE, which GPUStack measured at +284% (Qwen3-30B-A3B) "
            "and +99% (Qwen3-8B) over vLLM-Ascend",
        )
    if options.use_presets:
        preset = find_preset(profile.model_id, accelerator.key, deployment.mode)
        if preset is not None and not (options.api_key_secret and preset.engine in _NO_API_KEY_ENGINES):
            return EngineChoice(
                engine=preset.engine,
                reason=f"measured {preset.describe()} for {preset.model} on {accelerator.key} in mode {preset.mode}",
                preset=preset.id,
            )
    if vendor == "amd":
        return EngineChoice(engine="vllm", reason=f"AMD GPU ({accelerator.product}): vLLM's ROCm build")
    if deployment.mode == "throughput" and profile.is_moe and profile.uses_mla and gpu_count > 1:
        return EngineChoice(
            engine="sglang",
            reason=f"mode throughput, {profile.architecture} is an MLA mixture of experts on {gpu_count} GPUs: "
            "SGLang's DP attention stops every TP rank from holding the same latent KV cache "
            "(DeepSeek-R1 8xH200: +30.3%)",
        )
    return EngineChoice(
        engine="vllm",
        reason=f"{profile.architecture} on {accelerator.product}, mode {deployment.mode}: vLLM, the engine with the "
        "widest architecture coverage (no measured preset for this model and GPU)",
    )
