"""Engine registry: names -> engines, from the built-ins and the ``gpustack_pulumi.engines`` entry points.

A user package adds an engine with, in its pyproject.toml::

    [project.entry-points."gpustack_pulumi.engines"]
    my-engine = "my_package.engine:MyEngine"

The object an entry point names is a class (or factory) returning an :class:`Engine`; its ``name`` must equal
the entry point's name. Loading is checked: an object that does not implement the protocol is an error that
names the entry point, never a silent skip.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from gpustack_pulumi.engines.base import Engine

if TYPE_CHECKING:
    from gpustack_pulumi.analysis.profile import ModelProfile
    from gpustack_pulumi.placement.demand import DeviceClass
    from gpustack_pulumi.placement.models import Deployment

ENTRY_POINT_GROUP = "gpustack_pulumi.engines"

# The built-ins, also declared as entry points in pyproject.toml; listed here so a source checkout that was
# never pip-installed still has them.
BUILTIN_ENGINES: dict[str, str] = {
    "vllm": "gpustack_pulumi.engines.vllm:VllmEngine",
    "sglang": "gpustack_pulumi.engines.sglang:SglangEngine",
    "tensorrt-llm": "gpustack_pulumi.engines.trtllm:TrtLlmEngine",
    "mindie": "gpustack_pulumi.engines.mindie:MindIEEngine",
    "llama.cpp": "gpustack_pulumi.engines.llamacpp:LlamaCppEngine",
    "custom": "gpustack_pulumi.engines.custom:CustomEngine",
}


class EngineRegistryError(LookupError):
    pass


def _instantiate(name: str, factory: object, where: str) -> Engine:
    engine = factory() if callable(factory) else factory
    if not isinstance(engine, Engine):
        raise EngineRegistryError(
            f"engine entry point '{name}' ({where}) does not implement the Engine protocol "
            "(name, vendors, check, launch_specs, extra_memory)"
        )
    if engine.name != name:
        raise EngineRegistryError(f"engine entry point '{name}' ({where}) returns an engine named '{engine.name}'")
    return engine


def _load_reference(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@cache
def engines() -> dict[str, Engine]:
    """Every engine by name: built-ins, then installed entry points (which may add engines, not replace
    built-ins)."""
    found: dict[str, Engine] = {
        name: _instantiate(name, _load_reference(reference), reference) for name, reference in BUILTIN_ENGINES.items()
    }
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        if entry_point.name in BUILTIN_ENGINES:
            if entry_point.value != BUILTIN_ENGINES[entry_point.name]:
                raise EngineRegistryError(
                    f"entry point '{entry_point.name}' ({entry_point.value}) would replace a built-in engine"
                )
            continue
        found[entry_point.name] = _instantiate(entry_point.name, entry_point.load(), entry_point.value)
    return found


class RegistryCatalog:
    """The registry as placement sees it (``placement.engine_catalog.EngineCatalog``): the registered engines,
    the devices each runs on, and ``auto`` resolved by ``engines.auto.select_engine`` — the resolver the launch
    specs use, so a replica is sized for the engine it starts with."""

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(engines()))

    def vendors(self, engine: str) -> frozenset[str]:
        found = engines().get(engine)
        return frozenset(found.vendors) if found is not None else frozenset()

    def resolve(
        self, deployment: Deployment, profile: ModelProfile, dclass: DeviceClass | None, gpu_count: int
    ) -> tuple[str | None, str]:
        from pydantic import ValidationError

        from gpustack_pulumi.catalog import gpu_for_product
        from gpustack_pulumi.engines.auto import select_engine
        from gpustack_pulumi.engines.base import EngineRefusal, NodeAccelerator

        if deployment.engine != "auto":
            return deployment.engine, "named by the deployment"
        accelerator = None
        if dclass is not None and dclass.vendor != "cpu":
            accelerator = NodeAccelerator(
                vendor=dclass.vendor,
                product=dclass.product,
                memory_bytes=dclass.memory_total,
                spec=gpu_for_product(dclass.product, dclass.memory_total),
            )
        try:
            options = deployment.options
            choice = select_engine(deployment, profile, accelerator, options, gpu_count=max(1, gpu_count))
        except EngineRefusal as refusal:
            return None, str(refusal)
        except ValidationError as error:
            return None, f"engine_options: {error.errors()[0]['msg']}"
        return choice.engine, choice.reason


def get_engine(name: str) -> Engine:
    """The engine called ``name``; the error lists the valid names ('auto' is resolved by engines.auto)."""
    registered = engines()
    try:
        return registered[name]
    except KeyError:
        raise EngineRegistryError(f"unknown engine '{name}'; valid: auto, {', '.join(sorted(registered))}") from None


__all__ = ["BUILTIN_ENGINES", "ENTRY_POINT_GROUP", "EngineRegistryError", "engines", "get_engine"]
