"""How the agent runs the gateway: an instance like an engine's (pure).

The instance body holds no route and no key: those are pushed to the running gateway (``PUT /gpustack/config``),
so a new plan or a new key changes nothing the agent runs, and the gateway keeps serving through every ``up``.
The body changes only when the gateway itself changes (its Python, port, state directory or this glue).
"""

from __future__ import annotations

import json
from importlib import resources

from gpustack_runtime.wire import InstanceBody, LaunchBody

from gpustack_pulumi.gateway.config import GatewayConfig, litellm_proxy_yaml

GLUE_ENV = "GPUSTACK_GATEWAY_GLUE"
MASTER_KEY_ENV = "GPUSTACK_GATEWAY_MASTER_KEY"
BASE_CONFIG_ENV = "GPUSTACK_GATEWAY_BASE_CONFIG"
MODULE_NAME = "gpustack_gateway_glue"
HEALTH_PATH = "/health/liveliness"
"""LiteLLM's public liveness route: 200 once the proxy serves."""

BOOTSTRAP = (
    "import os,sys,types;"
    f"src=os.environ.pop('{GLUE_ENV}');"
    f"m=types.ModuleType('{MODULE_NAME}');"
    f"exec(compile(src,'{MODULE_NAME}.py','exec'),m.__dict__);"
    "m.main(sys.argv[1:],src)"
)
"""``python -c BOOTSTRAP STATE_DIR HOST PORT``: runs the glue's launcher from its source in the environment, so
the gateway's node needs only the gateway's virtualenv, not this package."""


def glue_source() -> str:
    return resources.files("gpustack_pulumi.gateway").joinpath("litellm_glue.py").read_text(encoding="utf-8")


def gateway_instance_body(
    *, owner: str, python: str, state_dir: str, host: str, port: int, master_key: str
) -> InstanceBody:
    """The agent's instance body for the gateway. ``port`` 0 lets the agent pick one (``{port}``)."""
    base = litellm_proxy_yaml(GatewayConfig(), auth_module=MODULE_NAME, master_key_env=MASTER_KEY_ENV)
    return InstanceBody(
        owner=owner,
        launch=LaunchBody(
            argv=[python, "-c", BOOTSTRAP, state_dir, host, "{port}" if port == 0 else str(port)],
            env={
                GLUE_ENV: glue_source(),
                BASE_CONFIG_ENV: json.dumps(base, sort_keys=True),
                MASTER_KEY_ENV: master_key,
            },
            port=port,
            health_path=HEALTH_PATH,
        ),
    )
