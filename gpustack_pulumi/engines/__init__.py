"""Engines: a placed replica + its model profile + the deployment's options -> one LaunchSpec per node.

One module per engine behind :class:`~gpustack_pulumi.engines.base.Engine`; :mod:`registry` maps names to
engines (built-ins and the ``gpustack_pulumi.engines`` entry point group); ``engine: auto`` is decided by
:mod:`auto`. Callers use :mod:`launch`: ``launch_specs(replica, profile, deployment, accelerators=...)``,
``extra_memory(...)`` for placement's fit, ``launch_specs_for_plan`` + ``render_plan_launches`` for
``--show-launch``. Flag tables and images per pinned version live in :mod:`versions`, measured presets in
:mod:`presets`. Pure: no network, no Pulumi, deterministic.
"""

from gpustack_pulumi.engines.base import (
    ConfigFile,
    Engine,
    EngineContext,
    EngineRefusal,
    ExtraMemory,
    LaunchSpec,
    NodeAccelerator,
)
from gpustack_pulumi.engines.options import EngineOptions, KvOffloadOptions, SpeculativeOptions

__all__ = [
    "ConfigFile",
    "Engine",
    "EngineContext",
    "EngineOptions",
    "EngineRefusal",
    "ExtraMemory",
    "KvOffloadOptions",
    "LaunchSpec",
    "NodeAccelerator",
    "SpeculativeOptions",
]
