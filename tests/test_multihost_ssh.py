"""On-prem hosts end to end, for real: three network-namespace hosts with their own sshd, the SshNodePool's
install resources run over real SSH (the exact strings the component registered, see multihost/remote_runner.py),
agents bound to their veth addresses with fake GPUs and serving HTTPS with the certificate each install made,
capacity read from the test through AgentClient pinning the fingerprint the install printed, re-run, upgrade (the
certificate and so the pin kept), removal of a host, and teardown that leaves no process and no namespace.

The tests of this module run in order and share the hosts (bringing three hosts up and installing three agents
takes most of the time): each step builds on the previous one, as the stages of one stack's life do.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paramiko
import pulumi
import pytest
from multihost.netns import NAMESPACE_PREFIX, HostGroup, namespace_exists, netns_hosts, remove_stale_namespaces
from multihost.remote_runner import CommandResult, RemoteCommandApplier, connect, run_command
from multihost.support import (
    AGENT_PORT,
    HOST_SPECS,
    TOKEN,
    build_fake_nvml,
    build_wheelhouse,
    host_resources,
    pool_args,
    register_under_mocks,
)

from gpustack_pulumi.pools.ssh.component import SshNodePool
from gpustack_pulumi.pools.ssh.install import parse_fingerprint
from gpustack_pulumi.providers.agent_client import (
    AgentCertificateMismatch,
    AgentClient,
    AgentError,
    AgentInsecureEndpoint,
)

pytestmark = pytest.mark.slow

FIRST_VERSION = "0.1.0"
NEXT_VERSION = "0.1.1"
ROTATED_TOKEN = "multihost-token-rotated-42c8"
POOL = "onprem"


class Stack:
    """The hosts, and the engine's part for the remote resources (what was applied, by resource name)."""

    def __init__(self, group: HostGroup, wheelhouse: Path, fake_nvml: Path) -> None:
        self.group = group
        self.wheelhouse = wheelhouse
        self.fake_nvml = fake_nvml
        self.engine = RemoteCommandApplier()
        self.token = TOKEN
        self.fingerprints: dict[str, str] = {}
        """Node name → the fingerprint its latest install printed (what SshNodePool.fingerprints exports)."""

    def args(self, version: str, hosts: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
        args = pool_args(self.group, self.wheelhouse, self.fake_nvml, version, **overrides)
        args["agent_token"] = pulumi.Output.secret(self.token)
        if hosts is not None:
            args["hosts"] = [host for host in args["hosts"] if host["node_name"] in hosts]
        return args

    def register(self, version: str, hosts: list[str] | None = None, **overrides: Any) -> tuple[list, dict[str, str]]:
        args = self.args(version, hosts, **overrides)
        return register_under_mocks(lambda: SshNodePool(POOL, args).endpoints)

    def up(
        self, version: str, hosts: list[str] | None = None, **overrides: Any
    ) -> tuple[dict[str, CommandResult], list]:
        """Register the program, then run what changed; results by node name ('<pool>-<node>-agent')."""
        resources, _ = self.register(version, hosts, **overrides)
        results = self.engine.apply(resources)
        by_node = {name[len(POOL) + 1 : -len("-agent")]: r for name, r in results.items() if name.endswith("-agent")}
        for node, result in by_node.items():
            fingerprint = parse_fingerprint(result.stdout)
            if fingerprint is not None:
                self.fingerprints[node] = fingerprint
        return by_node, resources


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("multihost")
    wheelhouse = build_wheelhouse(base / "wheelhouse", [FIRST_VERSION, NEXT_VERSION])
    fake_nvml = build_fake_nvml(base / "fakenvml")
    with netns_hosts(HOST_SPECS, base, fake_nvml) as group:
        yield Stack(group, wheelhouse, fake_nvml)


def capacity(address: str, fingerprint: str, token: str = TOKEN) -> dict[str, Any]:
    """The agent's capacity document over HTTPS, its certificate pinned (as the providers call it)."""
    with AgentClient(f"https://{address}:{AGENT_PORT}", token, fingerprint, timeout_s=5) as client:
        return client.capacity().model_dump(mode="json")


def test_sshd_answers_only_with_the_pinned_host_key(stack: Stack) -> None:
    resources, _ = stack.register(FIRST_VERSION)
    a, b = stack.group.by_name("gpu-a"), stack.group.by_name("gpu-b")
    connection = dict(host_resources(resources, POOL, "gpu-a")["agent"]["connection"]["value"])
    assert connection["hostKey"] == a.host_key_line  # found in the pool's known_hosts
    client = connect(connection)
    try:
        _, out, _ = client.exec_command("ip -4 -o addr show")
        assert f"inet {a.address}/30" in out.read().decode()  # the session runs inside host A's namespace
    finally:
        client.close()
    # Host B's key pinned for host A's address: the handshake is refused before any authentication.
    with pytest.raises(paramiko.BadHostKeyException):
        connect({**connection, "hostKey": b.host_key_line})
    with pytest.raises(Exception, match="unpinned"):
        connect({**connection, "hostKey": ""})
    # Nothing listens on loopback for these hosts: sshd is bound to the veth address only.
    assert a.exec_in("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/22").returncode != 0


def test_a_jump_host_from_the_pool_args_is_used_and_pinned_too(stack: Stack) -> None:
    a, b = stack.group.by_name("gpu-a"), stack.group.by_name("gpu-b")
    args = stack.args(FIRST_VERSION, hosts=["gpu-a"])
    # Host A reached through itself as the bastion (the namespaces have no route to each other): the SSH
    # session to the target runs inside a direct-tcpip channel of the jump session.
    args["hosts"][0]["jump_host"] = {"address": a.address}
    resources, _ = register_under_mocks(lambda: SshNodePool(POOL, args).endpoints)
    connection = dict(host_resources(resources, POOL, "gpu-a")["agent"]["connection"]["value"])
    assert connection["proxy"]["hostKey"] == a.host_key_line
    client = connect(connection)
    try:
        assert client._gpustack_jump.get_transport().is_active()  # type: ignore[attr-defined]
        _, out, _ = client.exec_command("echo $SSH_CONNECTION")
        assert out.read().decode().split()[0] == a.address  # the target saw the bastion as the client
    finally:
        client.close()
        client._gpustack_jump.close()  # type: ignore[attr-defined]
    with pytest.raises(paramiko.BadHostKeyException):
        connect({**connection, "proxy": {**connection["proxy"], "hostKey": b.host_key_line}})


def test_up_installs_over_ssh_and_each_agent_shows_its_devices(stack: Stack) -> None:
    results, _ = stack.up(FIRST_VERSION)
    group = stack.group
    assert set(results) == {host.name for host in group.hosts}
    for node, result in results.items():
        assert f"gpustack-agent: package installed (gpustack-runtime {FIRST_VERSION})" in result.stdout, result.stdout
        assert "gpustack-agent: healthy at" in result.lines()[-1]
        assert TOKEN not in result.stdout + result.stderr, node
    _, endpoints = register_under_mocks(lambda: SshNodePool(POOL, stack.args(FIRST_VERSION)).endpoints)
    assert endpoints == {host.name: f"https://{host.address}:{AGENT_PORT}" for host in group.hosts}
    # Each install made its host's certificate and printed its fingerprint; the hosts' certificates differ.
    assert set(stack.fingerprints) == set(results) and len(set(stack.fingerprints.values())) == len(results)
    for host in group.hosts:
        tls_dir = host.agent_root / "etc" / "gpustack-agent" / "tls"
        assert (tls_dir / "fingerprint").read_text().strip() == stack.fingerprints[host.name]
        assert oct((tls_dir / "key.pem").stat().st_mode & 0o777) == oct(0o600)
        assert "TLS certificate created" in results[host.name].stdout
    pins = stack.fingerprints

    a = capacity(group.by_name("gpu-a").address, pins["gpu-a"])
    assert a["name"] == "gpu-a" and a["labels"] == {"site": "lab", "host": "gpu-a"}
    assert [d["product"] for d in a["devices"]] == ["NVIDIA H100 80GB HBM3"] * 2
    groups = {d["topology_group"] for d in a["devices"]}
    assert groups == {"nvlink-0"}  # one NVLink clique
    b = capacity(group.by_name("gpu-b").address, pins["gpu-b"])
    assert [d["product"] for d in b["devices"]] == ["NVIDIA L40S"] * 4
    assert {d["memory_total"] for d in b["devices"]} == {48_305_799_168}
    assert all(d["compute_capability"] == "8.9" for d in b["devices"])
    assert {d["topology_group"] for d in b["devices"]} == {None}  # PCIe only: no NVLink group
    c = capacity(group.by_name("cpu-c").address, pins["cpu-c"])
    assert c["devices"] == [] and c["cpu_count"]

    for host in group.hosts:
        # The agent runs inside its host's namespace, started over SSH, bound to the veth address only.
        pids = host.agent_pids()
        assert len(pids) == 1, host.name
        cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--host") + 1] == host.address.encode()
        assert str(host.agent_root).encode() in b" ".join(cmdline)
        assert host.exec_in("bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{AGENT_PORT}").returncode != 0
        # No capacity without the token.
        url = f"https://{host.address}:{AGENT_PORT}"
        with AgentClient(url, "wrong-token", pins[host.name]) as client, pytest.raises(AgentError, match="HTTP 401"):
            client.capacity()
        # Another host's pin is refused before the token is sent; plain HTTP is refused by the client and
        # not served by the agent.
        other = pins["cpu-c" if host.name != "cpu-c" else "gpu-a"]
        mismatch = f"fingerprint {pins[host.name]}, but {other}"
        with AgentClient(url, TOKEN, other) as client, pytest.raises(AgentCertificateMismatch, match=mismatch):
            client.capacity()
        with pytest.raises(AgentInsecureEndpoint):
            AgentClient(f"http://{host.address}:{AGENT_PORT}", TOKEN)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{host.address}:{AGENT_PORT}/healthz", timeout=5).raise_for_status()


def test_an_unchanged_program_runs_nothing_and_a_rerun_of_the_install_changes_nothing(stack: Stack) -> None:
    a = stack.group.by_name("gpu-a")
    pid_before = a.agent_pids()
    resources, _ = stack.register(FIRST_VERSION)
    assert stack.engine.apply(resources) == {}  # same inputs, scripts included: the engine has nothing to do
    # Running the install again anyway (what any update of the command does) is idempotent.
    result = run_command(host_resources(resources, POOL, "gpu-a")["agent"], "update")
    assert result.lines()[-2] == "gpustack-agent: nothing changed", result.stdout
    assert parse_fingerprint(result.stdout) == stack.fingerprints["gpu-a"]  # the same certificate
    assert "started process" not in result.stdout
    assert a.agent_pids() == pid_before  # the agent was not restarted


def test_a_rotated_token_goes_in_on_stdin_and_restarts_the_agents(stack: Stack) -> None:
    stack.token = ROTATED_TOKEN
    results, _ = stack.up(FIRST_VERSION)
    assert set(results) == {"gpu-a", "gpu-b", "cpu-c"}  # stdin changed: the engine runs `update` on each
    for node, result in results.items():
        assert "token written to" in result.stdout and "started process" in result.stdout, node
        assert ROTATED_TOKEN not in result.stdout + result.stderr
    for host in stack.group.hosts:
        assert capacity(host.address, stack.fingerprints[host.name], ROTATED_TOKEN)["name"] == host.name
        with pytest.raises(AgentError, match="HTTP 401"):
            capacity(host.address, stack.fingerprints[host.name], TOKEN)


def test_a_new_agent_version_upgrades_every_host_in_place(stack: Stack) -> None:
    pids_before = {host.name: host.agent_pids() for host in stack.group.hosts}
    pins_before = dict(stack.fingerprints)
    results, _ = stack.up(NEXT_VERSION)
    assert set(results) == {"gpu-a", "gpu-b", "cpu-c"}
    for host in stack.group.hosts:
        result = results[host.name]
        assert f"package upgraded (gpustack-runtime {FIRST_VERSION} -> {NEXT_VERSION})" in result.stdout, result.stdout
        assert "venv created" not in result.stdout  # the same venv
        pids = host.agent_pids()
        assert len(pids) == 1 and pids != pids_before[host.name]
        version = (host.agent_root / "opt/gpustack-agent/venv/bin/gpustack-agent").parent / "python"
        installed = subprocess.run(
            [str(version), "-c", "import importlib.metadata as m; print(m.version('gpustack-runtime'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert installed == NEXT_VERSION
        assert stack.fingerprints[host.name] == pins_before[host.name], "an upgrade keeps the certificate"
        assert capacity(host.address, pins_before[host.name], ROTATED_TOKEN)["name"] == host.name


def test_removing_a_host_uninstalls_its_agent_and_keeps_the_others(stack: Stack) -> None:
    c = stack.group.by_name("cpu-c")
    a_pids = stack.group.by_name("gpu-a").agent_pids()
    resources, endpoints = stack.register(NEXT_VERSION, hosts=["gpu-a", "gpu-b"])
    assert set(endpoints) == {"gpu-a", "gpu-b"}
    assert not any("cpu-c" in resource.name for resource in resources)
    results = stack.engine.apply(resources)
    # Only the removed host's resources are acted on (deleted); the others keep their names and are not touched.
    assert set(results) == {f"{POOL}-cpu-c-{suffix}" for suffix in ("agent", "install-script", "uninstall-script")}
    result = results[f"{POOL}-cpu-c-agent"]
    assert "stopped process" in result.stdout and "gpustack-agent: uninstalled" in result.stdout, result.stdout
    assert c.agent_pids() == []
    assert not (c.agent_root / "opt" / "gpustack-agent" / "venv").exists()
    assert not (c.agent_root / "etc" / "gpustack-agent").exists()  # token and environment gone
    assert not (c.agent_root / "var" / "lib" / "gpustack-agent-installer").exists()  # the copied scripts too
    assert c.sshd_pid in c.pids()  # the host itself stays
    assert stack.group.by_name("gpu-a").agent_pids() == a_pids


def test_destroy_then_teardown_leave_no_process_and_no_namespace(stack: Stack) -> None:
    results = stack.engine.destroy()
    assert {name for name in results if name.endswith("-agent")} == {f"{POOL}-gpu-a-agent", f"{POOL}-gpu-b-agent"}
    for host in stack.group.hosts:
        assert host.agent_pids() == [], host.name
    namespaces = [host.namespace for host in stack.group.hosts]
    stack.group.close()
    for namespace in namespaces:
        assert not namespace_exists(namespace)
    for host in stack.group.hosts:
        assert host.pids() == []


def test_namespaces_left_by_a_killed_test_run_are_removed() -> None:
    # 9999999 is above the kernel's largest pid_max (2**22): no process of that pid can run.
    stale = f"{NAMESPACE_PREFIX}9999999-0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in remove_stale_namespaces()
        assert not namespace_exists(stale)
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, check=False)
