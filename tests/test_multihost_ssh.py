"""On-prem hosts end to end, for real: three network-namespace hosts with their own sshd, the SshNodePool's
install resources run over real SSH (the exact strings the component registered, see multihost/remote_runner.py),
agents bound to their veth addresses with fake GPUs, capacity read from the test, re-run, upgrade, removal of a
host, and teardown that leaves no process and no namespace.

The tests of this module run in order and share the hosts (bringing three hosts up and installing three agents
takes most of the time): each step builds on the previous one, as the stages of one stack's life do.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paramiko
import pytest
from multihost.netns import HostGroup, namespace_exists, netns_hosts
from multihost.remote_runner import CommandResult, connect, copy_to_remote, run_command
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

from gpustack_pulumi.components.ssh_pool import SshNodePool

pytestmark = pytest.mark.slow

FIRST_VERSION = "0.1.0"
NEXT_VERSION = "0.1.1"
POOL = "onprem"


class Stack:
    """The hosts, and the engine's part for the remote resources (what was applied, by resource name)."""

    def __init__(self, group: HostGroup, wheelhouse: Path, fake_nvml: Path) -> None:
        self.group = group
        self.wheelhouse = wheelhouse
        self.fake_nvml = fake_nvml
        self.engine = RemoteCommandApplier()

    def args(self, version: str, hosts: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
        args = pool_args(self.group, self.wheelhouse, self.fake_nvml, version, **overrides)
        if hosts is not None:
            args["hosts"] = [host for host in args["hosts"] if host["node_name"] in hosts]
        return args

    def register(self, version: str, hosts: list[str] | None = None, **overrides: Any) -> tuple[list, dict[str, str]]:
        args = self.args(version, hosts, **overrides)
        return register_under_mocks(lambda: SshNodePool(POOL, args).endpoints)

    def up(self, version: str, hosts: list[str] | None = None, **overrides: Any) -> tuple[dict[str, CommandResult], list]:
        """Register the program, then run what changed; results by node name ('<pool>-<node>-agent')."""
        resources, _ = self.register(version, hosts, **overrides)
        results = self.engine.apply(resources)
        return {name[len(POOL) + 1 : -len("-agent")]: r for name, r in results.items() if name.endswith("-agent")}, resources


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("multihost")
    wheelhouse = build_wheelhouse(base / "wheelhouse", [FIRST_VERSION, NEXT_VERSION])
    fake_nvml = build_fake_nvml(base / "fakenvml")
    with netns_hosts(HOST_SPECS, base, fake_nvml) as group:
        yield Stack(group, wheelhouse, fake_nvml)


def capacity(address: str) -> dict[str, Any]:
    response = httpx.get(
        f"http://{address}:{AGENT_PORT}/v1/capacity", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    response.raise_for_status()
    return response.json()


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
    args = pool_args(stack.group, stack.wheelhouse, stack.fake_nvml, FIRST_VERSION)
    # Host A reached through itself as the bastion (the namespaces have no route to each other): the SSH
    # session to the target runs inside a direct-tcpip channel of the jump session.
    args["hosts"] = [{**args["hosts"][0], "jump_host": {"address": a.address}}]
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


def test_install_over_ssh_starts_each_agent_with_its_devices(stack: Stack) -> None:
    resources, endpoints = stack.register(FIRST_VERSION)
    results = stack.apply(resources, [host.name for host in stack.group.hosts])
    for node, result in results.items():
        assert f"gpustack-agent: package installed (gpustack-runtime {FIRST_VERSION})" in result.stdout, result.stdout
        assert "gpustack-agent: healthy at" in result.lines()[-1]
        assert TOKEN not in result.stdout + result.stderr, node
    group = stack.group
    assert endpoints == {host.name: f"http://{host.address}:{AGENT_PORT}" for host in group.hosts}

    a = capacity(group.by_name("gpu-a").address)
    assert a["name"] == "gpu-a" and a["labels"] == {"site": "lab", "host": "gpu-a"}
    assert [d["product"] for d in a["devices"]] == ["NVIDIA H100 80GB HBM3"] * 2
    groups = {d["topology_group"] for d in a["devices"]}
    assert len(groups) == 1 and None not in groups  # one NVLink clique
    b = capacity(group.by_name("gpu-b").address)
    assert [d["product"] for d in b["devices"]] == ["NVIDIA L40S"] * 4
    assert {d["memory_total"] for d in b["devices"]} == {48_305_799_168}
    assert all(d["compute_capability"] == "8.9" for d in b["devices"])
    c = capacity(group.by_name("cpu-c").address)
    assert c["devices"] == [] and c["cpu_count"]

    for host in group.hosts:
        # The agent runs inside its host's namespace, started over SSH, bound to the veth address only.
        pids = host.agent_pids()
        assert len(pids) == 1, host.name
        cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--host") + 1] == host.address.encode()
        assert str(host.agent_root).encode() in b" ".join(cmdline)
        # Bound to the veth address: nothing answers on the namespace's loopback.
        assert host.exec_in("bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{AGENT_PORT}").returncode != 0
        # No capacity without the token.
        assert httpx.get(f"http://{host.address}:{AGENT_PORT}/v1/capacity", timeout=5).status_code == 401


def test_running_the_install_again_changes_nothing(stack: Stack) -> None:
    a = stack.group.by_name("gpu-a")
    pid_before = a.agent_pids()
    resources, _ = stack.register(FIRST_VERSION)
    result = stack.apply(resources, ["gpu-a"])["gpu-a"]
    assert "gpustack-agent: nothing changed" in result.stdout, result.stdout
    assert "started process" not in result.stdout
    assert a.agent_pids() == pid_before  # the agent was not restarted


def test_a_new_agent_version_upgrades_in_place(stack: Stack) -> None:
    b = stack.group.by_name("gpu-b")
    pid_before = b.agent_pids()
    old = stack.applied["gpu-b"]["agent"]["create"]
    resources, _ = stack.register(NEXT_VERSION)
    new = host_resources(resources, POOL, "gpu-b")["agent"]["create"]
    assert new != old  # the command names the version: the engine runs `update`
    result = stack.apply(resources, ["gpu-b"])["gpu-b"]
    assert f"package upgraded (gpustack-runtime {FIRST_VERSION} -> {NEXT_VERSION})" in result.stdout, result.stdout
    assert "started process" in result.stdout
    pid_after = b.agent_pids()
    assert len(pid_after) == 1 and pid_after != pid_before
    venv_agent = b.agent_root / "opt" / "gpustack-agent" / "venv" / "bin" / "gpustack-agent"
    assert venv_agent.is_file()
    assert capacity(b.address)["name"] == "gpu-b"
    assert len(capacity(b.address)["devices"]) == 4


def test_removing_a_host_uninstalls_its_agent_and_keeps_the_others(stack: Stack) -> None:
    c = stack.group.by_name("cpu-c")
    resources, endpoints = stack.register(NEXT_VERSION, hosts=["gpu-a", "gpu-b"])
    names = {resource.name for resource in resources}
    assert not any("cpu-c" in name for name in names)
    assert {f"{POOL}-gpu-a-agent", f"{POOL}-gpu-b-agent"} <= names  # the others keep their names: no churn
    assert set(endpoints) == {"gpu-a", "gpu-b"}
    # What the engine does for resources the program no longer declares: their delete, from the old state.
    result = stack.delete("cpu-c")
    assert "stopped process" in result.stdout and "gpustack-agent: uninstalled" in result.stdout, result.stdout
    assert c.agent_pids() == []
    assert not (c.agent_root / "opt" / "gpustack-agent" / "venv").exists()
    assert not (c.agent_root / "etc" / "gpustack-agent").exists()  # token and environment gone
    assert c.sshd_pid in c.pids()  # the host itself stays
    assert capacity(stack.group.by_name("gpu-a").address)["name"] == "gpu-a"


def test_destroy_then_teardown_leave_no_process_and_no_namespace(stack: Stack) -> None:
    for node in list(stack.applied):
        stack.delete(node)
    for host in stack.group.hosts:
        assert host.agent_pids() == [], host.name
    namespaces = [host.namespace for host in stack.group.hosts]
    stack.group.close()
    for namespace in namespaces:
        assert not namespace_exists(namespace)
    for host in stack.group.hosts:
        assert host.pids() == []
