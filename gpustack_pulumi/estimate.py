"""``gpustack-pulumi estimate``: a model's profile and, for a GPU, its memory per GPU term by term.

The computation (``estimate_model``) is pure and returns a JSON-ready dict; rendering is separate.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from gpustack_pulumi import catalog
from gpustack_pulumi.analysis import ModelProfile, analyze
from gpustack_pulumi.catalog.schema import GpuSpec
from gpustack_pulumi.placement.memory import MemoryBreakdown, MemoryRequest, memory_model

GIB = 1024**3


class EstimateError(ValueError):
    """Bad input to estimate: the message names the problem and the valid choices (exit code 2)."""


def add_estimate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="Analyse a model and estimate its GPU memory per engine term.",
        description=(
            "MODEL is a catalog id (e.g. Qwen/Qwen3-8B), a config.json, a model directory (config.json plus "
            "safetensors headers) or a .gguf file. Nothing is downloaded."
        ),
    )
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--gpu", help="GPU catalog key or driver name (e.g. H100-SXM, 'NVIDIA L40S').")
    parser.add_argument("--tp", type=int, default=1, help="Tensor-parallel size (default 1).")
    parser.add_argument("--pp", type=int, default=1, help="Pipeline-parallel size (default 1).")
    parser.add_argument("--engine", choices=["vllm", "sglang"], default="vllm")
    parser.add_argument("--max-model-len", type=int, help="Context length (default: the model's maximum).")
    parser.add_argument("--concurrency", type=int, default=1, help="Full-length sequences that must fit at once.")
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        help="vLLM gpu_memory_utilization / SGLang mem_fraction_static (default: the engine's).",
    )
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bf16"])
    parser.add_argument("--quantization", help="fp8, int8, awq, gptq, gptq-int4-g64, mxfp4, nvfp4, bf16, fp16.")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of tables.")
    parser.add_argument(
        "--show-launch", action="store_true", help="With --gpu: also show the engine's launch spec for this shape."
    )


def estimate_model(
    model: str,
    *,
    gpu: str | None = None,
    tp: int = 1,
    pp: int = 1,
    engine: str = "vllm",
    max_model_len: int | None = None,
    concurrency: int = 1,
    memory_fraction: float | None = None,
    kv_cache_dtype: str = "auto",
    quantization: str | None = None,
    show_launch: bool = False,
) -> dict[str, Any]:
    """Profile ``model`` and, with ``gpu``, its per-GPU memory under ``engine``. Raises EstimateError,
    AnalysisError or a catalog LookupError with a message for the user."""
    if tp < 1 or pp < 1:
        raise EstimateError(f"--tp and --pp must be ≥ 1 (got tp={tp}, pp={pp})")
    if memory_fraction is not None and not 0 < memory_fraction <= 1:
        raise EstimateError(f"--gpu-memory-utilization must be in (0, 1], got {memory_fraction}")
    profile = analyze(model, quantization=quantization)
    tp_problems = profile.constraints.tp_problems(tp)
    if tp_problems:
        valid = ", ".join(str(t) for t in profile.constraints.valid_tp_sizes(limit=64))
        raise EstimateError(f"--tp {tp} is invalid for {profile.model_id}: {'; '.join(tp_problems)}. Valid: {valid}")
    if max_model_len is not None and max_model_len > profile.max_model_len:
        raise EstimateError(
            f"--max-model-len {max_model_len} exceeds {profile.model_id}'s maximum context {profile.max_model_len}"
        )
    result = profile_summary(profile, tp=tp, kv_cache_dtype=kv_cache_dtype)
    result["max_model_len"] = max_model_len or profile.max_model_len
    if gpu is None:
        return result
    spec = catalog.gpu(gpu)  # UnknownGpuError lists the valid keys
    request = MemoryRequest(
        tp=tp,
        pp=pp,
        max_model_len=max_model_len,
        concurrency=concurrency,
        kv_cache_dtype=kv_cache_dtype,
        memory_fraction=memory_fraction,
    )
    breakdown = memory_for_gpu(profile, request, spec, engine)
    result["gpu"] = {"key": spec.key, "name": spec.names[0], "memory_bytes": spec.memory_bytes}
    result["engine"] = {"name": breakdown.engine, "version": breakdown.version}
    result["memory"] = {
        **breakdown.terms(),
        "budget": breakdown.budget,
        "process_overhead": breakdown.process_overhead,
        "fraction": breakdown.fraction,
        "gpu_memory_bytes": breakdown.gpu_memory_bytes,
    }
    result["max_kv_tokens"] = breakdown.max_kv_tokens
    result["max_concurrency"] = breakdown.max_concurrency
    result["kv_needed"] = breakdown.kv_needed
    result["fits"] = breakdown.fits
    result["problems"] = breakdown.problems
    model_for_min = memory_model(engine)
    result["min_fraction"] = model_for_min.min_fraction(
        profile, request, gpu_memory_bytes=breakdown.gpu_memory_bytes, gpu_key=spec.key
    )
    if show_launch:
        result["launch"] = launch_for_shape(model, profile, spec, engine, breakdown, max_model_len, kv_cache_dtype,
                                            quantization)  # fmt: skip
    return result


def launch_for_shape(
    model: str,
    profile: ModelProfile,
    spec: GpuSpec,
    engine: str,
    breakdown: MemoryBreakdown,
    max_model_len: int | None,
    kv_cache_dtype: str,
    quantization: str | None,
) -> list[dict[str, Any]]:
    """The launch specs of one replica of this shape on one node of ``spec`` GPUs (as placement would emit)."""
    from gpustack_pulumi.engines.base import NodeAccelerator
    from gpustack_pulumi.engines.launch import launch_specs
    from gpustack_pulumi.placement.models import Deployment, NodePlacement, PlacedReplica

    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in model.rsplit("/", 1)[-1]).strip("-._")
    deployment = Deployment(name=name or "model", model=model, engine=engine, max_model_len=max_model_len,
                            kv_cache_dtype=kv_cache_dtype, quantization=quantization)  # fmt: skip
    devices = breakdown.tp * breakdown.pp
    replica = PlacedReplica(
        deployment=deployment.name, replica=0, engine=engine, tensor_parallel_size=breakdown.tp,
        pipeline_parallel_size=breakdown.pp, memory_fraction=breakdown.fraction, reason="estimate",
        placements=[NodePlacement(node="node", device_indices=list(range(devices)),
                                  memory_bytes_per_device=breakdown.claim_bytes)],
    )  # fmt: skip
    accelerator = NodeAccelerator(vendor=spec.vendor, product=spec.names[0], memory_bytes=spec.memory_bytes, spec=spec)
    specs = launch_specs(replica, profile, deployment, accelerators={"node": accelerator})
    return [s.model_dump(mode="json") for s in specs]


def memory_for_gpu(profile: ModelProfile, request: MemoryRequest, spec: GpuSpec, engine: str) -> MemoryBreakdown:
    """The catalog's memory is the NVML total; each memory model converts to what its engine reads."""
    return memory_model(engine).estimate(profile, request, gpu_memory_bytes=spec.memory_bytes, gpu_key=spec.key)


def profile_summary(profile: ModelProfile, *, tp: int = 1, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    return {
        "model": profile.model_id,
        "architecture": profile.architecture,
        "family": profile.family,
        "source": profile.source,
        "exact_weights": profile.exact_weights,
        "parameters_total": profile.parameters_total,
        "parameters_active": profile.parameters_active,
        "parameters_embedding": profile.parameters_embedding,
        "mtp_parameters": profile.mtp_parameters,
        "weight_format": profile.weight_format,
        "weight_bytes": profile.weight_bytes,
        "weights_per_gpu": profile.weights_per_rank(tp),
        "components": {
            c.name: {"parameters": c.parameters, "bytes": c.bytes, "dtype": c.dtype} for c in profile.components
        },
        "kv_cache_dtype": kv_cache_dtype if kv_cache_dtype != "auto" else profile.kv_cache_dtype_default,
        "kv_cache_bytes_per_token": profile.kv_cache_bytes_per_token(tp, kv_cache_dtype),
        "kv_cache_bytes_per_token_by_layer_type": profile.kv_cache_bytes_per_token_by_kind(tp, kv_cache_dtype),
        "sliding_window": profile.sliding_window(),
        "state_bytes_per_sequence": profile.state_bytes_per_sequence(tp),
        "model_max_len": profile.max_model_len,
        "tensor_parallel": {
            "num_attention_heads": profile.constraints.num_attention_heads,
            "num_kv_heads": profile.constraints.num_kv_heads,
            "vocab_size": profile.constraints.vocab_size,
            "moe_intermediate_size": profile.constraints.moe_intermediate_size,
            "valid_tp_sizes": profile.constraints.valid_tp_sizes(limit=64),
        },
        "warnings": profile.warnings,
    }


# ----- rendering ----------------------------------------------------------------------------------------


def _gib(value: int | float) -> str:
    return f"{value / GIB:,.2f} GiB"


def _count(value: int) -> str:
    return f"{value / 1e9:,.3f} B" if value >= 1e8 else f"{value / 1e6:,.2f} M"


def render(result: dict[str, Any], console: Console) -> None:
    head = Table(title=f"{result['model']} ({result['architecture']})", show_header=False, title_justify="left")
    head.add_column("what", style="bold")
    head.add_column("value")
    head.add_row(
        "parameters",
        f"{_count(result['parameters_total'])} total, {_count(result['parameters_active'])} active per token",
    )
    if result["mtp_parameters"]:
        head.add_row("MTP layers", f"{_count(result['mtp_parameters'])} (loaded only for MTP speculation)")
    head.add_row(
        "weights",
        f"{_gib(result['weight_bytes'])} as {result['weight_format']}"
        + (" (exact, from file headers)" if result["exact_weights"] else " (counted from config)"),
    )
    kv = ", ".join(
        f"{kind} {value / 1024:,.1f} KiB" for kind, value in result["kv_cache_bytes_per_token_by_layer_type"].items()
    )
    head.add_row("KV cache per token", f"{kv} ({result['kv_cache_dtype']})")
    if result["sliding_window"]:
        head.add_row("sliding window", f"{result['sliding_window']} tokens")
    if result["state_bytes_per_sequence"]:
        head.add_row("linear-attention state", f"{_gib(result['state_bytes_per_sequence'])} per sequence")
    head.add_row("max context", f"{result['model_max_len']:,} tokens")
    head.add_row("valid TP sizes", ", ".join(map(str, result["tensor_parallel"]["valid_tp_sizes"])))
    console.print(head)
    if "memory" in result:
        memory = result["memory"]
        table = Table(
            title=(
                f"{result['engine']['name']} {result['engine']['version']} on {result['gpu']['key']} "
                f"(per GPU, fraction {memory['fraction']:g} of {_gib(memory['gpu_memory_bytes'])})"
            ),
            title_justify="left",
        )
        table.add_column("term")
        table.add_column("per GPU", justify="right")
        for key in ("weights", "activation", "non_torch", "cuda_graphs", "kv_cache"):
            table.add_row(key.replace("_", " "), _gib(memory[key]))
        table.add_row("outside the budget", _gib(memory["process_overhead"]))
        console.print(table)
        verdict = "[green]fits[/green]" if result["fits"] else "[red]does not fit[/red]"
        console.print(
            f"max KV tokens {result['max_kv_tokens']:,} at {result['max_model_len']:,} context "
            f"({result['max_concurrency']:.2f} full-length sequences): {verdict}"
        )
        for problem in result["problems"]:
            console.print(f"  - {problem}")
        if result.get("min_fraction"):
            console.print(f"smallest memory fraction that fits: {result['min_fraction']:g}")
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if result.get("launch"):
        from gpustack_pulumi.engines.base import LaunchSpec
        from gpustack_pulumi.engines.launch import render_launch_specs

        console.print("launch spec:")
        console.out(render_launch_specs([LaunchSpec.model_validate(s) for s in result["launch"]]), highlight=False)
