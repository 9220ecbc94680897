"""Access to the data files shipped inside the catalog package (works from a wheel or a checkout)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def read_packaged_text(relative_path: str) -> str:
    """Text of a catalog data file, by '/'-separated path relative to the package (read once)."""
    return files(__package__).joinpath(*relative_path.split("/")).read_text(encoding="utf-8")
