"""Read a GGUF model's metadata and tensor table (never tensor data) and map it onto HF ``config.json`` keys.

Parsing is done by the ``gguf`` package's :class:`gguf.GGUFReader`, which memory-maps the file and only
touches the header pages. Metadata key spellings come from :class:`gguf.constants.Keys`, so they match what
llama.cpp's converter writes.

Split models (``name-00001-of-00003.gguf``, written by ``gguf-split`` or ``GGUFWriter(split_max_*)``) are
read as one model: metadata comes from the first split, tensors from all of them.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFEndian, GGUFReader, GGUFValueType, Keys, LlamaFileType
from pydantic import BaseModel, ConfigDict, Field

from gpustack_pulumi.analysis.tensors import ModelFileError, TensorInfo, TensorInventory

GgufScalar = bool | int | float | str
GgufValue = GgufScalar | list[bool | int | float]

# Numeric arrays up to this length are kept as lists (per-layer head counts, sliding-window patterns, rope
# sections); longer arrays (token scores, token types) and every string array (the vocabulary, merges) are
# reported as their length so a 150k-token vocabulary costs nothing.
MAX_KEPT_ARRAY_ITEMS = 1024

# Names of the split files (SHARD_NAME_FORMAT in gguf/gguf_writer.py; llama.cpp's gguf-split uses the same).
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
_SPLIT_NAME_FORMAT = "{prefix}-{index:05d}-of-{count:05d}.gguf"

# Every GGUF file starts with these four bytes (GGUF_MAGIC in gguf.constants, stored little-endian).
GGUF_MAGIC_BYTES = b"GGUF"

# GGUFReader's own pseudo-fields for the file header; they are not model metadata.
_READER_PSEUDO_FIELD_PREFIX = "GGUF."

_NUMERIC_VALUE_TYPES = frozenset(
    {
        GGUFValueType.UINT8,
        GGUFValueType.INT8,
        GGUFValueType.UINT16,
        GGUFValueType.INT16,
        GGUFValueType.UINT32,
        GGUFValueType.INT32,
        GGUFValueType.UINT64,
        GGUFValueType.INT64,
        GGUFValueType.FLOAT32,
        GGUFValueType.FLOAT64,
        GGUFValueType.BOOL,
    }
)

# GGUF architecture -> (HF architectures[0], HF model_type). Sources: llama.cpp convert_hf_to_gguf.py (which
# HF class each GGUF arch is converted from) and each model's config.json on the Hugging Face hub. "llama"
# also covers Mistral and Mixtral, which the converter writes as llama; Mixtral is told apart by its expert
# count (see _hf_identity). gemma3 GGUFs hold the text model, whose HF model_type is "gemma3_text".
HF_IDENTITY_BY_GGUF_ARCH: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen2moe": ("Qwen2MoeForCausalLM", "qwen2_moe"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3_moe"),
    "gemma": ("GemmaForCausalLM", "gemma"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
    "phimoe": ("PhimoeForCausalLM", "phimoe"),
    "deepseek2": ("DeepseekV2ForCausalLM", "deepseek_v2"),
    "gpt-oss": ("GptOssForCausalLM", "gpt_oss"),
    "glm4": ("Glm4ForCausalLM", "glm4"),
    "glm4moe": ("Glm4MoeForCausalLM", "glm4_moe"),
    "command-r": ("CohereForCausalLM", "cohere"),
    "cohere2": ("Cohere2ForCausalLM", "cohere2"),
    "starcoder2": ("Starcoder2ForCausalLM", "starcoder2"),
    "falcon": ("FalconForCausalLM", "falcon"),
    "olmo2": ("Olmo2ForCausalLM", "olmo2"),
    "granite": ("GraniteForCausalLM", "granite"),
}
_MIXTRAL_IDENTITY = ("MixtralForCausalLM", "mixtral")
# DeepSeek-V3/R1 are converted to the deepseek2 arch too; they differ from V2 by sigmoid expert gating
# (ExpertGatingFuncType.SIGMOID in gguf.constants; V2 uses softmax).
_DEEPSEEK_V3_IDENTITY = ("DeepseekV3ForCausalLM", "deepseek_v3")
_EXPERT_GATING_SIGMOID = 2

# HF name of the routed-expert count for model types that do not call it num_experts.
_NATIVE_EXPERT_COUNT_KEY: dict[str, str] = {
    "mixtral": "num_local_experts",
    "gpt_oss": "num_local_experts",
    "phimoe": "num_local_experts",
    "deepseek_v2": "n_routed_experts",
    "deepseek_v3": "n_routed_experts",
    "glm4_moe": "n_routed_experts",
}

# Sliding-window layer pattern llama.cpp hard-codes when the file has no attention.sliding_window_pattern
# array (llama-model.cpp, load_hparams: hparams.set_swa_pattern(n) makes layer il sliding iff
# il % n < n - 1).
_SWA_PATTERN_BY_ARCH: dict[str, int] = {"gemma2": 2, "gemma3": 6, "gpt-oss": 2}


class GgufModel(BaseModel):
    """What a GGUF file says about its model: identity, metadata and the tensor table."""

    model_config = ConfigDict(frozen=True)

    architecture: str = Field(description="general.architecture, e.g. 'llama', 'qwen3moe', 'gpt-oss'.")
    name: str | None = Field(default=None, description="general.name, if present.")
    file_type: str | None = Field(
        default=None, description="general.file_type as a LlamaFileType name, e.g. 'MOSTLY_Q4_K_M'."
    )
    metadata: dict[str, GgufValue] = Field(
        description=(
            "Every metadata key. Scalars as Python values; numeric arrays of at most 1024 items as lists; "
            "longer arrays and string arrays as their length."
        )
    )
    tensors: TensorInventory

    def to_hf_config(self) -> dict[str, Any]:
        """Map the GGUF metadata onto Hugging Face ``config.json`` keys.

        Only keys the file supports are emitted. A per-layer array (e.g. head counts) whose items are all
        equal becomes one integer; otherwise the list is kept. Unknown architectures keep their GGUF name as
        ``model_type`` and get no ``architectures``.
        """
        arch = self.architecture
        config: dict[str, Any] = {}

        def arch_key(template: str) -> Any:
            return self.metadata.get(template.format(arch=arch))

        def put(hf_key: str, value: Any) -> None:
            if value is not None:
                config[hf_key] = _collapse_uniform(value)

        identity = _hf_identity(arch, arch_key(Keys.LLM.EXPERT_COUNT), arch_key(Keys.LLM.EXPERT_GATING_FUNC))
        if identity is not None:
            config["architectures"] = [identity[0]]
            config["model_type"] = identity[1]
        else:
            config["model_type"] = arch

        put("hidden_size", arch_key(Keys.LLM.EMBEDDING_LENGTH))
        put("num_hidden_layers", arch_key(Keys.LLM.BLOCK_COUNT))
        put("intermediate_size", arch_key(Keys.LLM.FEED_FORWARD_LENGTH))
        put("num_attention_heads", arch_key(Keys.Attention.HEAD_COUNT))
        # llama.cpp defaults head_count_kv to head_count when absent (no GQA); HF does the same.
        put(
            "num_key_value_heads",
            _first_present(arch_key(Keys.Attention.HEAD_COUNT_KV), config.get("num_attention_heads")),
        )
        put("max_position_embeddings", arch_key(Keys.LLM.CONTEXT_LENGTH))
        put("rope_theta", arch_key(Keys.Rope.FREQ_BASE))
        put("rms_norm_eps", arch_key(Keys.Attention.LAYERNORM_RMS_EPS))
        put("layer_norm_eps", arch_key(Keys.Attention.LAYERNORM_EPS))
        put("vocab_size", self._vocab_size(arch_key(Keys.LLM.VOCAB_SIZE)))
        put("bos_token_id", self.metadata.get(Keys.Tokenizer.BOS_ID))
        put("eos_token_id", self.metadata.get(Keys.Tokenizer.EOS_ID))
        config["tie_word_embeddings"] = not any(tensor.name == "output.weight" for tensor in self.tensors.tensors)

        if arch == "deepseek2":
            self._put_mla(config, arch_key, put)
        else:
            put("head_dim", arch_key(Keys.Attention.KEY_LENGTH))

        expert_count = arch_key(Keys.LLM.EXPERT_COUNT)
        if expert_count:
            put("num_experts", expert_count)
            native_key = _NATIVE_EXPERT_COUNT_KEY.get(config["model_type"])
            if native_key is not None:
                put(native_key, expert_count)
            put("num_experts_per_tok", arch_key(Keys.LLM.EXPERT_USED_COUNT))
            put("moe_intermediate_size", arch_key(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH))
            put("n_shared_experts", arch_key(Keys.LLM.EXPERT_SHARED_COUNT))
            put("shared_expert_intermediate_size", arch_key(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH))
            put("first_k_dense_replace", arch_key(Keys.LLM.LEADING_DENSE_BLOCK_COUNT))
        put("num_nextn_predict_layers", arch_key(Keys.LLM.NEXTN_PREDICT_LAYERS))

        sliding_window = arch_key(Keys.Attention.SLIDING_WINDOW)
        if sliding_window:
            put("sliding_window", sliding_window)
            layer_types = _layer_types(
                arch, config.get("num_hidden_layers"), arch_key(Keys.Attention.SLIDING_WINDOW_PATTERN)
            )
            if layer_types is not None:
                config["layer_types"] = layer_types

        rope_scaling = self._rope_scaling(arch_key)
        if rope_scaling is not None:
            config["rope_scaling"] = rope_scaling
        return config

    def _vocab_size(self, declared_vocab_size: Any) -> int | None:
        # The token list length is what llama.cpp uses; the converter pads it to the embedding rows.
        token_count = self.metadata.get(Keys.Tokenizer.LIST)
        if isinstance(token_count, int) and token_count > 0:
            return token_count
        if isinstance(declared_vocab_size, int):
            return declared_vocab_size
        for tensor in self.tensors.tensors:
            if tensor.name == "token_embd.weight" and len(tensor.shape) == 2:
                return tensor.shape[0]
        return None

    @staticmethod
    def _put_mla(config: dict[str, Any], arch_key: Callable[[str], Any], put: Callable[[str, Any], None]) -> None:
        """DeepSeek multi-head latent attention keys (HF DeepseekV2/V3 config names).

        Converters since mid-2025 store the absorbed-MLA head sizes in attention.key_length/value_length
        (kv_lora_rank + rope dims, kv_lora_rank) and the original per-head sizes in key_length_mla/
        value_length_mla; older files have only the original sizes in key_length/value_length.
        """
        rope_dims = arch_key(Keys.Rope.DIMENSION_COUNT)
        qk_head_dim = _first_present(arch_key(Keys.Attention.KEY_LENGTH_MLA), arch_key(Keys.Attention.KEY_LENGTH))
        v_head_dim = _first_present(arch_key(Keys.Attention.VALUE_LENGTH_MLA), arch_key(Keys.Attention.VALUE_LENGTH))
        put("kv_lora_rank", arch_key(Keys.Attention.KV_LORA_RANK))
        # A q_lora_rank of 0 means queries are not compressed (DeepSeek-V2-Lite); HF writes null for that.
        q_lora_rank = arch_key(Keys.Attention.Q_LORA_RANK)
        config["q_lora_rank"] = q_lora_rank or None
        put("qk_rope_head_dim", rope_dims)
        if isinstance(qk_head_dim, int) and isinstance(rope_dims, int):
            config["qk_nope_head_dim"] = qk_head_dim - rope_dims
        put("v_head_dim", v_head_dim)
        # No head_dim: DeepSeek's config.json has none either (its head sizes are the keys above).

    @staticmethod
    def _rope_scaling(arch_key: Callable[[str], Any]) -> dict[str, Any] | None:
        scaling_type = arch_key(Keys.Rope.SCALING_TYPE)
        factor = arch_key(Keys.Rope.SCALING_FACTOR)
        if scaling_type in (None, "none") or not factor:
            return None
        scaling: dict[str, Any] = {"rope_type": scaling_type, "factor": factor}
        original_context = arch_key(Keys.Rope.SCALING_ORIG_CTX_LEN)
        if original_context:
            scaling["original_max_position_embeddings"] = original_context
        return scaling


class _HeaderReader(GGUFReader):
    """GGUFReader that steps over array contents instead of building one numpy view per item.

    GGUFReader parses arrays item by item, so a 150k-token vocabulary with its merges takes seconds; this
    module only needs each array's length and the values of short numeric arrays. Everything else (magic,
    version, scalar fields, tensor infos, alignment) is GGUFReader's own code. Array fields keep GGUFReader's
    part layout up to the item type and count: parts are key length, key, value type, item type, item count,
    then (numeric arrays only) all values as one numpy array, which ``data`` points at.
    """

    def _get_field_parts(
        self, orig_offs: int, raw_type: int
    ) -> tuple[int, list[np.ndarray[Any, Any]], list[int], list[GGUFValueType]]:
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_item_type = self._get(orig_offs, np.uint32)
        item_count = self._get(orig_offs + raw_item_type.nbytes, np.uint64)
        values_offset = orig_offs + raw_item_type.nbytes + item_count.nbytes
        item_type = GGUFValueType(raw_item_type[0])
        count = int(item_count[0])
        types = [GGUFValueType.ARRAY, item_type]
        numpy_type = self.gguf_scalar_to_np.get(item_type)
        if numpy_type is not None:
            values = self._get(values_offset, numpy_type, count)
            if len(values) != count:
                raise ValueError(f"array of {count} items runs past the end of the file")
            return values_offset + values.nbytes - orig_offs, [raw_item_type, item_count, values], [2], types
        if item_type == GGUFValueType.STRING:
            end = self._skip_strings(values_offset, count)
            return end - orig_offs, [raw_item_type, item_count], [], types
        # Arrays of arrays are rare and small: GGUFReader's item-by-item parsing.
        return super()._get_field_parts(orig_offs, raw_type)

    def _skip_strings(self, offset: int, count: int) -> int:
        """Offset just past ``count`` length-prefixed strings (u64 byte length, then the bytes)."""
        length_format = "<Q" if self.endianess == GGUFEndian.LITTLE else ">Q"
        buffer = memoryview(self.data)
        try:
            for _ in range(count):
                (string_length,) = struct.unpack_from(length_format, buffer, offset)
                offset += 8 + string_length
        except struct.error as exc:
            raise ValueError(f"string array runs past the end of the file: {exc}") from exc
        if offset > len(buffer):
            raise ValueError("string array runs past the end of the file")
        return offset


def read_gguf(path: str | os.PathLike[str]) -> GgufModel:
    """Read a GGUF file's (or split set's) metadata and tensor table. Raises :class:`ModelFileError`."""
    file_path = Path(path)
    first_reader = _open_reader(file_path)
    split_count = _scalar_field(first_reader, Keys.Split.LLM_KV_SPLIT_COUNT)
    split_paths = [file_path]
    if isinstance(split_count, int) and split_count > 1:
        split_paths = _split_paths(file_path, split_count)
        if split_paths[0] != file_path:
            first_reader = _open_reader(split_paths[0])

    metadata = _read_metadata(first_reader, split_paths[0])
    architecture = metadata.get(Keys.General.ARCHITECTURE)
    if not isinstance(architecture, str) or not architecture:
        raise ModelFileError(f"{split_paths[0]}: GGUF metadata has no {Keys.General.ARCHITECTURE}")

    tensors = _read_tensors(first_reader, split_paths[0])
    for split_path in split_paths[1:]:
        tensors.extend(_read_tensors(_open_reader(split_path), split_path))
    del first_reader  # drop the memory map now rather than at garbage collection
    _check_unique_names(tensors, file_path)
    declared_tensor_count = metadata.get(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
    if len(split_paths) > 1 and isinstance(declared_tensor_count, int) and declared_tensor_count != len(tensors):
        raise ModelFileError(
            f"{split_paths[0]}: the splits hold {len(tensors)} tensors but "
            f"{Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT} says {declared_tensor_count}; a split file is missing "
            "or from another model"
        )

    inventory = TensorInventory(
        format="gguf",
        files=tuple(sorted(split_path.name for split_path in split_paths)),
        tensors=tuple(sorted(tensors, key=lambda tensor: tensor.name)),
        metadata={key: str(value) for key, value in metadata.items() if not isinstance(value, list)},
    )
    name = metadata.get(Keys.General.NAME)
    return GgufModel(
        architecture=architecture,
        name=name if isinstance(name, str) else None,
        file_type=_file_type_name(metadata.get(Keys.General.FILE_TYPE)),
        metadata=metadata,
        tensors=inventory,
    )


def _open_reader(file_path: Path) -> GGUFReader:
    if not file_path.is_file():
        raise ModelFileError(f"{file_path}: no such GGUF file")
    try:
        with file_path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC_BYTES))
    except OSError as exc:
        raise ModelFileError(f"{file_path}: cannot read GGUF file: {exc}") from exc
    if magic != GGUF_MAGIC_BYTES:
        raise ModelFileError(f"{file_path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC_BYTES!r})")
    try:
        return _HeaderReader(file_path)
    # GGUFReader reports a bad magic, an unsupported version or a truncated header through whichever of these
    # numpy raises when a read runs past the end of the memory map.
    except (ValueError, IndexError, KeyError, OverflowError, OSError) as exc:
        raise ModelFileError(
            f"{file_path}: not a readable GGUF file (bad magic, unsupported or truncated): {exc}"
        ) from exc


def _read_metadata(reader: GGUFReader, file_path: Path) -> dict[str, GgufValue]:
    metadata: dict[str, GgufValue] = {}
    for key, field in reader.fields.items():
        if key.startswith(_READER_PSEUDO_FIELD_PREFIX):
            continue
        try:
            metadata[key] = _field_value(field)
        except (ValueError, IndexError) as exc:
            raise ModelFileError(f"{file_path}: metadata key {key!r} cannot be decoded: {exc}") from exc
    return dict(sorted(metadata.items()))


def _field_value(field: Any) -> GgufValue:
    main_type = field.types[0]
    if main_type == GGUFValueType.ARRAY:
        # Parts: key length, key, value type, item type, item count, ... (see _HeaderReader).
        item_count = int(field.parts[4][0])
        item_type = field.types[1]
        if item_type in _NUMERIC_VALUE_TYPES and item_count <= MAX_KEPT_ARRAY_ITEMS:
            return [_python_number(value, item_type) for value in field.parts[field.data[0]]]
        return item_count
    if main_type == GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8", errors="replace")
    return _python_number(field.parts[-1][0], main_type)


def _python_number(value: np.generic, value_type: GGUFValueType) -> bool | int | float:
    if value_type == GGUFValueType.BOOL:
        return bool(value)
    if value_type == GGUFValueType.FLOAT32:
        # Shortest decimal that round-trips in float32, so 1e-5 reads back as 1e-05, not
        # 9.999999747378752e-06.
        return float(np.format_float_positional(value, unique=True, trim="-"))
    if value_type == GGUFValueType.FLOAT64:
        return float(value)
    return int(value)


def _scalar_field(reader: GGUFReader, key: str) -> GgufValue | None:
    field = reader.get_field(key)
    return None if field is None else _field_value(field)


def _read_tensors(reader: GGUFReader, file_path: Path) -> list[TensorInfo]:
    file_size = file_path.stat().st_size
    tensors = []
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > file_size:
            raise ModelFileError(
                f"{file_path}: tensor {tensor.name!r} ends at byte {end} but the file has {file_size} bytes; "
                "the file is truncated"
            )
        tensors.append(
            TensorInfo(
                name=tensor.name,
                dtype=tensor.tensor_type.name,
                # ggml lists dimensions innermost first (ne); frameworks and numpy list them outermost first.
                shape=tuple(int(dim) for dim in reversed(tensor.shape.tolist())),
                nbytes=int(tensor.n_bytes),
            )
        )
    return tensors


def _split_paths(file_path: Path, split_count: int) -> list[Path]:
    match = _SPLIT_NAME.match(file_path.name)
    if match is None or int(match["count"]) != split_count:
        raise ModelFileError(
            f"{file_path}: metadata says the model is split into {split_count} files, but the file name "
            f"does not follow '<name>-00001-of-{split_count:05d}.gguf'; rename the splits or merge them "
            "with gguf-split"
        )
    paths = [
        file_path.with_name(_SPLIT_NAME_FORMAT.format(prefix=match["prefix"], index=index, count=split_count))
        for index in range(1, split_count + 1)
    ]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise ModelFileError(f"{file_path}: split files missing next to it: {', '.join(missing)}")
    return paths


def _check_unique_names(tensors: list[TensorInfo], file_path: Path) -> None:
    seen: set[str] = set()
    for tensor in tensors:
        if tensor.name in seen:
            raise ModelFileError(f"{file_path}: tensor {tensor.name!r} appears in more than one split")
        seen.add(tensor.name)


def _file_type_name(value: Any) -> str | None:
    if not isinstance(value, int):
        return None
    try:
        return LlamaFileType(value).name
    except ValueError:
        return str(value)


def _hf_identity(arch: str, expert_count: Any, gating_func: Any) -> tuple[str, str] | None:
    if arch == "llama" and expert_count:
        return _MIXTRAL_IDENTITY
    if arch == "deepseek2" and gating_func == _EXPERT_GATING_SIGMOID:
        return _DEEPSEEK_V3_IDENTITY
    return HF_IDENTITY_BY_GGUF_ARCH.get(arch)


def _layer_types(arch: str, layer_count: Any, pattern: Any) -> list[str] | None:
    """HF ``layer_types`` ('sliding_attention'/'full_attention' per layer), from the file or llama.cpp."""
    if not isinstance(layer_count, int):
        return None
    if isinstance(pattern, list) and len(pattern) == layer_count:
        return ["sliding_attention" if is_sliding else "full_attention" for is_sliding in pattern]
    period = pattern if isinstance(pattern, int) and pattern > 0 else _SWA_PATTERN_BY_ARCH.get(arch)
    if period is None:
        return None
    return ["sliding_attention" if layer % period < period - 1 else "full_attention" for layer in range(layer_count)]


def _collapse_uniform(value: Any) -> Any:
    if isinstance(value, list) and value and all(item == value[0] for item in value):
        return value[0]
    return value


def _first_present(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)
