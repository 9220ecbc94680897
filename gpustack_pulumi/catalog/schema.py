"""Typed shapes of the catalog data files (gpus.yaml, aws_instances.yaml, models.yaml).

Each model validates one entry; unknown fields are errors so a misspelt key in a data file fails the
catalog tests instead of silently vanishing. Units are in the field names.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from ._data import read_packaged_text

Vendor = Literal["nvidia", "amd", "ascend"]
Arch = Literal["ampere", "hopper", "ada", "turing", "blackwell", "cdna3", "ascend910b"]

# A token as gpu_for_product() splits product strings: lowercase letters and digits only.
_TOKEN_PATTERN = r"^[0-9a-z]+$"


class CatalogEntry(BaseModel):
    """Base of every catalog entry: immutable, strict about unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuSpec(CatalogEntry):
    """One accelerator model, with the numbers its driver reports and its datasheet states."""

    key: str = Field(min_length=1, description="Stable id, e.g. 'H100-SXM'.")
    vendor: Vendor
    names: tuple[str, ...] = Field(
        min_length=1,
        description="Exact product strings the drivers report (NVML, amd-smi market name, npu-smi).",
    )
    aliases: tuple[str, ...] = Field(default=(), description="Extra names accepted by gpu(), e.g. 'h100'.")
    family: str = Field(pattern=_TOKEN_PATTERN, description="Model token in product strings, e.g. 'h100'.")
    variant_tokens: tuple[str, ...] = Field(
        default=(), description="Tokens that tell this entry from its family siblings, e.g. ('pcie',)."
    )
    memory_bytes: PositiveInt = Field(description="Total memory as the driver reports it, in bytes.")
    memory_marketing_gb: PositiveInt = Field(description="Datasheet capacity in decimal GB (80, 141, ...).")
    memory_bandwidth_gbps: float | None = Field(
        gt=0, description="Datasheet memory bandwidth in GB/s; None when the vendor publishes none."
    )
    bf16_dense_tflops: float | None = Field(
        gt=0, description="Dense (no sparsity) BF16 tensor TFLOPS; None if unsupported or unpublished."
    )
    fp16_dense_tflops: float | None = Field(
        gt=0, description="Dense (no sparsity) FP16 tensor TFLOPS; None if unpublished."
    )
    compute_capability: str | None = Field(
        pattern=r"^\d+\.\d+$", description="CUDA compute capability ('9.0'); None for non-NVIDIA devices."
    )
    arch: Arch
    fp8: bool = Field(description="Hardware FP8 tensor support.")
    nvlink: bool = Field(description="Usual server form has a GPU-to-GPU fabric (NVLink, xGMI, HCCS).")
    notes: str | None = None
    sources: tuple[str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_vendor_fields(self) -> GpuSpec:
        if (self.vendor == "nvidia") != (self.compute_capability is not None):
            raise ValueError(
                f"GPU {self.key!r}: compute_capability must be set for NVIDIA devices and null otherwise "
                f"(vendor={self.vendor!r}, compute_capability={self.compute_capability!r})"
            )
        for token in self.variant_tokens:
            if not token.isalnum() or token != token.lower():
                raise ValueError(f"GPU {self.key!r}: variant token {token!r} must be lowercase letters and digits")
        return self


class AwsInstanceType(CatalogEntry):
    """One AWS EC2 instance type and the accelerators it carries."""

    instance_type: str = Field(min_length=1, description="e.g. 'p5.48xlarge'.")
    family: str = Field(min_length=1, description="e.g. 'p5'.")
    gpu: str = Field(description="Key of the GpuSpec the instance carries.")
    gpu_count: PositiveInt
    vcpus: PositiveInt
    memory_gib: PositiveInt | None = Field(description="Host RAM in GiB; None when not known.")
    sources: tuple[str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_family_prefix(self) -> AwsInstanceType:
        if not self.instance_type.startswith(f"{self.family}."):
            raise ValueError(f"AWS instance type {self.instance_type!r} does not belong to family {self.family!r}")
        return self


class PublishedParameters(CatalogEntry):
    """Parameter counts as the publisher states them (model card or paper)."""

    parameters_total: PositiveInt
    parameters_active: PositiveInt | None = Field(default=None, description="Per token, for MoE models.")
    parameters_non_embedding: PositiveInt | None = None
    rounding_unit: PositiveInt = Field(
        description=(
            "Unit the coarsest stated figure is given in ('8.2B' -> 100_000_000); "
            "counts computed from config.json land within one unit."
        )
    )
    notes: str | None = None
    sources: tuple[str, ...] = Field(min_length=1)


class CatalogModel(CatalogEntry):
    """A model whose Hugging Face config.json ships with the package."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str = Field(pattern=r"^[^/\s]+/[^/\s]+$", description="Hugging Face id, 'org/name'.")
    config_path: str = Field(alias="config", description="Path of config.json inside the catalog package.")
    tuned: bool = Field(description="True for tuned presets; False for reference (calibration) models.")
    published: PublishedParameters
    checkpoint_bytes: PositiveInt | None = Field(
        default=None, description="Total checkpoint size where the publisher states one."
    )
    config_verification: str = Field(min_length=1, description="How the shipped config.json was checked.")

    @model_validator(mode="after")
    def _check_config_path(self) -> CatalogModel:
        expected = f"models/{self.id}/config.json"
        if self.config_path != expected:
            raise ValueError(f"model {self.id!r}: config must be {expected!r}, got {self.config_path!r}")
        return self

    @property
    def name(self) -> str:
        """The bare model name, e.g. 'Qwen3-8B' for 'Qwen/Qwen3-8B'."""
        return self.id.split("/", 1)[1]

    def config(self) -> dict[str, Any]:
        """The shipped config.json as a fresh dict (callers may modify it)."""
        return json.loads(read_packaged_text(self.config_path))
