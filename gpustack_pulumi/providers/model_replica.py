"""Dynamic provider: one replica of a model deployment, run by the agents where the cluster plan put it.

- ``check`` reads the replica's slice of the cluster's joint plan (``providers/cluster_plan.py``): its placement
  and launch specs become inputs, so ``pulumi preview`` shows where the replica lands and how it runs. It places
  nothing itself: placement happens once per cluster, for every replica together. When the plan could not be
  decided (no agents and no planned capacity yet) the placement is marked "decided at update", never guessed.
- ``diff`` replaces a replica only when its placement or launch spec changed.
- ``create`` renews the reservation the plan made, starts the engine instances, waits until ready (a timeout or
  a failed engine raises with its last log lines); on any failure it removes what it made. A replica the plan
  left pending (higher priorities hold the room) is recorded with its reason and runs nothing.
- ``read`` reports drift: the instance gone, failed, or restarted. ``delete`` stops the instances and frees the
  reservations, and finishes (saying so) when an agent is gone for good.
- A replica the plan put on a Kubernetes pool (``runner: kubernetes``, nodes labelled ``gpustack.ai/runner``)
  starts nothing: the pool's pods run it. ``create`` holds its memory on each node's agent with an *external*
  reservation (the pods carry its id in ``GPUSTACK_INSTANCE_ID``), ``read`` checks the reservations are still
  there, ``delete`` frees them.
"""

from __future__ import annotations

import re
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider

from gpustack_pulumi.providers.agent_client import (
    AgentCertificateError,
    AgentClient,
    AgentError,
    AgentInsecureEndpoint,
    AgentUnreachable,
)

UNKNOWN_SENTINEL = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
DECIDED_AT_UPDATE = "decided at update"
RESERVATION_TTL_S = 900.0
DELETE_DEADLINE_S = 120.0  # how long delete waits for an agent that does not answer
UNDO_DEADLINE_S = 10.0  # a failed create cleans up briefly, then reports its own error
DELETE_RETRY_DELAY_S = 1.0
# Inputs whose change means a different replica (new placement or launch); anything else updates in place.
REPLACE_KEYS = ("placement", "launch")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def instance_id(owner: str, rank: int) -> str:
    """Agent instance id of node ``rank`` of the replica owned by ``owner`` (``project/stack/deployment/rN``)."""
    base = _ID_UNSAFE.sub("-", owner.replace("/", "."))
    return (base if rank == 0 else f"{base}.w{rank}")[:128]


def _is_unknown(value: Any) -> bool:
    from pulumi.output import Unknown

    return isinstance(value, Unknown) or value == UNKNOWN_SENTINEL


class ModelReplicaProvider(ResourceProvider):
    """Plain data only on ``self``: the object is pickled (by reference) into state."""

    # ----- check: placement and launch specs, shown at preview ------------------------------------------
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        del olds  # stickiness lives in the cluster plan
        replica_slice = news.get("slice")
        if _is_unknown(replica_slice) or not replica_slice:
            return CheckResult({**news, "placement": {"status": DECIDED_AT_UPDATE}, "launch": []}, [])
        if replica_slice.get("status") == "pending":
            placement = {"status": "pending", "reason": replica_slice.get("reason", "")}
            return CheckResult({**news, "placement": placement, "launch": []}, [])
        placement = {**replica_slice["placement"], "replica": int(news["replica"])}
        launch = replica_slice.get("launch") or []
        return CheckResult({**news, "placement": placement, "launch": launch, "runner": _runner(replica_slice)}, [])

    # ----- diff ---------------------------------------------------------------------------------------------
    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [key for key in REPLACE_KEYS if _placement_key(olds.get(key)) != _placement_key(news.get(key))]
        if (olds.get("runner") or "agent") != (news.get("runner") or "agent"):
            replaces.append("runner")  # agent processes become pods or back: a different replica
        if (news.get("placement") or {}).get("status") == DECIDED_AT_UPDATE:
            replaces = []  # unknown until update; the update's check decides
        # A node's agent that moved (a new port after a restart) updates the replica in place: delete must reach
        # the agent that runs its engine now.
        other = [k for k in ("token", "ready_timeout_s", "agents") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(replaces or other), replaces=replaces, delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]):
        from pulumi.dynamic import UpdateResult

        keep = {k: olds[k] for k in ("instances", "reservations", "endpoint", "node", "state", "restarts") if k in olds}
        return UpdateResult(outs={**news, **keep})

    # ----- create ---------------------------------------------------------------------------------------------
    def create(self, props: dict[str, Any]) -> CreateResult:
        placement, launch = props["placement"], props["launch"]
        if placement.get("status") == "pending":
            print(f"warning: {props['owner']}: {placement.get('reason')}", file=sys.stderr)
            outs = {**props, "instances": [], "endpoint": None, "node": None, "state": "pending", "restarts": 0}
            return CreateResult(id_=instance_id(props["owner"], 0), outs=outs)
        if placement.get("status") == DECIDED_AT_UPDATE or not launch:
            raise RuntimeError("the replica has no placement: its agents were unknown when it was checked")
        if props.get("runner") == "kubernetes":
            return self._hold_for_kubernetes(props)
        owner, token = props["owner"], props["token"]
        agents: dict[str, str] = props["agents"]
        secrets: dict[str, str] = props.get("secrets") or {}
        timeout_s = float(props.get("ready_timeout_s") or 600)
        pins = url_pins(props)
        started: list[tuple[str, str]] = []  # (agent url, instance id) to undo on failure
        instances = []
        try:
            for rank, spec in enumerate(launch):
                url, iid = agents[spec["node"]], instance_id(owner, rank)
                with AgentClient(url, token, pins.get(url)) as agent:
                    agent.put_reservation(iid, _reservation(owner, spec))
                    started.append((url, iid))
                    agent.put_instance(iid, _instance_body(owner, spec, secrets))
            head_url, head_id = agents[launch[0]["node"]], instance_id(owner, 0)
            for rank, spec in enumerate(launch):
                url, iid = agents[spec["node"]], instance_id(owner, rank)
                with AgentClient(url, token, pins.get(url)) as agent:
                    status = agent.wait_ready(iid, timeout_s=timeout_s)
                instances.append({"node": spec["node"], "id": iid, "pid": status.pid, "port": status.port})
        except Exception:
            _undo(started, token, pins)
            raise
        head = instances[0]
        host = urlsplit(head_url).hostname
        endpoint = f"http://{host}:{head['port']}/v1"
        outs = {**props, "instances": instances, "endpoint": endpoint, "node": head["node"], "state": "ready",
                "restarts": 0}  # fmt: skip
        return CreateResult(id_=head_id, outs=outs)

    def _hold_for_kubernetes(self, props: dict[str, Any]) -> CreateResult:
        """A replica on a Kubernetes pool: its pods (the pool's workloads) run the engines. Here its memory is
        held on each node's agent with an external reservation (no lease to renew, the agent counts the pod's
        device memory as the reservation's), so no other replica or stack is admitted onto it; nothing starts."""
        owner, token, launch = props["owner"], props["token"], props["launch"]
        agents: dict[str, str] = props["agents"]
        pins = url_pins(props)
        held: list[tuple[str, str]] = []
        try:
            for rank, spec in enumerate(launch):
                url, iid = agents[spec["node"]], instance_id(owner, rank)
                with AgentClient(url, token, pins.get(url)) as agent:
                    agent.put_reservation(iid, _reservation(owner, spec, external=True))
                held.append((url, iid))
        except Exception:
            _undo(held, token, pins)
            raise
        reservations = [{"node": spec["node"], "id": instance_id(owner, rank)} for rank, spec in enumerate(launch)]
        outs = {**props, "instances": [], "reservations": reservations, "endpoint": None, "node": launch[0]["node"],
                "state": "held", "restarts": 0}  # fmt: skip
        return CreateResult(id_=instance_id(owner, 0), outs=outs)

    # ----- read (refresh) --------------------------------------------------------------------------------
    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        instances = props.get("instances") or []
        agents: dict[str, str] = props.get("agents") or {}
        if props.get("runner") == "kubernetes":
            return self._read_held(id_, props)
        if not instances:
            return ReadResult(id_=id_, outs=props)
        states, restarts, now = [], 0, []
        for known in instances:
            url = agents.get(known["node"])
            try:
                with AgentClient(url, props["token"], url_pins(props).get(url)) as agent:
                    status = agent.get_instance(known["id"])
            except AgentUnreachable:
                states.append("unreachable")
                now.append(known)
                continue
            if status is None:
                return ReadResult(id_="", outs={})  # the instance is gone: the next update recreates it
            states.append(status.state)
            restarts += status.restarts
            now.append({**known, "pid": status.pid, "port": status.port})
        state = next((s for s in states if s != "ready"), "ready")
        return ReadResult(id_=id_, outs={**props, "instances": now, "state": state, "restarts": restarts})

    def _read_held(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Drift of a Kubernetes-run replica: a reservation gone from its agent (the next update holds it again)."""
        agents: dict[str, str] = props.get("agents") or {}
        pins = url_pins(props)
        for held in props.get("reservations") or []:
            url = agents.get(held["node"])
            try:
                with AgentClient(url, props["token"], pins.get(url)) as agent:
                    status = agent.get_reservation(held["id"])
            except AgentUnreachable:
                return ReadResult(id_=id_, outs={**props, "state": "unreachable"})
            if status is None:
                return ReadResult(id_="", outs={})
        return ReadResult(id_=id_, outs={**props, "state": "held"})

    # ----- delete ------------------------------------------------------------------------------------------------
    def delete(self, _id: str, props: dict[str, Any]) -> None:
        agents: dict[str, str] = props.get("agents") or {}
        owner, token = props["owner"], props["token"]
        deadline_s = float(props.get("delete_timeout_s") or DELETE_DEADLINE_S)
        ports = {i.get("id"): i.get("port") for i in props.get("instances") or []}
        for rank, spec in reversed(list(enumerate(props.get("launch") or []))):
            url, iid = agents.get(spec["node"]), instance_id(owner, rank)
            if url is None:
                continue
            engine = _engine_address(url, ports.get(iid))
            fingerprint = url_pins(props).get(url)
            delete_on_agent(
                url, token, iid, node=spec["node"], engine=engine, deadline_s=deadline_s, fingerprint=fingerprint
            )


# ----- pure helpers (placement and launch specs) ----------------------------------------------------------


class PlacementFailure(Exception):
    def __init__(self, property_: str, message: str) -> None:
        super().__init__(message)
        self.property = property_


def restore_nulls(model: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Pulumi drops null properties on the wire: put back ``None`` for the missing nullable fields of ``model``."""
    missing = {
        name: None
        for name, field in model.model_fields.items()
        if name not in data and field.is_required() and type(None) in getattr(field.annotation, "__args__", ())
    }
    return {**missing, **data}


def _placement_key(value: Any) -> Any:
    """What identifies a placement or launch for diffing (the free-text reasons do not)."""
    if isinstance(value, dict):
        return {k: _placement_key(v) for k, v in value.items() if k not in ("reason", "reasons")}
    if isinstance(value, list):
        return [_placement_key(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def url_pins(props: dict[str, Any]) -> dict[str, str]:
    """Agent URL -> its pinned TLS fingerprint, from a resource's ``agents`` and ``fingerprints`` (node-keyed)."""
    agents: dict[str, str] = props.get("agents") or {}
    fingerprints: dict[str, str] = props.get("fingerprints") or {}
    if not isinstance(agents, dict) or not isinstance(fingerprints, dict):
        return {}
    return {agents[node]: pin for node, pin in fingerprints.items() if node in agents}


def read_inventory(
    agents: dict[str, str],
    token: str,
    *,
    skip_unreachable: bool = False,
    fingerprints: dict[str, str] | None = None,
):
    """The capacity documents of the agents. ``skip_unreachable``: leave out nodes whose agent does not answer
    (a host that went down: its replicas are re-placed), as long as one agent answers. An agent that answers
    with an error (wrong token, a bug) always fails: that is not a node that went away."""
    from gpustack_runtime.wire import Inventory

    documents, down = [], []
    for node, url in sorted(agents.items()):
        try:
            with AgentClient(url, token, (fingerprints or {}).get(node)) as agent:
                documents.append(agent.capacity())
        except AgentUnreachable as error:
            if not skip_unreachable:
                raise PlacementFailure("agents", f"cannot read capacity of node {node}: {error}") from None
            down.append(f"{node} ({error})")
        except AgentError as error:
            raise PlacementFailure("agents", f"cannot read capacity of node {node}: {error}") from None
    if down and not documents:
        raise PlacementFailure("agents", "cannot read capacity of any node: " + "; ".join(down))
    for node in down:
        print(f"warning: node {node} is left out of placement", file=sys.stderr)
    return Inventory(nodes=documents)


def _runner(replica_slice: dict[str, Any]) -> str:
    return str(replica_slice.get("runner") or "agent")


def _reservation(owner: str, spec: dict[str, Any], *, external: bool = False):
    from gpustack_runtime.wire import ReservationBody

    return ReservationBody(
        owner=owner,
        device_indices=[int(i) for i in spec["visible_devices"]],
        memory_bytes_per_device=int(spec.get("memory_bytes_per_device") or 0),
        ttl_seconds=RESERVATION_TTL_S,
        external=external,
    )


def _instance_body(owner: str, spec: dict[str, Any], secrets: dict[str, str]):
    """The agent's instance body; secret references are resolved here, at launch, into the environment only."""
    from gpustack_pulumi.engines.base import LaunchSpec

    launch = LaunchSpec.model_validate(restore_nulls(LaunchSpec, spec))
    missing = [ref for ref in launch.secret_env.values() if ref not in secrets]
    if missing:
        raise RuntimeError(
            f"secret reference(s) {', '.join(sorted(missing))} used by the engine options have no value; pass "
            "them in ModelDeployment's `secrets`"
        )
    env = {**launch.env, **{name: secrets[ref] for name, ref in launch.secret_env.items()}}
    body = launch.model_copy(update={"env": env}).to_instance_body(owner)
    return body


def _undo(started: list[tuple[str, str]], token: str, pins: dict[str, str] | None = None) -> None:
    """Remove what a failed create made; the create's own error is what the user must see, so a failure here is
    a warning (the reservation's lease lapses on its own)."""
    for url, iid in reversed(started):
        try:
            delete_on_agent(url, token, iid, deadline_s=UNDO_DEADLINE_S, fingerprint=(pins or {}).get(url))
        except (RuntimeError, AgentError) as error:
            print(f"warning: could not undo {iid}: {error}", file=sys.stderr)


def _engine_address(agent_url: str, port: Any) -> tuple[str, int] | None:
    host = urlsplit(agent_url).hostname
    return (host, int(port)) if host and port else None


def _engine_answers(engine: tuple[str, int] | None) -> bool:
    """Whether something still listens on the engine's port (a refused connection means nothing runs there)."""
    if engine is None:
        return True  # unknown: assume it may run, never forget it silently
    try:
        with socket.create_connection(engine, timeout=2):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # a timeout or an unreachable host says nothing for sure


def delete_on_agent(
    url: str,
    token: str,
    iid: str,
    *,
    node: str | None = None,
    engine: tuple[str, int] | None = None,
    deadline_s: float = DELETE_DEADLINE_S,
    fingerprint: str | None = None,
) -> None:
    """Stop instance ``iid`` and free its reservation; idempotent.

    An agent that does not answer is retried until ``deadline_s``. The delete never forgets a running engine: it
    finishes without the agent only when nothing listens on the engine's port any more (the node went down with
    it); otherwise it fails, saying what may still run and what to do. ``node``: the agent must say it is that
    node before it is told to delete anything (another agent may have taken the port).
    """
    started = time.monotonic()
    delay = DELETE_RETRY_DELAY_S
    last: Exception | None = None
    while True:
        try:
            with AgentClient(url, token, fingerprint) as agent:
                if node is not None:
                    seen = agent.capacity().name
                    if seen != node:
                        raise AgentUnreachable(url, f"deleting {iid}", f"it is node {seen}, not {node}")
                agent.delete_instance(iid)
                agent.delete_reservation(iid)
            return
        except (AgentCertificateError, AgentInsecureEndpoint):
            raise  # not an agent that went away: a wrong pin or an unsafe URL, retrying changes nothing
        except AgentError as error:
            if not isinstance(error, AgentUnreachable) and getattr(error, "status", 0) != 0:
                raise  # the agent answered with an error: a real failure, not a node that went away
            last = error
        if not _engine_answers(engine):
            print(f"warning: {last}; nothing answers on the engine's port either: instance {iid} is treated as "
                  "gone with its node", file=sys.stderr)  # fmt: skip
            return
        if time.monotonic() - started + delay > deadline_s:
            break
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    where = f" at {engine[0]}:{engine[1]}" if engine else ""
    raise RuntimeError(
        f"cannot stop instance {iid}: {last}. Its engine may still be running{where}, holding GPU memory. Bring the "
        f"node's agent back (the next update points the replica at its new address) and run the command again; if "
        f"the node is gone for good, drop the replica from the state with `pulumi state delete <its URN>`."
    )
