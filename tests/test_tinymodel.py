"""Tiny GGUF generator: deterministic, atomic, a well-formed llama vocabulary, and a CLI entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader, GGUFWriter, TokenType

from gpustack_pulumi.tinymodel import (
    BOS_TOKEN_ID,
    EOS_TOKEN_ID,
    UNK_TOKEN_ID,
    tiny_vocabulary,
    write_tiny_gguf,
)


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = write_tiny_gguf(tmp_path / "a.gguf", seed=7)
    second = write_tiny_gguf(tmp_path / "b.gguf", seed=7)
    assert first.read_bytes() == second.read_bytes()


def test_different_seed_changes_only_the_weights(tmp_path: Path) -> None:
    seed_zero = write_tiny_gguf(tmp_path / "a.gguf", seed=0)
    seed_one = write_tiny_gguf(tmp_path / "b.gguf", seed=1)
    assert seed_zero.read_bytes() != seed_one.read_bytes()
    assert seed_zero.stat().st_size == seed_one.stat().st_size

    first, second = GGUFReader(seed_zero), GGUFReader(seed_one)
    assert first.data_offset == second.data_offset
    # Header and metadata are identical; the tensor data differs.
    assert first.data[: first.data_offset].tobytes() == second.data[: second.data_offset].tobytes()
    embeddings = [
        next(t for t in reader.tensors if t.name == "token_embd.weight") for reader in (first, second)
    ]
    assert embeddings[0].data.tobytes() != embeddings[1].data.tobytes()


def test_weights_are_small_random_normals_and_norms_are_one(tmp_path: Path) -> None:
    reader = GGUFReader(write_tiny_gguf(tmp_path / "tiny.gguf"))
    tensors = {tensor.name: tensor.data for tensor in reader.tensors}
    assert (tensors["output_norm.weight"] == 1.0).all()
    assert (tensors["blk.1.ffn_norm.weight"] == 1.0).all()
    embedding = tensors["token_embd.weight"]
    assert abs(float(embedding.mean())) < 0.002
    assert 0.018 < float(embedding.std()) < 0.022


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "tiny.gguf"
    target.write_bytes(b"stale")
    written = write_tiny_gguf(target, n_layer=1)
    assert written == target
    assert target.read_bytes()[:4] == b"GGUF"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [path.name for path in tmp_path.iterdir()] == ["tiny.gguf"]  # no temporary file left behind


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "tiny.gguf"
    target.write_bytes(b"previous model")

    def disk_full(self: GGUFWriter, *, progress: bool = False) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_tiny_gguf(target)
    assert target.read_bytes() == b"previous model"
    assert [path.name for path in tmp_path.iterdir()] == ["tiny.gguf"]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"n_layer": 0}, "n_layer must be at least 1"),
        ({"n_embd": 60, "n_head": 8}, "n_embd \\(60\\) must be divisible by n_head \\(8\\)"),
        ({"n_head": 4, "n_head_kv": 3}, "n_head \\(4\\) must be divisible by n_head_kv \\(3\\)"),
        ({"n_embd": 12, "n_head": 4}, "head size n_embd/n_head = 3 must be even"),
    ],
)
def test_invalid_dimensions_are_rejected(tmp_path: Path, arguments: dict[str, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        write_tiny_gguf(tmp_path / "tiny.gguf", **arguments)


def test_vocabulary_is_a_valid_sentencepiece_vocabulary() -> None:
    tokens, scores, token_types = tiny_vocabulary()
    assert len(tokens) == len(set(tokens)) == len(scores) == len(token_types)
    assert 300 < len(tokens) < 400
    assert (tokens[UNK_TOKEN_ID], tokens[BOS_TOKEN_ID], tokens[EOS_TOKEN_ID]) == ("<unk>", "<s>", "</s>")
    assert token_types[:3] == [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    byte_tokens = [token for token, kind in zip(tokens, token_types, strict=True) if kind == TokenType.BYTE]
    assert byte_tokens == [f"<0x{byte:02X}>" for byte in range(256)]
    assert {"\u2581", "\u2581hello", "hello", "a", "z"} <= set(tokens)


def test_module_entry_point_writes_the_default_model(tmp_path: Path) -> None:
    out = tmp_path / "cli.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "gpustack_pulumi.tinymodel", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert out.read_bytes() == write_tiny_gguf(tmp_path / "api.gguf").read_bytes()
