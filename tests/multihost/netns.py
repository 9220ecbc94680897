"""Network-namespace hosts with their own sshd (shared reference: real-parts.md §2, "Second host via network
namespace"). Everything a fixture creates is removed by it, also when a test fails: every process still in the
namespace is killed, then the namespace (and with it the veth pair) is deleted."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
SUBNET_PREFIX = "10.213"
"""Private 10.213.N.0/24 blocks (RFC 1918); each test session picks an N no interface here uses yet."""
SSHD_START_TIMEOUT_S = 10.0
PROCESS_STOP_GRACE_S = 5.0


class HostSetupError(RuntimeError):
    """The machine lacks something the namespace hosts need; the message names the package."""


def require_tools() -> None:
    if os.geteuid() != 0:
        raise HostSetupError("network-namespace hosts need root (ip netns add)")
    for tool, package in (("ip", "iproute2"), (str(SSHD), "openssh-server"), (SSH_KEYGEN, "openssh-client")):
        if shutil.which(tool) is None:
            raise HostSetupError(f"{tool} is missing: apt-get install {package}")


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HostSetupError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class HostSpec:
    """What one test host looks like: its name and its fake NVML machine (None: CPU-only, devices=none)."""

    name: str
    gpus: list[dict[str, Any]] | None = None


@dataclass
class NetnsHost:
    """One host: namespace, address, sshd and its files. ``root`` is the host's own "disk" (namespaces share the
    real filesystem, so each host keeps its agent under its own directory)."""

    spec: HostSpec
    namespace: str
    address: str
    host_veth: str
    root: Path
    host_key_line: str = ""
    """``"ssh-ed25519 AAAA..."``: this host's public host key, pinned by the tests."""
    sshd_pid: int | None = None
    fake_nvml_config: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def agent_root(self) -> Path:
        return self.root / "agent-root"

    def pids(self) -> list[int]:
        """Every process whose network namespace is this host's (``ip netns pids``)."""
        result = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True, check=False)
        return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []

    def agent_pids(self) -> list[int]:
        found = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if b"gpustack-agent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
        return found

    def exec_in(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.namespace, *argv], capture_output=True, text=True)


def _free_subnet() -> int:
    used = run("ip", "-4", "-o", "addr", "show")
    candidates = [n for n in range(100, 250) if f" {SUBNET_PREFIX}.{n}." not in used]
    if not candidates:
        raise HostSetupError(f"no free {SUBNET_PREFIX}.N.0/24 block for test hosts")
    return random.Random(os.getpid()).choice(candidates)


def _wait_for_tcp(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _kill_namespace_processes(host: NetnsHost) -> None:
    pids = host.pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + PROCESS_STOP_GRACE_S
    while time.monotonic() < deadline and host.pids():
        time.sleep(0.05)
    for pid in host.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _teardown(host: NetnsHost) -> None:
    _kill_namespace_processes(host)
    subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, check=False)
    # Deleting the namespace removes the veth pair; this only covers a half-built host.
    subprocess.run(["ip", "link", "del", host.host_veth], capture_output=True, check=False)


NAMESPACE_PREFIX = "gpustack-t"
"""Namespaces of these fixtures are named gpustack-t<pid of the test process>-<host index>."""


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces that an earlier, killed test process of these fixtures left (its pid no longer runs),
    with the processes still in them. Only names this module makes are touched."""
    removed = []
    for line in run("ip", "netns", "list").splitlines():
        namespace = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{NAMESPACE_PREFIX}(\d+)-(\d+)", namespace)
        if match is None or Path(f"/proc/{match.group(1)}").exists():
            continue
        owner = int(match.group(1))
        stale = NetnsHost(HostSpec("stale"), namespace, "", f"gst{owner % 100000}h{match.group(2)}"[:15], Path("/"))
        _teardown(stale)
        removed.append(namespace)
    return removed


def namespace_exists(namespace: str) -> bool:
    return namespace in run("ip", "netns", "list").split()


@dataclass
class HostGroup:
    """The hosts of one test session plus the client key and known_hosts that reach them."""

    hosts: list[NetnsHost]
    client_key: Path
    known_hosts: Path
    subnet: int

    def close(self) -> None:
        """Kill every process left in the hosts' namespaces and delete them. Safe to call twice."""
        for host in self.hosts:
            _teardown(host)

    def by_name(self, name: str) -> NetnsHost:
        return next(host for host in self.hosts if host.name == name)

    @property
    def client_key_text(self) -> str:
        return self.client_key.read_text()


def _write_sshd_config(host: NetnsHost, host_key: Path, authorized_keys: Path) -> Path:
    config = host.root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "Port 22",
                f"ListenAddress {host.address}",
                f"HostKey {host_key}",
                f"PidFile {host.root / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized_keys}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    return config


def _start_host(host: NetnsHost, index: int, subnet: int, authorized_keys: Path) -> None:
    # One /30 per host: host side .4i+1, namespace side .4i+2, so the veth routes never overlap.
    host_side = f"{SUBNET_PREFIX}.{subnet}.{4 * index + 1}"
    run("ip", "netns", "add", host.namespace)
    peer = f"{host.host_veth}n"
    run("ip", "link", "add", host.host_veth, "type", "veth", "peer", "name", peer)
    run("ip", "link", "set", peer, "netns", host.namespace)
    run("ip", "addr", "add", f"{host_side}/30", "dev", host.host_veth)
    run("ip", "link", "set", host.host_veth, "up")
    run("ip", "netns", "exec", host.namespace, "ip", "addr", "add", f"{host.address}/30", "dev", peer)
    run("ip", "netns", "exec", host.namespace, "ip", "link", "set", peer, "up")
    run("ip", "netns", "exec", host.namespace, "ip", "link", "set", "lo", "up")
    host_key = host.root / "ssh_host_ed25519_key"
    run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"{host.name}-hostkey", "-f", str(host_key))
    host.host_key_line = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
    config = _write_sshd_config(host, host_key, authorized_keys)
    run(str(SSHD), "-t", "-f", str(config))
    # sshd daemonizes inside the namespace; its pid file is read once it listens.
    run("ip", "netns", "exec", host.namespace, str(SSHD), "-f", str(config), "-E", str(host.root / "sshd.log"))
    _wait_for_tcp(host.address, 22, SSHD_START_TIMEOUT_S)
    # The daemon may listen a moment before it writes its pid file.
    pid_file = host.root / "sshd.pid"
    deadline = time.monotonic() + SSHD_START_TIMEOUT_S
    while not (pid_file.is_file() and pid_file.read_text().strip()):
        if time.monotonic() > deadline:
            raise HostSetupError(f"sshd of {host.name} wrote no pid file; see {host.root / 'sshd.log'}")
        time.sleep(0.02)
    host.sshd_pid = int(pid_file.read_text())


@contextlib.contextmanager
def netns_hosts(specs: list[HostSpec], workdir: Path, fake_nvml_library: Path | None) -> Iterator[HostGroup]:
    """Bring up one namespace host per spec; on exit kill every process left in them and delete them."""
    require_tools()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    remove_stale_namespaces()
    subnet = _free_subnet()
    tag = f"{os.getpid() % 100000}"
    client_key = workdir / "client_ed25519"
    run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "gpustack-test-client", "-f", str(client_key))
    authorized_keys = workdir / "authorized_keys"
    shutil.copy(client_key.with_suffix(".pub"), authorized_keys)
    authorized_keys.chmod(0o600)
    group = HostGroup([], client_key, workdir / "known_hosts", subnet)
    try:
        for index, spec in enumerate(specs):
            root = workdir / spec.name
            root.mkdir()
            host = NetnsHost(
                spec=spec,
                namespace=f"{NAMESPACE_PREFIX}{os.getpid()}-{index}",
                address=f"{SUBNET_PREFIX}.{subnet}.{4 * index + 2}",
                host_veth=f"gst{tag}h{index}"[:15],
                root=root,
            )
            group.hosts.append(host)
            if spec.gpus is not None:
                if fake_nvml_library is None:
                    raise HostSetupError(f"host {spec.name} has GPUs but no fake NVML library was built")
                host.fake_nvml_config = root / "fake-nvml.json"
                host.fake_nvml_config.write_text(json.dumps({"driver_version": "550.54.15", "devices": spec.gpus}))
            _start_host(host, index, subnet, authorized_keys)
        group.known_hosts.write_text("".join(f"{host.address} {host.host_key_line}\n" for host in group.hosts))
        yield group
    finally:
        group.close()
