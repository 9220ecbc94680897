"""Generate a tiny but real llama-architecture GGUF that llama.cpp can load and serve.

Tests and the local example stack use it as a real inference engine's model: llama.cpp's server loads it in
well under a second and answers ``/v1/completions`` and ``/v1/chat/completions`` (with gibberish: weights are
random).

What llama.cpp requires of such a file (each found by leaving one item out): ``tokenizer.ggml.model``,
``llama.context_length``, ``llama.attention.layer_norm_rms_epsilon``, ``llama.feed_forward_length``
(otherwise the expected ffn shapes have 0 rows), ``llama.attention.head_count_kv`` when KV heads differ from
query heads, and every ``blk.*`` tensor. Token types are optional, but without BYTE types byte tokens are
printed literally as "<0x70>".

Usage: ``python -m gpustack_pulumi.tinymodel OUT.gguf``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

# SentencePiece's word-boundary marker; llama's tokenizer prefixes words with it.
SENTENCEPIECE_SPACE = "\u2581"

# Whole words the vocabulary knows, each as "▁word" (word start) and "word" (inside a word).
_VOCABULARY_WORDS = (
    "hello",
    "world",
    "gpu",
    "node",
    "model",
    "the",
    "is",
    "of",
    "and",
    "to",
    "in",
    "on",
    "for",
    "with",
    "chat",
    "user",
    "assistant",
    "system",
    "token",
    "server",
    "stack",
    "deploy",
    "replica",
    "pulumi",
)

UNK_TOKEN_ID = 0
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2

# Layer-norm epsilon and initialisation scale of the Llama family (LlamaConfig.rms_norm_eps,
# initializer_range).
RMS_NORM_EPS = 1e-5
WEIGHT_INIT_STD = 0.02

# Roles in <|role|> blocks, closed by the end-of-sequence token, so generation stops at the turn's end.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a small SentencePiece ("llama") vocabulary.

    Special tokens first (ids 0-2), then all 256 byte-fallback tokens so any text can be encoded, then "▁",
    the word pieces and single letters. Longer pieces score higher so the tokenizer prefers them.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    token_types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    scores = [0.0, 0.0, 0.0]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        token_types.append(TokenType.BYTE)
        scores.append(0.0)
    pieces = [SENTENCEPIECE_SPACE]
    for word in _VOCABULARY_WORDS:
        pieces += [SENTENCEPIECE_SPACE + word, word]
    pieces += [chr(letter) for letter in range(ord("a"), ord("z") + 1) if chr(letter) not in pieces]
    for piece in pieces:
        tokens.append(piece)
        token_types.append(TokenType.NORMAL)
        scores.append(-100.0 / len(piece))
    return tokens, scores, [int(token_type) for token_type in token_types]


def write_tiny_gguf(
    path: str | os.PathLike[str],
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 256,
    n_ctx: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny all-F32 llama GGUF to ``path`` atomically and return the path.

    Weights are normal(0, 0.02) from a numpy Generator seeded with ``seed`` and norms are 1, so the same
    arguments always produce byte-identical files.
    """
    _validate_dimensions(
        n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx=n_ctx
    )
    out_path = Path(path)
    head_dim = n_embd // n_head
    tokens, scores, token_types = tiny_vocabulary()
    n_vocab = len(tokens)

    # Write next to the destination and rename, so readers never see a half-written model.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        writer = GGUFWriter(tmp_path, "llama")
        writer.add_name("gpustack-pulumi tiny llama")
        writer.add_context_length(n_ctx)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(RMS_NORM_EPS)
        writer.add_vocab_size(n_vocab)
        writer.add_file_type(LlamaFileType.ALL_F32)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(token_types)
        writer.add_bos_token_id(BOS_TOKEN_ID)
        writer.add_eos_token_id(EOS_TOKEN_ID)
        writer.add_unk_token_id(UNK_TOKEN_ID)
        writer.add_add_bos_token(True)
        writer.add_chat_template(CHAT_TEMPLATE)

        for name, array in _tiny_llama_tensors(
            np.random.default_rng(seed),
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_ff=n_ff,
        ):
            writer.add_tensor(name, array)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        # mkstemp creates the file private (0600); a model file is meant to be read by the engine's user too.
        tmp_path.chmod(0o644)
        os.replace(tmp_path, out_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return out_path


def _tiny_llama_tensors(
    rng: np.random.Generator,
    *,
    n_vocab: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
) -> list[tuple[str, np.ndarray]]:
    """llama.cpp's tensor names with numpy shapes (the reverse of ggml's ne order)."""
    head_dim = n_embd // n_head

    def weight(*shape: int) -> np.ndarray:
        return rng.normal(0.0, WEIGHT_INIT_STD, size=shape).astype(np.float32)

    def norm() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    tensors = [("token_embd.weight", weight(n_vocab, n_embd))]
    for block in range(n_layer):
        prefix = f"blk.{block}"
        tensors += [
            (f"{prefix}.attn_norm.weight", norm()),
            (f"{prefix}.attn_q.weight", weight(n_head * head_dim, n_embd)),
            (f"{prefix}.attn_k.weight", weight(n_head_kv * head_dim, n_embd)),
            (f"{prefix}.attn_v.weight", weight(n_head_kv * head_dim, n_embd)),
            (f"{prefix}.attn_output.weight", weight(n_embd, n_head * head_dim)),
            (f"{prefix}.ffn_norm.weight", norm()),
            (f"{prefix}.ffn_gate.weight", weight(n_ff, n_embd)),
            (f"{prefix}.ffn_up.weight", weight(n_ff, n_embd)),
            (f"{prefix}.ffn_down.weight", weight(n_embd, n_ff)),
        ]
    tensors += [("output_norm.weight", norm()), ("output.weight", weight(n_vocab, n_embd))]
    return tensors


def _validate_dimensions(
    *, n_embd: int, n_layer: int, n_head: int, n_head_kv: int, n_ff: int, n_ctx: int
) -> None:
    for field, value in {
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "n_ff": n_ff,
        "n_ctx": n_ctx,
    }.items():
        if value < 1:
            raise ValueError(f"{field} must be at least 1, got {value}")
    if n_embd % n_head != 0:
        raise ValueError(
            f"n_embd ({n_embd}) must be divisible by n_head ({n_head}) to give a whole head size"
        )
    if n_head % n_head_kv != 0:
        raise ValueError(
            f"n_head ({n_head}) must be divisible by n_head_kv ({n_head_kv}) for grouped-query attention"
        )
    if (n_embd // n_head) % 2 != 0:
        raise ValueError(f"head size n_embd/n_head = {n_embd // n_head} must be even for rotary embeddings")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random llama GGUF that llama.cpp can serve.")
    parser.add_argument("out", type=Path, help="output .gguf path")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    args = parser.parse_args(argv)
    written = write_tiny_gguf(args.out, seed=args.seed)
    print(f"wrote {written} ({written.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
