"""safetensors header reader: files are written here byte by byte (8-byte length, JSON header, zero data)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from gpustack_pulumi.analysis.safetensors_reader import (
    MAX_HEADER_BYTES,
    SAFETENSORS_INDEX_NAME,
    read_safetensors_dir,
    read_safetensors_header,
)
from gpustack_pulumi.analysis.tensors import ModelFileError, TensorInfo

ITEM_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "I32": 4, "U8": 1, "I64": 8}


def header_entries(tensors: dict[str, tuple[str, list[int]]]) -> tuple[dict[str, Any], int]:
    """Header entries with contiguous offsets for {name: (dtype, shape)}, and the data size they need."""
    entries: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * ITEM_BYTES[dtype]
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    return entries, offset


def write_raw_safetensors(path: Path, header: Any, data_size: int) -> Path:
    """Write a safetensors file: u64 header length, the JSON header padded to 8 bytes, then zero bytes."""
    header_bytes = json.dumps(header).encode("utf-8") if not isinstance(header, bytes) else header
    header_bytes += b" " * (-len(header_bytes) % 8)
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + bytes(data_size))
    return path


def write_safetensors(
    path: Path, tensors: dict[str, tuple[str, list[int]]], metadata: dict[str, str] | None = None
) -> Path:
    entries, data_size = header_entries(tensors)
    if metadata is not None:
        entries["__metadata__"] = metadata
    return write_raw_safetensors(path, entries, data_size)


MIXED_TENSORS: dict[str, tuple[str, list[int]]] = {
    "model.layers.0.self_attn.q_proj.weight": ("BF16", [64, 32]),
    "model.norm.weight": ("F32", [32]),
    "model.layers.0.mlp.down_proj.weight": ("F8_E4M3", [32, 96]),
    "model.layers.0.mlp.down_proj.weight_scale": ("F32", []),
    # AWQ/GPTQ-style int4: eight 4-bit weights packed per I32, so [32, 12] I32 holds a 32x96 int4 matrix.
    "model.layers.0.mlp.up_proj.qweight": ("I32", [32, 12]),
}


def test_single_file_reports_every_tensor_sorted_with_exact_bytes(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "model.safetensors", MIXED_TENSORS, metadata={"format": "pt"})

    tensors, metadata = read_safetensors_header(path)

    assert [tensor.name for tensor in tensors] == sorted(MIXED_TENSORS)
    by_name = {tensor.name: tensor for tensor in tensors}
    assert by_name["model.layers.0.self_attn.q_proj.weight"] == TensorInfo(
        name="model.layers.0.self_attn.q_proj.weight", dtype="BF16", shape=(64, 32), nbytes=64 * 32 * 2
    )
    assert by_name["model.layers.0.mlp.down_proj.weight"].nbytes == 32 * 96
    assert by_name["model.layers.0.mlp.down_proj.weight_scale"].shape == ()
    assert by_name["model.layers.0.mlp.down_proj.weight_scale"].numel == 1
    packed = by_name["model.layers.0.mlp.up_proj.qweight"]
    assert (packed.dtype, packed.numel, packed.nbytes) == ("I32", 32 * 12, 32 * 96 // 2)
    assert metadata == {"format": "pt"}


def test_header_reader_reads_only_the_header_of_a_huge_file(tmp_path: Path) -> None:
    # A 64 GiB BF16 tensor in a sparse file: only the header is on disk, and only the header may be read.
    huge_shape = [131072, 262144]
    path = write_raw_safetensors(
        tmp_path / "huge.safetensors",
        {
            "lm_head.weight": {
                "dtype": "BF16",
                "shape": huge_shape,
                "data_offsets": [0, math.prod(huge_shape) * 2],
            }
        },
        data_size=0,
    )
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size + math.prod(huge_shape) * 2)

    bytes_read_before = _bytes_read_by_this_process()
    tensors, _ = read_safetensors_header(path)
    bytes_read = _bytes_read_by_this_process() - bytes_read_before

    assert tensors[0].nbytes == 64 * 2**30
    assert bytes_read < 64 * 1024


def _bytes_read_by_this_process() -> int:
    # rchar: bytes this process has passed through read()-like system calls (Linux /proc/<pid>/io).
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


def test_sharded_directory_reads_each_shard_named_by_the_index(tmp_path: Path) -> None:
    write_safetensors(
        tmp_path / "model-00001-of-00002.safetensors",
        {
            "model.embed_tokens.weight": ("BF16", [100, 16]),
            "model.layers.0.mlp.up_proj.weight": ("BF16", [48, 16]),
        },
        metadata={"format": "pt"},
    )
    write_safetensors(
        tmp_path / "model-00002-of-00002.safetensors",
        {"lm_head.weight": ("BF16", [100, 16]), "model.norm.weight": ("F32", [16])},
        metadata={"format": "pt", "quantizer": "none"},
    )
    # A stray file next to an index is not part of the checkpoint.
    write_safetensors(tmp_path / "consolidated.safetensors", {"tok_embeddings.weight": ("BF16", [100, 16])})
    weight_map = {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.layers.0.mlp.up_proj.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors",
    }
    (tmp_path / SAFETENSORS_INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    inventory = read_safetensors_dir(tmp_path)

    assert inventory is not None
    assert inventory.format == "safetensors"
    assert inventory.files == ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    assert [tensor.name for tensor in inventory.tensors] == sorted(weight_map)
    assert inventory.total_params == 100 * 16 * 2 + 48 * 16 + 16
    assert inventory.total_bytes == (100 * 16 * 2 + 48 * 16) * 2 + 16 * 4
    assert inventory.bytes_by_dtype() == {"BF16": (100 * 16 * 2 + 48 * 16) * 2, "F32": 64}
    assert inventory.params_by_dtype() == {"BF16": 100 * 16 * 2 + 48 * 16, "F32": 16}
    assert inventory.metadata == {"format": "pt", "quantizer": "none"}


def test_index_naming_a_tensor_its_shard_lacks_is_an_error_naming_both(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00001.safetensors", {"model.norm.weight": ("F32", [16])})
    (tmp_path / SAFETENSORS_INDEX_NAME).write_text(
        json.dumps(
            {
                "weight_map": {
                    "model.norm.weight": "model-00001-of-00001.safetensors",
                    "lm_head.weight": "model-00001-of-00001.safetensors",
                }
            }
        )
    )
    with pytest.raises(ModelFileError, match=r"'lm_head.weight' in model-00001-of-00001.safetensors"):
        read_safetensors_dir(tmp_path)


def test_index_naming_a_missing_shard_is_an_error(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"model.norm.weight": ("F32", [16])})
    (tmp_path / SAFETENSORS_INDEX_NAME).write_text(
        json.dumps(
            {
                "weight_map": {
                    "model.norm.weight": "model-00001-of-00002.safetensors",
                    "lm_head.weight": "model-00002-of-00002.safetensors",
                }
            }
        )
    )
    with pytest.raises(ModelFileError, match=r"model-00002-of-00002.safetensors, which does not exist"):
        read_safetensors_dir(tmp_path)


@pytest.mark.parametrize(
    ("index_text", "problem"),
    [
        ("{not json", "cannot read the shard index"),
        (json.dumps({"metadata": {}}), "'weight_map' must be an object"),
        (json.dumps({"weight_map": {"a.weight": "../elsewhere/model.safetensors"}}), "must be a file name"),
    ],
)
def test_malformed_index_is_an_error(tmp_path: Path, index_text: str, problem: str) -> None:
    (tmp_path / SAFETENSORS_INDEX_NAME).write_text(index_text)
    with pytest.raises(ModelFileError, match=problem):
        read_safetensors_dir(tmp_path)


def test_directory_without_index_reads_every_safetensors_file_in_name_order(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "b.safetensors", {"z.weight": ("F16", [4, 4])}, metadata={"origin": "b"})
    write_safetensors(tmp_path / "a.safetensors", {"y.weight": ("F16", [2]), "x.weight": ("I64", [3])})
    (tmp_path / "config.json").write_text("{}")

    inventory = read_safetensors_dir(tmp_path)

    assert inventory is not None
    assert inventory.files == ("a.safetensors", "b.safetensors")
    assert [tensor.name for tensor in inventory.tensors] == ["x.weight", "y.weight", "z.weight"]
    assert inventory.metadata == {"origin": "b"}


def test_directory_without_safetensors_gives_none(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert read_safetensors_dir(tmp_path) is None


def test_tensor_stored_in_two_files_is_an_error(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "a.safetensors", {"x.weight": ("F16", [2])})
    write_safetensors(tmp_path / "b.safetensors", {"x.weight": ("F16", [2])})
    with pytest.raises(ModelFileError, match=r"'x.weight' is stored in both a.safetensors and b.safetensors"):
        read_safetensors_dir(tmp_path)


def test_model_file_error_is_a_value_error() -> None:
    assert issubclass(ModelFileError, ValueError)


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "data_size", "problem"),
    [
        pytest.param(b"{not json", 0, "not valid UTF-8 JSON", id="invalid-json"),
        pytest.param(b"\xff\xfe{}", 0, "not valid UTF-8 JSON", id="invalid-utf8"),
        pytest.param([1, 2], 0, "must be a JSON object", id="not-an-object"),
        pytest.param(
            {"w": _entry("F32", [4], 0, 32)},
            16,
            r"'w': data_offsets \[0, 32\] are out of range",
            id="end-past-data",
        ),
        pytest.param({"w": _entry("F32", [0], 8, 4)}, 16, "out of range", id="begin-after-end"),
        pytest.param({"w": _entry("F32", [4], -4, 12)}, 16, "data_offsets must be", id="negative-offset"),
        pytest.param({"w": {"dtype": "F32", "shape": [4]}}, 16, "data_offsets must be", id="missing-offsets"),
        pytest.param({"w": _entry("Q4_K", [4], 0, 16)}, 16, "unknown dtype 'Q4_K'", id="unknown-dtype"),
        pytest.param(
            {"w": _entry("BF16", [4], 0, 16)},
            16,
            r"16 bytes on disk but shape \[4\] of BF16 needs 8",
            id="nbytes-mismatch",
        ),
        pytest.param({"w": _entry("F4", [3], 0, 2)}, 2, "needs 1.5 bytes", id="sub-byte-not-whole-bytes"),
        pytest.param(
            {"w": _entry("F32", [2, -1], 0, 8)},
            8,
            "shape must be a list of non-negative integers",
            id="negative-dim",
        ),
        pytest.param({"w": _entry("F32", [True], 0, 4)}, 4, "shape must be", id="boolean-dim"),
        pytest.param({"w": [1]}, 0, "header entry must be an object", id="entry-not-object"),
        pytest.param(
            {"a": _entry("F32", [4], 0, 16), "b": _entry("F32", [2], 8, 16)},
            16,
            "'a' and 'b' overlap",
            id="overlap",
        ),
        pytest.param(
            {"__metadata__": {"step": 3}}, 0, "must be an object of string values", id="metadata-not-strings"
        ),
    ],
)
def test_corrupt_header_is_an_error_naming_file_and_problem(
    tmp_path: Path, header: Any, data_size: int, problem: str
) -> None:
    path = write_raw_safetensors(tmp_path / "broken.safetensors", header, data_size)
    with pytest.raises(ModelFileError, match=problem) as raised:
        read_safetensors_header(path)
    assert str(path) in str(raised.value)


def test_valid_sub_byte_dtype_is_accepted(tmp_path: Path) -> None:
    # F4 (e2m1) packs two values per byte: 6 values take 3 bytes.
    path = write_raw_safetensors(tmp_path / "fp4.safetensors", {"w": _entry("F4", [2, 3], 0, 3)}, 3)
    tensors, _ = read_safetensors_header(path)
    assert (tensors[0].numel, tensors[0].nbytes) == (6, 3)


def test_file_shorter_than_length_prefix_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ModelFileError, match="3 bytes, shorter than the 8-byte"):
        read_safetensors_header(path)


def test_header_length_past_end_of_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(struct.pack("<Q", 4096) + b'{"w": {}}')
    with pytest.raises(ModelFileError, match="header length 4096 runs past the end of the file"):
        read_safetensors_header(path)


def test_header_length_over_limit_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "huge-header.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(ModelFileError, match="exceeds the safetensors limit"):
        read_safetensors_header(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read safetensors file"):
        read_safetensors_header(tmp_path / "absent.safetensors")
