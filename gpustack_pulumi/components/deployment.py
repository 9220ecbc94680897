# No `from __future__ import annotations`: Pulumi reads these annotations at runtime (see components/__init__.py).
"""ModelDeployment: a model served by N replicas placed on a GpuCluster."""

from typing import Any, NotRequired, TypedDict

import pulumi
from pydantic import ValidationError

from gpustack_pulumi.cluster_plan import replica_owner
from gpustack_pulumi.components.cluster import ComponentArgsError, GpuCluster
from gpustack_pulumi.components.resources import ModelReplica
from gpustack_pulumi.engines.options import EngineOptions
from gpustack_pulumi.placement.models import Deployment

DEFAULT_READY_TIMEOUT_S = 900
DEFAULT_DELETE_TIMEOUT_S = 120


class ModelDeploymentArgs(TypedDict):
    cluster: GpuCluster
    """The cluster whose agents run the replicas."""
    model: str
    """Catalog id (Qwen/Qwen3-8B), Hugging Face id, config.json, model directory or .gguf file."""
    replicas: NotRequired[int]
    """Number of replicas (default 1)."""
    engine: NotRequired[str]
    """auto (default), vllm, sglang, tensorrt-llm, mindie, llama.cpp or custom."""
    mode: NotRequired[str]
    """latency, throughput or balanced (default)."""
    max_model_len: NotRequired[int]
    """Context length to serve (default: the model's maximum)."""
    concurrency: NotRequired[int]
    """Full-length sequences that must fit at once (default 1)."""
    quantization: NotRequired[str]
    kv_cache_dtype: NotRequired[str]
    node_selector: NotRequired[dict[str, str]]
    gpu_selector: NotRequired[list[str]]
    priority: NotRequired[int]
    engine_options: NotRequired[dict[str, Any]]
    """Engine options: speculative decoding, KV offload, extra args, image, version... (EngineOptions)."""
    secrets: NotRequired[dict[str, pulumi.Input[str]]]
    """Values of the secret references the engine options name (API key, HF token); kept secret."""
    ready_timeout_s: NotRequired[int]
    """How long create waits for an engine to become ready (default 900 s)."""
    delete_timeout_s: NotRequired[int]
    """How long delete waits for a node's agent that does not answer before failing (default 120 s); it never
    reports an engine stopped while something still answers on its port."""


class ModelDeployment(pulumi.ComponentResource):
    """Serve a model: each replica is placed on the cluster's GPUs at preview and started through the agents."""

    endpoints: pulumi.Output[list[str]]
    """OpenAI-compatible base URL of each replica."""
    placements: pulumi.Output[list[dict]]
    """Each replica's node, devices, TP/PP, memory fraction and the reason."""

    def __init__(self, name: str, args: ModelDeploymentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        deployment, _options = _validated(name, args)
        super().__init__("gpustack:index:ModelDeployment", name, {}, opts)
        cluster = args["cluster"]
        cluster.declare(deployment)
        owner_prefix = f"{pulumi.get_project()}/{pulumi.get_stack()}/"
        secrets = {ref: pulumi.Output.secret(value) for ref, value in (args.get("secrets") or {}).items()}
        replicas = []
        for index in range(deployment.replicas):
            replicas.append(
                ModelReplica(
                    f"{name}-r{index}",
                    {
                        "deployment": name,
                        "slice": cluster.replica_slice(name, index),
                        "replica": index,
                        "owner": replica_owner(owner_prefix, name, index),
                        "agents": cluster.endpoints,
                        "fingerprints": cluster.fingerprints,
                        "token": cluster.agent_token,
                        "secrets": pulumi.Output.secret(secrets) if secrets else {},
                        "ready_timeout_s": args.get("ready_timeout_s", DEFAULT_READY_TIMEOUT_S),
                        "delete_timeout_s": args.get("delete_timeout_s", DEFAULT_DELETE_TIMEOUT_S),
                    },
                    pulumi.ResourceOptions(parent=self, depends_on=[cluster]),
                )
            )
        self.endpoints = pulumi.Output.all(*[r.endpoint for r in replicas])
        self.placements = pulumi.Output.all(*[r.placement for r in replicas])
        self.register_outputs({"endpoints": self.endpoints, "placements": self.placements})


def _validated(name: str, args: ModelDeploymentArgs) -> tuple[Deployment, EngineOptions]:
    """Check every argument before anything is registered; errors name the argument."""
    if "cluster" not in args or not isinstance(args["cluster"], GpuCluster):
        raise ComponentArgsError(f"ModelDeployment '{name}': cluster must be a GpuCluster")
    for key in ("ready_timeout_s", "delete_timeout_s"):
        value = args.get(key)
        if value is not None and (not isinstance(value, int | float) or not 0 < value <= 86400):
            raise ComponentArgsError(f"ModelDeployment '{name}': {key} must be a number of seconds in (0, 86400]")
    skip = ("cluster", "engine_options", "secrets", "ready_timeout_s", "delete_timeout_s")
    fields = {k: v for k, v in args.items() if k not in skip}
    try:
        options = EngineOptions.model_validate(args.get("engine_options") or {})
    except ValidationError as error:
        raise ComponentArgsError(f"ModelDeployment '{name}': engine_options: {_pydantic_message(error)}") from None
    try:
        engine_options = options.model_dump(mode="json", exclude_defaults=True)
        deployment = Deployment.model_validate({"name": name, **fields, "engine_options": engine_options})
    except ValidationError as error:
        raise ComponentArgsError(f"ModelDeployment '{name}': {_pydantic_message(error)}") from None
    return deployment, options


def _pydantic_message(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in item['loc']) or 'value'}: {item['msg']}" for item in error.errors())
