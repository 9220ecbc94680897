"""custom: a user argv template with placeholders, validated, rendered per node.

``custom_argv: ["my-server", "--model", "{model}", "--port", "{port}", "--tp", "{tp}"]``. Placeholders are
Python format fields; an unknown one is an error naming the valid ones. ``{port}`` is left for the agent to
fill when options.port is 0. Secrets never go through the template: the API key reaches the process as the
``API_KEY`` environment variable.
"""

from __future__ import annotations

import string

from gpustack_pulumi.engines.base import EngineContext, EngineRefusal, ExtraMemory, LaunchSpec, raise_first
from gpustack_pulumi.engines.common import PORT_PLACEHOLDER, secret_env
from gpustack_pulumi.engines.options import SECRET_FLAGS
from gpustack_pulumi.engines.tuning import distributed_port

NAME = "custom"
API_KEY_ENV = "API_KEY"
PLACEHOLDERS = (
    "model",
    "served_model_name",
    "host",
    "port",
    "tp",
    "pp",
    "devices",
    "max_model_len",
    "memory_fraction",
    "nnodes",
    "node_rank",
    "head_address",
    "distributed_port",
)


class CustomEngine:
    name = NAME
    vendors = frozenset({"nvidia", "amd", "ascend"})  # any accelerator: the user's container decides

    def check(self, context: EngineContext) -> list[EngineRefusal]:
        template = context.options.custom_argv
        if not template:
            return [
                EngineRefusal(
                    NAME, "custom_argv", "engine custom needs an argv template",
                    ['custom_argv: ["my-server", "--model", "{model}", "--port", "{port}"]'],
                )
            ]  # fmt: skip
        refusals = []
        used: set[str] = set()
        for argument in template:
            try:
                fields = [field for _, field, _, _ in string.Formatter().parse(argument) if field is not None]
            except ValueError as error:
                refusals.append(
                    EngineRefusal(NAME, "custom_argv", f"{argument!r}: {error}", ["escape braces as {{ }}"])
                )
                continue
            for field in fields:
                if field not in PLACEHOLDERS:
                    refusals.append(
                        EngineRefusal(NAME, "custom_argv", f"unknown placeholder {{{field}}} in {argument!r}",
                                      [f"{{{name}}}" for name in PLACEHOLDERS])
                    )  # fmt: skip
                used.add(field)
            if argument.split("=", 1)[0] in SECRET_FLAGS:
                refusals.append(
                    EngineRefusal(
                        NAME, "custom_argv", f"{argument} puts a secret in argv", ["api_key_secret (env API_KEY)"]
                    )
                )
        if "port" not in used and not context.options.port:
            refusals.append(
                EngineRefusal(NAME, "custom_argv", "the template never uses {port}, so the engine cannot listen on the "
                              "port the agent assigns", ["add '{port}'", "options.port: a fixed port"])
            )  # fmt: skip
        if context.is_multi_node and context.head_node not in context.node_addresses and "head_address" in used:
            refusals.append(EngineRefusal(NAME, "node_addresses", f"missing the address of {context.head_node}"))
        return refusals

    def launch_specs(self, context: EngineContext) -> list[LaunchSpec]:
        raise_first(self.check(context))
        assert context.options.custom_argv is not None
        replica, options = context.replica, context.options
        specs = []
        for rank, placement in enumerate(replica.placements):
            values = {
                "model": context.model_path,
                "served_model_name": context.served_model_name,
                "host": options.host,
                "port": str(options.port) if options.port else PORT_PLACEHOLDER,
                "tp": replica.tensor_parallel_size,
                "pp": replica.pipeline_parallel_size,
                "devices": ",".join(str(index) for index in placement.device_indices),
                "max_model_len": context.max_model_len,
                "memory_fraction": "" if replica.memory_fraction is None else f"{replica.memory_fraction:g}",
                "nnodes": len(replica.placements),
                "node_rank": rank,
                "head_address": context.node_addresses.get(context.head_node, ""),
                "distributed_port": distributed_port(context),
            }
            argv = [argument.format_map(values) for argument in options.custom_argv]
            head = rank == 0
            specs.append(
                LaunchSpec(
                    engine=NAME,
                    engine_version="custom",
                    deployment=context.deployment.name,
                    replica=replica.replica,
                    node=placement.node,
                    node_role="head" if head else "worker",
                    node_rank=rank,
                    argv=[*argv, *options.extra_args],
                    env=dict(options.extra_env),
                    secret_env=secret_env(context, API_KEY_ENV),
                    image=options.image,
                    port=options.port,
                    health_path=options.custom_health_path if head else None,
                    metrics_path=options.custom_metrics_path if head else None,
                    visible_devices=placement.device_indices,
                    memory_bytes_per_device=placement.memory_bytes_per_device,
                    reasons=["custom argv template rendered as given"],
                )
            )
        return specs

    def extra_memory(self, context: EngineContext) -> ExtraMemory:
        return ExtraMemory()
