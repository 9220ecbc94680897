"""Pieces every engine shares: version lookup, secrets through env, images, port, draft/offload memory."""

from __future__ import annotations

import math

from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.engines.base import HF_TOKEN_ENV, EngineContext, EngineRefusal, ExtraMemory, LaunchSpec
from gpustack_pulumi.engines.options import KvOffloadOptions
from gpustack_pulumi.engines.tuning import Tuning
from gpustack_pulumi.engines.versions import EngineVersion, engine_version

PORT_PLACEHOLDER = "{port}"  # replaced by the agent (gpustack_runtime.supervisor.launch.PORT_PLACEHOLDER)

# Host memory for KV offload when the user gives a ratio or nothing, as a multiple of the replica's GPU claim
# on the node. LMCache: GPUStack's ram_ratio default 1.2 × the VRAM claim (gpustack/policies/utils.py
# get_model_ram_claim). HiCache: SGLang's --hicache-ratio default 2.0 × the device KV pool.
DEFAULT_HOST_RATIO = {"lmcache": 1.2, "native": 1.2, "hicache": 2.0}


def resolve_version(engine: str, context: EngineContext) -> tuple[EngineVersion | None, list[EngineRefusal]]:
    try:
        return engine_version(engine, context.options.version), []
    except ValueError as error:
        return None, [EngineRefusal(engine, "version", str(error))]


def port_argument(context: EngineContext) -> str:
    return str(context.options.port) if context.options.port else PORT_PLACEHOLDER


def secret_env(context: EngineContext, api_key_env: str | None) -> dict[str, str]:
    """Environment variable -> secret reference. The API key and HF token never appear in argv."""
    secrets: dict[str, str] = {}
    if context.options.api_key_secret and api_key_env:
        secrets[api_key_env] = context.options.api_key_secret
    if context.options.hf_token_secret:
        secrets[HF_TOKEN_ENV] = context.options.hf_token_secret
    return secrets


def image_for(version: EngineVersion, context: EngineContext, reasons: list[str]) -> str | None:
    """The options' image, else the version's official image for the replica's vendor (None: a process)."""
    if context.options.image:
        return context.options.image
    if not context.options.container:
        return None
    vendor = context.head_accelerator.vendor
    if vendor == "cpu":
        return version.cpu_image
    if vendor == "nvidia" or (vendor == "ascend" and version.engine == "mindie"):
        return version.image
    if version.image:
        reasons.append(
            f"image: no official {version.engine} image for {vendor} is pinned; running as a process "
            "(set options.image to run a container)"
        )
    return None


def one_layer_bytes(profile: ModelProfile) -> float:
    """Bytes of one decoder layer as one token sees it (routed experts: the active share)."""
    total = 0.0
    for component in profile.components:
        if not component.layers:
            continue
        share = 1.0
        if component.name == "experts" and component.parameters:
            share = component.active_parameters / component.parameters
        total += component.bytes * share / component.layers
    return total


def speculative_memory(context: EngineContext, tuning: Tuning) -> tuple[int, str | None]:
    """Per-GPU bytes the speculative method adds, with how they were obtained."""
    spec = tuning.speculative
    if spec is None or spec.method == "ngram":
        return 0, None
    profile = context.profile
    tp = context.replica.tensor_parallel_size
    if spec.method == "mtp":
        if not profile.mtp_bytes:
            return 0, None
        return math.ceil(profile.mtp_bytes / tp), f"MTP layers {profile.mtp_bytes / 2**30:.2f} GiB over TP{tp}"
    if spec.draft_model_bytes is not None:
        return math.ceil(spec.draft_model_bytes / tp), f"draft {spec.draft_model} {spec.draft_model_bytes} B"
    head = profile.component("lm_head") or profile.component("embedding")
    estimate = one_layer_bytes(profile) + (head.bytes if head else 0)
    return (
        math.ceil(estimate / tp),
        f"draft {spec.draft_model} estimated as one decoder layer plus an LM head of the target "
        f"({estimate / 2**30:.2f} GiB; set speculative.draft_model_bytes for the exact size)",
    )


def offload_host_bytes(offload: KvOffloadOptions, context: EngineContext, node_index: int = 0) -> int:
    if offload.host_bytes:
        return offload.host_bytes
    placement = context.replica.placements[node_index]
    ratio = offload.host_ratio or DEFAULT_HOST_RATIO[offload.backend]
    return math.ceil(ratio * placement.memory_bytes_per_device * max(1, len(placement.device_indices)))


def extra_memory(context: EngineContext, tuning: Tuning) -> ExtraMemory:
    device_bytes, device_reason = speculative_memory(context, tuning)
    reasons = [f"+{device_bytes} B per GPU for speculative decoding: {device_reason}"] if device_bytes else []
    host = 0
    if context.options.kv_offload is not None:
        host = offload_host_bytes(context.options.kv_offload, context)
        reasons.append(f"+{host} B host memory per node for {context.options.kv_offload.backend} KV offload")
    return ExtraMemory(device_bytes_per_gpu=device_bytes, host_bytes_per_node=host, reasons=reasons)


def flag_refusals(engine: str, version: EngineVersion, spec: LaunchSpec) -> list[EngineRefusal]:
    """Every flag of the spec's argv (after the program) that the pinned version would reject."""
    table = version.flag_table
    if table is None:
        return []
    problems = table.problems(spec.argv[spec.command_length :])
    return [EngineRefusal(engine, "argv", problem, ["check options.extra_args"]) for problem in problems]


def no_gguf(engine: str, context: EngineContext) -> list[EngineRefusal]:
    if context.profile.source == "gguf" or context.model_path.lower().endswith(".gguf"):
        return [EngineRefusal(engine, "model", "GGUF files are served by llama.cpp", ["engine: llama.cpp"])]
    return []


def node_spec(
    engine: str,
    version: EngineVersion,
    context: EngineContext,
    rank: int,
    argv: list[str],
    *,
    command_length: int,
    env: dict[str, str],
    image: str | None,
    api_key_env: str,
    health_path: str,
    metrics_path: str | None,
    reasons: list[str],
    argv_from_env: dict[str, str] | None = None,
) -> LaunchSpec:
    """The LaunchSpec of node ``rank`` of a replica: rank 0 is the head (serves the API, holds the key, answers
    health checks); the others are workers without an HTTP server."""
    placement = context.replica.placements[rank]
    head = rank == 0
    return LaunchSpec(
        engine=engine,
        engine_version=version.version,
        deployment=context.deployment.name,
        replica=context.replica.replica,
        node=placement.node,
        node_role="head" if head else "worker",
        node_rank=rank,
        argv=argv,
        command_length=command_length,
        env=env,
        secret_env=secret_env(context, api_key_env if head else None),
        argv_from_env=argv_from_env or {},
        image=image,
        port=context.options.port,
        health_path=health_path if head else None,
        metrics_path=metrics_path if head else None,
        visible_devices=placement.device_indices,
        memory_bytes_per_device=placement.memory_bytes_per_device,
        reasons=reasons,
    )
