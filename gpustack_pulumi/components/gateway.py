# No `from __future__ import annotations`: Pulumi reads these annotations at runtime (see components/__init__.py).
"""Gateway and ApiKey: one OpenAI-compatible endpoint per cluster, with keys, quotas and usage.

The gateway is LiteLLM's proxy (open-source features only) run by one of the cluster's agents like an engine.
Every ``pulumi up`` renders its config from the deployments' replicas and the keys
(``gpustack_pulumi.gateway.config``) and pushes it to the running gateway, which applies it in place.
"""

import datetime
import os
import re
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pulumi
import pulumi.dynamic

from gpustack_pulumi.components.cluster import ComponentArgsError, GpuCluster
from gpustack_pulumi.components.deployment import ModelDeployment
from gpustack_pulumi.components.resources import AgentToken
from gpustack_pulumi.gateway.config import RouterSettings, routes_for
from gpustack_pulumi.providers.api_key import ApiKeyProvider
from gpustack_pulumi.providers.gateway import GatewayProvider

GATEWAY_PYTHON_ENV = "GPUSTACK_GATEWAY_PYTHON"
DEFAULT_GATEWAY_VENV = Path(__file__).resolve().parents[2] / ".cache" / "gateway-venv"
"""Where ``scripts/setup.sh`` installs the gateway's virtualenv (hash-pinned LiteLLM) in a checkout."""
_ALIAS = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def default_gateway_python() -> str:
    """``$GPUSTACK_GATEWAY_PYTHON``, else the checkout's gateway virtualenv."""
    return os.environ.get(GATEWAY_PYTHON_ENV) or str(DEFAULT_GATEWAY_VENV / "bin" / "python")


class ApiKeyArgs(TypedDict):
    models: NotRequired[list[str]]
    """Models the key may call (the gateway's model names); absent: every model."""
    expires_at: NotRequired[str]
    """ISO 8601 time (with a zone, e.g. '2027-01-31T00:00:00Z') after which the key is refused."""
    rpm: NotRequired[int]
    """Requests per minute."""
    tpm: NotRequired[int]
    """Tokens (prompt + completion) per minute."""
    token_budget: NotRequired[int]
    """Tokens the key may use in all (counted by the gateway from what the engines report)."""
    revoked: NotRequired[bool]
    """True: the key stops working at the next ``up`` (the resource stays, so it can be un-revoked)."""
    rotation: NotRequired[int]
    """Change it to get a new key (the old one stops working at the same ``up``)."""
    alias: NotRequired[str]
    """Name in usage reports and metrics (default: the resource name)."""


class ApiKey(pulumi.dynamic.Resource, module="gpustack", name="ApiKey"):
    """An API key of the cluster's gateway: a Pulumi secret, with scope, expiry, rate limits and a budget."""

    key: pulumi.Output[str]
    """The key (secret): send it as ``Authorization: Bearer <key>``."""
    key_sha256: pulumi.Output[str]
    record: pulumi.Output[dict]
    """What the gateway knows of the key: its hash, scope and limits."""

    def __init__(self, name: str, args: ApiKeyArgs | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        props = _api_key_props(name, args or {})
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["key"]))
        super().__init__(ApiKeyProvider(), name, {**props, "key": None, "key_sha256": None, "record": None}, opts)


def _api_key_props(name: str, args: ApiKeyArgs) -> dict[str, Any]:
    alias = args.get("alias", name)
    if not _ALIAS.match(alias):
        raise ComponentArgsError(f"ApiKey '{name}': alias '{alias}' must be 1-128 letters, digits, '.', '_' or '-'")
    for field in ("rpm", "tpm", "token_budget"):
        value = args.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ComponentArgsError(f"ApiKey '{name}': {field} must be a positive integer")
    models = args.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)):
        raise ComponentArgsError(f"ApiKey '{name}': models must be a list of model names")
    expires_at = None
    if args.get("expires_at") is not None:
        try:
            moment = datetime.datetime.fromisoformat(str(args["expires_at"]))
        except ValueError:
            raise ComponentArgsError(
                f"ApiKey '{name}': expires_at '{args['expires_at']}' is not an ISO 8601 time "
                "(e.g. 2027-01-31T00:00:00Z)"
            ) from None
        if moment.tzinfo is None:
            raise ComponentArgsError(f"ApiKey '{name}': expires_at needs a time zone (e.g. ...Z or +01:00)")
        expires_at = moment.timestamp()
    return {
        "alias": alias,
        "models": sorted(models) if models is not None else None,
        "expires_at": expires_at,
        "rpm": args.get("rpm"),
        "tpm": args.get("tpm"),
        "token_budget": args.get("token_budget"),
        "revoked": bool(args.get("revoked", False)),
        "rotation": int(args.get("rotation", 0)),
    }


class GatewayArgs(TypedDict):
    cluster: GpuCluster
    """The cluster whose agents run the gateway."""
    models: dict[str, ModelDeployment]
    """Model name clients ask for → the deployment serving it (its ready replicas form one group)."""
    keys: NotRequired[list[ApiKey]]
    """The keys the gateway accepts."""
    served_model_names: NotRequired[dict[str, str]]
    """Model name → the name its engine serves, where the deployment sets ``served_model_name`` (default: the
    deployment's name)."""
    node: NotRequired[str]
    """Node that runs the gateway (default: the cluster's first node by name)."""
    host: NotRequired[str]
    """Address the gateway listens on (default 127.0.0.1; 0.0.0.0 to serve other machines)."""
    port: NotRequired[int]
    """Port; 0 (default) lets the agent pick one (kept while the instance lives)."""
    python: NotRequired[str]
    """Python of the gateway's virtualenv on the node (default: $GPUSTACK_GATEWAY_PYTHON or the checkout's)."""
    state_dir: NotRequired[str]
    """Where the gateway keeps its config and usage on the node (default: .gpustack/<stack>/<name>)."""
    router_settings: NotRequired[dict[str, Any]]
    """LiteLLM router settings: routing_strategy, num_retries, allowed_fails, cooldown_time, timeout."""
    ready_timeout_s: NotRequired[int]


class Gateway(pulumi.ComponentResource):
    """One OpenAI-compatible endpoint for a cluster: /v1/chat/completions, /v1/completions, /v1/embeddings and
    /v1/models for every model, routed across each deployment's ready replicas with failover, behind API keys."""

    endpoint: pulumi.Output[str]
    """The OpenAI base URL, ``http://host:port/v1``."""
    models: pulumi.Output[list[str]]
    """The model names the gateway serves now."""
    master_key: pulumi.Output[str]
    """The gateway's admin key (secret): /gpustack/usage, /metrics/, and every model."""
    usage: pulumi.Output[dict]
    """Requests, failures and tokens in/out per key and model, as of the last up or refresh."""

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        cluster, models, settings = _validated_gateway(name, args)
        super().__init__("gpustack:index:Gateway", name, {}, opts)
        served = args.get("served_model_names") or {}
        route_outputs = [
            deployment.endpoints.apply(
                lambda endpoints, model=model, deployment_name=deployment._name: [
                    route.model_dump(mode="json")
                    for route in routes_for(model, served.get(model, deployment_name), deployment_name, endpoints)
                ]
            )
            for model, deployment in sorted(models.items())
        ]
        routes = pulumi.Output.all(*route_outputs).apply(lambda groups: [r for group in groups for r in group])
        keys = pulumi.Output.all(*[key.record for key in args.get("keys") or []]).apply(list)
        master = AgentToken(f"{name}-master-key", opts=pulumi.ResourceOptions(parent=self))
        state_dir = args.get("state_dir") or str(Path(f".gpustack/{pulumi.get_stack()}/{name}").resolve())
        server = _GatewayServer(
            f"{name}-server",
            {
                "agents": cluster.endpoints,
                "fingerprints": cluster.fingerprints,
                "token": cluster.agent_token,
                "node": args.get("node"),
                "owner": f"{pulumi.get_project()}/{pulumi.get_stack()}/gateway/{name}",
                "python": args.get("python") or default_gateway_python(),
                "host": args.get("host", "127.0.0.1"),
                "port": int(args.get("port", 0)),
                "state_dir": state_dir,
                "master_key": master.token,
                "routes": routes,
                "keys": keys,
                "router_settings": settings.model_dump(mode="json"),
                "ready_timeout_s": args.get("ready_timeout_s", 180),
            },
            pulumi.ResourceOptions(parent=self, depends_on=[cluster, *models.values()]),
        )
        self.endpoint = server.endpoint
        self.models = server.models
        self.usage = server.usage
        self.master_key = pulumi.Output.secret(master.token)
        self.register_outputs({"endpoint": self.endpoint, "models": self.models, "usage": self.usage})


class _GatewayServer(pulumi.dynamic.Resource, module="gpustack", name="GatewayServer"):
    """The gateway instance on its node's agent and the config pushed to it."""

    endpoint: pulumi.Output[str]
    models: pulumi.Output[list]
    usage: pulumi.Output[dict]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["token", "master_key"])
        )
        seeds = {"endpoint": None, "base_url": None, "models": None, "usage": None, "node_name": None,
                 "pid": None, "state": None, "active_keys": None}  # fmt: skip
        super().__init__(GatewayProvider(), name, {**props, **seeds}, opts)


def _validated_gateway(name: str, args: GatewayArgs) -> tuple[GpuCluster, dict[str, ModelDeployment], RouterSettings]:
    """Check every argument before anything is registered; errors name the argument."""
    from pydantic import ValidationError

    cluster = args.get("cluster")
    if not isinstance(cluster, GpuCluster):
        raise ComponentArgsError(f"Gateway '{name}': cluster must be a GpuCluster")
    models = args.get("models") or {}
    if not models:
        raise ComponentArgsError(f"Gateway '{name}': models is empty; map at least one model name to a deployment")
    for model, deployment in models.items():
        if not isinstance(deployment, ModelDeployment):
            raise ComponentArgsError(f"Gateway '{name}': models['{model}'] must be a ModelDeployment")
    for index, key in enumerate(args.get("keys") or []):
        if not isinstance(key, ApiKey):
            raise ComponentArgsError(f"Gateway '{name}': keys[{index}] must be an ApiKey")
    unknown = sorted(set(args.get("served_model_names") or {}) - set(models))
    if unknown:
        raise ComponentArgsError(f"Gateway '{name}': served_model_names names unknown models: {', '.join(unknown)}")
    port = args.get("port", 0)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ComponentArgsError(f"Gateway '{name}': port must be 0 (the agent picks one) or 1-65535")
    try:
        settings = RouterSettings.model_validate(args.get("router_settings") or {})
    except ValidationError as error:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ComponentArgsError(f"Gateway '{name}': router_settings: {message}") from None
    return cluster, models, settings
