"""What the gpustack CrossGuard policies check, as plain functions over a resource's inputs (no pulumi_policy here,
so the CLI, the tests and other tools can call them too).

Inputs arrive as the analyzer sees them: secret values wrapped (``pulumi_policy.Secret`` from the pack's
secret-keeping view, or the wire envelope ``{SIG: SECRET_SIG, "value": ...}`` that Pulumi's mocks record), and
values unknown at preview as the engine's sentinel strings. :func:`reveal` removes the wrappers; the secrets check
reads them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN_SENTINELS = frozenset(
    {
        "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",  # bool
        "3eeb2bf0-c639-47a8-9e75-3b44932eb421",  # number
        "04da6b54-80e4-46f7-96ec-b56ff0331ba9",  # string (and the dynamic providers' "unknown")
        "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",  # array
        "030794c1-ac77-496b-92df-f27374a8bd58",  # asset
        "e48ece36-62e2-4504-bad9-02848725956a",  # archive
        "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",  # object
    }
)
DECIDED_AT_UPDATE = "decided at update"
"""ClusterPlan / ModelReplica status when the agents are not known yet (gpustack_pulumi.providers.model_replica)."""

DYNAMIC = "pulumi-python:dynamic/gpustack:"
CLUSTER_PLAN = DYNAMIC + "ClusterPlan"
MODEL_REPLICA = DYNAMIC + "ModelReplica"
LOCAL_AGENT = DYNAMIC + "LocalAgent"
GATEWAY_SERVER = DYNAMIC + "GatewayServer"
REMOTE_COMMAND = "command:remote:Command"
SSH_POOL = "gpustack:index:SshNodePool"

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", "*", ""})


# --- values as the analyzer hands them over -------------------------------------------------------------------


def _secret_class() -> type | None:
    try:
        from pulumi_policy import Secret
    except ImportError:  # the checks work without pulumi-policy (mocks' envelopes only)
        return None
    return Secret


def is_secret(value: Any) -> bool:
    secret = _secret_class()
    if secret is not None and isinstance(value, secret):
        return True
    return isinstance(value, Mapping) and value.get(SIG_KEY) == SECRET_SIG


def is_unknown(value: Any) -> bool:
    return isinstance(value, str) and value in UNKNOWN_SENTINELS


def raw(value: Any) -> Any:
    """The plain dicts and lists behind pulumi_policy's unknown-checking proxies (which raise on an unknown)."""
    if isinstance(value, Mapping) and not isinstance(value, dict):
        try:
            value = value["__target"]
        except (KeyError, TypeError):
            value = dict(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes | list | tuple):
        try:
            value = value["__target"]  # type: ignore[index]
        except (KeyError, TypeError, IndexError):
            value = list(value)
    if isinstance(value, dict):
        return {key: raw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [raw(item) for item in value]
    return value


def reveal(value: Any) -> Any:
    """The value with every secret wrapper removed (unknowns kept as sentinels)."""
    value = raw(value)
    if is_secret(value):
        inner = value.value if not isinstance(value, Mapping) else value.get("value")
        return reveal(inner)
    if isinstance(value, dict):
        return {key: reveal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [reveal(item) for item in value]
    return value


# --- every deployment fits and is placed ------------------------------------------------------------------------


def placement_failures(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Violations when a plan is known and something in it is not placed (failures, unplaced or pending
    replicas)."""
    props = reveal(props)
    if resource_type == CLUSTER_PLAN:
        plan = props.get("plan")
        if not isinstance(plan, dict) or is_unknown(plan) or plan.get("status") == DECIDED_AT_UPDATE:
            return []
        problems = []
        if plan.get("status") != "planned":
            problems.append(f"the cluster plan's status is {plan.get('status')!r}, not 'planned'")
        problems += [f"plan failure: {failure}" for failure in plan.get("failures") or []]
        for unplaced in (plan.get("plan") or {}).get("unplaced") or []:
            problems.append(
                f"{unplaced.get('deployment')}/{_int(unplaced.get('replica'))} is not placed "
                f"({unplaced.get('constraint')}): {unplaced.get('reason')}"
            )
        for key, replica in sorted((plan.get("replicas") or {}).items()):
            if isinstance(replica, dict) and replica.get("status") not in ("placed", None):
                problems.append(f"{key} is {replica.get('status')}: {replica.get('reason', '')}")
        return problems
    if resource_type == MODEL_REPLICA:
        placement = props.get("placement")
        if isinstance(placement, dict) and placement.get("status") == "pending":
            return [f"replica {props.get('deployment')}/{_int(props.get('replica'))} is pending: "
                    f"{placement.get('reason', '')}"]  # fmt: skip
    return []


def placement_undecided(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Advisory: the plan is decided at update (the agents do not exist yet and a pool cannot say what it will
    create), so this preview could not check that everything fits."""
    props = reveal(props)
    if resource_type == CLUSTER_PLAN:
        plan = props.get("plan")
        if is_unknown(plan) or (isinstance(plan, dict) and plan.get("status") == DECIDED_AT_UPDATE):
            return ["the cluster's plan is decided at update (its agents are not known yet): fit and placement "
                    "are checked by `pulumi up`, not by this preview"]  # fmt: skip
    if resource_type == MODEL_REPLICA:
        placement = props.get("placement")
        if is_unknown(placement) or (isinstance(placement, dict) and placement.get("status") == DECIDED_AT_UPDATE):
            return [f"replica {props.get('deployment')}/{_int(props.get('replica'))}: placement decided at update"]
    return []


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# --- no agent port open to the world ---------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _plain_http_urls(urls: Any) -> Iterator[str]:
    if not isinstance(urls, dict):
        return
    for node, url in sorted(urls.items()):
        if not isinstance(url, str) or is_unknown(url):
            continue
        parts = urlsplit(url)
        if parts.scheme == "http" and not _loopback(parts.hostname or ""):
            yield f"agent of node {node} is reached over plain HTTP at {url} (token and engine traffic in the clear)"


_HOST_FLAG = re.compile(r"--host[= ](\S+)")


def exposure_problems(
    resource_type: str, props: Mapping[str, Any], parent: str | None = None, allow_wildcard_bind: bool = False
) -> list[str]:
    """Agents (and the gateway) listening on every interface, or reached over plain HTTP off loopback."""
    props = reveal(props)
    problems: list[str] = []
    if resource_type in (CLUSTER_PLAN, MODEL_REPLICA, GATEWAY_SERVER):
        problems += list(_plain_http_urls(props.get("agents")))
    if resource_type in (LOCAL_AGENT, GATEWAY_SERVER):
        host = props.get("host")
        what = "local agent" if resource_type == LOCAL_AGENT else "gateway"
        if isinstance(host, str) and not is_unknown(host):
            if host in WILDCARD_HOSTS and not allow_wildcard_bind:
                problems.append(f"the {what} listens on every interface ({host or 'empty host'}), plain HTTP")
            elif resource_type == LOCAL_AGENT and not _loopback(host):
                problems.append(f"the local agent listens on {host} over plain HTTP (only loopback is safe)")
    if resource_type == REMOTE_COMMAND and (parent is None or SSH_POOL in parent):
        create = props.get("create")
        if isinstance(create, str) and "gpustack" in create:
            for host in _HOST_FLAG.findall(create):
                host = host.strip("'\"")
                if host in WILDCARD_HOSTS and not allow_wildcard_bind:
                    problems.append(
                        f"the agent installed by this command listens on every interface (--host={host}); bind it "
                        "to the host's private address (SshNodePool bind_address) or set allowWildcardBind"
                    )
    return problems


# --- secrets only as secrets -------------------------------------------------------------------------------------

# Inputs of our resources that hold credentials (top-level keys).
SECRET_INPUTS: dict[str, tuple[str, ...]] = {
    CLUSTER_PLAN: ("token",),
    MODEL_REPLICA: ("token", "secrets"),
    LOCAL_AGENT: ("token",),
    GATEWAY_SERVER: ("token", "master_key"),
}
_CREDENTIAL_NAME = re.compile(
    r"(^|_)(token|password|passphrase|private_?key|api_?key|master_?key)$|^(privateKey|apiKey|masterKey|hfToken)$",
    re.IGNORECASE,
)
_KEY_PATTERN = re.compile(r"\bsk-gps-[A-Za-z0-9_-]{8,}|\bhf_[A-Za-z0-9]{20,}")


def secret_problems(resource_type: str, props: Mapping[str, Any], parent: str | None = None) -> list[str]:
    """Credentials given as plain values: our resources' token/key inputs, SSH connection keys and passwords,
    the token an SshNodePool pipes to its install command, any input named like a credential, and any string
    that looks like one of our API keys or a Hugging Face token."""
    props = raw(props)
    problems: list[str] = []
    for key in SECRET_INPUTS.get(resource_type, ()):
        value = props.get(key)
        if _present(value) and not is_secret(value):
            problems.append(f"input '{key}' is a plain value; pass it as a Pulumi secret (pulumi.Output.secret)")
    stdin = props.get("stdin")
    piped = resource_type == REMOTE_COMMAND and parent is not None and SSH_POOL in parent and _present(stdin)
    if piped and not is_secret(stdin):
        problems.append("the agent token piped to the install command (stdin) is not a secret")
    for path, value in _plain_leaves(props, ()):
        name = path[-1] if path else ""
        shown = ".".join(path)
        if isinstance(name, str) and _CREDENTIAL_NAME.search(name) and not name.endswith("_secret"):
            if resource_type in SECRET_INPUTS and len(path) == 1 and name in SECRET_INPUTS[resource_type]:
                continue  # reported above
            if isinstance(value, str) and value and not is_unknown(value):
                problems.append(f"input '{shown}' looks like a credential and is a plain value; make it a secret")
                continue
        if isinstance(value, str) and _KEY_PATTERN.search(value):
            problems.append(f"input '{shown}' holds what looks like an API key or token in plain text")
    return problems


def _present(value: Any) -> bool:
    return value is not None and not is_unknown(value) and value != {} and value != ""


def _plain_leaves(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Leaves not under a secret wrapper (a secret's contents are fine wherever they are)."""
    if is_secret(value):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "__provider":
                continue
            yield from _plain_leaves(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _plain_leaves(item, (*path, str(index)))
    else:
        yield path, value


# --- allowed GPU products and instance types --------------------------------------------------------------------


def planned_products(props: Mapping[str, Any]) -> list[tuple[str, str, int | None]]:
    """(node, product, memory bytes) of every device in a ClusterPlan's planned capacity."""
    props = reveal(props)
    found = []
    for node in props.get("planned") or []:
        if not isinstance(node, dict):
            continue
        for device in node.get("devices") or []:
            if isinstance(device, dict) and isinstance(device.get("product"), str):
                memory = device.get("memory_total")
                found.append((str(node.get("name")), device["product"], int(memory) if memory else None))
    return found


def product_allowed(product: str, memory: int | None, allowed: Iterable[str]) -> bool:
    """A product is allowed when it is one of the names, or the catalog resolves both to the same GPU."""
    from gpustack_pulumi import catalog

    allowed = list(allowed)
    normalised = catalog.normalise_gpu_name(product)
    if any(catalog.normalise_gpu_name(name) == normalised for name in allowed):
        return True
    spec = catalog.gpu_for_product(product, memory)
    if spec is None:
        return False
    keys = set()
    for name in allowed:
        try:
            keys.add(catalog.gpu(name).key)
        except catalog.UnknownGpuError:  # a name the catalog does not know matches by name only
            continue
    return spec.key in keys


def product_problems(resource_type: str, props: Mapping[str, Any], allowed: Sequence[str]) -> list[str]:
    if resource_type != CLUSTER_PLAN or not allowed:
        return []
    return [
        f"node {node} has a {product}, which is not an allowed GPU ({', '.join(allowed)})"
        for node, product, memory in planned_products(props)
        if not product_allowed(product, memory, allowed)
    ]


INSTANCE_TYPE_INPUTS = {
    "aws:ec2/instance:Instance": "instanceType",
    "aws:ec2/launchTemplate:LaunchTemplate": "instanceType",
    "aws:ec2/spotInstanceRequest:SpotInstanceRequest": "instanceType",
    "aws:ec2/launchConfiguration:LaunchConfiguration": "instanceType",
}


def instance_type_problems(resource_type: str, props: Mapping[str, Any], allowed: Sequence[str]) -> list[str]:
    key = INSTANCE_TYPE_INPUTS.get(resource_type)
    if key is None or not allowed:
        return []
    value = reveal(props).get(key)
    if not isinstance(value, str) or is_unknown(value):
        return []
    if value.lower() in {name.lower() for name in allowed}:
        return []
    return [f"instance type {value} is not allowed ({', '.join(allowed)})"]


# --- ceilings over the whole stack ------------------------------------------------------------------------------


def plan_gpus(props: Mapping[str, Any]) -> int:
    """Devices that a ClusterPlan's placed replicas hold (each device counted once per node)."""
    plan = reveal(props).get("plan")
    if not isinstance(plan, dict):
        return 0
    devices: set[tuple[str, int]] = set()
    for replica in (plan.get("plan") or {}).get("replicas") or []:
        for part in replica.get("placements") or []:
            for index in part.get("device_indices") or []:
                devices.add((str(part.get("node")), int(index)))
    return len(devices)


CostEstimator = Callable[[str, Mapping[str, Any]], float | None]
"""(resource type, revealed inputs) -> $ per hour, or None when it does not price that resource."""

COST_ESTIMATORS: list[CostEstimator] = []
"""Hook for cloud pools: each estimator prices the resources it knows (e.g. an AWS pool's instances by type)."""


def register_cost_estimator(estimator: CostEstimator) -> CostEstimator:
    COST_ESTIMATORS.append(estimator)
    return estimator


def hourly_cost(resources: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[float, int]:
    """($/h, resources priced) over the stack's resources, by the registered estimators (first answer wins)."""
    total, priced = 0.0, 0
    for resource_type, props in resources:
        revealed = reveal(props)
        for estimator in COST_ESTIMATORS:
            cost = estimator(resource_type, revealed)
            if cost is not None:
                total += float(cost)
                priced += 1
                break
    return total, priced
