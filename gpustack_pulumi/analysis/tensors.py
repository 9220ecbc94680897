"""Types shared by the model file readers: one tensor's header entry and a model's tensor inventory.

The readers (``safetensors_reader``, ``gguf_reader``) only ever read headers, so these types describe what
is on disk — names, dtypes, shapes, exact byte counts — and never hold tensor data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelFileError(ValueError):
    """A model file (or a directory of them) is malformed; the message names the file and the problem."""


class TensorInfo(BaseModel):
    """One tensor as described by its file's header."""

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: str = Field(
        description=(
            'Storage type as the file names it: safetensors names ("BF16", "F8_E4M3", "I32", ...) or ggml '
            'type names ("F32", "Q8_0", "Q4_K", "MXFP4", ...).'
        )
    )
    shape: tuple[int, ...] = Field(
        description=(
            "Shape in the framework's order: safetensors as stored; GGUF in numpy order (ggml ne "
            "reversed). For packed formats stored in a wider integer type (int4 packed into I32) this is "
            "the packed shape."
        )
    )
    nbytes: int = Field(ge=0, description="Exact bytes the tensor occupies on disk.")

    @property
    def numel(self) -> int:
        """Number of stored elements (1 for a scalar, whose shape is ``()``)."""
        return math.prod(self.shape)


class TensorInventory(BaseModel):
    """Every tensor of a model checkpoint (one file or a set of shards), sorted by name."""

    model_config = ConfigDict(frozen=True)

    format: Literal["safetensors", "gguf"]
    files: tuple[str, ...] = Field(description="File names (not paths) the tensors were read from, sorted.")
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="safetensors ``__metadata__`` (merged over shards) or GGUF scalar metadata, as strings.",
    )

    @property
    def total_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors)

    @property
    def total_params(self) -> int:
        """Stored elements; packed formats (int4 packed into I32) count packed elements, not weights."""
        return sum(tensor.numel for tensor in self.tensors)

    def bytes_by_dtype(self) -> dict[str, int]:
        """Bytes on disk per dtype, keys sorted so the result is deterministic."""
        totals: defaultdict[str, int] = defaultdict(int)
        for tensor in self.tensors:
            totals[tensor.dtype] += tensor.nbytes
        return dict(sorted(totals.items()))

    def params_by_dtype(self) -> dict[str, int]:
        """Stored elements per dtype, keys sorted so the result is deterministic."""
        totals: defaultdict[str, int] = defaultdict(int)
        for tensor in self.tensors:
            totals[tensor.dtype] += tensor.numel
        return dict(sorted(totals.items()))
