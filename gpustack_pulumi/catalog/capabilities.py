"""Capability rules: one function per rule, called by ``estimate``, placement's filters and anything else.

FP8 (weights or KV cache) needs hardware FP8: NVIDIA compute capability ≥ 8.9 (Ada L4/L40S, Hopper, Blackwell;
Ampere 8.0/8.6 has none), and, for devices without a compute capability (AMD, Ascend), the catalog's ``fp8``
flag. A device we know nothing about is not assumed to have it.
"""

from __future__ import annotations

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
FP8_GPUS_HINT = "H100, H200, L40S, L4, B200, MI300X"


def parse_compute_capability(value: str | None) -> tuple[int, int] | None:
    """'8.9' → (8, 9); None for a missing or malformed value."""
    if not value:
        return None
    major, _, minor = str(value).partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return None


def supports_fp8(
    *, compute_capability: str | None = None, product: str | None = None, memory_bytes: int | None = None
) -> bool | None:
    """Whether a device has hardware FP8: from the compute capability when known, else the catalog entry of
    ``product``; None when neither tells."""
    capability = parse_compute_capability(compute_capability)
    if capability is not None:
        return capability >= FP8_MIN_COMPUTE_CAPABILITY
    if product:
        from gpustack_pulumi.catalog import gpu_for_product

        spec = gpu_for_product(product, memory_bytes)
        if spec is not None:
            capability = parse_compute_capability(spec.compute_capability)
            return capability >= FP8_MIN_COMPUTE_CAPABILITY if capability else spec.fp8
    return None


def needs_fp8(quantization: str | None, kv_cache_dtype: str | None) -> str | None:
    """Why a deployment needs FP8 hardware ('quantization fp8', 'kv_cache_dtype fp8_e4m3'), or None."""
    if quantization and quantization.lower().replace("_", "-").startswith(("fp8", "w8a8-fp8")):
        return f"quantization {quantization}"
    if kv_cache_dtype and kv_cache_dtype.lower().startswith("fp8"):
        return f"kv_cache_dtype {kv_cache_dtype}"
    return None


def fp8_problem(
    quantization: str | None,
    kv_cache_dtype: str | None,
    *,
    product: str,
    compute_capability: str | None = None,
    memory_bytes: int | None = None,
) -> str | None:
    """The one FP8 rule: why this deployment cannot run on this device, or None when it can."""
    why = needs_fp8(quantization, kv_cache_dtype)
    if why is None:
        return None
    if supports_fp8(compute_capability=compute_capability, product=product, memory_bytes=memory_bytes):
        return None
    capability = compute_capability or "unknown"
    return f"{why} needs FP8 (compute capability ≥ 8.9: {FP8_GPUS_HINT}); {product} has {capability}"
