"""llama.cpp: GGUF models on CPU-only nodes or with GPU offload, through one of two front ends.

- ``llama-cpp-python`` (0.3.36): ``python3 -m llama_cpp.server --model F --host H --port P --n_ctx N
  --n_gpu_layers L --model_alias NAME``. Its settings are pydantic-settings, so the API key is read from the
  ``API_KEY`` environment variable. It serves one sequence at a time.
- ``llama-server`` (official image ``ghcr.io/ggml-org/llama.cpp:server-*``): ``llama-server -m F --host H
  --port P -c N×slots -np slots -ngl L --alias NAME --metrics``; the API key is ``LLAMA_API_KEY``, and the
  context given with ``-c`` is shared by the ``-np`` slots, so it is the model length × concurrency.
"""

from __future__ import annotations

from gpustack_pulumi.engines.base import EngineContext, EngineRefusal, ExtraMemory, LaunchSpec, raise_first
from gpustack_pulumi.engines.common import extra_memory, flag_refusals, image_for, port_argument, secret_env
from gpustack_pulumi.engines.tuning import Tuning, merge_extra_args
from gpustack_pulumi.engines.versions import EngineVersion, engine_version

NAME = "llama.cpp"
PYTHON_SERVER_VERSION = "0.3.36"
LLAMA_SERVER_VERSION = "llama-server"
ALL_LAYERS = -1  # n_gpu_layers: offload every layer


class LlamaCppEngine:
    name = NAME
    vendors = frozenset({"nvidia", "amd", "cpu"})  # CUDA, ROCm or the CPU of a CPU-only node

    def check(self, context: EngineContext) -> list[EngineRefusal]:
        version, refusals = self._version(context)
        refusals += self._static_refusals(context)
        if version is not None and not refusals:
            refusals += flag_refusals(NAME, version, self._render(context, version)[0])
        return refusals

    def launch_specs(self, context: EngineContext) -> list[LaunchSpec]:
        raise_first(self.check(context))
        version, _ = self._version(context)
        assert version is not None
        return self._render(context, version)

    def extra_memory(self, context: EngineContext) -> ExtraMemory:
        return extra_memory(context, Tuning())

    # ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _version(context: EngineContext) -> tuple[EngineVersion | None, list[EngineRefusal]]:
        """The front end decides the pinned table: llama-cpp-python's version, or llama-server's."""
        python_server = context.options.llamacpp_server == "llama-cpp-python"
        wanted = context.options.version or (PYTHON_SERVER_VERSION if python_server else LLAMA_SERVER_VERSION)
        if python_server == (wanted == LLAMA_SERVER_VERSION):
            return None, [
                EngineRefusal(
                    NAME,
                    "version",
                    f"{wanted!r} does not belong to front end {context.options.llamacpp_server}",
                    [f"llamacpp_server: llama-server with version {LLAMA_SERVER_VERSION}", PYTHON_SERVER_VERSION],
                )
            ]
        try:
            return engine_version(NAME, wanted), []
        except ValueError as error:
            return None, [EngineRefusal(NAME, "version", str(error))]

    @staticmethod
    def _static_refusals(context: EngineContext) -> list[EngineRefusal]:
        refusals = []
        if context.profile.source != "gguf" and not context.model_path.lower().endswith(".gguf"):
            refusals.append(
                EngineRefusal(
                    NAME, "model", f"llama.cpp serves GGUF files; {context.model_path} is not one",
                    ["engine: vllm", "engine: sglang", "a .gguf conversion of the model"],
                )
            )  # fmt: skip
        if context.is_multi_node:
            refusals.append(
                EngineRefusal(NAME, "placement", "llama.cpp replicas run on one node (RPC servers are not managed)")
            )
        if context.head_accelerator.vendor in ("ascend",):
            refusals.append(EngineRefusal(NAME, "placement", "llama.cpp is not configured for Ascend", ["mindie"]))
        if context.options.llamacpp_server == "llama-cpp-python" and context.options.api_key_secret:
            refusals.append(
                EngineRefusal(
                    NAME,
                    "api_key_secret",
                    "llama-cpp-python guards every route with its API key, /v1/models included, so the agent's "
                    "health probe could never pass",
                    ["llamacpp_server: llama-server (its /health stays public)"],
                )
            )
        if context.deployment.quantization:
            refusals.append(
                EngineRefusal(
                    NAME, "quantization", "a GGUF file carries its own quantization",
                    ["quantization: null", "a GGUF file of the wanted quantization"],
                )
            )  # fmt: skip
        spec = context.options.speculative
        if not isinstance(spec, str):
            refusals.append(EngineRefusal(NAME, "speculative", "not managed for llama.cpp", ["speculative: off"]))
        if context.options.kv_offload is not None:
            refusals.append(EngineRefusal(NAME, "kv_offload", "llama.cpp has no KV offload", ["kv_offload: null"]))
        return refusals

    def _render(self, context: EngineContext, version: EngineVersion) -> list[LaunchSpec]:
        placement = context.replica.placements[0]
        options = context.options
        reasons: list[str] = []
        gpu_layers = options.n_gpu_layers
        if gpu_layers is None:
            gpu_layers = ALL_LAYERS if placement.device_indices else 0
            where = f"GPUs {placement.device_indices}" if placement.device_indices else "the CPU (no GPU placed)"
            reasons.append(f"n_gpu_layers {gpu_layers}: the replica runs on {where}")
        context_tokens = context.max_model_len
        if options.llamacpp_server == "llama-cpp-python":
            argv = [
                options.python, "-m", "llama_cpp.server",
                "--model", context.model_path,
                "--host", options.host,
                "--port", port_argument(context),
                "--n_ctx", str(context_tokens),
                "--n_gpu_layers", str(gpu_layers),
                "--model_alias", context.served_model_name,
            ]  # fmt: skip
            command_length, api_key_env, health, metrics = 3, "API_KEY", "/v1/models", None
        else:
            slots = context.deployment.concurrency
            argv = [
                "llama-server",
                "-m", context.model_path,
                "--host", options.host,
                "--port", port_argument(context),
                "-c", str(context_tokens * slots),
                "-np", str(slots),
                "-ngl", str(gpu_layers),
                "--alias", context.served_model_name,
                "--metrics",
            ]  # fmt: skip
            reasons.append(f"-c {context_tokens * slots}: {slots} slots × {context_tokens} tokens (slots share -c)")
            command_length, api_key_env, health, metrics = 1, "LLAMA_API_KEY", "/health", "/metrics"
        argv = merge_extra_args(NAME, argv, options.extra_args)
        return [
            LaunchSpec(
                engine=NAME,
                engine_version=version.version,
                deployment=context.deployment.name,
                replica=context.replica.replica,
                node=placement.node,
                node_role="head",
                node_rank=0,
                argv=argv,
                command_length=command_length,
                env=dict(options.extra_env),
                secret_env=secret_env(context, api_key_env),
                image=image_for(version, context, reasons),
                port=options.port,
                health_path=health,
                metrics_path=metrics,
                visible_devices=placement.device_indices,
                memory_bytes_per_device=placement.memory_bytes_per_device,
                reasons=reasons,
            )
        ]
