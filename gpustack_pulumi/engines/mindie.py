"""MindIE (Ascend NPUs only): the service's config.json generated from the placement, then its daemon.

MindIE is configured by ``conf/config.json`` rather than flags. We write it (``LaunchSpec.config_files``)
with: the devices (``npuDeviceIds``: logical ids, the agent's ``ASCEND_RT_VISIBLE_DEVICES`` renumbers them
from 0), the world size (the replica's TP), the sequence lengths (``maxSeqLen``/``maxInputTokenLen``/
``maxPrefillTokens`` from the deployment's context) and the KV memory per NPU (``npuMemSize`` in GB: the
placement's claim minus weights and the framework overhead). The business port is the agent's ``{port}``;
the management and metrics ports are derived per replica so two instances on one node never collide.
"""

from __future__ import annotations

import json

from gpustack_pulumi.engines.base import (
    ConfigFile,
    EngineContext,
    EngineRefusal,
    ExtraMemory,
    LaunchSpec,
    raise_first,
)
from gpustack_pulumi.engines.common import PORT_PLACEHOLDER, image_for, no_gguf, resolve_version, secret_env
from gpustack_pulumi.engines.tuning import distributed_port, tune
from gpustack_pulumi.engines.versions import EngineVersion
from gpustack_pulumi.placement.demand import SIMPLE_OVERHEAD_BYTES

NAME = "mindie"
SERVICE_DIR = "/usr/local/Ascend/mindie/latest/mindie-service"
DAEMON = f"{SERVICE_DIR}/bin/mindieservice_daemon"
CONFIG_PATH = f"{SERVICE_DIR}/conf/config.json"
HEALTH_PATH = "/info"  # what GPUStack probes for MindIE readiness (serve_manager.py is_ready)
GB = 10**9
CACHE_BLOCK_SIZE = 128  # MindIE's cacheBlockSize default (GPUStack's estimate uses the same 128)
MAX_BATCH_SIZE = 200  # GPUStack's MindIE max_batch_size default (ascend_mindie_resource_fit_selector.py)
CPU_SWAP_GB = 5  # cpuMemSize: host memory for swapped-out KV blocks per instance, MindIE's sample value
_PORT_SENTINEL = "__GPUSTACK_PORT__"


class MindIEEngine:
    name = NAME
    vendors = frozenset({"ascend"})  # Ascend NPUs only

    def check(self, context: EngineContext) -> list[EngineRefusal]:
        _, refusals = resolve_version(NAME, context)
        refusals += no_gguf(NAME, context)
        vendors = {accelerator.vendor for accelerator in context.accelerators.values()}
        if vendors != {"ascend"}:
            refusals.append(
                EngineRefusal(
                    NAME, "engine", f"MindIE runs on Ascend NPUs only; this replica is on {', '.join(sorted(vendors))}",
                    ["engine: vllm", "engine: sglang", "engine: tensorrt-llm", "engine: auto"],
                )
            )  # fmt: skip
        if context.is_multi_node:
            refusals.append(EngineRefusal(NAME, "placement", "multi-node MindIE (rank tables) is not managed"))
        for option, value, alternatives in (
            ("api_key_secret", context.options.api_key_secret, ["an authenticating gateway in front"]),
            ("quantization", context.deployment.quantization, ["model_path: a W8A8 checkpoint"]),
            ("kv_offload", context.options.kv_offload, ["kv_offload: null"]),
        ):
            if value:
                refusals.append(EngineRefusal(NAME, option, "not supported by the MindIE engine here", alternatives))
        if not isinstance(context.options.speculative, str):
            refusals.append(EngineRefusal(NAME, "speculative", "not managed for MindIE", ["speculative: off"]))
        if context.options.extra_args:
            refusals.append(EngineRefusal(NAME, "extra_args", "MindIE takes no flags; it reads config.json"))
        return refusals

    def launch_specs(self, context: EngineContext) -> list[LaunchSpec]:
        raise_first(self.check(context))
        version, _ = resolve_version(NAME, context)
        assert version is not None
        return [self._render(context, version)]

    def extra_memory(self, context: EngineContext) -> ExtraMemory:
        return ExtraMemory(host_bytes_per_node=CPU_SWAP_GB * GB, reasons=[f"cpuMemSize {CPU_SWAP_GB} GB of swap"])

    def service_config(self, context: EngineContext) -> dict[str, object]:
        """MindIE's config.json as a dict (port left as a sentinel for the agent's port)."""
        placement = context.replica.placements[0]
        replica, options = context.replica, context.options
        weights = context.profile.weights_per_rank(replica.tensor_parallel_size, replica.pipeline_parallel_size)
        kv_gb = max(1, (placement.memory_bytes_per_device - weights - SIMPLE_OVERHEAD_BYTES) // GB)
        management_port = distributed_port(context)
        length = context.max_model_len
        return {
            "Version": "1.0.0",
            "ServerConfig": {
                "ipAddress": options.host,
                "managementIpAddress": options.host,
                "port": options.port or _PORT_SENTINEL,
                "managementPort": management_port,
                "metricsPort": management_port + 1,
                "httpsEnabled": False,
                "inferMode": "standard",
            },
            "BackendConfig": {
                "backendName": "mindieservice_llm_engine",
                "modelInstanceNumber": 1,
                "npuDeviceIds": [list(range(len(placement.device_indices)))],
                "multiNodesInferEnabled": False,
                "ModelDeployConfig": {
                    "maxSeqLen": length,
                    "maxInputTokenLen": length,
                    "truncation": False,
                    "ModelConfig": [
                        {
                            "modelInstanceType": "Standard",
                            "modelName": context.served_model_name,
                            "modelWeightPath": context.model_path,
                            "worldSize": replica.tensor_parallel_size,
                            "cpuMemSize": CPU_SWAP_GB,
                            "npuMemSize": kv_gb,
                            "backendType": "atb",
                            "trustRemoteCode": options.trust_remote_code,
                        }
                    ],
                },
                "ScheduleConfig": {
                    "cacheBlockSize": CACHE_BLOCK_SIZE,
                    "maxPrefillTokens": length,
                    "maxBatchSize": MAX_BATCH_SIZE,
                    "maxIterTimes": length,
                },
            },
        }

    def _render(self, context: EngineContext, version: EngineVersion) -> LaunchSpec:
        placement = context.replica.placements[0]
        tuning = tune(NAME, context, online_fp8=False)
        reasons = [*tuning.reasons, f"npuMemSize: placement claim minus weights and {SIMPLE_OVERHEAD_BYTES} B overhead"]
        content = json.dumps(self.service_config(context), indent=2, sort_keys=True)
        content = content.replace(f'"{_PORT_SENTINEL}"', PORT_PLACEHOLDER)  # the agent fills {port} (an int)
        return LaunchSpec(
            engine=NAME,
            engine_version=version.version,
            deployment=context.deployment.name,
            replica=context.replica.replica,
            node=placement.node,
            node_role="head",
            node_rank=0,
            argv=[DAEMON],
            env=dict(context.options.extra_env),
            secret_env=secret_env(context, None),
            config_files=[ConfigFile(path=CONFIG_PATH, content=content)],
            image=image_for(version, context, reasons),
            port=context.options.port,
            health_path=HEALTH_PATH,
            metrics_path=None,
            visible_devices=placement.device_indices,
            memory_bytes_per_device=placement.memory_bytes_per_device,
            reasons=reasons,
        )
