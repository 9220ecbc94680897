"""Dynamic provider: the cluster's joint plan (one per GpuCluster).

- ``check`` reads live capacity from every agent (or, before the agents exist, the capacity the pools will
  create), places every replica of every deployment of the cluster together with
  :func:`gpustack_pulumi.cluster_plan.plan_cluster` — the function ``gpustack-pulumi plan`` and ``preview`` run —
  sticky to the previous plan, and renders every launch spec. The plan is an input, so ``pulumi preview`` shows
  it; a replica that cannot be placed fails here, with the numbers.
- ``diff``: the plan changed (a placement or a launch spec; reasons aside), or some placed replica has no
  engine on its agent yet (its capacity must be claimed).
- ``create``/``update`` claim capacity for the whole plan before any engine starts: replicas that the new plan
  moves or drops stop first (delete before replace, as the replicas declare), then every placed replica's
  memory is reserved on its agents (leases; an engine's instance confirms its reservation). All or nothing: on
  a conflict the reservations made here are released and the error names the contended devices — two stacks
  racing for the same GPUs never double-book.
- ``delete`` has nothing to free: each replica releases its own claims.
"""

from __future__ import annotations

import sys
from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ResourceProvider, UpdateResult

from gpustack_pulumi.providers.agent_client import AdmissionConflict, AgentClient, AgentError, AgentUnreachable
from gpustack_pulumi.providers.model_replica import (
    DECIDED_AT_UPDATE,
    PlacementFailure,
    _engine_address,
    _is_unknown,
    _placement_key,
    _reservation,
    delete_on_agent,
    instance_id,
    read_inventory,
    restore_nulls,
    url_pins,
)

PLAN_ID = "cluster-plan"
MAKE_ROOM_DEADLINE_S = 15.0


def _node_addresses(agents: dict[str, str]) -> dict[str, str]:
    from urllib.parse import urlsplit

    return {node: urlsplit(url).hostname or node for node, url in agents.items()}


def _previous_plan(olds: dict[str, Any]):
    from gpustack_pulumi.placement import Plan

    old = (olds.get("plan") or {}).get("plan")
    if not old:
        return None
    try:
        return Plan.model_validate(_restore_plan_nulls(old))
    except ValueError:
        return None  # an older state's shape: plan from scratch (placement stays sticky through the agents)


def _restore_plan_nulls(plan: dict[str, Any]) -> dict[str, Any]:
    from gpustack_pulumi.placement import PlacedReplica, PlanSummary

    return {
        **plan,
        "replicas": [restore_nulls(PlacedReplica, r) for r in plan.get("replicas") or []],
        "summary": restore_nulls(PlanSummary, plan.get("summary") or {}),
    }


def _unclaimed(result: Any, inventory: Any) -> list[str]:
    """Placed replicas with no instance on some agent of theirs yet: their capacity must be claimed."""
    running = {(doc.name, a.id) for doc in inventory.nodes for a in doc.allocations if a.kind == "instance"}
    keys = []
    for key, replica in result.replicas.items():
        if replica.status != "placed":
            continue
        ranks = [(spec["node"], instance_id(replica.owner, rank)) for rank, spec in enumerate(replica.launch)]
        if any(rank not in running for rank in ranks):
            keys.append(key)
    return keys


class ClusterPlanProvider(ResourceProvider):
    """Plain data only on ``self``: the object is pickled (by reference) into state."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        from gpustack_runtime.wire import Inventory
        from pydantic import ValidationError

        from gpustack_pulumi.cluster_plan import plan_cluster
        from gpustack_pulumi.placement import Deployment

        deployments_in = news.get("deployments")
        if _is_unknown(deployments_in):
            return CheckResult({**news, "plan": {"status": DECIDED_AT_UPDATE}, "unclaimed": []}, [])
        try:
            deployments = [Deployment.model_validate(d) for d in deployments_in or []]
        except ValidationError as error:
            return CheckResult(news, [CheckFailure("deployments", str(error))])
        agents, token = news.get("agents"), news.get("token")
        if not _is_unknown(agents) and agents is not None and not _is_unknown(token):
            if not agents:
                return CheckResult(news, [CheckFailure("agents", "the cluster has no agents; add a node pool")])
            try:
                fingerprints = news.get("fingerprints") if isinstance(news.get("fingerprints"), dict) else {}
                inventory = read_inventory(agents, token, skip_unreachable=True, fingerprints=fingerprints)
            except PlacementFailure as failure:
                return CheckResult(news, [CheckFailure(failure.property, str(failure))])
            source, addresses = "agents", _node_addresses(agents)
        elif news.get("planned"):
            inventory = Inventory.model_validate({"nodes": news["planned"]})
            source, addresses = "planned", {}
        else:
            return CheckResult({**news, "plan": {"status": DECIDED_AT_UPDATE}, "unclaimed": []}, [])
        result = plan_cluster(
            inventory,
            deployments,
            _previous_plan(olds),
            owner_prefix=news["owner_prefix"],
            strategy=news.get("strategy") or "binpack",
            node_addresses=addresses,
            time_budget_s=float(news.get("time_budget_s") or 2.0),
        )
        if not result.ok:
            where = "on the capacity the pools will create" if source == "planned" else "on the agents' capacity"
            return CheckResult(news, [CheckFailure("deployments", f"{where}: " + "; ".join(result.failures))])
        planned = {"status": "planned", "source": source, **result.model_dump(mode="json")}
        unclaimed = _unclaimed(result, inventory) if source == "agents" else sorted(result.replicas)
        return CheckResult({**news, "plan": planned, "unclaimed": unclaimed}, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = _placement_key(_slices(olds)) != _placement_key(_slices(news))
        other = [k for k in ("token", "strategy") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed or other or news.get("unclaimed")), replaces=[])

    def create(self, props: dict[str, Any]) -> CreateResult:
        _claim(props, olds=None)
        return CreateResult(id_=PLAN_ID, outs={**props, "unclaimed": []})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        _claim(news, olds=olds)
        return UpdateResult(outs={**news, "unclaimed": []})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        return None  # each replica frees its own claims


def _slices(props: dict[str, Any]) -> dict[str, Any]:
    return ((props or {}).get("plan") or {}).get("replicas") or {}


def _claim(props: dict[str, Any], olds: dict[str, Any] | None) -> None:
    """Make room (stop what the new plan moves or drops), then reserve the whole plan, all or nothing."""
    plan = props.get("plan") or {}
    if plan.get("status") != "planned":
        raise RuntimeError("the cluster plan was not decided: its agents were unknown when it was checked")
    agents: dict[str, str] = props.get("agents") or {}
    token: str = props["token"]
    pins = url_pins(props)
    new_slices = _slices(props)
    for key, old in sorted(_slices(olds or {}).items()):
        new = new_slices.get(key)
        if old.get("status") != "placed":
            continue
        if new is not None and _placement_key(new.get("launch")) == _placement_key(old.get("launch")):
            continue
        for rank, spec in enumerate(old.get("launch") or []):
            url = agents.get(spec["node"])
            if url is None:
                continue
            engine = _engine_address(url, spec.get("port"))
            iid = instance_id(old["owner"], rank)
            try:
                delete_on_agent(
                    url,
                    token,
                    iid,
                    node=spec["node"],
                    engine=engine,
                    deadline_s=MAKE_ROOM_DEADLINE_S,
                    fingerprint=pins.get(url),
                )
            except RuntimeError as error:
                # The replica's own delete (its replacement runs next) waits for that agent, knowing the engine's
                # port; room on the other agents does not depend on it.
                print(f"warning: could not stop {iid} before claiming: {error}", file=sys.stderr)
    # Replicas whose engines run already hold confirmed claims: re-reserving them records, checks nothing.
    unclaimed = set(props.get("unclaimed") or [])
    made: list[tuple[str, str]] = []
    conflicts: list[str] = []
    for key, replica in sorted(new_slices.items()):
        if replica.get("status") != "placed":
            continue
        for rank, spec in enumerate(replica.get("launch") or []):
            url = agents[spec["node"]]
            iid = instance_id(replica["owner"], rank)
            try:
                with AgentClient(url, token, pins.get(url)) as agent:
                    agent.put_reservation(iid, _reservation(replica["owner"], spec))
                if key in unclaimed:
                    made.append((url, iid))
            except AdmissionConflict as conflict:
                conflicts.append(f"{key} on {spec['node']}: {_describe_conflict(conflict)}")
            except AgentUnreachable as error:
                conflicts.append(f"{key} on {spec['node']}: {error}")
            except AgentError as error:
                conflicts.append(f"{key} on {spec['node']}: {error}")
    if conflicts:
        for url, iid in reversed(made):
            try:
                with AgentClient(url, token, pins.get(url)) as agent:
                    agent.delete_reservation(iid)
            except AgentError as error:  # its lease lapses on its own
                print(f"warning: could not release reservation {iid}: {error}", file=sys.stderr)
        raise RuntimeError(
            "cannot claim the plan's capacity (nothing was started; the reservations made were released): "
            + "; ".join(conflicts)
            + ". Another stack or process took these devices since the plan was made: run `pulumi up` again to "
            "re-place on what is free now."
        )


def _describe_conflict(conflict: AdmissionConflict) -> str:
    detail = conflict.detail if isinstance(conflict.detail, dict) else {}
    shortfalls = detail.get("shortfalls") or []
    if not shortfalls:
        return str(conflict)
    parts = []
    for item in shortfalls:
        index = item.get("device_index")
        if item.get("reason") == "missing_device":
            parts.append(f"GPU {index} is missing")
            continue
        requested = (item.get("requested_bytes") or 0) / 2**30
        held = (item.get("allocated_bytes") or 0) / 2**30
        foreign = (item.get("foreign_bytes") or 0) / 2**30
        parts.append(
            f"GPU {index} (requested {requested:.2f} GiB; {held:.2f} GiB claimed by others, "
            f"{foreign:.2f} GiB used by other processes)"
        )
    return "contended devices: " + ", ".join(parts)
