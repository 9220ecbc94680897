"""Weight formats: bytes per weight, and which weights a format applies to.

Only the *linear* weights of a transformer (attention projections, MLP and expert matrices) are quantized by
the formats below; embeddings, the LM head, norms and MoE routers stay in the checkpoint's floating dtype.
That is how vLLM/SGLang load FP8, AWQ/GPTQ, MXFP4 and NVFP4 checkpoints (their ``modules_to_not_convert`` /
``ignore`` lists), so counting those tensors at 2 bytes is exact, not an approximation.

Bytes per weight include the scales each format stores [engines-and-memory.md §3]:

=================  ===========================================================  ==========
format             layout                                                       bytes
=================  ===========================================================  ==========
bf16 / fp16        2 bytes                                                      2
fp8 (block 128²)   1 byte + one fp32 scale per 128×128 block                   1.000244
int8 (w8a8)        1 byte + one fp32 scale per output channel (≈0 per weight)   1.0
awq int4, g=128    4 bits + fp16 scale + 4-bit zero per group of 128           0.51953
gptq int4, g=128   4 bits + fp16 scale + 4-bit zero per group + int32 g_idx/row 0.52734*
mxfp4              4 bits + one E8M0 (1 byte) scale per 32                      0.53125
nvfp4              4 bits + one FP8 scale per 16 (+ a global fp32, negligible)  0.5625
=================  ===========================================================  ==========

(*) GPTQ's ``g_idx`` is one int32 per input row, i.e. 4/out_features bytes per weight; we charge it at the
typical 1/512 share, which keeps the estimate within 0.1 % for hidden sizes ≥ 2048.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from gpustack_pulumi.analysis.errors import UnknownQuantizationError

WeightFormatName = Literal["bf16", "fp16", "fp32", "fp8", "int8", "awq", "gptq", "mxfp4", "nvfp4"]

# Which linear weights a format covers when it is the checkpoint's or the requested quantization.
# "experts": only the routed-expert matrices (gpt-oss's MXFP4 checkpoint keeps attention in bf16).
QuantScope = Literal["linear", "experts"]


class WeightFormat(BaseModel):
    """A storage format for linear weights."""

    model_config = ConfigDict(frozen=True)

    name: WeightFormatName
    bits: int
    group_size: int | None = None
    scope: QuantScope = "linear"

    @property
    def bytes_per_weight(self) -> float:
        """Bytes one weight takes on the GPU, scales included (see the module table)."""
        match self.name:
            case "bf16" | "fp16":
                return 2.0
            case "fp32":
                return 4.0
            case "fp8":
                return 1.0 + 4.0 / (128 * 128)
            case "int8":
                return 1.0
            case "awq":
                group = self.group_size or 128
                return 0.5 + (2.0 + 0.5) / group
            case "gptq":
                group = self.group_size or 128
                return 0.5 + (2.0 + 0.5) / group + 4.0 / 512
            case "mxfp4":
                return 0.5 + 1.0 / 32
            case "nvfp4":
                return 0.5 + 1.0 / 16
        raise AssertionError(self.name)  # pragma: no cover - Literal is exhaustive

    @property
    def is_quantized(self) -> bool:
        return self.name not in ("bf16", "fp16", "fp32")

    def label(self) -> str:
        if self.name in ("awq", "gptq"):
            return f"{self.name}-int{self.bits}-g{self.group_size or 128}"
        return self.name


FLOAT_DTYPES: dict[str, WeightFormat] = {
    "bfloat16": WeightFormat(name="bf16", bits=16),
    "bf16": WeightFormat(name="bf16", bits=16),
    "float16": WeightFormat(name="fp16", bits=16),
    "fp16": WeightFormat(name="fp16", bits=16),
    "half": WeightFormat(name="fp16", bits=16),
    "float32": WeightFormat(name="fp32", bits=32),
    "fp32": WeightFormat(name="fp32", bits=32),
    "float": WeightFormat(name="fp32", bits=32),
}

# What users may pass as --quantization / `quantization:`; values are parsed by `parse_quantization`.
QUANTIZATION_CHOICES = ["bf16", "fp16", "fp8", "int8", "awq", "gptq", "awq-int4-g64", "gptq-int4-g32", "mxfp4", "nvfp4"]


def parse_quantization(name: str) -> WeightFormat:
    """Parse a user-facing quantization name: ``fp8``, ``awq``, ``gptq-int4-g64``, ``mxfp4``, ``nvfp4``...

    Raises :class:`UnknownQuantizationError` listing the valid spellings.
    """
    key = name.strip().lower().replace("_", "-")
    if key in FLOAT_DTYPES:
        return FLOAT_DTYPES[key]
    if key in ("fp8", "fp8-e4m3", "w8a8-fp8"):
        return WeightFormat(name="fp8", bits=8)
    if key in ("int8", "w8a8", "w8a8-int8"):
        return WeightFormat(name="int8", bits=8)
    if key in ("mxfp4",):
        return WeightFormat(name="mxfp4", bits=4)
    if key in ("nvfp4", "modelopt-fp4"):
        return WeightFormat(name="nvfp4", bits=4)
    for method in ("awq", "gptq"):
        if key == method:
            return WeightFormat(name=method, bits=4, group_size=128)
        prefix = f"{method}-int4-g"
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            return WeightFormat(name=method, bits=4, group_size=int(key[len(prefix) :]))
    raise UnknownQuantizationError(name, QUANTIZATION_CHOICES)


def checkpoint_format(config: dict, *, source: str) -> tuple[WeightFormat, WeightFormat]:
    """The checkpoint's (float dtype, linear-weight format) from ``torch_dtype`` and ``quantization_config``.

    Unknown quantization methods fall back to the float dtype; the caller adds a warning (see
    :func:`describe_unknown_quantization`).
    """
    dtype_name = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16").lower()
    float_format = FLOAT_DTYPES.get(dtype_name, FLOAT_DTYPES["bfloat16"])
    qc = config.get("quantization_config") or {}
    method = str(qc.get("quant_method", "")).lower()
    if not method:
        return float_format, float_format
    if method == "fp8":
        return float_format, WeightFormat(name="fp8", bits=8)
    if method == "mxfp4":
        # gpt-oss: only the MoE experts are MXFP4; attention, router, embeddings stay bf16
        # (its quantization_config.modules_to_not_convert).
        return float_format, WeightFormat(name="mxfp4", bits=4, scope="experts")
    if method in ("awq", "gptq"):
        bits = int(qc.get("bits", qc.get("w_bit", 4)))
        group = int(qc.get("group_size", qc.get("q_group_size", 128)))
        if bits == 4:
            return float_format, WeightFormat(name=method, bits=4, group_size=group)
        return float_format, WeightFormat(name="int8", bits=8)
    if method in ("modelopt", "modelopt_fp4"):
        algo = str(qc.get("quant_algo", "")).upper()
        if "FP4" in algo:
            return float_format, WeightFormat(name="nvfp4", bits=4)
        if "FP8" in algo:
            return float_format, WeightFormat(name="fp8", bits=8)
    return float_format, float_format


def serving_float_format(checkpoint: WeightFormat) -> WeightFormat:
    """The float dtype vLLM and SGLang load a checkpoint in with ``--dtype auto``.

    fp32 checkpoints are downcast to 16 bits: vLLM's ``_resolve_auto_dtype`` picks the platform's first
    supported dtype (bf16 from Ampere on, fp16 before), SGLang picks fp16 (bf16 for Gemma). Both are 2 bytes,
    so weights and the KV cache of an fp32 checkpoint are counted at 2 bytes, labelled bf16.
    """
    return FLOAT_DTYPES["bf16"] if checkpoint.name == "fp32" else checkpoint


def describe_unknown_quantization(config: dict) -> str | None:
    """A warning when ``quantization_config`` names a method we do not model."""
    qc = config.get("quantization_config") or {}
    method = str(qc.get("quant_method", "")).lower()
    known = {"", "fp8", "mxfp4", "awq", "gptq", "modelopt", "modelopt_fp4"}
    if method in known:
        return None
    return (
        f"quantization_config.quant_method '{method}' is not modelled; weights are counted at the float "
        "dtype unless safetensors headers are available (pass a model directory for exact sizes)"
    )
