"""What placement needs to know about engines, as a small protocol: which engines exist, which devices each runs
on, and which engine ``auto`` means for a deployment on a class of devices.

Placement stays pure and knows no engine by name: the engine registry (``gpustack_pulumi.engines.registry``)
implements this protocol from the registered engines — the built-ins and any ``gpustack_pulumi.engines`` entry
point — and ``engine: auto`` is resolved by the one resolver the launch specs use (``engines.auto``), so the
engine a replica is sized for is the engine it is started with.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gpustack_pulumi.analysis.profile import ModelProfile
    from gpustack_pulumi.placement.demand import DeviceClass
    from gpustack_pulumi.placement.models import Deployment


@runtime_checkable
class EngineCatalog(Protocol):
    def names(self) -> tuple[str, ...]:
        """Every engine a deployment may name (besides ``auto``), sorted."""
        ...

    def vendors(self, engine: str) -> frozenset[str]:
        """Device vendors the engine runs on ('nvidia', 'amd', 'ascend'; 'cpu' for CPU-only nodes)."""
        ...

    def resolve(
        self, deployment: Deployment, profile: ModelProfile, dclass: DeviceClass | None, gpu_count: int
    ) -> tuple[str | None, str]:
        """The engine for ``deployment`` on devices of ``dclass`` (None: a CPU-only node) and why; the engine
        is None when ``auto`` has nothing for these devices (the reason says why)."""
        ...


@cache
def default_catalog() -> EngineCatalog:
    """The engine registry's catalog (imported lazily: the engines package imports placement's models)."""
    from gpustack_pulumi.engines.registry import RegistryCatalog

    return RegistryCatalog()
