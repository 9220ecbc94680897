"""The engine registry: every built-in implements the Engine protocol, the entry-point group is declared and
installed, and a user engine loads through it (or fails with a message naming the entry point)."""

from __future__ import annotations

import tomllib
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from gpustack_pulumi.engines import Engine, EngineContext, ExtraMemory, LaunchSpec, registry
from gpustack_pulumi.engines.registry import BUILTIN_ENGINES, ENTRY_POINT_GROUP, EngineRegistryError, get_engine
from gpustack_pulumi.placement.models import KNOWN_ENGINES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(BUILTIN_ENGINES))
def test_every_builtin_implements_the_protocol(name: str) -> None:
    engine = get_engine(name)
    assert isinstance(engine, Engine) and engine.name == name


def test_builtins_cover_every_engine_placement_knows() -> None:
    assert set(BUILTIN_ENGINES) == set(KNOWN_ENGINES) - {"auto"}


def test_pyproject_declares_the_builtins_in_the_entry_point_group() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][ENTRY_POINT_GROUP] == BUILTIN_ENGINES


def test_installed_metadata_exposes_the_group() -> None:
    installed = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert installed == BUILTIN_ENGINES, "reinstall the package (pip install -e .) to refresh its entry points"


class EchoEngine:
    """A user engine: runs `echo` with the model name."""

    name = "echo"
    vendors = frozenset({"nvidia"})

    def check(self, context: EngineContext) -> list:
        return []

    def launch_specs(self, context: EngineContext) -> list[LaunchSpec]:
        placement = context.replica.placements[0]
        return [
            LaunchSpec(
                deployment=context.deployment.name, replica=context.replica.replica, node=placement.node,
                node_rank=0, node_role="head", engine=self.name, engine_version="1",
                argv=["echo", context.deployment.model],
                port=8000, visible_devices=placement.device_indices, health_path="/health", metrics_path=None,
                memory_bytes_per_device=placement.memory_bytes_per_device,
            )
        ]  # fmt: skip

    def extra_memory(self, context: EngineContext) -> ExtraMemory:
        return ExtraMemory()


class NotAnEngine:
    name = "broken"


def _with_entry_points(monkeypatch: pytest.MonkeyPatch, extra: list[EntryPoint]) -> None:
    builtin = list(entry_points(group=ENTRY_POINT_GROUP))

    def fake_entry_points(*, group: str):
        assert group == ENTRY_POINT_GROUP
        return [*builtin, *extra]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    registry.engines.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_registry():
    registry.engines.cache_clear()
    yield
    registry.engines.cache_clear()


def test_a_user_package_adds_an_engine_through_the_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_points(monkeypatch, [EntryPoint("echo", f"{__name__}:EchoEngine", ENTRY_POINT_GROUP)])
    assert get_engine("echo").name == "echo"
    assert get_engine("vllm").name == "vllm"


def test_an_entry_point_engine_works_in_a_deployment_and_the_cluster_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpustack_runtime.wire import Inventory

    from gpustack_pulumi.cluster_plan import plan_cluster
    from gpustack_pulumi.placement import Deployment

    _with_entry_points(monkeypatch, [EntryPoint("echo", f"{__name__}:EchoEngine", ENTRY_POINT_GROUP)])
    deployment = Deployment(name="e", model="Qwen/Qwen3-0.6B", engine="echo", max_model_len=4096)
    gpu = {"index": 0, "uuid": "GPU-0", "vendor": "nvidia", "product": "NVIDIA L4", "memory_total": 24 * 2**30,
           "memory_used": 0, "compute_capability": "8.9"}  # fmt: skip
    amd = {**gpu, "uuid": "GPU-1", "vendor": "amd", "product": "AMD Instinct MI300X", "memory_total": 192 * 2**30}
    inventory = Inventory.model_validate({"nodes": [{"name": "a", "devices": [amd]}, {"name": "n", "devices": [gpu]}]})
    result = plan_cluster(inventory, [deployment], owner_prefix="p/s/")
    assert result.ok, result.failures
    (replica,) = result.replicas.values()
    assert replica.placement is not None and replica.placement.engine == "echo"
    assert replica.placement.placements[0].node == "n"  # echo declares NVIDIA only: never the AMD node
    assert replica.launch[0]["argv"] == ["echo", "Qwen/Qwen3-0.6B"]
    with pytest.raises(ValueError, match="unknown engine 'ech'; valid: auto, custom, echo"):
        Deployment(name="e", model="Qwen/Qwen3-0.6B", engine="ech")


def test_an_entry_point_that_is_not_an_engine_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_points(monkeypatch, [EntryPoint("broken", f"{__name__}:NotAnEngine", ENTRY_POINT_GROUP)])
    with pytest.raises(EngineRegistryError, match="'broken'.*Engine protocol"):
        get_engine("vllm")


def test_an_entry_point_cannot_replace_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_points(monkeypatch, [EntryPoint("vllm", f"{__name__}:EchoEngine", ENTRY_POINT_GROUP)])
    with pytest.raises(EngineRegistryError, match="replace a built-in"):
        get_engine("vllm")


def test_unknown_engine_lists_the_valid_names() -> None:
    with pytest.raises(EngineRegistryError, match=r"unknown engine 'vlm'; valid: auto, custom, llama.cpp"):
        get_engine("vlm")
