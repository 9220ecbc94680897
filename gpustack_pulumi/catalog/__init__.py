"""Catalog: facts as data, each with its source.

GPU specs (``gpus.yaml``), AWS GPU instance types (``aws_instances.yaml``) and the models whose
Hugging Face ``config.json`` ships with the package (``models.yaml`` + ``models/<org>/<name>/``). This
module only loads and looks up; the numbers and their sources live in the data files. Files are read
once per process.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ._data import read_packaged_text
from .errors import CatalogDataError, UnknownGpuError, UnknownInstanceTypeError, UnknownModelError
from .schema import Arch, AwsInstanceType, CatalogModel, GpuSpec, PublishedParameters, Vendor

__all__ = [
    "Arch",
    "AwsInstanceType",
    "CatalogDataError",
    "CatalogModel",
    "GpuSpec",
    "PublishedParameters",
    "UnknownGpuError",
    "UnknownInstanceTypeError",
    "UnknownModelError",
    "Vendor",
    "aws_instance",
    "aws_instances",
    "catalog_model",
    "catalog_models",
    "gpu",
    "gpu_for_product",
    "gpus",
    "normalise_gpu_name",
    "tuned_models",
]

# Product strings of one card differ by under 1 % between driver builds (H100 PCIe: 81559 vs 81920 MiB
# in public nvidia-smi pastes), while family siblings differ by at least 17 % (H100 80 GB vs NVL 94 GB).
# A reported memory within 5 % of an entry's memory_bytes therefore identifies the entry.
MEMORY_MATCH_TOLERANCE = 0.05

# difflib similarity for "did you mean" on instance types: 0.75 keeps typos ('p5.48xlarg', 'g6e.48xl')
# and drops unrelated names that merely share 'xlarge' ('m7i.large' vs 'g6.xlarge' scores 0.67).
_CLOSE_MATCH_CUTOFF = 0.75

# NVML names MIG slices "<card name> MIG 1g.10gb": a slice is not the whole card, so it matches no entry.
_MIG_TOKEN = "mig"

_SEPARATORS = re.compile(r"[\s_\-]+")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_MEMORY_SIZE_TOKEN = re.compile(r"(\d+)gb?")


def normalise_gpu_name(name: str) -> str:
    """Lookup form of a GPU name: case, spaces, hyphens and underscores ignored ('H100 SXM' -> 'h100sxm')."""
    return _SEPARATORS.sub("", name).lower()


def _load_yaml(relative_path: str) -> Any:
    return yaml.safe_load(read_packaged_text(relative_path))


_Entry = TypeVar("_Entry", bound=BaseModel)


def _validated(model: type[_Entry], data: object, where: str) -> _Entry:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise CatalogDataError(f"catalog file {where}: {error}") from error


# --- GPUs --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GpuIndex:
    specs: tuple[GpuSpec, ...]
    by_exact_name: dict[str, GpuSpec]
    by_normalised_name: dict[str, GpuSpec]  # driver names only: what gpu_for_product() trusts
    by_normalised_lookup: dict[str, GpuSpec]  # keys, aliases and names: what gpu() accepts
    variant_vocabulary: frozenset[str]


def gpus() -> list[GpuSpec]:
    """Every GPU in the catalog, in file order (a new list; the entries are immutable)."""
    return list(_gpu_index().specs)


@cache
def _gpu_index() -> _GpuIndex:
    raw = _load_yaml("gpus.yaml")
    return _gpu_index_for(tuple(_validated(GpuSpec, entry, "gpus.yaml") for entry in raw["gpus"]))


def _gpu_index_for(specs: tuple[GpuSpec, ...]) -> _GpuIndex:
    """Lookup tables; fails on duplicate keys or a name that two entries claim."""
    by_exact_name: dict[str, GpuSpec] = {}
    by_normalised_name: dict[str, GpuSpec] = {}
    by_normalised_lookup: dict[str, GpuSpec] = {}
    vocabulary: set[str] = set()

    def claim(table: dict[str, GpuSpec], token: str, spec: GpuSpec) -> None:
        owner = table.setdefault(token, spec)
        if owner.key != spec.key:
            raise CatalogDataError(f"gpus.yaml: {token!r} names both {owner.key!r} and {spec.key!r}")

    seen_keys: set[str] = set()
    for spec in specs:
        if spec.key in seen_keys:
            raise CatalogDataError(f"gpus.yaml: duplicate key {spec.key!r}")
        seen_keys.add(spec.key)
        for name in spec.names:
            claim(by_exact_name, name, spec)
            claim(by_normalised_name, normalise_gpu_name(name), spec)
        for lookup_name in (spec.key, *spec.aliases, *spec.names):
            claim(by_normalised_lookup, normalise_gpu_name(lookup_name), spec)
        vocabulary.update(spec.variant_tokens)
    return _GpuIndex(specs, by_exact_name, by_normalised_name, by_normalised_lookup, frozenset(vocabulary))


def gpu(key_or_name: str) -> GpuSpec:
    """The GPU named by a catalog key, a driver product name or an alias.

    Exact driver names match first ('NVIDIA H100 80GB HBM3'); then keys, aliases and names compare with
    case, spaces, hyphens and underscores ignored ('h100', 'H100 SXM', 'a100-80g'). Raises
    UnknownGpuError listing the valid keys.
    """
    index = _gpu_index()
    found = index.by_exact_name.get(key_or_name.strip()) or index.by_normalised_lookup.get(
        normalise_gpu_name(key_or_name)
    )
    if found is None:
        raise UnknownGpuError(key_or_name, [spec.key for spec in index.specs])
    return found


def gpu_for_product(product: str, memory_bytes: int | None = None) -> GpuSpec | None:
    """The catalog entry for a product string an agent reports, or None when it is not a known card.

    Rule, in order:
    1. the exact driver name, or the same name ignoring case and separators;
    2. otherwise split the string into lowercase alphanumeric tokens. The entry's ``family`` must be one
       of the tokens, and the product's variant tokens (the catalog-wide set: 'pcie', 'nvl') must be
       exactly the entry's: 'NVIDIA H200 NVL' is not the H200 SXM entry. MIG slices match nothing.
    3. when ``memory_bytes`` is given it must be within MEMORY_MATCH_TOLERANCE of the entry's; a size
       token in the string ('80GB') must equal the entry's memory_marketing_gb.
    Exactly one surviving entry is the answer; none or several (ambiguous) give None, never a guess.
    """
    index = _gpu_index()
    named = index.by_exact_name.get(product.strip()) or index.by_normalised_name.get(normalise_gpu_name(product))
    if named is not None and (memory_bytes is None or _memory_matches(named, memory_bytes)):
        return named

    tokens = [token for token in _NON_ALNUM.split(product.lower()) if token]
    if _MIG_TOKEN in tokens:
        return None
    product_variants = {token for token in tokens if token in index.variant_vocabulary}
    stated_sizes_gb = {int(match.group(1)) for t in tokens if (match := _MEMORY_SIZE_TOKEN.fullmatch(t))}

    candidates = [
        spec
        for spec in index.specs
        if spec.family in tokens
        and set(spec.variant_tokens) == product_variants
        and (memory_bytes is None or _memory_matches(spec, memory_bytes))
        and (not stated_sizes_gb or spec.memory_marketing_gb in stated_sizes_gb)
    ]
    return candidates[0] if len(candidates) == 1 else None


def _memory_matches(spec: GpuSpec, memory_bytes: int) -> bool:
    return abs(spec.memory_bytes - memory_bytes) <= MEMORY_MATCH_TOLERANCE * spec.memory_bytes


# --- AWS instance types ------------------------------------------------------------------------------


def aws_instances() -> list[AwsInstanceType]:
    """Every AWS GPU instance type in the catalog, grouped by family in file order (a new list)."""
    return list(_aws_index().values())


@cache
def _aws_index() -> dict[str, AwsInstanceType]:
    raw = _load_yaml("aws_instances.yaml")
    source_urls: dict[str, str] = raw["sources"]
    known_gpus = {spec.key for spec in gpus()}
    instances: list[AwsInstanceType] = []
    for family, entry in raw["families"].items():
        if entry["gpu"] not in known_gpus:
            raise CatalogDataError(
                f"aws_instances.yaml: family {family!r} names GPU {entry['gpu']!r}, not a key of gpus.yaml"
            )
        unknown_sources = [source for source in entry["sources"] if source not in source_urls]
        if unknown_sources:
            raise CatalogDataError(f"aws_instances.yaml: family {family!r} cites unknown {unknown_sources}")
        for instance_type, (gpu_count, vcpus, memory_gib) in entry["sizes"].items():
            instances.append(
                _validated(
                    AwsInstanceType,
                    {
                        "instance_type": instance_type,
                        "family": family,
                        "gpu": entry["gpu"],
                        "gpu_count": gpu_count,
                        "vcpus": vcpus,
                        "memory_gib": memory_gib,
                        "sources": [source_urls[source] for source in entry["sources"]],
                    },
                    "aws_instances.yaml",
                )
            )
    index = {instance.instance_type: instance for instance in instances}
    if len(index) != len(instances):
        raise CatalogDataError("aws_instances.yaml: an instance type is listed in two families")
    return index


def aws_instance(instance_type: str) -> AwsInstanceType:
    """The AWS GPU instance type by name ('p5.48xlarge', case-insensitive).

    Raises UnknownInstanceTypeError with the closest known names.
    """
    index = _aws_index()
    found = index.get(instance_type.strip().lower())
    if found is None:
        valid = list(index)
        close = difflib.get_close_matches(instance_type.strip().lower(), valid, n=3, cutoff=_CLOSE_MATCH_CUTOFF)
        raise UnknownInstanceTypeError(instance_type, valid, close)
    return found


# --- Models ------------------------------------------------------------------------------------------


def catalog_models() -> list[CatalogModel]:
    """Every model with a shipped config.json: tuned presets and reference models (a new list)."""
    return list(_catalog_models())


@cache
def _catalog_models() -> tuple[CatalogModel, ...]:
    raw = _load_yaml("models.yaml")
    models = [_validated(CatalogModel, entry, "models.yaml") for entry in raw["models"]]
    seen: dict[str, str] = {}
    for model in models:
        for lookup_name in (model.id.lower(), model.name.lower()):
            if seen.setdefault(lookup_name, model.id) != model.id:
                raise CatalogDataError(f"models.yaml: {lookup_name!r} names both {seen[lookup_name]} and {model.id}")
    return tuple(models)


def tuned_models() -> list[CatalogModel]:
    """The models the project ships tuned presets for."""
    return [model for model in catalog_models() if model.tuned]


def catalog_model(hf_id: str) -> CatalogModel:
    """A catalog model by Hugging Face id ('Qwen/Qwen3-8B') or bare name ('Qwen3-8B'), case-insensitive.

    Raises UnknownModelError listing the catalog's ids.
    """
    wanted = hf_id.strip().lower()
    for model in catalog_models():
        if wanted in (model.id.lower(), model.name.lower()):
            return model
    raise UnknownModelError(hf_id, [model.id for model in catalog_models()])
