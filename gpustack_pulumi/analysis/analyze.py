"""``analyze(model)``: a catalog id, a config.json, a model directory or a GGUF file → ModelProfile.

Counting from config.json gives parameters for every supported family; when a model directory has
safetensors headers, or the model is a GGUF file, the exact bytes on disk win over counting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, get_args

from gpustack_pulumi.analysis.architectures import ArchitectureShape, ComponentCount, build_shape
from gpustack_pulumi.analysis.errors import AnalysisError
from gpustack_pulumi.analysis.profile import ComponentName, ModelProfile, WeightComponent
from gpustack_pulumi.analysis.quantization import (
    WeightFormat,
    checkpoint_format,
    describe_unknown_quantization,
    parse_quantization,
    serving_float_format,
)
from gpustack_pulumi.analysis.tensors import TensorInfo, TensorInventory

FLOAT_TENSOR_DTYPES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}


def analyze(model: str | Path, *, quantization: str | None = None) -> ModelProfile:
    """Profile a model. ``model`` is a catalog id (``Qwen/Qwen3-8B``), a path to a config.json, a directory with
    a config.json (and optionally safetensors), or a ``.gguf`` file. ``quantization`` re-quantizes the linear
    weights (``fp8``, ``awq``, ``gptq-int4-g64``, ``mxfp4``, ``nvfp4``...). Never touches the network.
    """
    requested = parse_quantization(quantization) if quantization else None
    path = Path(str(model)).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise AnalysisError(f"GGUF file '{path}' does not exist")
        return _from_gguf(path, requested)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                return _from_gguf(ggufs[0], requested)
            raise AnalysisError(f"model directory '{path}' has no config.json (and no .gguf file)")
        from gpustack_pulumi.analysis.safetensors_reader import read_safetensors_dir

        inventory = read_safetensors_dir(path)
        return profile_from_config(
            _load_json(config_path), model_id=str(path), source_kind="config", requested=requested, inventory=inventory
        )
    if path.is_file():
        return profile_from_config(_load_json(path), model_id=str(path), source_kind="config", requested=requested)
    from gpustack_pulumi import catalog

    try:
        entry = catalog.catalog_model(str(model))  # raises UnknownModelError listing the valid ids
    except LookupError:
        if looks_like_path(str(model)):
            raise AnalysisError(
                f"'{model}' does not exist (no such file or directory; and it is not a catalog model id)"
            ) from None
        raise
    return profile_from_config(entry.config(), model_id=entry.id, source_kind="catalog", requested=requested)


def looks_like_path(text: str) -> bool:
    """A file-system path rather than a Hugging Face id ('org/name' has exactly one slash)."""
    return (
        text.startswith(("/", "./", "../", "~", "."))
        or text.count("/") >= 2
        or "\\" in text
        or text.lower().endswith((".json", ".gguf", ".safetensors"))
    )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError (a binary file)
        raise AnalysisError(f"cannot read model config '{path}': {exc}") from exc
    if not isinstance(data, dict):
        raise AnalysisError(f"model config '{path}' must be a JSON object")
    return data


def profile_from_config(
    config: dict[str, Any],
    *,
    model_id: str,
    source_kind: str = "config",
    requested: WeightFormat | None = None,
    inventory: TensorInventory | None = None,
) -> ModelProfile:
    """Build a profile from a config dict, optionally with the checkpoint's tensor inventory."""
    shape = build_shape(config, source=model_id)
    checkpoint_float, linear_format = checkpoint_format(config, source=model_id)
    float_format = serving_float_format(checkpoint_float)
    warnings = list(shape.warnings)
    if float_format != checkpoint_float:
        warnings.append(
            f"the checkpoint is {checkpoint_float.name}; vLLM and SGLang load it in 16 bits with --dtype auto "
            "(vLLM bf16, fp16 before Ampere; SGLang fp16), so weights and KV cache are counted at 2 bytes"
        )
        if not linear_format.is_quantized:
            linear_format = float_format
    unknown_quant = describe_unknown_quantization(config)
    if unknown_quant and inventory is None:
        warnings.append(unknown_quant)
    served_format = requested or linear_format
    if requested is not None and linear_format.is_quantized and requested.name != linear_format.name:
        warnings.append(
            f"the checkpoint is already {linear_format.label()}; re-quantizing to {requested.label()} assumes a "
            f"{requested.label()} checkpoint of the same model"
        )
    components = _counted_components(shape, float_format, served_format)
    exact = False
    if inventory is not None and requested is None:
        # An fp32 checkpoint's float tensors are cast to 16 bits on load (safetensors only: llama.cpp keeps a
        # GGUF's types). Other checkpoints keep theirs: FP8 checkpoints' fp32 scales stay fp32.
        downcast = float_format != checkpoint_float and inventory.format == "safetensors"
        cast_to = int(float_format.bytes_per_weight) if downcast else None
        components = _exact_components(shape, components, inventory, cast_to=cast_to)
        exact = True
    elif inventory is not None:
        warnings.append("safetensors sizes ignored because a quantization was requested; weights are counted")
    mtp_bytes = math.ceil(shape.mtp_parameters * _mtp_bytes_per_param(float_format, served_format))
    return _profile(
        shape,
        model_id=model_id,
        source=("safetensors" if exact else source_kind),
        exact=exact,
        checkpoint_float=checkpoint_float,
        float_format=float_format,
        served_format=served_format,
        quantization=requested.label() if requested else None,
        components=components,
        mtp_bytes=mtp_bytes,
        warnings=warnings,
    )


def _mtp_bytes_per_param(float_format: WeightFormat, linear_format: WeightFormat) -> float:
    # MTP layers are mostly expert matrices stored like the main model's linear weights.
    return linear_format.bytes_per_weight if linear_format.is_quantized else float_format.bytes_per_weight


def _counted_components(
    shape: ArchitectureShape, float_format: WeightFormat, linear_format: WeightFormat
) -> list[WeightComponent]:
    out = []
    for comp in shape.components.values():
        fmt = _format_for(comp, float_format, linear_format)
        out.append(
            WeightComponent(
                name=comp.name,
                parameters=comp.parameters,
                active_parameters=comp.active,
                bytes=math.ceil(comp.parameters * fmt.bytes_per_weight),
                dtype=fmt.label(),
                sharding=comp.sharding,
                layers=comp.layers,
                layer_parameters=tuple(comp.layer_parameters),
            )
        )
    return out


def _format_for(comp: ComponentCount, float_format: WeightFormat, linear_format: WeightFormat) -> WeightFormat:
    if not comp.quantizable or not linear_format.is_quantized:
        return float_format
    if linear_format.scope == "experts" and not comp.is_expert:
        return float_format
    return linear_format


# ----- exact sizes from tensor headers ---------------------------------------------------------------


def classify_tensor(name: str, num_layers: int) -> str | None:
    """Map a checkpoint tensor name (HF or GGUF naming) to a component; None for MTP layers."""
    lowered = name.lower()
    layer = _layer_index(lowered)
    if (layer is not None and layer >= num_layers) or ".mtp." in lowered or lowered.startswith("mtp."):
        return None
    if any(k in lowered for k in ("embed_tokens", "token_embd", "wte.", "tok_embeddings", "word_embeddings")):
        return "embedding"
    if lowered.startswith("lm_head") or lowered.startswith("output.") or ".lm_head" in lowered:
        return "lm_head"
    if "shared_expert" in lowered or "ffn_gate_shexp" in lowered or "shexp" in lowered:
        return "shared_experts"
    if any(k in lowered for k in (".experts.", "_exps.", "_exps", "block_sparse_moe.experts")):
        return "experts"
    if any(
        k in lowered for k in (".mlp.gate.", "router", "ffn_gate_inp", "e_score_correction", "block_sparse_moe.gate")
    ):
        return "router"
    if "norm" in lowered:
        return "norms"
    if any(k in lowered for k in ("k_proj", "v_proj", "attn_k.", "attn_v.")):
        return "attention_kv"
    if any(k in lowered for k in ("q_a_proj", "kv_a_proj", "indexer", "attn_kv_a", "attn_q_a")):
        return "attention_replicated"
    if any(k in lowered for k in ("attn", "attention", "linear_attn", "self_attn")):
        return "attention"
    if any(k in lowered for k in ("mlp", "ffn", "feed_forward")):
        return "mlp"
    return "other"


def _layer_index(name: str) -> int | None:
    for marker in ("layers.", "blk.", "h."):
        idx = name.find(marker)
        if idx != -1:
            rest = name[idx + len(marker) :]
            digits = rest.split(".", 1)[0]
            if digits.isdigit():
                return int(digits)
    return None


def _exact_components(
    shape: ArchitectureShape, counted: list[WeightComponent], inventory: TensorInventory, *, cast_to: int | None = None
) -> list[WeightComponent]:
    """Replace counted bytes by the bytes in the headers; parameters from shapes when stored as floats.

    ``cast_to``: bytes per element the engine casts wider float tensors to on load (fp32 → bf16: 2).
    """
    bytes_by: dict[str, int] = {}
    params_by: dict[str, int] = {}
    all_float: dict[str, bool] = {}
    dtypes_by: dict[str, set[str]] = {}
    for tensor in inventory.tensors:
        name = classify_tensor(tensor.name, shape.num_layers)
        if name is None:
            continue
        nbytes = tensor.nbytes
        width = FLOAT_TENSOR_DTYPES.get(tensor.dtype.upper())
        if cast_to and width and width > cast_to:
            nbytes = tensor.numel * cast_to
        bytes_by[name] = bytes_by.get(name, 0) + nbytes
        params_by[name] = params_by.get(name, 0) + tensor.numel
        all_float[name] = all_float.get(name, True) and _is_float(tensor)
        dtypes_by.setdefault(name, set()).add(tensor.dtype if nbytes == tensor.nbytes else "bf16")
    # Only what the checkpoint stores exists: a tied LM head or an unclassified final norm is not invented.
    by_name = {c.name: c for c in counted}
    out = []
    for name in sorted(bytes_by, key=_component_order):
        base = by_name.get(name)  # type: ignore[call-overload]
        dtype = "/".join(sorted(dtypes_by[name])).lower()
        if base is None:
            out.append(
                WeightComponent(
                    name=name,
                    parameters=params_by[name],
                    active_parameters=params_by[name],
                    bytes=bytes_by[name],
                    dtype=dtype,
                    sharding="replicated",
                    layers=0,
                )
            )
            continue
        params = params_by[name] if all_float[name] else base.parameters
        ratio = base.active_parameters / base.parameters if base.parameters else 1.0
        out.append(
            base.model_copy(
                update={
                    "bytes": bytes_by[name],
                    "parameters": params,
                    "active_parameters": round(params * ratio),
                    "dtype": dtype,
                }
            )
        )
    return out


# Components in the order a forward pass meets them (for readable output), from the ComponentName literal.
_ORDER = [name for name in get_args(ComponentName) if name != "lm_head"] + ["lm_head"]


def _component_order(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def _is_float(tensor: TensorInfo) -> bool:
    return tensor.dtype.upper() in FLOAT_TENSOR_DTYPES


def _profile(
    shape: ArchitectureShape,
    *,
    model_id: str,
    source: str,
    exact: bool,
    checkpoint_float: WeightFormat,
    float_format: WeightFormat,
    served_format: WeightFormat,
    quantization: str | None,
    components: list[WeightComponent],
    mtp_bytes: int,
    warnings: list[str],
) -> ModelProfile:
    embedding = next((c.parameters for c in components if c.name == "embedding"), 0)
    return ModelProfile(
        model_id=model_id,
        architecture=shape.architecture or shape.family,
        family=shape.family,
        source=source,  # type: ignore[arg-type]
        exact_weights=exact,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        vocab_size=shape.vocab_size,
        num_attention_heads=shape.num_attention_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        parameters_total=sum(c.parameters for c in components),
        parameters_active=sum(c.active_parameters for c in components),
        parameters_embedding=embedding,
        num_experts=shape.num_experts,
        num_experts_per_token=shape.num_experts_per_token,
        checkpoint_dtype=checkpoint_float.name,
        dtype=float_format.name,
        weight_format=served_format.label(),
        quantization=quantization,
        components=components,
        weight_bytes=sum(c.bytes for c in components),
        mtp_parameters=shape.mtp_parameters,
        mtp_bytes=mtp_bytes,
        kv_groups=shape.kv_groups,
        kv_cache_dtype_default=shape.kv_cache_dtype_default,
        max_model_len=shape.max_model_len,
        constraints=shape.constraints,
        warnings=warnings,
    )


# ----- GGUF ------------------------------------------------------------------------------------------------


def _from_gguf(path: Path, requested: WeightFormat | None) -> ModelProfile:
    from gpustack_pulumi.analysis.gguf_reader import read_gguf

    gguf = read_gguf(path)
    config = gguf.to_hf_config()
    profile = profile_from_config(
        config,
        model_id=str(path),
        source_kind="config",
        requested=requested,
        inventory=None if requested else gguf.tensors,
    )
    update: dict[str, Any] = {"source": "gguf"}
    if requested is None:
        update["weight_format"] = (gguf.file_type or "gguf").lower()
    return profile.model_copy(update=update)
