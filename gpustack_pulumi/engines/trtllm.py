"""TensorRT-LLM: ``trtllm-serve MODEL`` on the PyTorch backend (flags: ``versions/tensorrt-llm-1.2.json``).

- ``--tp_size``/``--pp_size``/``--ep_size``, ``--max_batch_size`` and ``--max_num_tokens`` by mode,
  ``--max_seq_len``;
- ``--kv_cache_free_gpu_memory_fraction`` is a fraction of the memory left *after* the weights (not of the
  GPU): it is derived so the engine stays inside the placement's claim;
- speculative decoding lives in the extra LLM-API options YAML (``--extra_llm_api_options FILE``):
  ``speculative_config: {decoding_type: Eagle3|MTP|NGram, max_draft_len, ...}`` (TensorRT-LLM 1.x
  speculative-decoding docs); the file is written by the launcher (``LaunchSpec.config_files``).
- trtllm-serve has no API-key option and quantizes only offline (ModelOpt checkpoints): both are refused
  with the alternatives.
"""

from __future__ import annotations

import math

import yaml

from gpustack_pulumi.engines.base import (
    ConfigFile,
    EngineContext,
    EngineRefusal,
    ExtraMemory,
    LaunchSpec,
    raise_first,
)
from gpustack_pulumi.engines.common import (
    extra_memory,
    flag_refusals,
    image_for,
    no_gguf,
    port_argument,
    resolve_version,
    secret_env,
)
from gpustack_pulumi.engines.tuning import Tuning, merge_extra_args, tune
from gpustack_pulumi.engines.versions import EngineVersion
from gpustack_pulumi.placement.demand import SIMPLE_OVERHEAD_BYTES
from gpustack_pulumi.placement.memory.vllm import batch_defaults

NAME = "tensorrt-llm"
HEALTH_PATH = "/health"
DECODING_TYPES = {"eagle3": "Eagle3", "mtp": "MTP", "ngram": "NGram"}
KV_FRACTION_BOUNDS = (0.05, 0.95)
LATENCY_MIN_BATCH = 8  # small batches keep per-token latency low; CUDA graphs are captured up to the batch size


class TrtLlmEngine:
    name = NAME
    vendors = frozenset({"nvidia"})  # NVIDIA GPUs only

    def check(self, context: EngineContext) -> list[EngineRefusal]:
        version, refusals = resolve_version(NAME, context)
        refusals += self._static_refusals(context)
        if version is not None and not refusals:
            refusals += flag_refusals(
                NAME, version, self._render(context, version, tune(NAME, context, online_fp8=False))[0]
            )
        return refusals

    def launch_specs(self, context: EngineContext) -> list[LaunchSpec]:
        raise_first(self.check(context))
        version, _ = resolve_version(NAME, context)
        assert version is not None
        return self._render(context, version, tune(NAME, context, online_fp8=False))

    def extra_memory(self, context: EngineContext) -> ExtraMemory:
        return extra_memory(context, tune(NAME, context, online_fp8=False))

    # ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _static_refusals(context: EngineContext) -> list[EngineRefusal]:
        refusals = no_gguf(NAME, context)
        vendors = {accelerator.vendor for accelerator in context.accelerators.values()}
        if vendors != {"nvidia"}:
            refusals.append(
                EngineRefusal(NAME, "placement", f"TensorRT-LLM runs on NVIDIA GPUs only, not {sorted(vendors)}",
                              ["engine: vllm", "engine: mindie (Ascend)", "engine: llama.cpp (CPU)"])
            )  # fmt: skip
        if context.is_multi_node:
            refusals.append(
                EngineRefusal(NAME, "placement", "multi-node trtllm-serve needs an MPI launcher, not managed here",
                              ["engine: vllm", "engine: sglang"])
            )  # fmt: skip
        if context.options.api_key_secret:
            refusals.append(
                EngineRefusal(NAME, "api_key_secret", "trtllm-serve has no API-key option",
                              ["engine: vllm", "engine: sglang", "an authenticating gateway in front"])
            )  # fmt: skip
        if context.deployment.quantization:
            refusals.append(
                EngineRefusal(NAME, "quantization", "TensorRT-LLM serves pre-quantized checkpoints only",
                              ["quantization: null with model_path: an FP8 (ModelOpt) checkpoint", "engine: vllm"])
            )  # fmt: skip
        if context.options.kv_offload is not None:
            refusals.append(EngineRefusal(NAME, "kv_offload", "not managed for TensorRT-LLM", ["engine: vllm"]))
        spec = context.options.speculative
        if not isinstance(spec, str) and spec.method not in DECODING_TYPES:
            refusals.append(
                EngineRefusal(NAME, "speculative.method", f"{spec.method} is not managed here", sorted(DECODING_TYPES))
            )
        return refusals

    def _render(self, context: EngineContext, version: EngineVersion, tuning: Tuning) -> list[LaunchSpec]:
        placement = context.replica.placements[0]
        replica, options = context.replica, context.options
        reasons = list(tuning.reasons)
        if tuning.preset is not None and tuning.preset.fp8_checkpoint and options.model_path is None:
            reasons.append(f"the preset was measured with {tuning.preset.fp8_checkpoint}: set model_path to it")
        accelerator = context.head_accelerator
        max_tokens, max_seqs = batch_defaults(accelerator.memory_bytes, accelerator.key)
        if context.deployment.mode == "latency":
            max_seqs = max(LATENCY_MIN_BATCH, 2 ** math.ceil(math.log2(context.deployment.concurrency)))
            reasons.append(f"max_batch_size {max_seqs}: mode latency, concurrency {context.deployment.concurrency}")
        else:
            reasons.append(
                f"max_batch_size {max_seqs}, max_num_tokens {max_tokens}: vLLM's batch defaults for this GPU"
            )
        argv = [
            "trtllm-serve", context.model_path,
            "--host", options.host,
            "--port", port_argument(context),
            "--backend", "pytorch",
            "--tp_size", str(replica.tensor_parallel_size),
            "--pp_size", str(replica.pipeline_parallel_size),
            "--max_batch_size", str(max_seqs),
            "--max_num_tokens", str(max_tokens),
            "--max_seq_len", str(context.max_model_len),
        ]  # fmt: skip
        if tuning.expert_parallel:
            argv += ["--ep_size", str(replica.tensor_parallel_size)]
        fraction = self._kv_fraction(context)
        argv += version.spell("kv_cache_fraction", f"{fraction:g}") or []
        reasons.append(f"kv_cache_free_gpu_memory_fraction {fraction:g}: keeps the engine inside the placement's claim")
        config_files = []
        if tuning.speculative is not None:
            path = f"/tmp/gpustack/{context.deployment.name}-{replica.replica}/extra-llm-api-options.yml"
            config_files.append(ConfigFile(path=path, content=self._extra_options(tuning)))
            argv += version.spell("extra_options_file", path) or []
        if options.trust_remote_code:
            argv.append("--trust_remote_code")
        argv = merge_extra_args(NAME, argv, options.extra_args)
        return [
            LaunchSpec(
                engine=NAME,
                engine_version=version.version,
                deployment=context.deployment.name,
                replica=replica.replica,
                node=placement.node,
                node_role="head",
                node_rank=0,
                argv=argv,
                command_length=1,
                env=dict(options.extra_env),
                secret_env=secret_env(context, None),
                config_files=config_files,
                image=image_for(version, context, reasons),
                port=options.port,
                health_path=HEALTH_PATH,
                metrics_path=None,
                visible_devices=placement.device_indices,
                memory_bytes_per_device=placement.memory_bytes_per_device,
                reasons=reasons,
            )
        ]

    @staticmethod
    def _kv_fraction(context: EngineContext) -> float:
        """(claim − weights − overhead) / (device − weights − overhead): TensorRT-LLM sizes its KV cache as a
        fraction of the memory free after loading the weights."""
        placement = context.replica.placements[0]
        weights = context.profile.weights_per_rank(
            context.replica.tensor_parallel_size, context.replica.pipeline_parallel_size
        )
        free_after_load = context.head_accelerator.memory_bytes - weights - SIMPLE_OVERHEAD_BYTES
        kv_budget = placement.memory_bytes_per_device - weights - SIMPLE_OVERHEAD_BYTES
        low, high = KV_FRACTION_BOUNDS
        if free_after_load <= 0:
            return low
        return round(min(high, max(low, kv_budget / free_after_load)), 3)

    @staticmethod
    def _extra_options(tuning: Tuning) -> str:
        spec = tuning.speculative
        assert spec is not None
        config: dict[str, object] = {"decoding_type": DECODING_TYPES[spec.method]}
        if spec.method == "mtp":
            config["num_nextn_predict_layers"] = spec.num_speculative_tokens or 1
        else:
            config["max_draft_len"] = spec.num_speculative_tokens or 3
        if spec.draft_model:
            config["speculative_model_dir"] = spec.draft_model
        if spec.method == "ngram":
            config["max_matching_ngram_size"] = spec.prompt_lookup_max or 4
        return yaml.safe_dump({"speculative_config": config}, sort_keys=True)
