"""Placement inputs and outputs: deployments in, a Plan out. Pydantic v2 models at the boundary.

Everything here is plain data. A Plan is sorted (replicas by deployment then replica index, devices
ascending) and holds no time or dict-order dependent fields, so the same inputs give byte-identical JSON
(``Plan.to_json()``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator

if TYPE_CHECKING:
    from gpustack_pulumi.engines.options import EngineOptions

Strategy = Literal["binpack", "spread"]
Mode = Literal["latency", "throughput", "balanced"]

# The built-in engines (the registry adds entry-point engines; a Deployment accepts any registered name).
# "auto": the engine registry's resolver decides per device class (engines.auto).
KNOWN_ENGINES = ("auto", "vllm", "sglang", "llama.cpp", "mindie", "tensorrt-llm", "custom")


class PlacementModel(BaseModel):
    """Base: immutable, unknown fields are errors (a typo in a deployments file never passes silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Deployment(PlacementModel):
    """One model to serve, as a user writes it in a deployments file."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Unique name.")
    model: str = Field(min_length=1, description="Catalog id ('Qwen/Qwen3-8B'), config.json, model dir or .gguf.")
    replicas: NonNegativeInt = 1
    engine: str = Field(
        default="auto", description=f"auto or a registered engine ({', '.join(KNOWN_ENGINES[1:])}, entry points)."
    )
    max_model_len: PositiveInt | None = Field(
        default=None, description="Context length the engine must serve; None: the model's own maximum."
    )
    concurrency: PositiveInt = Field(default=1, description="Full-length sequences that must fit at once.")
    mode: Mode = Field(
        default="balanced",
        description="latency: llama.cpp prefers a GPU over a CPU-only node; otherwise passed to the engine.",
    )
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    node_selector: dict[str, str] = Field(default_factory=dict, description="Labels a node must carry.")
    gpu_selector: list[str] = Field(
        default_factory=list, description="Allowed GPU products (driver name or catalog key) or device UUIDs."
    )
    priority: int = Field(default=0, description="Higher wins when not everything fits.")
    pack_replicas: bool = Field(
        default=False,
        description="False (default): replicas keep apart for availability — each on its own GPU and, where "
        "room allows, its own node. True: under binpack they may share GPUs and nodes (densest).",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Engine options (gpustack_pulumi.engines.EngineOptions): speculative decoding, KV offload, "
        "extra args... Placement counts the memory they add.",
    )

    @field_validator("engine_options")
    @classmethod
    def _typed_engine_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Validated once, here, so every reader (placement, launch specs, providers) sees the same options."""
        if not value:
            return value
        from pydantic import ValidationError

        from gpustack_pulumi.engines.options import EngineOptions

        try:
            EngineOptions.model_validate(value)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{where}: {first['msg']}") from None
        return value

    @property
    def options(self) -> EngineOptions:
        """The engine options, typed (``gpustack_pulumi.engines.EngineOptions``)."""
        from gpustack_pulumi.engines.options import EngineOptions

        return EngineOptions.model_validate(self.engine_options)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        from gpustack_pulumi.placement.engine_catalog import default_catalog

        names = default_catalog().names()
        if value != "auto" and value not in names:
            raise ValueError(f"unknown engine '{value}'; valid: auto, {', '.join(names)}")
        return value


class DeploymentList(PlacementModel):
    """The deployments file: a list (YAML or JSON), validated as a whole."""

    deployments: list[Deployment]

    @field_validator("deployments")
    @classmethod
    def _unique_names(cls, value: list[Deployment]) -> list[Deployment]:
        seen: set[str] = set()
        for deployment in value:
            if deployment.name in seen:
                raise ValueError(f"deployment name '{deployment.name}' appears twice; names must be unique")
            seen.add(deployment.name)
        return value


class NodePlacement(PlacementModel):
    """The part of a replica on one node. ``device_indices`` empty: CPU-only (host memory)."""

    node: str
    device_indices: list[NonNegativeInt]
    memory_bytes_per_device: NonNegativeInt = Field(
        description="Bytes claimed on each listed device (host bytes when CPU-only)."
    )


class PlacedReplica(PlacementModel):
    deployment: str
    replica: NonNegativeInt
    engine: str
    placements: list[NodePlacement] = Field(description="One entry per node; several = pipeline stages.")
    tensor_parallel_size: PositiveInt
    pipeline_parallel_size: PositiveInt
    memory_fraction: float | None = Field(
        description="vLLM gpu_memory_utilization / SGLang mem_fraction_static; None for other engines."
    )
    reason: str


class UnplacedReplica(PlacementModel):
    deployment: str
    replica: NonNegativeInt
    constraint: str = Field(description="The constraint that failed: InsufficientMemory, NodeSelector, ...")
    reason: str = Field(description="What failed, with the numbers: needed vs best available, where.")


class PlanSummary(PlacementModel):
    placed: NonNegativeInt
    unplaced: NonNegativeInt
    gpus_used: NonNegativeInt = Field(description="Devices holding at least one replica of this plan.")
    nodes_used: NonNegativeInt
    kept: NonNegativeInt = Field(description="Replicas left where the previous plan put them.")
    moved: NonNegativeInt = Field(description="Replicas of the previous plan placed elsewhere (reason given).")
    method: Literal["exact", "heuristic"] = Field(description="Who decided the new placements.")
    proven_optimal: bool | None = Field(
        default=None, description="exact: whether the solver proved its placement optimal; None for heuristic."
    )


class Plan(PlacementModel):
    strategy: Strategy
    replicas: list[PlacedReplica]
    unplaced: list[UnplacedReplica]
    summary: PlanSummary

    def to_json(self) -> str:
        """Canonical JSON: the byte-identical form for identical inputs."""
        return self.model_dump_json(indent=2) + "\n"
