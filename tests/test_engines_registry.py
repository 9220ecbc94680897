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

    def check(self, context: EngineContext) -> list:
        return []

    def launch_specs(self, context: EngineContext) -> list[LaunchSpec]:
        return []

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
