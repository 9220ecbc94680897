# No `from __future__ import annotations`: Pulumi reads these annotations at runtime (see components/__init__.py).
"""SshNodePool: bare hosts reached over SSH, each running the gpustack agent.

For each host, with ``pulumi_command.remote`` (the standard Pulumi resources for remote commands):

- ``{name}-{node}-install-script`` and ``{name}-{node}-uninstall-script`` (``CopyToRemote``) put
  ``runtime/install/install.sh`` and ``uninstall.sh`` on the host;
- ``{name}-{node}-agent`` (``Command``) runs the install command on create and on update (a changed script,
  agent version or flag changes the command text, so the engine re-runs it: install.sh upgrades in place and
  reports "nothing changed" when nothing did), waits until the agent answers ``/healthz``, and on delete stops
  the agent and runs uninstall.sh. The token travels on the command's stdin, as a secret.

The agents serve HTTPS only, each bound to the address the pool reaches its host at (``bind_address`` moves it),
with a self-signed certificate the install makes once and keeps. The install prints the certificate's SHA-256
fingerprint; the pool reads it from the command's stdout and exports ``fingerprints`` (node → ``sha256:<hex>``)
next to ``endpoints`` (node → ``https://address:port``): clients pin it (``AgentClient(url, token,
fingerprint)``), as the pool pins SSH host keys. A reinstalled host (removed, then added again) gets a new
certificate, and its new fingerprint flows out the same way.

Host keys are pinned: every host (and jump host) needs its key, given per host (``host_key``) or found in the
pool's ``known_hosts`` text. There is no "accept any key" switch.

Removing a host from ``hosts`` deletes its three resources, so its agent is uninstalled. Pulumi runs the deletes of
resources a program no longer declares after all creates and updates, so deployments whose placement moved
replicas off that host (they read the pool's ``endpoints``, which no longer hold it) are updated first. A
resource that must outlive a host's agent, or go before it, can depend on ``agents[node]``.
"""

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict

import pulumi
from pulumi_command import remote

from gpustack_pulumi import __version__
from gpustack_pulumi.errors import ComponentArgsError
from gpustack_pulumi.pools.base import DEVICE_BACKENDS
from gpustack_pulumi.pools.ssh.install import (
    INSTALL_SCRIPT_NAME,
    SAFE_VALUE,
    UNINSTALL_SCRIPT_NAME,
    AgentInstallSpec,
    AgentLayout,
    parse_fingerprint,
    render_install_command,
    render_uninstall_command,
    scripts_sha256,
)
from gpustack_pulumi.pools.ssh.known_hosts import DEFAULT_SSH_PORT, HostKeyError, find_host_key, normalize_host_key

RUNTIMES = ("process", "container")
DEFAULT_AGENT_PORT = 10150
"""The agent's default port (install.sh --port default)."""
DEFAULT_SSH_USER = "root"
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+!-]*$")
_PORT_RANGE = re.compile(r"^\d{1,5}-\d{1,5}$")


def default_install_scripts_dir() -> Path:
    """runtime/install/ of the source tree this package sits in. Installed from a wheel, gpustack_pulumi does not
    carry it: pass ``install_scripts_dir`` (a checkout's runtime/install)."""
    return Path(__file__).resolve().parents[3] / "runtime" / "install"


class SshJumpHostArgs(TypedDict):
    address: str
    """Jump (bastion) host name or IP address."""
    host_key: NotRequired[str]
    """Its pinned host key, ``"ssh-ed25519 AAAA..."``; or give it in the pool's known_hosts."""
    port: NotRequired[int]
    """SSH port (default 22)."""
    user: NotRequired[str]
    """SSH user (default root)."""
    private_key: NotRequired[pulumi.Input[str]]
    """Its private key (a secret; default: the target host's key)."""


class SshHostArgs(TypedDict):
    address: str
    """Host name or IP address; the agent's endpoint is ``https://<address>:<agent_port>``."""
    private_key: NotRequired[pulumi.Input[str]]
    """OpenSSH private key text (a secret; default: the pool's ``private_key``)."""
    host_key: NotRequired[str]
    """The host's pinned SSH host key, ``"ssh-ed25519 AAAA..."`` (``ssh-keyscan``); or give known_hosts."""
    port: NotRequired[int]
    """SSH port (default 22)."""
    user: NotRequired[str]
    """SSH user (default root; another user needs ``agent_root`` it can write)."""
    jump_host: NotRequired[SshJumpHostArgs]
    """Reach the host through this bastion."""
    node_name: NotRequired[str]
    """Node name in capacity documents and placements (default: the address)."""
    labels: NotRequired[dict[str, str]]
    """Node labels deployments can select on."""
    devices: NotRequired[str]
    """Device backend: auto (default), nvml, ascend or none (CPU-only)."""
    bind_address: NotRequired[str]
    """Address the agent listens on (HTTPS; default ``address``, which must then be an address of the host
    itself; give ``0.0.0.0`` where the pool reaches the host through NAT)."""
    agent_root: NotRequired[str]
    """Install everything under this directory instead of /opt, /etc and /var/lib; systemd is then not used
    (the agent runs as a detached process). For non-root users, or several "hosts" sharing one disk."""
    environment: NotRequired[dict[str, str]]
    """Extra environment for the agent (e.g. CUDA_VISIBLE_DEVICES)."""


class SshNodePoolArgs(TypedDict):
    hosts: list[SshHostArgs]
    """The hosts; each becomes one node."""
    agent_token: pulumi.Input[str]
    """Bearer token the agents require (a secret; usually the cluster's)."""
    agent_version: NotRequired[str]
    """gpustack-runtime version to install (default: this package's version); changing it upgrades every host in
    place."""
    private_key: NotRequired[pulumi.Input[str]]
    """Default SSH private key for hosts that do not give their own (a secret)."""
    known_hosts: NotRequired[str]
    """OpenSSH known_hosts text holding the pinned keys of hosts without ``host_key``."""
    agent_port: NotRequired[int]
    """Port of every agent (default 10150)."""
    runtime: NotRequired[str]
    """``process`` (default: a venv, run by systemd where present) or ``container`` (docker)."""
    container_image: NotRequired[str]
    """Agent image (tag = agent_version) for runtime ``container``."""
    port_range: NotRequired[str]
    """Engine ports, LOW-HIGH (default: install.sh's 40000-40063)."""
    agent_source: NotRequired[str]
    """What pip installs on the hosts (default gpustack-runtime==<agent_version>)."""
    pip_args: NotRequired[list[str]]
    """Extra pip arguments, e.g. ["--no-index", "--find-links=/srv/wheels"] for offline hosts."""
    python: NotRequired[str]
    """Python (>= 3.11) on the hosts that creates the agent's venv (default python3)."""
    install_scripts_dir: NotRequired[str]
    """Directory holding install.sh and uninstall.sh (default: runtime/install of this source tree)."""


@dataclass(frozen=True)
class PlannedHost:
    """One host after validation: how to reach it and what to install (pure data, unit-tested)."""

    index: int
    node_name: str
    address: str
    ssh_port: int
    user: str
    host_key: str
    jump: "PlannedJump | None"
    spec: AgentInstallSpec

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.spec.port}"


@dataclass(frozen=True)
class PlannedJump:
    address: str
    port: int
    user: str
    host_key: str


class SshNodePool(pulumi.ComponentResource):
    """Bare hosts over SSH: installs the gpustack agent on each and exports their endpoints."""

    endpoints: pulumi.Output[dict[str, str]]
    """Node name → agent URL, ``https://address:port`` (known once the host's install command has run)."""
    fingerprints: pulumi.Output[dict[str, str]]
    """Node name → the SHA-256 fingerprint (``sha256:<hex>``) of that agent's TLS certificate, read from its
    install command's output: pin it when calling the agent (``AgentClient(url, token, fingerprint)``)."""
    planned_capacity: list[dict] | None = None
    """Unknown before the agents answer: a cluster with an SSH pool plans on live capacity."""
    agents: dict[str, remote.Command]
    """Node name → the command resource that installs that node's agent: depend on it to order work on a
    node after its agent exists, and, on removal, before its agent is uninstalled."""

    def __init__(self, name: str, args: SshNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        hosts = plan_ssh_hosts(name, args)
        scripts_dir = _scripts_dir(name, args)
        super().__init__("gpustack:index:SshNodePool", name, {}, opts)
        token = pulumi.Output.secret(args["agent_token"])
        self.agents = {}
        endpoint_outputs = []
        fingerprint_outputs = []
        for host, raw in zip(hosts, args["hosts"], strict=True):
            private_key = raw.get("private_key", args.get("private_key"))
            connection = _connection(host, raw, private_key)
            prefix = f"{name}-{host.node_name}"
            copies = [
                remote.CopyToRemote(
                    f"{prefix}-{label}-script",
                    connection=connection,
                    source=pulumi.FileAsset(str(scripts_dir / script)),
                    remote_path=f"{host.spec.layout.staging_dir}/{script}",
                    # A new script is copied again (the install command, which names its hash, then re-runs).
                    triggers=[host.spec.scripts_sha256],
                    opts=pulumi.ResourceOptions(parent=self),
                )
                for label, script in (("install", INSTALL_SCRIPT_NAME), ("uninstall", UNINSTALL_SCRIPT_NAME))
            ]
            install_command = render_install_command(host.spec)
            agent = remote.Command(
                f"{prefix}-agent",
                connection=connection,
                create=install_command,
                update=install_command,
                delete=render_uninstall_command(host.spec),
                stdin=token,
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=copies),
            )
            self.agents[host.node_name] = agent
            # Through the command's id: the endpoint waits for the install on a new host (unknown at its first
            # preview, so placement says "decided at update"), and stays known while an existing host upgrades.
            endpoint_outputs.append(agent.id.apply(lambda _id, node=host.node_name, url=host.endpoint: (node, url)))
            # From the command's stdout: kept in state, so known at preview once the host was installed.
            fingerprint_outputs.append(agent.stdout.apply(lambda out, node=host.node_name: _fingerprint(node, out)))
        self.endpoints = pulumi.Output.all(*endpoint_outputs).apply(lambda pairs: dict(sorted(pairs)))
        self.fingerprints = pulumi.Output.all(*fingerprint_outputs).apply(
            lambda pairs: dict(sorted(pair for pair in pairs if pair is not None))
        )
        self.register_outputs({"endpoints": self.endpoints, "fingerprints": self.fingerprints})


def _fingerprint(node: str, stdout: str | None) -> tuple[str, str] | None:
    """(node, fingerprint) from an install command's stdout; None while it has none (not run yet)."""
    if stdout is None:
        return None
    fingerprint = parse_fingerprint(stdout)
    if fingerprint is None:
        raise RuntimeError(
            f"SshNodePool: the agent install on node '{node}' printed no GPUSTACK_AGENT_FINGERPRINT line, so its "
            "TLS certificate cannot be pinned; the install script is older than this package: run `pulumi up` "
            "again with this package's runtime/install (install_scripts_dir)"
        )
    return node, fingerprint


def _connection(host: PlannedHost, raw: SshHostArgs, private_key: pulumi.Input[str]) -> remote.ConnectionArgs:
    proxy = None
    if host.jump is not None:
        jump_raw = raw["jump_host"]
        proxy = remote.ProxyConnectionArgs(
            host=host.jump.address,
            port=host.jump.port,
            user=host.jump.user,
            host_key=host.jump.host_key,
            private_key=pulumi.Output.secret(jump_raw.get("private_key", private_key)),
        )
    return remote.ConnectionArgs(
        host=host.address,
        port=host.ssh_port,
        user=host.user,
        host_key=host.host_key,
        private_key=pulumi.Output.secret(private_key),
        proxy=proxy,
    )


def _scripts_dir(name: str, args: SshNodePoolArgs) -> Path:
    scripts_dir = Path(args.get("install_scripts_dir") or default_install_scripts_dir())
    missing = [
        script for script in (INSTALL_SCRIPT_NAME, UNINSTALL_SCRIPT_NAME) if not (scripts_dir / script).is_file()
    ]
    if missing:
        raise ComponentArgsError(
            f"SshNodePool '{name}': install_scripts_dir '{scripts_dir}' lacks {', '.join(missing)}; point it at a"
            " gpustack-pulumi checkout's runtime/install"
        )
    return scripts_dir


def _valid_address(address: object) -> bool:
    if not isinstance(address, str) or not address:
        return False
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(address))


def _check_port(where: str, port: object, default: int) -> int:
    if port is None:
        return default
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ComponentArgsError(f"{where} must be 1-65535, got {port!r}")
    return port


def _check_user(where: str, user: object) -> str:
    if user is None:
        return DEFAULT_SSH_USER
    if not isinstance(user, str) or not _USER.match(user):
        raise ComponentArgsError(f"{where} '{user}' is not a valid user name (lowercase letters, digits, _ . -)")
    return user


def _pinned_key(where: str, given: str | None, known_hosts: str | None, address: str, port: int) -> str:
    try:
        if given:
            return normalize_host_key(given)
        found = find_host_key(known_hosts, address, port) if known_hosts else None
    except HostKeyError as error:
        raise ComponentArgsError(f"{where}: {error}") from error
    if found is None:
        target = address if port == DEFAULT_SSH_PORT else f"[{address}]:{port}"
        raise ComponentArgsError(
            f"{where}: no pinned host key for {target}; set host_key (from `ssh-keyscan -p {port} {address}`, checked"
            " out of band) or add the host to known_hosts. Unknown host keys are never accepted"
        )
    return found


def plan_ssh_hosts(name: str, args: SshNodePoolArgs) -> list[PlannedHost]:
    """Validate the pool's arguments and decide each host's connection and install spec. Raises
    ComponentArgsError naming the argument; nothing is registered before this passes."""
    pool = f"SshNodePool '{name}'"
    hosts = args.get("hosts") or []
    if not isinstance(hosts, list) or not hosts:
        raise ComponentArgsError(f"{pool}: hosts is empty; give at least one host")
    if "agent_token" not in args:
        raise ComponentArgsError(f"{pool}: agent_token is required (pass the cluster's token)")
    version = args.get("agent_version", __version__)
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ComponentArgsError(f"{pool}: agent_version {version!r} must be a version such as 0.1.0")
    runtime = args.get("runtime", "process")
    if runtime not in RUNTIMES:
        raise ComponentArgsError(f"{pool}: runtime '{runtime}' is invalid; use process or container")
    image = args.get("container_image")
    if runtime == "container" and not image:
        raise ComponentArgsError(f"{pool}: runtime 'container' needs container_image (the agent image, no tag)")
    agent_port = _check_port(f"{pool}: agent_port", args.get("agent_port"), DEFAULT_AGENT_PORT)
    port_range = args.get("port_range")
    if port_range is not None and not _PORT_RANGE.match(str(port_range)):
        raise ComponentArgsError(f"{pool}: port_range '{port_range}' must look like 40000-40063")
    for field in ("agent_source", "python"):
        value = args.get(field)
        if value is not None and not (isinstance(value, str) and value and SAFE_VALUE.match(value)):
            raise ComponentArgsError(f"{pool}: {field} '{value}' may only contain letters, digits and _.,:=/@+-")
    for pip_arg in args.get("pip_args") or []:
        # The command text is kept in state and shown in logs: an index URL with a password must not be in it.
        if re.search(r"://[^/\s]*@", str(pip_arg)):
            raise ComponentArgsError(
                f"{pool}: pip_args '{str(pip_arg).split('://')[0]}://…' holds credentials; put them in the hosts'"
                " pip.conf or netrc instead"
            )
    known_hosts = args.get("known_hosts")
    scripts_hash = scripts_sha256(_scripts_dir(name, args))

    planned: list[PlannedHost] = []
    seen_nodes: dict[str, int] = {}
    seen_targets: dict[tuple[str, int], int] = {}
    for index, host in enumerate(hosts):
        where = f"{pool}: hosts[{index}]"
        address = host.get("address")
        if not _valid_address(address):
            raise ComponentArgsError(f"{where}.address {address!r} must be a host name or an IP address")
        ssh_port = _check_port(f"{where}.port", host.get("port"), DEFAULT_SSH_PORT)
        user = _check_user(f"{where}.user", host.get("user"))
        if "private_key" not in host and "private_key" not in args:
            raise ComponentArgsError(f"{where}.private_key is missing and the pool has no private_key (a secret)")
        node_name = host.get("node_name") or address
        if not _NODE_NAME.match(node_name):
            raise ComponentArgsError(
                f"{where}.node_name '{node_name}' must be 1-63 letters, digits, '.', '_' or '-' (set node_name)"
            )
        if node_name in seen_nodes:
            raise ComponentArgsError(f"{where}.node_name '{node_name}' is also hosts[{seen_nodes[node_name]}]'s")
        seen_nodes[node_name] = index
        if (address, ssh_port) in seen_targets:
            raise ComponentArgsError(
                f"{where}.address {address}:{ssh_port} is also hosts[{seen_targets[address, ssh_port]}]'s"
            )
        seen_targets[address, ssh_port] = index
        host_key = _pinned_key(f"{where}.host_key", host.get("host_key"), known_hosts, address, ssh_port)
        jump = _plan_jump(f"{where}.jump_host", host.get("jump_host"), known_hosts)
        devices = host.get("devices", "auto")
        if devices not in DEVICE_BACKENDS:
            raise ComponentArgsError(f"{where}.devices '{devices}' is invalid; use one of {', '.join(DEVICE_BACKENDS)}")
        labels = dict(host.get("labels") or {})
        for key, value in labels.items():
            if not (SAFE_VALUE.match(key) and SAFE_VALUE.match(value)) or "," in key + value or "=" in key:
                raise ComponentArgsError(f"{where}.labels {key}={value} may only hold letters, digits and _.:/@+-")
        bind_address = host.get("bind_address", address)
        if not _valid_address(bind_address):
            raise ComponentArgsError(f"{where}.bind_address {bind_address!r} must be an IP address or host name")
        agent_root = host.get("agent_root")
        if agent_root is not None and not (
            agent_root.startswith("/") and agent_root != "/" and SAFE_VALUE.match(agent_root)
        ):
            raise ComponentArgsError(f"{where}.agent_root '{agent_root}' must be an absolute directory other than /")
        try:
            spec = AgentInstallSpec(
                node_name=node_name,
                bind_address=bind_address,
                port=agent_port,
                port_range=port_range,
                devices=devices,
                labels=labels,
                runtime=runtime,
                agent_version=version,
                agent_source=args.get("agent_source"),
                pip_args=tuple(args.get("pip_args") or ()),
                python=args.get("python") or "python3",
                environment=dict(host.get("environment") or {}),
                container_image=image,
                layout=AgentLayout.under(agent_root),
                scripts_sha256=scripts_hash,
            )
        except ValueError as error:  # pydantic: the environment's names and values
            raise ComponentArgsError(f"{where}: {error}") from error
        planned.append(PlannedHost(index, node_name, address, ssh_port, user, host_key, jump, spec))
    return planned


def _plan_jump(where: str, jump: SshJumpHostArgs | None, known_hosts: str | None) -> PlannedJump | None:
    if jump is None:
        return None
    address = jump.get("address")
    if not _valid_address(address):
        raise ComponentArgsError(f"{where}.address {address!r} must be a host name or an IP address")
    port = _check_port(f"{where}.port", jump.get("port"), DEFAULT_SSH_PORT)
    user = _check_user(f"{where}.user", jump.get("user"))
    host_key = _pinned_key(f"{where}.host_key", jump.get("host_key"), known_hosts, address, port)
    return PlannedJump(address, port, user, host_key)
