"""The engine interface: what an engine takes (a placed replica, its model profile, the deployment and the
engine options) and what it returns (one :class:`LaunchSpec` per node of the replica), or why it refuses.

Every engine module implements :class:`Engine`; :mod:`gpustack_pulumi.engines.registry` maps names to them.
Everything here is pure data and pure functions: no network, no Pulumi, deterministic.
"""

from __future__ import annotations

import json
from typing import Literal, Protocol, runtime_checkable

from gpustack_runtime.wire import InstanceBody, LaunchBody
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.catalog import GpuSpec
from gpustack_pulumi.engines.options import EngineOptions
from gpustack_pulumi.placement.models import Deployment, PlacedReplica

NodeRole = Literal["head", "worker"]
AcceleratorVendor = Literal["nvidia", "amd", "ascend", "cpu"]

# Environment variables through which secrets reach an engine. Values are never part of a LaunchSpec: the
# provider resolves the secret reference and sets the variable when it starts the instance.
HF_TOKEN_ENV = "HF_TOKEN"


class EngineModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeAccelerator(EngineModel):
    """What the devices a replica uses on one node are (all devices of a replica on a node are alike)."""

    vendor: AcceleratorVendor
    product: str = Field(description="Product name as the driver reports it; 'cpu' for CPU-only nodes.")
    memory_bytes: NonNegativeInt = Field(description="Memory of one device (host RAM for CPU-only nodes).")
    spec: GpuSpec | None = Field(default=None, description="Catalog entry, when the product is a known card.")

    @property
    def fp8(self) -> bool:
        return bool(self.spec and self.spec.fp8)

    @property
    def key(self) -> str | None:
        return self.spec.key if self.spec else None

    @classmethod
    def from_gpu(cls, spec: GpuSpec) -> NodeAccelerator:
        return cls(vendor=spec.vendor, product=spec.names[0], memory_bytes=spec.memory_bytes, spec=spec)

    @classmethod
    def cpu(cls, memory_bytes: int = 0) -> NodeAccelerator:
        return cls(vendor="cpu", product="cpu", memory_bytes=memory_bytes)


class EngineContext(EngineModel):
    """Everything an engine may read. Passed explicitly; engines fetch nothing."""

    replica: PlacedReplica
    deployment: Deployment
    profile: ModelProfile
    options: EngineOptions = Field(default_factory=EngineOptions)
    accelerators: dict[str, NodeAccelerator] = Field(
        description="Per node of the replica: the devices it uses there (CPU-only nodes: vendor 'cpu')."
    )
    node_addresses: dict[str, str] = Field(
        default_factory=dict, description="Node name -> address other nodes reach it on (multi-node only)."
    )

    @model_validator(mode="after")
    def _accelerator_for_every_node(self) -> EngineContext:
        missing = [p.node for p in self.replica.placements if p.node not in self.accelerators]
        if missing:
            raise ValueError(
                f"accelerators: no entry for node(s) {', '.join(missing)} of replica "
                f"{self.replica.deployment}[{self.replica.replica}]; give one NodeAccelerator per placed node"
            )
        return self

    @property
    def head_node(self) -> str:
        return self.replica.placements[0].node

    @property
    def head_accelerator(self) -> NodeAccelerator:
        return self.accelerators[self.head_node]

    @property
    def is_multi_node(self) -> bool:
        return len(self.replica.placements) > 1

    @property
    def device_count(self) -> int:
        return sum(len(p.device_indices) for p in self.replica.placements)

    @property
    def max_model_len(self) -> int:
        return self.deployment.max_model_len or self.profile.max_model_len

    @property
    def model_path(self) -> str:
        return self.options.model_path or self.deployment.model

    @property
    def served_model_name(self) -> str:
        return self.options.served_model_name or self.deployment.name


class ConfigFile(EngineModel):
    """A file the engine reads (MindIE's config.json, TensorRT-LLM's extra LLM-API options). No secrets."""

    path: str = Field(pattern=r"^/", description="Absolute path inside the engine's filesystem.")
    content: str


class LaunchSpec(EngineModel):
    """How to run one node of one replica. The agent runs it without knowing which engine it is."""

    engine: str
    engine_version: str
    deployment: str
    replica: NonNegativeInt
    node: str
    node_role: NodeRole = Field(description="head: serves the API; worker: joins the head (multi-node).")
    node_rank: NonNegativeInt
    argv: list[str] = Field(min_length=1)
    command_length: NonNegativeInt = Field(
        default=1, description="Leading argv items that name the program (python3 -m x), not engine flags."
    )
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variable -> secret reference. The provider sets the value at launch; no "
        "secret value is ever in a LaunchSpec, an argv or a plan.",
    )
    argv_from_env: dict[str, str] = Field(
        default_factory=dict,
        description="Flag -> environment variable whose value the Python launcher appends in-process, for "
        "engines that read a secret only from a flag (SGLang --api-key): it never reaches an exec'd argv.",
    )
    config_files: list[ConfigFile] = Field(default_factory=list)
    image: str | None = Field(default=None, description="Container image; None runs a process on the node.")
    port: int = Field(default=0, ge=0, le=65535, description="0: the agent assigns one and fills '{port}'.")
    health_path: str | None = Field(description="Ready when GET answers 200; None: no HTTP server (worker).")
    metrics_path: str | None = Field(description="Prometheus metrics endpoint, None when the engine has none.")
    visible_devices: list[NonNegativeInt] = Field(description="Device indices on the node ([] = CPU only).")
    memory_bytes_per_device: NonNegativeInt = 0
    reasons: list[str] = Field(default_factory=list, description="Why each tuned knob has its value.")

    def to_launch_body(self) -> LaunchBody:
        """The agent's wire form. Config files and in-process flags become a small launcher around argv."""
        argv = list(self.argv)
        env = dict(self.env)
        if self.argv_from_env:
            argv = _python_flag_launcher(argv, self.argv_from_env, env)
        if self.config_files:
            argv = _file_writing_launcher(argv, self.config_files, env)
        return LaunchBody(argv=argv, env=env, port=self.port, health_path=self.health_path, image=self.image)

    def to_instance_body(self, owner: str) -> InstanceBody:
        return InstanceBody(
            owner=owner,
            launch=self.to_launch_body(),
            device_indices=self.visible_devices,
            memory_bytes_per_device=self.memory_bytes_per_device,
        )


# The launchers are tiny programs in the argv, so the agent stays engine-agnostic.
_FLAG_LAUNCHER = (
    "import os,runpy,sys;"
    "pairs=[p.split('=',1) for p in os.environ.pop('GPUSTACK_ARGV_FROM_ENV').split(',')];"
    "extra=[x for flag,name in pairs if os.environ.get(name) for x in (flag,os.environ[name])];"
    "module=sys.argv[1];sys.argv=[module,*sys.argv[2:],*extra];"
    "runpy.run_module(module,run_name='__main__',alter_sys=True)"
)


def _python_flag_launcher(argv: list[str], flags: dict[str, str], env: dict[str, str]) -> list[str]:
    """``python -m MODULE ARGS`` -> ``python -c LAUNCHER MODULE ARGS``: the launcher appends ``FLAG $VAR``
    inside the process, so the secret is in no exec'd argv (``ps``, /proc/*/cmdline)."""
    if len(argv) < 3 or argv[1] != "-m":
        raise ValueError(f"argv_from_env needs a 'python -m module' argv, got {argv[:3]}")
    env["GPUSTACK_ARGV_FROM_ENV"] = ",".join(f"{flag}={name}" for flag, name in sorted(flags.items()))
    return [argv[0], "-c", _FLAG_LAUNCHER, *argv[2:]]


def _file_writing_launcher(argv: list[str], config_files: list[ConfigFile], env: dict[str, str]) -> list[str]:
    """Write each config file from an environment variable (no quoting of the content), then exec argv."""
    steps = []
    for number, config_file in enumerate(config_files):
        variable = f"GPUSTACK_CONFIG_FILE_{number}"
        env[variable] = config_file.content
        path = json.dumps(config_file.path)  # a JSON string is a valid double-quoted shell word for a path
        steps.append(f'mkdir -p "$(dirname {path})" && printf "%s" "${variable}" > {path}')
    script = " && ".join([*steps, 'exec "$@"'])
    return ["/bin/sh", "-c", script, "gpustack-launch", *argv]


class EngineRefusal(Exception):
    """An engine cannot run this replica as asked: which option, why, and what would work instead."""

    def __init__(self, engine: str, option: str, reason: str, alternatives: list[str] | None = None) -> None:
        self.engine = engine
        self.option = option
        self.reason = reason
        self.alternatives = list(alternatives or [])
        hint = f"; alternatives: {', '.join(self.alternatives)}" if self.alternatives else ""
        super().__init__(f"{engine}: {option}: {reason}{hint}")


class ExtraMemory(EngineModel):
    """Memory an engine needs beyond the base memory model, for placement's fit check."""

    device_bytes_per_gpu: NonNegativeInt = Field(default=0, description="Draft model / MTP weights per GPU.")
    host_bytes_per_node: NonNegativeInt = Field(default=0, description="CPU memory for LMCache / HiCache.")
    reasons: list[str] = Field(default_factory=list)


@runtime_checkable
class Engine(Protocol):
    """One inference engine. Implementations are pure and deterministic."""

    name: str
    vendors: frozenset[str]
    """Device vendors it runs on: 'nvidia', 'amd', 'ascend', and 'cpu' for CPU-only nodes (placement reads it)."""

    def check(self, context: EngineContext) -> list[EngineRefusal]:
        """Every reason this engine cannot run the replica as asked (empty: it can)."""
        ...

    def launch_specs(self, context: EngineContext) -> list[LaunchSpec]:
        """One LaunchSpec per node of the replica, head first. Raises the first EngineRefusal of check()."""
        ...

    def extra_memory(self, context: EngineContext) -> ExtraMemory:
        """Memory beyond the engine's memory model (speculative drafts, KV offload) the fit must include."""
        ...


def raise_first(refusals: list[EngineRefusal]) -> None:
    if refusals:
        raise refusals[0]
