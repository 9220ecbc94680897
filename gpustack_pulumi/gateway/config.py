"""The gateway's configuration, rendered from the cluster's replicas and the API keys (pure: no I/O, no Pulumi).

What the ``Gateway`` provider pushes to the running gateway on every ``pulumi up`` is a :class:`GatewayConfig`:
the LiteLLM ``model_list`` (one entry per ready replica; entries with the same ``model_name`` form one
load-balanced group), the router settings, and the keys as records holding only the SHA-256 of each key. The
gateway never receives a key itself, so nothing it stores or logs can leak one.

A key that is revoked, or whose expiry has passed when the config is rendered, is left out: it stops working at
the next ``up``. The gateway also checks expiry on every request, so an expired key stops at its expiry even
without an ``up``.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RoutingStrategy = Literal["least-busy", "simple-shuffle", "latency-based-routing", "usage-based-routing-v2"]

KEY_PREFIX = "sk-gps-"
"""Every key the ``ApiKey`` resource makes starts with this, so a leaked one is recognisable in a scan."""

ROUTE_API_KEY = "none"
"""What LiteLLM sends upstream as the replica's key: replicas behind the gateway run without one."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ReplicaRoute(_Frozen):
    """One replica the gateway may send a model's requests to."""

    model: str = Field(min_length=1, max_length=256, description="Public model name clients ask for.")
    served_model: str = Field(min_length=1, max_length=256, description="The name the engine serves.")
    replica_id: str = Field(min_length=1, max_length=256, description="Stable id, e.g. 'chat-r0'.")
    api_base: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="OpenAI base URL, '.../v1'.")


class KeyRecord(_Frozen):
    """What the gateway knows of one API key: its hash and its limits, never the key."""

    alias: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    models: list[str] | None = Field(default=None, description="Models the key may call; None: every model.")
    expires_at: float | None = Field(default=None, description="Unix time after which the key is refused.")
    rpm: int | None = Field(default=None, gt=0, description="Requests per minute.")
    tpm: int | None = Field(default=None, gt=0, description="Tokens (prompt + completion) per minute.")
    token_budget: int | None = Field(default=None, gt=0, description="Total tokens over the key's life.")
    revoked: bool = False


class RouterSettings(_Frozen):
    """LiteLLM router settings (its open-source ``router_settings``)."""

    routing_strategy: RoutingStrategy = "least-busy"
    num_retries: int = Field(default=2, ge=0, le=10, description="Retries on another replica after a failure.")
    allowed_fails: int = Field(default=1, ge=0, description="Failures in a minute before a replica cools down.")
    cooldown_time: float = Field(default=10.0, ge=0, description="Seconds a failing replica gets no traffic.")
    timeout: float = Field(default=600.0, gt=0, description="Seconds one upstream request may take.")


class GatewayConfig(_Frozen):
    """What the gateway serves: pushed to its admin route, persisted on its node, applied without a restart."""

    model_list: list[dict] = Field(default_factory=list)
    router_settings: RouterSettings = Field(default_factory=RouterSettings)
    keys: list[KeyRecord] = Field(default_factory=list)

    @field_validator("keys")
    @classmethod
    def _unique_aliases(cls, keys: list[KeyRecord]) -> list[KeyRecord]:
        aliases = [key.alias for key in keys]
        duplicates = sorted({alias for alias in aliases if aliases.count(alias) > 1})
        if duplicates:
            raise ValueError(f"key aliases must be unique; repeated: {', '.join(duplicates)}")
        return keys


def key_sha256(key: str) -> str:
    """The hash the gateway looks keys up by."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def model_list(routes: list[ReplicaRoute]) -> list[dict]:
    """LiteLLM's ``model_list``: one entry per replica, sorted by model then replica (deterministic)."""
    return [
        {
            "model_name": route.model,
            "litellm_params": {
                "model": f"openai/{route.served_model}",
                "api_base": route.api_base,
                "api_key": ROUTE_API_KEY,
            },
            "model_info": {"id": route.replica_id},
        }
        for route in sorted(routes, key=lambda r: (r.model, r.replica_id))
    ]


def active_keys(keys: list[KeyRecord], now: float) -> list[KeyRecord]:
    """The keys that work now: not revoked, not expired; sorted by alias."""
    return sorted(
        (k for k in keys if not k.revoked and (k.expires_at is None or k.expires_at > now)), key=lambda k: k.alias
    )


def render_gateway_config(
    routes: list[ReplicaRoute], keys: list[KeyRecord], settings: RouterSettings, now: float
) -> GatewayConfig:
    """The config for the current replicas and keys at time ``now``."""
    return GatewayConfig(model_list=model_list(routes), router_settings=settings, keys=active_keys(keys, now))


def routes_for(model: str, served_model: str, deployment: str, endpoints: list[str | None]) -> list[ReplicaRoute]:
    """The routes of one deployment: its replicas that have an endpoint (a pending replica has none)."""
    return [
        ReplicaRoute(model=model, served_model=served_model, replica_id=f"{deployment}-r{index}", api_base=endpoint)
        for index, endpoint in enumerate(endpoints)
        if endpoint
    ]


def litellm_proxy_yaml(config: GatewayConfig, *, auth_module: str, master_key_env: str) -> dict:
    """LiteLLM's proxy config (as a dict to dump as YAML) for the gateway process started with ``config``.

    Only open-source settings: ``custom_auth`` (our key table, no database), the Prometheus callback, the router.
    The master key is read from the environment variable ``master_key_env`` (LiteLLM's ``os.environ/`` form), so
    the file holds no secret.
    """
    return {
        "model_list": config.model_list,
        "router_settings": config.router_settings.model_dump(mode="json"),
        "litellm_settings": {
            "callbacks": ["prometheus"],
            "enable_post_custom_auth_checks": True,
            "drop_params": True,
            "telemetry": False,
        },
        "general_settings": {
            "master_key": f"os.environ/{master_key_env}",
            "custom_auth": f"{auth_module}.user_api_key_auth",
            "custom_auth_run_common_checks": True,
            "disable_spend_logs": True,
        },
    }
