"""vLLM: ``vllm serve`` argv from the placement, the profile, the mode and the options.

Flags (engines-and-memory.md §5-§6, checked against the pinned parsers in ``versions/``):
- placement: ``--tensor-parallel-size``, ``--pipeline-parallel-size``, ``--gpu-memory-utilization`` (the
  placement's fraction), ``--max-model-len`` (always explicit: placement sized the KV cache for it);
- multi-node (mp backend, the default since ≈0.18): head ``--nnodes N --node-rank 0 --master-addr A
  --master-port P``; workers the same with ``--node-rank k --headless``. Or Ray (``multi_node_backend: ray``):
  the head runs ``ray start --head`` then ``vllm serve ... --distributed-executor-backend ray``, workers
  ``ray start --address HEAD:P --block``;
- mode: ``--performance-mode interactivity|throughput`` (latency|throughput; balanced is vLLM's default;
  throughput doubles vLLM's batch defaults, latency also caps ``--max-num-seqs``), expert parallel for MoE,
  online FP8 (see :mod:`tuning`);
- ``--speculative-config`` JSON (eagle3/eagle/draft_model with a draft, mtp, ngram), LMCache through
  ``--kv-transfer-config`` plus ``LMCACHE_*`` env, or native ``--kv-offloading-size``;
- the API key only as ``VLLM_API_KEY`` in the environment (vLLM reads it; it protects /v1, not /health).
"""

from __future__ import annotations

import json
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

COMMAND_LENGTH = 2  # program words before the engine flags
NAME = "vllm"
API_KEY_ENV = "VLLM_API_KEY"
HEALTH_PATH = "/health"  # unauthenticated even with an API key (the key guards /v1, /v2, /inference)
METRICS_PATH = "/metrics"
PERFORMANCE_MODE = {"latency": "interactivity", "throughput": "throughput"}  # balanced: vLLM's default
# --performance-mode interactivity captures CUDA graphs for every batch size 1..32 (vllm/config/vllm.py,
# 0.33.0); mode latency caps running sequences there (or at the deployment's concurrency, if larger) so every
# decode step replays one of them. Throughput mode doubles vLLM's batch defaults itself.
INTERACTIVITY_GRAPH_MAX_BATCH = 32
# Our speculative method names are vLLM's own "method" values (model-specific MTP names are aliases of mtp).
SPECULATIVE_METHODS = ("eagle3", "eagle", "mtp", "ngram", "draft_model")
# LMCache connector settings (LMCache docs, as GPUStack sets them): chunk of 256 tokens, local CPU backend.
LMCACHE_CHUNK_SIZE = 256
# num_speculative_tokens when none is given: one per MTP layer (DeepSeek-V3/R1 and GLM-4.5 ship one), three
# for draft heads (vLLM's spec-decode docs examples).
DEFAULT_SPECULATIVE_TOKENS = {"mtp": 1, "eagle3": 3, "eagle": 3, "draft_model": 3, "ngram": 3}
GB = 10**9  # LMCACHE_MAX_LOCAL_CPU_SIZE and --kv-offloading-size are in (decimal) GB / GiB-as-float
GIB = 2**30


class VllmEngine:
    name = NAME
    vendors = frozenset({"nvidia", "amd"})  # its CUDA and ROCm builds

    def check(self, context: EngineContext) -> list[EngineRefusal]:
        version, refusals = resolve_version(NAME, context)
        refusals += self._static_refusals(context)
        if version is not None and not refusals:
            tuning = tune(NAME, context)
            for spec in self._render(context, version, tuning):
                refusals += flag_refusals(NAME, version, spec)
        return refusals

    def launch_specs(self, context: EngineContext) -> list[LaunchSpec]:
        # Same checks as ``check``, but the specs are rendered once and returned.
        version, refusals = resolve_version(NAME, context)
        raise_first(refusals)
        assert version is not None
        raise_first(self._static_refusals(context))
        specs = self._render(context, version, tune(NAME, context))
        raise_first([refusal for spec in specs for refusal in flag_refusals(NAME, version, spec)])
        return specs

    def extra_memory(self, context: EngineContext) -> ExtraMemory:
        return extra_memory(context, tune(NAME, context))

    # ---------------------------------------------------------------------------------------------------
    def _static_refusals(self, context: EngineContext) -> list[EngineRefusal]:
        refusals = no_gguf(NAME, context)
        vendors = {accelerator.vendor for accelerator in context.accelerators.values()}
        if "cpu" in vendors:
            refusals.append(
                EngineRefusal(NAME, "placement", "vLLM needs GPUs; a node of this replica is CPU-only", ["llama.cpp"])
            )
        if "ascend" in vendors and not context.options.image:
            refusals.append(
                EngineRefusal(
                    NAME,
                    "engine",
                    "vLLM on Ascend needs the vllm-ascend image",
                    ["engine: mindie", "options.image: a vllm-ascend image"],
                )
            )
        refusals += fp8_refusals(NAME, context)
        spec = context.options.speculative
        if not isinstance(spec, str) and spec.method not in SPECULATIVE_METHODS:
            refusals.append(
                EngineRefusal(
                    NAME, "speculative.method", f"{spec.method} is not a vLLM method", list(SPECULATIVE_METHODS)
                )
            )
        if context.options.kv_offload is not None and context.options.kv_offload.backend == "hicache":
            refusals.append(
                EngineRefusal(
                    NAME, "kv_offload.backend", "hicache is SGLang's", ["lmcache", "native", "engine: sglang"]
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
        tuning = tune(NAME, context)
        if tuning.speculative is not None and context.replica.pipeline_parallel_size > 1:
            refusals.append(
                EngineRefusal(
                    NAME,
                    "speculative",
                    "vLLM speculative decoding is not compatible with pipeline parallelism",
                    ["speculative: off", "a placement with pipeline_parallel_size 1"],
                )
            )
        if tuning.speculative is not None and tuning.speculative.method == "mtp" and not context.profile.mtp_parameters:
            refusals.append(
                EngineRefusal(
                    NAME,
                    "speculative.method",
                    f"mtp needs MTP layers, which {context.profile.model_id} lacks",
                    ["eagle3 with a draft_model", "ngram"],
                )
            )
        return refusals

    def _render(self, context: EngineContext, version: EngineVersion, tuning: Tuning) -> list[LaunchSpec]:
        reasons = list(tuning.reasons)
        base = self._common_argv(context, version, tuning, reasons)
        env = dict(context.options.extra_env)
        offload = context.options.kv_offload
        if offload is not None and offload.backend == "lmcache":
            env.update(
                LMCACHE_LOCAL_CPU="True",
                LMCACHE_CHUNK_SIZE=str(LMCACHE_CHUNK_SIZE),
                LMCACHE_MAX_LOCAL_CPU_SIZE=f"{offload_host_bytes(offload, context) / GB:g}",
            )
        image = image_for(version, context, reasons)
        nodes = context.replica.placements
        specs = []
        ray = len(nodes) > 1 and context.options.multi_node_backend == "ray"
        for rank in range(len(nodes)):
            argv = list(base)
            command_length = COMMAND_LENGTH
            if ray:
                argv, command_length = self._ray_argv(context, argv, rank)
            elif len(nodes) > 1:
                argv += [
                    "--nnodes", str(len(nodes)), "--node-rank", str(rank),
                    "--master-addr", context.node_addresses[context.head_node],
                    "--master-port", str(distributed_port(context)),
                ]  # fmt: skip
                if rank > 0:
                    argv.append("--headless")
            if rank == 0 or not ray:
                argv = merge_extra_args(NAME, argv, context.options.extra_args)
            specs.append(
                node_spec(
                    NAME,
                    version,
                    context,
                    rank,
                    argv,
                    command_length=command_length,
                    env=env,
                    image=image,
                    api_key_env=API_KEY_ENV,
                    health_path=HEALTH_PATH,
                    metrics_path=METRICS_PATH,
                    reasons=reasons,
                )
            )
        return specs

    def _common_argv(
        self, context: EngineContext, version: EngineVersion, tuning: Tuning, reasons: list[str]
    ) -> list[str]:
        replica, options = context.replica, context.options
        argv = [
            "vllm", "serve", context.model_path,
            "--host", options.host,
            "--port", port_argument(context),
            "--served-model-name", context.served_model_name,
            "--tensor-parallel-size", str(replica.tensor_parallel_size),
            "--max-model-len", str(context.max_model_len),
        ]  # fmt: skip
        if replica.pipeline_parallel_size > 1:
            argv += ["--pipeline-parallel-size", str(replica.pipeline_parallel_size)]
        if replica.memory_fraction is not None:
            argv += ["--gpu-memory-utilization", f"{replica.memory_fraction:g}"]
        else:
            reasons.append("gpu_memory_utilization: vLLM's default (placement gave no fraction)")
        if tuning.quantization:
            argv += ["--quantization", tuning.quantization]
        if tuning.kv_cache_dtype != "auto":
            argv += ["--kv-cache-dtype", tuning.kv_cache_dtype]
        if tuning.expert_parallel:
            argv.append("--enable-expert-parallel")
        if tuning.attention_dp:
            reasons.append(
                "attention data parallel: not applied on vLLM (its DP attention is --data-parallel-size with a "
                "different process layout than the placed TP replica); engine sglang applies it"
            )
        mode = PERFORMANCE_MODE.get(context.deployment.mode)
        if mode:
            spelled = version.spell("performance_mode", mode)
            if spelled:
                argv += spelled
                reasons.append(f"performance mode {mode}: deployment mode {context.deployment.mode}")
        if context.deployment.mode == "latency":
            seqs = max(INTERACTIVITY_GRAPH_MAX_BATCH, context.deployment.concurrency)
            argv += ["--max-num-seqs", str(seqs)]
            reasons.append(f"max_num_seqs {seqs}: mode latency keeps decode batches inside the captured CUDA graphs")
        if tuning.async_scheduling:
            argv.append("--async-scheduling")
        if tuning.speculative is not None:
            argv += version.spell("speculative_config", self._speculative_json(tuning)) or []
        argv += self._offload_args(context)
        argv += ["--enable-prompt-tokens-details"]  # cached-token counts in usage, as GPUStack enables
        if options.trust_remote_code:
            argv.append("--trust-remote-code")
        if tuning.tool_call_parser:
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", tuning.tool_call_parser]
        if tuning.reasoning_parser:
            argv += ["--reasoning-parser", tuning.reasoning_parser]
        return argv

    @staticmethod
    def _ray_argv(context: EngineContext, vllm_argv: list[str], rank: int) -> tuple[list[str], int]:
        """Ray backend: the head starts the Ray head and then execs vLLM; workers join it and block. The
        engine flags start after ``sh -c SCRIPT NAME vllm serve``."""
        address = f"{context.node_addresses[context.head_node]}:{distributed_port(context)}"
        if rank > 0:
            worker = ["ray", "start", f"--address={address}", "--block"]
            return worker, len(worker)  # no vLLM flags on a Ray worker
        script = f'ray start --head --port={distributed_port(context)} --disable-usage-stats && exec "$@"'
        argv = ["/bin/sh", "-c", script, "vllm-ray-head", *vllm_argv, "--distributed-executor-backend", "ray"]
        return argv, 4 + COMMAND_LENGTH

    @staticmethod
    def _speculative_json(tuning: Tuning) -> str:
        spec = tuning.speculative
        assert spec is not None
        config: dict[str, object] = {"method": spec.method}
        if spec.draft_model:
            config["model"] = spec.draft_model
        config["num_speculative_tokens"] = (
            spec.num_speculative_tokens or spec.num_steps or DEFAULT_SPECULATIVE_TOKENS[spec.method]
        )
        if spec.method == "ngram":
            config["prompt_lookup_max"] = spec.prompt_lookup_max or 4
            if spec.prompt_lookup_min:
                config["prompt_lookup_min"] = spec.prompt_lookup_min
        return json.dumps(config, separators=(",", ":"), sort_keys=True)

    @staticmethod
    def _offload_args(context: EngineContext) -> list[str]:
        offload = context.options.kv_offload
        if offload is None:
            return []
        if offload.backend == "lmcache":
            connector = {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
            return ["--kv-transfer-config", json.dumps(connector, separators=(",", ":"), sort_keys=True)]
        # native: size in GiB, total across the TP ranks of the node
        size = math.ceil(offload_host_bytes(offload, context) / GIB)
        return ["--kv-offloading-size", str(size), "--kv-offloading-backend", "native"]
