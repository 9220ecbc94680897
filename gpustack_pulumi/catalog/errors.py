"""Errors raised by catalog lookups.

Every lookup error is a ``LookupError`` that names what was asked for and lists the valid choices, so a
typo in a stack (``gpu="H100-SMX"``) fails at preview with the fix in the message.
"""

from __future__ import annotations

from collections.abc import Sequence


class CatalogDataError(ValueError):
    """The shipped catalog data is inconsistent (a packaging or editing mistake, never user input)."""


class UnknownGpuError(LookupError):
    """No GPU in the catalog matches the requested key, alias or product name."""

    def __init__(self, name: str, valid_keys: Sequence[str]) -> None:
        self.name = name
        self.valid_keys = tuple(valid_keys)
        super().__init__(
            f"Unknown GPU {name!r}. Valid GPU keys: {', '.join(self.valid_keys)}. "
            "Driver product names (e.g. 'NVIDIA H100 80GB HBM3') and common aliases (e.g. 'h100', "
            "'a100-80g') also work; spaces, hyphens, underscores and case are ignored."
        )


class UnknownInstanceTypeError(LookupError):
    """The AWS instance type is not a GPU instance type the catalog knows."""

    def __init__(self, name: str, valid_types: Sequence[str], close_matches: Sequence[str]) -> None:
        self.name = name
        self.valid_types = tuple(valid_types)
        self.close_matches = tuple(close_matches)
        hint = (
            f" Did you mean: {', '.join(self.close_matches)}?"
            if self.close_matches
            else f" Known GPU instance types: {', '.join(self.valid_types)}."
        )
        super().__init__(f"Unknown AWS GPU instance type {name!r}.{hint}")


class UnknownModelError(LookupError):
    """The model id is not one of the catalog's models."""

    def __init__(self, name: str, valid_ids: Sequence[str]) -> None:
        self.name = name
        self.valid_ids = tuple(valid_ids)
        super().__init__(
            f"Unknown catalog model {name!r}. Catalog models: {', '.join(self.valid_ids)} "
            "(the id is case-insensitive; the bare name, e.g. 'Qwen3-8B', also works)."
        )
