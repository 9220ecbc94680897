"""Read safetensors headers (never tensor data) into a :class:`TensorInventory`.

File layout (https://github.com/huggingface/safetensors, ``safetensors/src/tensor.rs``): an 8-byte
little-endian u64 ``N``, then ``N`` bytes of UTF-8 JSON mapping tensor name -> ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the byte after the header) plus an optional
``"__metadata__"`` string->string map, then the data. Reading a 60 GB checkpoint therefore costs one small
read per shard.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from pathlib import Path
from typing import Any

from gpustack_pulumi.analysis.tensors import ModelFileError, TensorInfo, TensorInventory

# safetensors refuses headers above this size (MAX_HEADER_SIZE in safetensors/src/tensor.rs).
MAX_HEADER_BYTES = 100_000_000

# Bits per element of every dtype safetensors defines (Dtype::bitsize in safetensors/src/tensor.rs, 0.6).
# F4 and F6_* are sub-byte: a tensor's element count times its bits must be a whole number of bytes.
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# Hugging Face's name for the index of a sharded checkpoint (transformers' SAFE_WEIGHTS_INDEX_NAME).
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"

METADATA_KEY = "__metadata__"
_HEADER_LENGTH_BYTES = 8


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[list[TensorInfo], dict[str, str]]:
    """Read one safetensors file's header.

    Returns the tensors sorted by name and the ``__metadata__`` map. Only the header bytes are read.
    Raises :class:`ModelFileError` naming the file for anything a safetensors loader would reject: a file
    shorter than 8 bytes, a header longer than the file or than 100 MB, invalid JSON, an unknown dtype,
    offsets outside the data section or overlapping, or a byte count that does not match shape x dtype size.
    """
    file_path = Path(path)
    try:
        with file_path.open("rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            if file_size < _HEADER_LENGTH_BYTES:
                raise ModelFileError(
                    f"{file_path}: file is {file_size} bytes, shorter than the 8-byte safetensors header length"
                )
            (header_length,) = struct.unpack("<Q", handle.read(_HEADER_LENGTH_BYTES))
            if header_length > MAX_HEADER_BYTES:
                raise ModelFileError(
                    f"{file_path}: header length {header_length} exceeds the safetensors limit of "
                    f"{MAX_HEADER_BYTES} bytes; the file is corrupt or not safetensors"
                )
            if _HEADER_LENGTH_BYTES + header_length > file_size:
                raise ModelFileError(
                    f"{file_path}: header length {header_length} runs past the end of the file "
                    f"({file_size} bytes); the file is truncated or not safetensors"
                )
            header_bytes = handle.read(header_length)
    except OSError as exc:
        raise ModelFileError(f"{file_path}: cannot read safetensors file: {exc}") from exc

    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{file_path}: safetensors header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelFileError(f"{file_path}: safetensors header must be a JSON object, got {type(header).__name__}")

    data_size = file_size - _HEADER_LENGTH_BYTES - header_length
    metadata = _parse_metadata(file_path, header.pop(METADATA_KEY, None))
    tensors = [_parse_tensor_entry(file_path, name, entry, data_size) for name, entry in header.items()]
    _check_no_overlap(file_path, tensors, header)
    tensors.sort(key=lambda tensor: tensor.name)
    return tensors, metadata


def read_safetensors_dir(path: str | os.PathLike[str]) -> TensorInventory | None:
    """Inventory the safetensors checkpoint in a directory, or None if it holds no ``*.safetensors`` file.

    With ``model.safetensors.index.json`` the shards are the files its ``weight_map`` names; every mapped
    tensor must exist in its shard. Without it, every ``*.safetensors`` file in the directory is read. The
    inventory holds every tensor stored in those files (what is on disk), sorted by name; a tensor name
    stored in two files is an error, since a loader could not tell which one is meant.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ModelFileError(f"{directory}: not a directory")
    index_path = directory / SAFETENSORS_INDEX_NAME
    if index_path.exists():
        shard_names = _shards_from_index(index_path)
    else:
        shard_names = sorted(child.name for child in directory.glob("*.safetensors") if child.is_file())
        if not shard_names:
            return None

    tensors_by_name: dict[str, TensorInfo] = {}
    shard_of_tensor: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for shard_name in shard_names:
        shard_tensors, shard_metadata = read_safetensors_header(directory / shard_name)
        metadata.update(shard_metadata)
        for tensor in shard_tensors:
            if tensor.name in tensors_by_name:
                raise ModelFileError(
                    f"{directory}: tensor {tensor.name!r} is stored in both "
                    f"{shard_of_tensor[tensor.name]} and {shard_name}; remove the stale file"
                )
            tensors_by_name[tensor.name] = tensor
            shard_of_tensor[tensor.name] = shard_name

    if index_path.exists():
        for tensor_name, shard_name in _load_weight_map(index_path).items():
            if shard_of_tensor.get(tensor_name) != shard_name:
                raise ModelFileError(
                    f"{index_path}: weight_map puts tensor {tensor_name!r} in {shard_name}, but that "
                    "shard's header has no such tensor; the index and the shards are from different "
                    "checkpoints or a shard is incomplete"
                )

    return TensorInventory(
        format="safetensors",
        files=tuple(shard_names),
        tensors=tuple(tensors_by_name[name] for name in sorted(tensors_by_name)),
        metadata=dict(sorted(metadata.items())),
    )


def _load_weight_map(index_path: Path) -> dict[str, str]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{index_path}: cannot read the shard index: {exc}") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in weight_map.items()
    ):
        raise ModelFileError(f"{index_path}: 'weight_map' must be an object mapping tensor names to shard files")
    return weight_map


def _shards_from_index(index_path: Path) -> list[str]:
    shard_names = sorted(set(_load_weight_map(index_path).values()))
    for shard_name in shard_names:
        # A shard is a file next to the index; a path that leaves the directory is not a shard.
        if Path(shard_name).name != shard_name:
            raise ModelFileError(f"{index_path}: shard {shard_name!r} must be a file name in the same directory")
        if not (index_path.parent / shard_name).is_file():
            raise ModelFileError(
                f"{index_path}: weight_map references shard {shard_name}, which does not exist in "
                f"{index_path.parent}; download the missing shard"
            )
    return shard_names


def _parse_metadata(file_path: Path, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    # safetensors itself only accepts a string -> string map here (HashMap<String, String>).
    if not isinstance(raw, dict) or not all(isinstance(value, str) for value in raw.values()):
        raise ModelFileError(f"{file_path}: '{METADATA_KEY}' must be an object of string values")
    return dict(raw)


def _parse_tensor_entry(file_path: Path, name: str, entry: Any, data_size: int) -> TensorInfo:
    where = f"{file_path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise ModelFileError(f"{where}: header entry must be an object with dtype, shape and data_offsets")
    dtype = entry.get("dtype")
    if dtype not in SAFETENSORS_DTYPE_BITS:
        raise ModelFileError(
            f"{where}: unknown dtype {dtype!r}; known safetensors dtypes are {', '.join(SAFETENSORS_DTYPE_BITS)}"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_non_negative_int(dim) for dim in shape):
        raise ModelFileError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_non_negative_int(o) for o in offsets)):
        raise ModelFileError(f"{where}: data_offsets must be [begin, end] non-negative integers, got {offsets!r}")
    begin, end = offsets
    if begin > end or end > data_size:
        raise ModelFileError(
            f"{where}: data_offsets [{begin}, {end}] are out of range; the data section holds {data_size} "
            "bytes (the file is truncated or its header is corrupt)"
        )
    tensor = TensorInfo(name=name, dtype=dtype, shape=tuple(shape), nbytes=end - begin)
    # Packed formats (int4 in I32/U8) are stored under their container dtype, so this check still holds for
    # them.
    total_bits = tensor.numel * SAFETENSORS_DTYPE_BITS[dtype]
    if total_bits % 8 != 0 or total_bits // 8 != tensor.nbytes:
        raise ModelFileError(
            f"{where}: {tensor.nbytes} bytes on disk but shape {list(shape)} of {dtype} needs {total_bits / 8:g} bytes"
        )
    return tensor


def _check_no_overlap(file_path: Path, tensors: list[TensorInfo], header: dict[str, Any]) -> None:
    spans = sorted(
        (header[tensor.name]["data_offsets"][0], header[tensor.name]["data_offsets"][1], tensor.name)
        for tensor in tensors
    )
    for (_, previous_end, previous_name), (begin, _, name) in itertools.pairwise(spans):
        if begin < previous_end:
            raise ModelFileError(f"{file_path}: data of tensors {previous_name!r} and {name!r} overlap")


def _is_non_negative_int(value: Any) -> bool:
    # JSON true/false parse as bool, a subclass of int; they are not dimensions.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
