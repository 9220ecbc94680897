"""Engine memory models: how much each inference engine takes on each GPU, term by term.

``memory_model("vllm")`` / ``memory_model("sglang")`` return a model implementing
:class:`~gpustack_pulumi.placement.memory.base.EngineMemoryModel`. Pure functions: no I/O.
"""

from __future__ import annotations

from gpustack_pulumi.placement.memory.base import EngineMemoryModel, MemoryBreakdown, MemoryRequest
from gpustack_pulumi.placement.memory.sglang import SglangMemoryModel
from gpustack_pulumi.placement.memory.vllm import VllmMemoryModel

MEMORY_MODELS: dict[str, type] = {"vllm": VllmMemoryModel, "sglang": SglangMemoryModel}


def memory_model(engine: str, version: str | None = None) -> EngineMemoryModel:
    """The memory model of ``engine`` (optionally for a given engine version)."""
    try:
        cls = MEMORY_MODELS[engine]
    except KeyError:
        raise KeyError(f"no memory model for engine '{engine}'; valid: {', '.join(sorted(MEMORY_MODELS))}") from None
    return cls(version) if version else cls()


__all__ = ["MEMORY_MODELS", "EngineMemoryModel", "MemoryBreakdown", "MemoryRequest", "memory_model"]
