"""The cluster's OpenAI-compatible gateway: LiteLLM's proxy (open-source features) configured from the plan.

``config`` renders what the gateway serves (pure), ``launch`` the agent instance that runs it (pure),
``litellm_glue`` is the code that runs inside the gateway process, ``client`` talks to a running gateway.
"""

from gpustack_pulumi.gateway.config import (
    GatewayConfig,
    KeyRecord,
    ReplicaRoute,
    RouterSettings,
    key_sha256,
    render_gateway_config,
    routes_for,
)

__all__ = [
    "GatewayConfig",
    "KeyRecord",
    "ReplicaRoute",
    "RouterSettings",
    "key_sha256",
    "render_gateway_config",
    "routes_for",
]
