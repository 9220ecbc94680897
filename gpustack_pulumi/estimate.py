"""``gpustack-pulumi estimate``: a model's profile and, for a GPU, its memory per GPU term by term.

The computation (``estimate_model``) is pure and returns a JSON-ready dict; rendering is separate.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from rich.console import Console
from rich.table import Table

from gpustack_pulumi import catalog
from gpustack_pulumi.analysis import ModelProfile, analyze
from gpustack_pulumi.analysis.profile import pp_layer_bounds
from gpustack_pulumi.catalog.capabilities import fp8_problem
from gpustack_pulumi.catalog.schema import GpuSpec
from gpustack_pulumi.placement.memory import MemoryBreakdown, MemoryRequest, memory_model

GIB = 1024**3


class EstimateError(ValueError):
    """Bad input to estimate: the message names the problem and the valid choices (exit code 2)."""


EXIT_CODES_HELP = (
    "exit codes: 0 fits (or no --gpu given); 1 does not fit (the reasons are printed); "
    "2 bad input (unknown model, file or GPU, an invalid --tp/--pp, a value out of range: the message names "
    "the option and the valid choices)"
)
# Upper bounds that keep every number meaningful (and every computation small): no model has more layers or
# context than this, and no replica spans more GPUs.
MAX_PARALLEL = 1024
MAX_CONTEXT = 1 << 24  # 16M tokens
MAX_CONCURRENCY = 1 << 20


def _bounded_int(name: str, low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be between {low} and {high:,}, got {value}")
        return value

    parse.__name__ = name
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def add_estimate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="Analyse a model and estimate its GPU memory per engine term.",
        description=(
            "MODEL is a catalog id (e.g. Qwen/Qwen3-8B), a config.json, a model directory (config.json plus "
            "safetensors headers) or a .gguf file. Nothing is downloaded. Sizes are labelled: 'whole model' "
            "(all GPUs together), 'per GPU' (one rank of --tp × --pp) and 'per token' / 'per sequence'."
        ),
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("model", metavar="MODEL", help="catalog id, config.json, model directory or .gguf file")
    parser.add_argument("--gpu", help="GPU catalog key or driver name (e.g. H100-SXM, 'NVIDIA L40S').")
    parser.add_argument(
        "--tp", type=_bounded_int("--tp", 1, MAX_PARALLEL), default=1, help="Tensor-parallel size (default 1)."
    )
    parser.add_argument(
        "--pp",
        type=_bounded_int("--pp", 1, MAX_PARALLEL),
        default=1,
        help="Pipeline-parallel size (default 1; at most the model's layer count).",
    )
    parser.add_argument(
        "--engine",
        choices=["vllm", "sglang"],
        default="vllm",
        help="Inference engine whose memory model is used: vllm (gpu_memory_utilization) or sglang "
        "(mem_fraction_static). Default vllm.",
    )
    parser.add_argument(
        "--max-model-len",
        type=_bounded_int("--max-model-len", 1, MAX_CONTEXT),
        help="Context length in tokens (default: the model's maximum).",
    )
    parser.add_argument(
        "--concurrency",
        type=_bounded_int("--concurrency", 1, MAX_CONCURRENCY),
        default=1,
        help="Full-length sequences that must fit in the KV cache at once (default 1).",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=_fraction,
        help="vLLM gpu_memory_utilization / SGLang mem_fraction_static, in (0, 1] (default: the engine's).",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bf16"],
        help="KV cache element type: auto (the model's dtype; DeepSeek-V3.2: fp8_ds_mla), fp8/fp8_e4m3/fp8_e5m2 "
        "(1 byte, needs FP8 hardware), bf16. Default auto.",
    )
    parser.add_argument(
        "--quantization",
        help="Serve the linear weights as: fp8, int8, awq, gptq, gptq-int4-g64, mxfp4, nvfp4, bf16, fp16 "
        "(default: the checkpoint's format).",
    )
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
    if not 1 <= tp <= MAX_PARALLEL or not 1 <= pp <= MAX_PARALLEL:
        raise EstimateError(f"--tp and --pp must be between 1 and {MAX_PARALLEL} (got tp={tp}, pp={pp})")
    if memory_fraction is not None and not (math.isfinite(memory_fraction) and 0 < memory_fraction <= 1):
        raise EstimateError(f"--gpu-memory-utilization must be in (0, 1], got {memory_fraction}")
    if max_model_len is not None and not 1 <= max_model_len <= MAX_CONTEXT:
        raise EstimateError(f"--max-model-len must be between 1 and {MAX_CONTEXT:,}, got {max_model_len}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise EstimateError(f"--concurrency must be between 1 and {MAX_CONCURRENCY:,}, got {concurrency}")
    profile = analyze(model, quantization=quantization)
    if pp > profile.num_layers:
        raise EstimateError(
            f"--pp {pp} exceeds {profile.model_id}'s {profile.num_layers} layers: each pipeline stage needs at "
            f"least one layer (valid: 1..{profile.num_layers})"
        )
    tp_problems = profile.constraints.tp_problems(tp)
    if tp_problems:
        valid = ", ".join(str(t) for t in profile.constraints.valid_tp_sizes(limit=64))
        raise EstimateError(f"--tp {tp} is invalid for {profile.model_id}: {'; '.join(tp_problems)}. Valid: {valid}")
    if max_model_len is not None and max_model_len > profile.max_model_len:
        raise EstimateError(
            f"--max-model-len {max_model_len} exceeds {profile.model_id}'s maximum context {profile.max_model_len}"
        )
    result = profile_summary(profile, tp=tp, pp=pp, kv_cache_dtype=kv_cache_dtype)
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
    # The same capability rule placement's Fp8Capability filter applies (catalog.capabilities).
    capability_problem = fp8_problem(
        quantization,
        kv_cache_dtype,
        product=spec.names[0],
        compute_capability=spec.compute_capability,
        memory_bytes=spec.memory_bytes,
    )
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
    result["fits"] = breakdown.fits and capability_problem is None
    result["problems"] = ([capability_problem] if capability_problem else []) + list(breakdown.problems)
    model_for_min = memory_model(engine)
    result["min_fraction"] = (
        None
        if capability_problem
        else model_for_min.min_fraction(profile, request, gpu_memory_bytes=breakdown.gpu_memory_bytes, gpu_key=spec.key)
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


# What each number of the JSON is: the whole model (all GPUs together), one GPU (one rank of TP × PP), per token
# or per sequence. Printed in the JSON as "scopes" and used for the table's labels.
SCOPES = {
    "weight_bytes": "bytes, whole model (all GPUs together)",
    "weights_per_gpu": "bytes, per GPU: one rank of --tp × --pp (the most loaded stage)",
    "kv_cache_bytes_per_token": "bytes per token, whole model: every layer that caches tokens (full, MLA and "
    "sliding-window layers; a sliding layer holds at most its window per sequence)",
    "kv_cache_bytes_per_token_per_gpu": "bytes per token, per GPU at --tp × --pp",
    "kv_cache_bytes_per_token_by_layer_type": "bytes per token, whole model, by layer type",
    "kv_cache_bytes_per_token_by_layer_type_per_gpu": "bytes per token, per GPU at --tp × --pp, by layer type",
    "state_bytes_per_sequence": "bytes per sequence, whole model (linear-attention state, constant in length)",
    "state_bytes_per_sequence_per_gpu": "bytes per sequence, per GPU at --tp × --pp",
    "memory": "bytes, per GPU",
    "max_kv_tokens": "tokens the KV pool of one replica holds",
}


def profile_summary(profile: ModelProfile, *, tp: int = 1, pp: int = 1, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    # Per GPU: the most loaded pipeline stage holds this share of the layers (vLLM's get_pp_indices split).
    stage_layers = max(end - start for start, end in pp_layer_bounds(profile.num_layers, pp))
    stage_share = stage_layers / profile.num_layers

    def per_gpu(value: float) -> int:
        return math.ceil(value * stage_share)

    whole_by_kind = profile.kv_cache_bytes_per_token_by_kind(1, kv_cache_dtype)
    gpu_by_kind = {k: per_gpu(v) for k, v in profile.kv_cache_bytes_per_token_by_kind(tp, kv_cache_dtype).items()}
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
        "checkpoint_dtype": profile.checkpoint_dtype,
        "dtype": profile.dtype,
        "weight_format": profile.weight_format,
        "weight_bytes": profile.weight_bytes,
        "weights_per_gpu": profile.weights_per_rank(tp, pp),
        "tp": tp,
        "pp": pp,
        "components": {
            c.name: {"parameters": c.parameters, "bytes": c.bytes, "dtype": c.dtype, "sharding": c.sharding}
            for c in profile.components
        },
        "kv_cache_dtype": kv_cache_dtype if kv_cache_dtype != "auto" else profile.kv_cache_dtype_default,
        "kv_cache_bytes_per_token": sum(whole_by_kind.values()),
        "kv_cache_bytes_per_token_per_gpu": sum(gpu_by_kind.values()),
        "kv_cache_bytes_per_token_by_layer_type": whole_by_kind,
        "kv_cache_bytes_per_token_by_layer_type_per_gpu": gpu_by_kind,
        "sliding_window": profile.sliding_window(),
        "state_bytes_per_sequence": profile.state_bytes_per_sequence(1),
        "state_bytes_per_sequence_per_gpu": per_gpu(profile.state_bytes_per_sequence(tp)),
        "model_max_len": profile.max_model_len,
        "tensor_parallel": {
            "num_attention_heads": profile.constraints.num_attention_heads,
            "num_kv_heads": profile.constraints.num_kv_heads,
            "vocab_size": profile.constraints.vocab_size,
            "moe_intermediate_size": profile.constraints.moe_intermediate_size,
            "valid_tp_sizes": profile.constraints.valid_tp_sizes(limit=64),
        },
        "scopes": SCOPES,
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
        "weights, whole model",
        f"{_gib(result['weight_bytes'])} as {result['weight_format']}"
        + (" (exact, from file headers)" if result["exact_weights"] else " (counted from config)"),
    )
    shape = f"TP {result['tp']}" + (f" × PP {result['pp']}" if result["pp"] > 1 else "")
    head.add_row(f"weights per GPU ({shape})", _gib(result["weights_per_gpu"]))
    dtype = result["kv_cache_dtype"]
    for label, key in (("whole model", ""), (f"per GPU ({shape})", "_per_gpu")):
        by_kind = result[f"kv_cache_bytes_per_token_by_layer_type{key}"]
        parts = ", ".join(f"{kind} {value / 1024:,.1f} KiB" for kind, value in by_kind.items())
        total = result[f"kv_cache_bytes_per_token{key}"]
        detail = f" ({parts})" if len(by_kind) > 1 else ""
        head.add_row(f"KV cache per token, {label}", f"{total / 1024:,.1f} KiB{detail}, {dtype}")
    if result["sliding_window"]:
        head.add_row("sliding window", f"{result['sliding_window']:,} tokens per sequence on sliding layers")
    if result["state_bytes_per_sequence"]:
        head.add_row(
            "linear-attention state per sequence",
            f"{_gib(result['state_bytes_per_sequence'])} whole model, "
            f"{_gib(result['state_bytes_per_sequence_per_gpu'])} per GPU",
        )
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
        table.add_column("bytes per GPU", justify="right")
        for key in ("weights", "activation", "non_torch", "cuda_graphs"):
            table.add_row(key.replace("_", " "), _gib(memory[key]))
        kv = memory["kv_cache"]
        table.add_row("kv cache", _gib(kv) if kv > 0 else f"none left (short by {_gib(-kv)})")
        table.add_row("outside the budget", _gib(memory["process_overhead"]))
        console.print(table)
        verdict = "[green]fits[/green]" if result["fits"] else "[red]does not fit[/red]"
        console.print(
            f"max KV tokens per replica {max(0, result['max_kv_tokens']):,} at {result['max_model_len']:,} context "
            f"({max(0.0, result['max_concurrency']):.2f} full-length sequences): {verdict}"
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
