"""Pinned engine versions as data: the flags each version accepts, its official image, its flag spellings.

``versions.yaml`` names, per engine and version, the flag table (``<engine>-<version>.json``: the engine's own
argument parser dumped by ``dump_flags.py``, or its documented option list where the engine cannot be
installed here), the default container image and the spellings of knobs whose flag changed between versions.
Engines render version-dependent knobs only through :meth:`EngineVersion.spell`, and tests check every argv
they produce with :meth:`FlagTable.problems`, so a misspelt or retired flag fails a test instead of a rollout.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from importlib.resources import files
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

# "-1" and "-0.5" are values (llama.cpp's n_gpu_layers), not flags.
_NUMBER = re.compile(r"^-\d")


class FlagSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    takes_value: bool
    choices: list[str] | None = None


class FlagTable(BaseModel):
    """The flags one engine version accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: str
    version: str
    source: str
    dumped_on: str
    flags: dict[str, FlagSpec]

    def problems(self, argv: list[str]) -> list[str]:
        """Every flag in ``argv`` this version would reject: unknown flags (with the closest known spelling),
        a value-taking flag without a value, and values outside a flag's choices."""
        found: list[str] = []
        index = 0
        while index < len(argv):
            token = argv[index]
            index += 1
            if not token.startswith("-") or _NUMBER.match(token):
                continue
            name, has_inline_value, inline_value = token.partition("=")
            spec = self.flags.get(name)
            if spec is None:
                close = difflib.get_close_matches(name, list(self.flags), n=3, cutoff=0.75)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                found.append(f"{self.engine} {self.version} has no flag {name}{hint}")
                continue
            if not spec.takes_value:
                if has_inline_value:
                    found.append(f"{self.engine} {self.version}: {name} takes no value")
                continue
            if has_inline_value:
                value = inline_value
            elif index < len(argv) and (not argv[index].startswith("-") or _NUMBER.match(argv[index])):
                value = argv[index]
                index += 1
            else:
                found.append(f"{self.engine} {self.version}: {name} needs a value")
                continue
            if spec.choices is not None and value not in spec.choices:
                found.append(f"{self.engine} {self.version}: {name} {value!r} is not one of {', '.join(spec.choices)}")
        return found

    def accepts(self, flag: str) -> bool:
        return flag in self.flags


class EngineVersion(BaseModel):
    """One pinned version of one engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: str
    version: str
    flags_file: str | None
    image: str | None
    cpu_image: str | None = None
    image_source: str | None
    spellings: dict[str, list[str]] = Field(default_factory=dict)
    speculative_algorithms: list[str] | None = None

    @property
    def flag_table(self) -> FlagTable | None:
        return flag_table(self.flags_file) if self.flags_file else None

    def spell(self, knob: str, value: object | None = None) -> list[str] | None:
        """The argv of a version-dependent knob, or None when this version has no such knob."""
        template = self.spellings.get(knob)
        if template is None:
            return None
        return [part.replace("{value}", str(value)) if value is not None else part for part in template]


def _read(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


@cache
def flag_table(file_name: str) -> FlagTable:
    return FlagTable.model_validate(json.loads(_read(file_name)))


@cache
def _versions() -> dict[str, Any]:
    return yaml.safe_load(_read("versions.yaml"))["engines"]


def known_versions(engine: str) -> list[str]:
    return list(_versions().get(engine, {}).get("versions", {}))


def default_version(engine: str) -> str:
    try:
        return _versions()[engine]["default"]
    except KeyError:
        raise KeyError(f"no pinned versions for engine '{engine}'; known: {', '.join(sorted(_versions()))}") from None


def engine_version(engine: str, version: str | None = None) -> EngineVersion:
    """The pinned ``version`` of ``engine`` (its default when None). Raises ValueError naming the known ones."""
    chosen = version or default_version(engine)
    entry = _versions().get(engine, {}).get("versions", {}).get(chosen)
    if entry is None:
        raise ValueError(
            f"options.version: {engine} {chosen!r} is not a pinned version; "
            f"pinned: {', '.join(known_versions(engine)) or 'none'}"
        )
    return EngineVersion(
        engine=engine,
        version=chosen,
        flags_file=entry["flags"],
        image=entry.get("image"),
        cpu_image=entry.get("cpu_image"),
        image_source=entry.get("image_source"),
        spellings=entry.get("spellings") or {},
        speculative_algorithms=entry.get("speculative_algorithms"),
    )


__all__ = [
    "EngineVersion",
    "FlagSpec",
    "FlagTable",
    "default_version",
    "engine_version",
    "flag_table",
    "known_versions",
]
