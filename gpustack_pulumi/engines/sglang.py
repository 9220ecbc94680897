"""SGLang: ``python3 -m sglang.launch_server`` argv (engines-and-memory.md §4-§6, gpustack.md §3).

- placement: ``--tp-size``, ``--pp-size``, ``--mem-fraction-static`` (the placement's fraction; SGLang's own
  automatic value from the memory model when placement gave none), ``--context-length``;
- multi-node: every node ``--nnodes N --node-rank k --dist-init-addr HEAD:PORT``;
- mode: expert parallel ``--ep-size``, DP attention (``--enable-dp-attention --dp-size`` before 0.5.23,
  ``--attn-dp-size`` from 0.5.23: the spelling comes from ``versions.yaml``), online FP8;
- ``--speculative-algorithm EAGLE3|NEXTN|NGRAM`` with ``--speculative-num-steps``, ``--speculative-eagle-topk``,
  ``--speculative-num-draft-tokens`` (SGLang's automatic default is (3, 1, 4));
- HiCache ``--enable-hierarchical-cache --hicache-size GB`` or ``--hicache-ratio``; ``--enable-metrics``;
- SGLang reads its API key only from ``--api-key``: the launcher appends it in-process from ``SGLANG_API_KEY``
  (``LaunchSpec.argv_from_env``), so it is never in an exec'd argv.
"""

from __future__ import annotations

import math

from gpustack_pulumi.engines.base import EngineContext, EngineRefusal, ExtraMemory, LaunchSpec, raise_first
from gpustack_pulumi.engines.common import (
    extra_memory,
    flag_refusals,
    image_for,
    no_gguf,
    node_spec,
    offload_host_bytes,
    port_argument,
    resolve_version,
)
from gpustack_pulumi.engines.tuning import Tuning, distributed_port, fp8_refusals, merge_extra_args, tune
from gpustack_pulumi.engines.versions import EngineVersion
from gpustack_pulumi.placement.memory.sglang import default_mem_fraction_static

COMMAND_LENGTH = 3  # program words before the engine flags
NAME = "sglang"
API_KEY_ENV = "SGLANG_API_KEY"  # read by the launcher, not by SGLang
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"  # with --enable-metrics
# Our method names -> SGLang's --speculative-algorithm (NEXTN is SGLang's name for MTP drafting).
SPECULATIVE_ALGORITHMS = {
    "eagle3": "EAGLE3",
    "eagle": "EAGLE",
    "mtp": "NEXTN",
    "ngram": "NGRAM",
    "draft_model": "STANDALONE",
}
# SGLang's automatic (steps, topk, draft tokens) when none are given (engines-and-memory.md §6).
DEFAULT_SPECULATIVE_SHAPE = (3, 1, 4)
GB = 10**9  # --hicache-size is in GB


class SglangEngine:
    name = NAME
    vendors = frozenset({"nvidia", "amd"})  # its CUDA and ROCm builds

    def check(self, context: EngineContext) -> list[EngineRefusal]:
        version, refusals = resolve_version(NAME, context)
        if version is not None:
            refusals += self._static_refusals(context, version)
        if version is not None and not refusals:
            for spec in self._render(context, version, tune(NAME, context)):
                refusals += flag_refusals(NAME, version, spec)
        return refusals

    def launch_specs(self, context: EngineContext) -> list[LaunchSpec]:
        # Same checks as ``check``, but the specs are rendered once and returned.
        version, refusals = resolve_version(NAME, context)
        raise_first(refusals)
        assert version is not None
        raise_first(self._static_refusals(context, version))
        specs = self._render(context, version, tune(NAME, context))
        raise_first([refusal for spec in specs for refusal in flag_refusals(NAME, version, spec)])
        return specs

    def extra_memory(self, context: EngineContext) -> ExtraMemory:
        return extra_memory(context, tune(NAME, context))

    # ---------------------------------------------------------------------------------------------------
    def _static_refusals(self, context: EngineContext, version: EngineVersion) -> list[EngineRefusal]:
        refusals = no_gguf(NAME, context)
        vendors = {accelerator.vendor for accelerator in context.accelerators.values()}
        if "cpu" in vendors:
            refusals.append(EngineRefusal(NAME, "placement", "SGLang needs GPUs; a node is CPU-only", ["llama.cpp"]))
        if "ascend" in vendors:
            refusals.append(EngineRefusal(NAME, "engine", "not configured for Ascend here", ["engine: mindie"]))
        refusals += fp8_refusals(NAME, context)
        spec = context.options.speculative
        if not isinstance(spec, str):
            algorithm = SPECULATIVE_ALGORITHMS.get(spec.method)
            if algorithm is None or algorithm not in (version.speculative_algorithms or []):
                refusals.append(
                    EngineRefusal(
                        NAME,
                        "speculative.method",
                        f"{spec.method} has no SGLang {version.version} algorithm",
                        sorted(
                            m for m, a in SPECULATIVE_ALGORITHMS.items() if a in (version.speculative_algorithms or [])
                        ),
                    )
                )
        offload = context.options.kv_offload
        if offload is not None and offload.backend != "hicache":
            refusals.append(
                EngineRefusal(NAME, "kv_offload.backend", f"{offload.backend} is vLLM's", ["hicache", "engine: vllm"])
            )
        tuning = tune(NAME, context)
        if tuning.speculative is not None and context.replica.pipeline_parallel_size > 1:
            refusals.append(
                EngineRefusal(
                    NAME,
                    "speculative",
                    "SGLang speculative decoding is incompatible with pipeline parallelism",
                    ["speculative: off", "pipeline_parallel_size 1"],
                )
            )
        if tuning.speculative is not None and tuning.speculative.method == "mtp" and not context.profile.mtp_parameters:
            refusals.append(
                EngineRefusal(
                    NAME,
                    "speculative.method",
                    f"mtp (NEXTN) needs MTP layers, which {context.profile.model_id} lacks",
                    ["eagle3 with a draft_model", "ngram"],
                )
            )
        if context.is_multi_node and context.head_node not in context.node_addresses:
            refusals.append(
                EngineRefusal(
                    NAME,
                    "node_addresses",
                    f"multi-node replica needs the address of head node {context.head_node}",
                    [f"node_addresses: {{{context.head_node}: <ip>}}"],
                )
            )
        return refusals

    def _render(self, context: EngineContext, version: EngineVersion, tuning: Tuning) -> list[LaunchSpec]:
        reasons = list(tuning.reasons)
        base = self._common_argv(context, version, tuning, reasons)
        image = image_for(version, context, reasons)
        nodes = context.replica.placements
        specs = []
        for rank in range(len(nodes)):
            argv = list(base)
            if len(nodes) > 1:
                address = f"{context.node_addresses[context.head_node]}:{distributed_port(context)}"
                argv += ["--nnodes", str(len(nodes)), "--node-rank", str(rank), "--dist-init-addr", address]
            argv = merge_extra_args(NAME, argv, context.options.extra_args)
            api_key = rank == 0 and context.options.api_key_secret is not None
            specs.append(
                node_spec(
                    NAME,
                    version,
                    context,
                    rank,
                    argv,
                    command_length=COMMAND_LENGTH,
                    env=dict(context.options.extra_env),
                    image=image,
                    api_key_env=API_KEY_ENV,
                    health_path=HEALTH_PATH,
                    metrics_path=METRICS_PATH,
                    reasons=reasons,
                    argv_from_env={"--api-key": API_KEY_ENV} if api_key else None,
                )
            )
        return specs

    def _common_argv(
        self, context: EngineContext, version: EngineVersion, tuning: Tuning, reasons: list[str]
    ) -> list[str]:
        replica, options = context.replica, context.options
        tp, pp = replica.tensor_parallel_size, replica.pipeline_parallel_size
        argv = [
            options.python, "-m", "sglang.launch_server",
            "--model-path", context.model_path,
            "--host", options.host,
            "--port", port_argument(context),
            "--served-model-name", context.served_model_name,
            "--tp-size", str(tp),
            "--context-length", str(context.max_model_len),
        ]  # fmt: skip
        if pp > 1:
            argv += ["--pp-size", str(pp)]
        fraction = replica.memory_fraction
        if fraction is None:
            fraction = default_mem_fraction_static(context.profile, context.head_accelerator.memory_bytes, tp, pp)
            reasons.append(f"mem_fraction_static {fraction:g}: SGLang's automatic value (placement gave none)")
        argv += ["--mem-fraction-static", f"{fraction:g}"]
        if tuning.quantization:
            argv += ["--quantization", tuning.quantization]
        if tuning.kv_cache_dtype != "auto":
            argv += ["--kv-cache-dtype", _sglang_kv_dtype(tuning.kv_cache_dtype)]
        if tuning.expert_parallel:
            argv += ["--ep-size", str(tp)]
        if tuning.attention_dp:
            argv += version.spell("attention_data_parallel", tp) or []
        if tuning.speculative is not None:
            argv += self._speculative_args(tuning)
        offload = options.kv_offload
        if offload is not None:
            argv.append("--enable-hierarchical-cache")
            if offload.host_bytes or not offload.host_ratio:
                size_gb = math.ceil(offload_host_bytes(offload, context) / GB)
                argv += ["--hicache-size", str(size_gb)]
            else:
                argv += ["--hicache-ratio", f"{offload.host_ratio:g}"]
        argv.append("--enable-metrics")
        argv.append("--enable-cache-report")  # cached-token counts in usage, as GPUStack enables
        if options.trust_remote_code:
            argv.append("--trust-remote-code")
        if tuning.tool_call_parser:
            argv += ["--tool-call-parser", tuning.tool_call_parser]
        if tuning.reasoning_parser:
            argv += ["--reasoning-parser", tuning.reasoning_parser]
        return argv

    @staticmethod
    def _speculative_args(tuning: Tuning) -> list[str]:
        spec = tuning.speculative
        assert spec is not None
        argv = ["--speculative-algorithm", SPECULATIVE_ALGORITHMS[spec.method]]
        if spec.draft_model:
            argv += ["--speculative-draft-model-path", spec.draft_model]
        if spec.method == "ngram":
            if spec.num_draft_tokens or spec.num_speculative_tokens:
                argv += ["--speculative-num-draft-tokens", str(spec.num_draft_tokens or spec.num_speculative_tokens)]
            return argv
        default_steps, default_topk, _ = DEFAULT_SPECULATIVE_SHAPE
        steps = spec.num_steps or spec.num_speculative_tokens or default_steps
        topk = spec.eagle_topk or default_topk
        draft_tokens = spec.num_draft_tokens or steps * topk + 1  # SGLang's (3, 1) -> 4
        argv += [
            "--speculative-num-steps", str(steps),
            "--speculative-eagle-topk", str(topk),
            "--speculative-num-draft-tokens", str(draft_tokens),
        ]  # fmt: skip
        return argv


def _sglang_kv_dtype(kv_cache_dtype: str) -> str:
    """SGLang spells vLLM's 'fp8' as fp8_e4m3 (its --kv-cache-dtype choices have no bare 'fp8')."""
    return "fp8_e4m3" if kv_cache_dtype.lower() == "fp8" else kv_cache_dtype
