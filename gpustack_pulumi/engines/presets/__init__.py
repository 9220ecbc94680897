"""Measured tuned presets (``presets.yaml``): model × GPU × mode -> engine and knobs, each with its source.

A preset exists only where GPUStack's performance lab measured the configuration against an untuned vLLM;
everything else comes from the rules in the engine modules. :func:`find_preset` is the only lookup.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from gpustack_pulumi.engines.options import SpeculativeOptions

PresetEngine = Literal["vllm", "sglang", "tensorrt-llm", "mindie"]


class PresetKnobs(BaseModel):
    """What a preset changes on top of the rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantization: Literal["fp8"] | None = None
    kv_cache_dtype: str | None = None
    expert_parallel: bool = False
    attention_dp: bool = False
    async_scheduling: bool = False
    prefix_caching: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    speculative: SpeculativeOptions | None = None


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    model: str
    gpus: list[str] = Field(min_length=1, description="Catalog GPU keys the measurement applies to.")
    mode: Literal["latency", "throughput", "balanced"]
    engine: PresetEngine
    measured_tp: PositiveInt
    measured_replicas: PositiveInt = 1
    fp8_checkpoint: str | None = None
    knobs: PresetKnobs
    source: str = Field(description="URL of the performance-lab page.")
    claimed_gain: str
    measured_with: str

    def describe(self) -> str:
        return f"preset {self.id} ({self.claimed_gain}; {self.measured_with}; {self.source})"


@cache
def presets() -> tuple[Preset, ...]:
    raw = yaml.safe_load(files(__package__).joinpath("presets.yaml").read_text(encoding="utf-8"))
    base = raw["source_base"].rstrip("/")
    loaded = []
    for entry in raw["presets"]:
        entry = {**entry, "source": f"{base}/{entry['source']}"}
        loaded.append(Preset.model_validate(entry))
    ids = [preset.id for preset in loaded]
    if len(set(ids)) != len(ids):
        raise ValueError("presets.yaml: preset ids must be unique")
    return tuple(loaded)


def find_preset(model: str, gpu_key: str | None, mode: str, engine: str | None = None) -> Preset | None:
    """The measured preset for this model on this GPU in this mode (and engine, when one is fixed)."""
    if gpu_key is None:
        return None
    wanted = model.strip().lower()
    for preset in presets():
        if preset.model.lower() != wanted or gpu_key not in preset.gpus or preset.mode != mode:
            continue
        if engine is not None and preset.engine != engine:
            continue
        return preset
    return None


__all__ = ["Preset", "PresetKnobs", "find_preset", "presets"]
