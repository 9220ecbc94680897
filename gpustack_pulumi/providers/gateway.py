"""Dynamic provider: the cluster's gateway, run by an agent like an engine, configured from the replicas.

- ``check`` validates the routes, keys and router settings (a bad one fails preview, naming it).
- ``diff`` replaces the gateway only when what the agent runs changes (node, Python, host, port, state
  directory, master key); new routes or keys, or a key that expired since the last ``up``, are an update.
- ``create`` starts the gateway instance on its node's agent, waits until it serves, then pushes its config.
- ``update`` pushes the new config to the running gateway: LiteLLM swaps its model list in place, so requests
  in flight finish (restarting the instance only if the agent lost it).
- ``read`` reports the instance's state and the gateway's usage per key and model (``pulumi refresh``).
- ``delete`` stops the instance.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any
from urllib.parse import urlsplit

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)
from pydantic import ValidationError

from gpustack_pulumi.gateway.client import GatewayError, push_config, read_usage
from gpustack_pulumi.gateway.config import (
    GatewayConfig,
    KeyRecord,
    ReplicaRoute,
    RouterSettings,
    active_keys,
    render_gateway_config,
)
from gpustack_pulumi.gateway.launch import gateway_instance_body
from gpustack_pulumi.providers.agent_client import AgentClient, AgentUnreachable
from gpustack_pulumi.providers.model_replica import delete_on_agent, url_pins

REPLACE_KEYS = ("node", "python", "host", "port", "state_dir", "master_key", "owner")
# "agents": the node's agent moved (a new port after a restart); update so delete reaches the agent that runs it.
UPDATE_KEYS = ("routes", "keys", "router_settings", "token", "ready_timeout_s", "agents")
DEFAULT_READY_TIMEOUT_S = 120.0


def _instance_id(owner: str) -> str:
    return owner.replace("/", ".")[:128]


def rendered(props: dict[str, Any], now: float) -> GatewayConfig:
    """The config for ``props`` at ``now`` (pure)."""
    routes = [ReplicaRoute.model_validate(r) for r in props.get("routes") or []]
    keys = [KeyRecord.model_validate(k) for k in props.get("keys") or []]
    settings = RouterSettings.model_validate(props.get("router_settings") or {})
    return render_gateway_config(routes, keys, settings, now)


def _node(props: dict[str, Any]) -> str:
    agents: dict[str, str] = props["agents"]
    node = props.get("node") or (sorted(agents)[0] if agents else None)
    if node not in agents:
        raise RuntimeError(f"gateway node '{node}' is not a node of the cluster ({', '.join(sorted(agents))})")
    return node


class GatewayProvider(ResourceProvider):
    """Plain data only on ``self``: the object is pickled into state."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        del olds
        failures = []
        for field, model in (("routes", ReplicaRoute), ("keys", KeyRecord)):
            value = news.get(field)
            if not isinstance(value, list):
                continue  # unknown at preview
            for index, item in enumerate(value):
                try:
                    model.model_validate(item)
                except ValidationError as error:
                    failures.append(CheckFailure(field, f"{field}[{index}]: {_message(error)}"))
        settings = news.get("router_settings")
        if isinstance(settings, dict):
            try:
                RouterSettings.model_validate(settings)
            except ValidationError as error:
                failures.append(CheckFailure("router_settings", _message(error)))
        if not failures and isinstance(news.get("keys"), list):
            try:
                GatewayConfig(keys=[KeyRecord.model_validate(k) for k in news["keys"]])
            except ValidationError as error:
                failures.append(CheckFailure("keys", _message(error)))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in REPLACE_KEYS if olds.get(k) != news.get(k)]
        changed = [k for k in UPDATE_KEYS if olds.get(k) != news.get(k)]
        keys = news.get("keys")
        if isinstance(keys, list):
            now_active = [k.alias for k in active_keys([KeyRecord.model_validate(k) for k in keys], time.time())]
            if now_active != olds.get("active_keys"):
                changed.append("keys")  # a key expired since the last up: take it out of the gateway
        return DiffResult(changes=bool(replaces or changed), replaces=replaces, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        node = _node(props)
        agent_url, iid = props["agents"][node], _instance_id(props["owner"])
        status = self._start(props, agent_url, iid)
        outs = self._configure({**props}, node, agent_url, status.port, status.pid)
        return CreateResult(id_=iid, outs=outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        node = _node(news)
        agent_url, iid = news["agents"][node], _instance_id(news["owner"])
        with AgentClient(agent_url, news["token"], url_pins(news).get(agent_url)) as agent:
            status = agent.get_instance(iid)
        if status is None or status.state in ("failed", "stopped"):
            status = self._start(news, agent_url, iid)  # the agent lost it: start it again
        return UpdateResult(outs=self._configure({**news}, node, agent_url, status.port, status.pid))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        agents: dict[str, str] = props.get("agents") or {}
        url = agents.get(props.get("node_name") or "")
        if url is None:
            return ReadResult(id_=id_, outs=props)
        try:
            with AgentClient(url, props["token"], url_pins(props).get(url)) as agent:
                status = agent.get_instance(id_)
        except AgentUnreachable:
            return ReadResult(id_=id_, outs={**props, "state": "unreachable"})
        if status is None:
            return ReadResult(id_="", outs={})
        outs = {**props, "state": status.state, "pid": status.pid}
        if status.state == "ready" and props.get("base_url"):
            with contextlib.suppress(GatewayError):
                outs["usage"] = read_usage(props["base_url"], props["master_key"])
        return ReadResult(id_=id_, outs=outs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        node = props.get("node_name") or ""
        url = (props.get("agents") or {}).get(node)
        if url is not None:
            base = urlsplit(props.get("base_url") or "")
            engine = (base.hostname, base.port) if base.hostname and base.port else None
            delete_on_agent(
                url, props["token"], id_, node=node or None, engine=engine, fingerprint=url_pins(props).get(url)
            )

    # ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def _start(props: dict[str, Any], agent_url: str, iid: str):
        body = gateway_instance_body(
            owner=props["owner"],
            python=props["python"],
            state_dir=props["state_dir"],
            host=props["host"],
            port=int(props.get("port") or 0),
            master_key=props["master_key"],
        )
        timeout_s = float(props.get("ready_timeout_s") or DEFAULT_READY_TIMEOUT_S)
        with AgentClient(agent_url, props["token"], url_pins(props).get(agent_url)) as agent:
            agent.put_instance(iid, body)
            try:
                return agent.wait_ready(iid, timeout_s=timeout_s)
            except Exception:
                agent.delete_instance(iid)
                raise

    @staticmethod
    def _configure(props: dict[str, Any], node: str, agent_url: str, port: int | None, pid: int | None) -> dict:
        host = urlsplit(agent_url).hostname
        base_url = f"http://{host}:{port}"
        config = rendered(props, time.time())
        applied = push_config(base_url, props["master_key"], config)
        usage: dict = {}
        with contextlib.suppress(GatewayError):
            usage = read_usage(base_url, props["master_key"])
        return {
            **props,
            "node_name": node,
            "base_url": base_url,
            "endpoint": f"{base_url}/v1",
            "pid": pid,
            "state": "ready",
            "models": applied.get("models", []),
            "active_keys": [k.alias for k in config.keys],
            "usage": usage,
        }


def _message(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in item['loc']) or 'value'}: {item['msg']}" for item in error.errors())
