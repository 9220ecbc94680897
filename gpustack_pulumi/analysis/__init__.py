"""Model analysis: config.json / safetensors headers / GGUF metadata → :class:`ModelProfile`."""

from gpustack_pulumi.analysis.analyze import analyze, profile_from_config
from gpustack_pulumi.analysis.errors import AnalysisError, MissingConfigFieldError
from gpustack_pulumi.analysis.profile import KvLayerGroup, ModelProfile, ParallelConstraints, WeightComponent

__all__ = [
    "AnalysisError",
    "KvLayerGroup",
    "MissingConfigFieldError",
    "ModelProfile",
    "ParallelConstraints",
    "WeightComponent",
    "analyze",
    "profile_from_config",
]
