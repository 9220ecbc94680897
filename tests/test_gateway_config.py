"""The gateway's pure parts: config rendering, key records, the instance body, ApiKey arguments, provider diff."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gpustack_pulumi.components.cluster import ComponentArgsError
from gpustack_pulumi.components.gateway import _api_key_props
from gpustack_pulumi.gateway.config import (
    GatewayConfig,
    KeyRecord,
    RouterSettings,
    key_sha256,
    litellm_proxy_yaml,
    render_gateway_config,
    routes_for,
)
from gpustack_pulumi.gateway.launch import BOOTSTRAP, MASTER_KEY_ENV, gateway_instance_body
from gpustack_pulumi.providers.gateway import GatewayProvider


def _key(alias: str, **limits) -> KeyRecord:
    return KeyRecord(alias=alias, key_sha256=key_sha256(f"sk-gps-{alias}"), **limits)


def test_routes_skip_pending_replicas_and_render_sorted_and_deterministic() -> None:
    routes = routes_for("chat", "chat", "chat", ["http://h:2/v1", None, "http://h:1/v1"])
    routes += routes_for("alpha", "served-alpha", "alpha-dep", ["http://h:3/v1"])
    config = render_gateway_config(routes, [_key("b"), _key("a")], RouterSettings(), now=0)
    assert [(e["model_name"], e["model_info"]["id"]) for e in config.model_list] == [
        ("alpha", "alpha-dep-r0"), ("chat", "chat-r0"), ("chat", "chat-r2"),
    ]  # fmt: skip
    assert config.model_list[0]["litellm_params"]["model"] == "openai/served-alpha"
    assert [k.alias for k in config.keys] == ["a", "b"]
    again = render_gateway_config(list(reversed(routes)), [_key("a"), _key("b")], RouterSettings(), now=0)
    assert json.dumps(again.model_dump(mode="json")) == json.dumps(config.model_dump(mode="json"))


def test_revoked_and_expired_keys_are_left_out() -> None:
    keys = [_key("live", expires_at=100.0), _key("old", expires_at=50.0), _key("gone", revoked=True), _key("open")]
    config = render_gateway_config([], keys, RouterSettings(), now=60.0)
    assert [k.alias for k in config.keys] == ["live", "open"]
    assert "sk-gps-" not in json.dumps(config.model_dump(mode="json"))  # hashes only


def test_bad_records_are_refused() -> None:
    with pytest.raises(ValidationError):
        KeyRecord(alias="a b", key_sha256="0" * 64)
    with pytest.raises(ValidationError):
        KeyRecord(alias="a", key_sha256="short")
    with pytest.raises(ValidationError):
        KeyRecord(alias="a", key_sha256="0" * 64, rpm=0)
    with pytest.raises(ValidationError, match="repeated: a"):
        GatewayConfig(keys=[_key("a"), _key("a")])
    with pytest.raises(ValidationError):
        RouterSettings(routing_strategy="round-robin-ish")  # type: ignore[arg-type]


def test_instance_body_holds_no_route_no_key_and_the_master_key_only_in_env() -> None:
    body = gateway_instance_body(owner="p/s/gateway/g", python="/venv/bin/python", state_dir="/var/gw",
                                 host="127.0.0.1", port=0, master_key="m" * 40)  # fmt: skip
    assert body.launch.argv == ["/venv/bin/python", "-c", BOOTSTRAP, "/var/gw", "127.0.0.1", "{port}"]
    assert body.launch.health_path == "/health/liveliness"
    assert body.launch.env[MASTER_KEY_ENV] == "m" * 40
    assert all("m" * 40 not in arg for arg in body.launch.argv)
    proxy = litellm_proxy_yaml(GatewayConfig(), auth_module="glue", master_key_env=MASTER_KEY_ENV)
    assert proxy["general_settings"]["master_key"] == f"os.environ/{MASTER_KEY_ENV}"
    assert proxy["model_list"] == []


def test_api_key_arguments_are_checked() -> None:
    props = _api_key_props("team", {"models": ["b", "a"], "expires_at": "2027-01-31T00:00:00Z", "rpm": 5})
    assert props["models"] == ["a", "b"] and props["expires_at"] == 1801353600.0 and props["alias"] == "team"
    for bad in ({"rpm": 0}, {"tpm": -1}, {"token_budget": True}, {"expires_at": "tomorrow"},
                {"expires_at": "2027-01-31T00:00:00"}, {"alias": "has space"}, {"models": "chat"}):  # fmt: skip
        with pytest.raises(ComponentArgsError):
            _api_key_props("team", bad)  # type: ignore[arg-type]


def test_diff_updates_for_routes_and_keys_and_replaces_only_for_what_the_agent_runs() -> None:
    provider = GatewayProvider()
    olds = {"node": "n", "python": "p", "host": "127.0.0.1", "port": 0, "state_dir": "/s", "master_key": "m",
            "owner": "o", "routes": [], "keys": [], "router_settings": {}, "active_keys": []}  # fmt: skip
    assert not provider.diff("id", olds, dict(olds)).changes
    routes = [r.model_dump(mode="json") for r in routes_for("chat", "chat", "chat", ["http://h:1/v1"])]
    update = provider.diff("id", olds, {**olds, "routes": routes})
    assert update.changes and not update.replaces
    replace = provider.diff("id", olds, {**olds, "port": 4000})
    assert replace.replaces == ["port"]
    # A key that expired since the last up is an update even though its record did not change.
    expired = _key("k", expires_at=1.0).model_dump(mode="json")
    stale = {**olds, "keys": [expired], "active_keys": ["k"]}
    assert provider.diff("id", stale, dict(stale)).changes
