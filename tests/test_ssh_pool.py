"""SshNodePool's resource graph under Pulumi mocks (names, parents, pinned keys, secrets), its argument checks, the
known_hosts lookup, and the rendered remote commands (checked by bash itself). The commands run for real over SSH in
test_multihost_ssh.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
from multihost.remote_runner import SECRET_SIG, is_secret
from multihost.support import by_name, register_under_mocks

from gpustack_pulumi.components import GpuCluster
from gpustack_pulumi.components.cluster import ComponentArgsError, NodePool
from gpustack_pulumi.pools.ssh.component import SshNodePool, default_install_scripts_dir, plan_ssh_hosts
from gpustack_pulumi.pools.ssh.install import (
    AgentLayout,
    parse_fingerprint,
    render_install_command,
    render_uninstall_command,
)
from gpustack_pulumi.pools.ssh.known_hosts import HostKeyError, find_host_key, normalize_host_key

PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAAfake\n-----END OPENSSH PRIVATE KEY-----\n"
TOKEN = "pool-token-0c1d"


def ed25519_public(seed: int) -> str:
    """A well-formed ssh-ed25519 public key line (RFC 8709 blob: type string, then 32 key bytes)."""
    key_type = b"ssh-ed25519"
    key = hashlib.sha256(bytes([seed])).digest()
    blob = len(key_type).to_bytes(4, "big") + key_type + len(key).to_bytes(4, "big") + key
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}"


KEY_A, KEY_B, KEY_JUMP = ed25519_public(1), ed25519_public(2), ed25519_public(3)


def args(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hosts": [
            {"address": "10.0.0.11", "node_name": "a", "host_key": KEY_A, "labels": {"rack": "r1"}},
            {
                "address": "gpu-b.lab.example",
                "port": 2222,
                "user": "deploy",
                "node_name": "b",
                "agent_root": "/home/deploy/gpustack",
                "jump_host": {"address": "bastion.lab.example", "user": "jump"},
            },
        ],
        "known_hosts": f"bastion.lab.example {KEY_JUMP}\n[gpu-b.lab.example]:2222 {KEY_B} comment\n",
        "private_key": pulumi.Output.secret(PRIVATE_KEY),
        "agent_token": pulumi.Output.secret(TOKEN),
        "agent_version": "0.1.0",
    }
    base.update(overrides)
    return base


def walk(value: Any, inside_secret: bool = False):
    """(string, inside a secret envelope?) for every string in registered inputs."""
    if isinstance(value, dict):
        secret = inside_secret or SECRET_SIG in value
        for item in value.values():
            yield from walk(item, secret)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, inside_secret)
    elif isinstance(value, str):
        yield value, inside_secret


def test_resource_graph_names_parents_pinned_keys_and_secrets() -> None:
    resources, endpoints = register_under_mocks(lambda: SshNodePool("onprem", args()).endpoints)
    named = by_name(resources)
    per_host = ("install-script", "uninstall-script", "agent")
    assert set(named) == {"onprem"} | {f"onprem-{node}-{suffix}" for node in "ab" for suffix in per_host}
    assert named["onprem"].typ == "gpustack:index:SshNodePool"
    for node in "ab":
        assert named[f"onprem-{node}-agent"].typ == "command:remote:Command"
        assert named[f"onprem-{node}-install-script"].typ == "command:remote:CopyToRemote"
    assert endpoints == {"a": "https://10.0.0.11:10150", "b": "https://gpu-b.lab.example:10150"}

    for resource in resources:
        if resource.name == "onprem":
            continue
        # The private key and the token appear only inside secret envelopes, in every resource that gets them.
        strings = list(walk(resource.inputs))
        assert any(PRIVATE_KEY in text for text, _ in strings), resource.name
        for text, secret in strings:
            if PRIVATE_KEY in text or TOKEN in text:
                assert secret, f"{resource.name}: a secret in plaintext"
        assert is_secret(resource.inputs["connection"])

    a = named["onprem-a-agent"].inputs
    assert is_secret(a["stdin"]) and a["stdin"]["value"] == TOKEN  # the token goes in on stdin only
    assert TOKEN not in a["create"] + a["delete"]
    connection_a = a["connection"]["value"]
    assert connection_a["hostKey"] == KEY_A and connection_a["port"] == 22 and connection_a["user"] == "root"
    connection_b = named["onprem-b-agent"].inputs["connection"]["value"]
    assert connection_b["hostKey"] == KEY_B and connection_b["port"] == 2222 and connection_b["user"] == "deploy"
    assert connection_b["proxy"]["hostKey"] == KEY_JUMP and connection_b["proxy"]["user"] == "jump"
    assert connection_b["proxy"]["privateKey"] == PRIVATE_KEY  # the host's key by default
    copy = named["onprem-b-install-script"].inputs
    assert copy["remotePath"] == "/home/deploy/gpustack/var/lib/gpustack-agent-installer/install.sh"
    assert Path(copy["source"].path) == default_install_scripts_dir() / "install.sh"


def test_children_are_parented_to_the_pool() -> None:
    from multihost.support import RecordingMocks
    from pulumi.runtime import mocks as pulumi_mocks

    recorder = RecordingMocks()
    monitor = pulumi_mocks.MockMonitor(recorder)
    pulumi.runtime.set_mocks(recorder, preview=False, monitor=monitor)
    try:

        @pulumi.runtime.test
        def program():
            return SshNodePool("onprem", args()).endpoints

        program()
    finally:
        pulumi.runtime.settings.reset_options()
    urns = {urn.rsplit("::", 1)[1]: urn for urn in monitor.resources}
    for node in "ab":
        assert "gpustack:index:SshNodePool$command:remote:Command" in urns[f"onprem-{node}-agent"]
        assert "gpustack:index:SshNodePool$command:remote:CopyToRemote" in urns[f"onprem-{node}-install-script"]


def test_a_cluster_of_one_ssh_pool_merges_its_endpoints() -> None:
    def program():
        pool = SshNodePool("onprem", args())
        assert isinstance(pool, NodePool) and pool.planned_capacity is None  # the pool protocol; GPUs unknown
        with pytest.raises(ComponentArgsError, match=r"pools\[1\] is a str, not a node pool"):
            GpuCluster("bad", {"pools": [pool, "gpu-box"], "agent_token": TOKEN})  # type: ignore[list-item]
        return GpuCluster("gpus", {"pools": [pool], "agent_token": TOKEN}).endpoints

    _, endpoints = register_under_mocks(program)
    assert endpoints == {"a": "https://10.0.0.11:10150", "b": "https://gpu-b.lab.example:10150"}


def host(**fields: Any) -> dict[str, Any]:
    return {"address": "10.0.0.11", "host_key": KEY_A, **fields}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hosts": []}, "hosts is empty"),
        ({"agent_version": "latest"}, "agent_version 'latest' must be a version"),
        ({"runtime": "vm"}, "runtime 'vm' is invalid"),
        ({"runtime": "container"}, "needs container_image"),
        ({"agent_port": 0}, "agent_port must be 1-65535"),
        ({"port_range": "40000"}, "port_range '40000' must look like"),
        ({"hosts": [host(address="bad host")]}, r"hosts\[0\].address 'bad host'"),
        ({"hosts": [host(port=70000)]}, r"hosts\[0\].port must be 1-65535"),
        ({"hosts": [host(user="Root User")]}, r"hosts\[0\].user 'Root User'"),
        ({"hosts": [host(), host(address="10.0.0.12", host_key=KEY_B, node_name="10.0.0.11")]}, "also hosts"),
        ({"hosts": [host(host_key=None), host(address="10.0.0.12")]}, "no pinned host key for 10.0.0.11"),
        ({"hosts": [host(address="10.0.0.99", host_key=None)]}, "Unknown host keys are never accepted"),
        ({"hosts": [host(host_key="ssh-ed25519 not-base64!")]}, r"hosts\[0\].host_key: host key .* not base64"),
        ({"hosts": [host(host_key=KEY_A.replace("ssh-ed25519", "ssh-rsa"))]}, "does not hold a ssh-rsa key"),
        ({"hosts": [host(devices="gpu")]}, r"hosts\[0\].devices 'gpu' is invalid"),
        ({"hosts": [host(labels={"a b": "c"})]}, r"hosts\[0\].labels a b=c"),
        ({"hosts": [host(environment={"1X": "y"})]}, "environment name '1X'"),
        ({"hosts": [host(agent_root="relative/dir")]}, r"hosts\[0\].agent_root 'relative/dir' must be an absolute"),
        ({"hosts": [host(jump_host={"address": "jump.example"})]}, r"jump_host.host_key: no pinned host key"),
        ({"private_key": None, "hosts": [host()]}, r"hosts\[0\].private_key is missing"),
        ({"install_scripts_dir": "/nonexistent"}, "install_scripts_dir '/nonexistent' lacks install.sh"),
        ({"pip_args": ["--index-url=https://me:pw@pypi.example/simple"]}, "holds credentials; put them in"),
        (
            {
                "known_hosts": f"@revoked 10.0.0.99 {KEY_A}\n10.0.0.99 {KEY_A}\n",
                "hosts": [host(address="10.0.0.99", host_key=None)],
            },
            "marked @revoked",
        ),
    ],
)
def test_bad_arguments_fail_naming_the_argument_before_anything_registers(overrides: dict, message: str) -> None:
    pool_args = args(**overrides)
    if pool_args.get("private_key") is None:
        del pool_args["private_key"]
    for entry in pool_args["hosts"]:
        if entry.get("host_key") is None:
            entry.pop("host_key", None)
    recorded: list = []

    def program():
        try:
            SshNodePool("onprem", pool_args)
        except ComponentArgsError as error:
            recorded.append(error)
        return {}

    resources, _ = register_under_mocks(program)
    assert resources == []
    assert len(recorded) == 1 and recorded[0].args[0].startswith("SshNodePool 'onprem'")
    assert re.search(message, str(recorded[0])), str(recorded[0])


def test_missing_token_is_named() -> None:
    pool_args = args()
    del pool_args["agent_token"]
    with pytest.raises(ComponentArgsError, match="agent_token is required"):
        plan_ssh_hosts("onprem", pool_args)  # type: ignore[arg-type]


def test_known_hosts_lookup_plain_port_and_hashed_entries() -> None:
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, b"10.9.9.9", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    text = "\n".join(
        [
            "# comment",
            f"@revoked 10.1.1.1 {ed25519_public(9)}",
            f"10.1.1.1,host-one {KEY_A} root@host",
            f"[10.1.1.1]:2222 {KEY_B}",
            f"{hashed} {KEY_JUMP}",
        ]
    )
    assert find_host_key(text, "10.1.1.1") == KEY_A
    assert find_host_key(text, "host-one") == KEY_A
    assert find_host_key(text, "10.1.1.1", 2222) == KEY_B
    assert find_host_key(text, "10.9.9.9") == KEY_JUMP
    assert find_host_key(text, "10.9.9.8") is None
    assert find_host_key(text, "10.1.1.2") is None
    with pytest.raises(HostKeyError, match="marked @revoked"):
        find_host_key(f"{text}\n@revoked * {KEY_A}", "host-one")
    with pytest.raises(HostKeyError, match="not one of"):
        normalize_host_key("ssh-dss AAAA")


def plan(**overrides: Any):
    return plan_ssh_hosts("onprem", args(**overrides))  # type: ignore[arg-type]


def test_a_new_version_or_script_changes_the_command_so_the_install_runs_again(tmp_path: Path) -> None:
    first = plan()[0].spec
    upgraded = plan(agent_version="0.2.0")[0].spec
    assert render_install_command(first) != render_install_command(upgraded)
    assert "--source=gpustack-runtime==0.2.0" in render_install_command(upgraded)
    assert first.scripts_sha256 == upgraded.scripts_sha256  # the copies stay
    scripts = tmp_path / "install"
    shutil.copytree(default_install_scripts_dir(), scripts)
    with (scripts / "install.sh").open("a") as script:
        script.write("# a fix\n")
    patched = plan(install_scripts_dir=str(scripts))[0].spec
    assert patched.scripts_sha256 != first.scripts_sha256
    assert render_install_command(patched) != render_install_command(first)
    assert render_install_command(plan()[0].spec) == render_install_command(first)  # deterministic


def bash_syntax_ok(command: str) -> None:
    # The command is `bash -c '<script>'`: let bash parse both levels without running anything.
    outer = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert outer.returncode == 0, outer.stderr
    inner = subprocess.run(["bash", "-c", 'printf "%s" "$1"', "_", command], capture_output=True, text=True).stdout
    assert inner == command
    script = subprocess.run(
        ["bash", "-c", 'eval "set -- ${1#bash -c }"; printf "%s" "$1"', "_", command], capture_output=True, text=True
    ).stdout
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert script.startswith("set -euo pipefail") and checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # system layout: systemd where present, else a detached process
        {"runtime": "container", "container_image": "ghcr.io/example/gpustack-agent"},
    ],
)
def test_rendered_commands_are_valid_bash(overrides: dict) -> None:
    for planned in plan(**overrides):
        bash_syntax_ok(render_install_command(planned.spec))
        bash_syntax_ok(render_uninstall_command(planned.spec))


def test_layouts_and_runtimes_pick_systemd_detached_or_docker() -> None:
    system_host, rooted_host = plan()
    assert system_host.spec.layout == AgentLayout()
    system_command = render_install_command(system_host.spec)
    assert "--no-systemd" not in system_command and "systemctl restart gpustack-agent.service" in system_command
    rooted = render_install_command(rooted_host.spec)
    assert "--no-systemd" in rooted and "systemctl" not in rooted
    assert "--prefix=/home/deploy/gpustack/opt/gpustack-agent" in rooted
    container = render_install_command(
        plan(runtime="container", container_image="ghcr.io/example/gpustack-agent")[0].spec
    )
    assert "ghcr.io/example/gpustack-agent:0.1.0 gpustack-agent --host=10.0.0.11 --port=10150" in container
    assert "--gpus all" in container and "install.sh" not in container
    # The container makes its certificate in the mounted TLS directory and serves HTTPS with it.
    assert "--volume /etc/gpustack-agent/tls:/etc/gpustack-agent/tls" in container
    assert "--tls-dir=/etc/gpustack-agent/tls" in container
    assert 'GPUSTACK_AGENT_FINGERPRINT=$(cat "$TLS_DIR/fingerprint")' in container


def test_agents_bind_the_pool_address_and_are_checked_over_pinned_https() -> None:
    system_host, rooted_host = plan()
    assert "--host=10.0.0.11" in system_host.spec.agent_flags()  # the address the pool names, not 0.0.0.0
    assert system_host.spec.health_url == "https://10.0.0.11:10150/healthz"
    assert rooted_host.spec.agent_flags()[0] == "--host=gpu-b.lab.example"
    command = render_install_command(system_host.spec)
    assert "TLS_DIR=/etc/gpustack-agent/tls" in command and '"$TLS_DIR/fingerprint"' in command
    assert "context.verify_mode = ssl.CERT_NONE  # the pin below is the check" in command
    wildcard = plan(hosts=[host(bind_address="0.0.0.0")])[0].spec
    assert "--host=0.0.0.0" in wildcard.agent_flags()
    assert wildcard.health_url == "https://127.0.0.1:10150/healthz"
    v6 = plan(hosts=[host(address="fd00::11", node_name="v6", bind_address="::")])[0]
    assert v6.endpoint == "https://[fd00::11]:10150" and v6.spec.health_url == "https://[::1]:10150/healthz"


FINGERPRINT_A, FINGERPRINT_B = "sha256:" + "a1" * 32, "sha256:" + "b2" * 32


def test_parse_fingerprint_takes_the_last_install_line() -> None:
    out = f"gpustack-agent: package unchanged\nGPUSTACK_AGENT_FINGERPRINT={FINGERPRINT_B}\nx\n"
    assert parse_fingerprint(out) == FINGERPRINT_B
    assert parse_fingerprint(f"GPUSTACK_AGENT_FINGERPRINT={FINGERPRINT_A}\n{out}") == FINGERPRINT_B
    assert parse_fingerprint("gpustack-agent: nothing changed\n") is None
    assert parse_fingerprint(None) is None
    assert parse_fingerprint("GPUSTACK_AGENT_FINGERPRINT=sha256:abc\n") is None  # not a SHA-256


class InstalledMocks(pulumi.runtime.Mocks):
    """Every install command "ran" and printed the given stdout per node (what pulumi_command records)."""

    def __init__(self, stdout: dict[str, str]) -> None:
        self.stdout = stdout

    def new_resource(self, args: Any) -> tuple[str | None, dict[str, Any]]:
        outputs = dict(args.inputs)
        node = args.name.removeprefix("onprem-").removesuffix("-agent")
        if args.typ == "command:remote:Command" and node in self.stdout:
            outputs["stdout"] = self.stdout[node]
        return (f"{args.name}-id" if args.custom else None), outputs

    def call(self, args: Any) -> dict[str, Any]:
        return {}


def pool_outputs(stdout: dict[str, str]) -> dict[str, Any]:
    from pulumi.runtime import mocks as pulumi_mocks

    mocks = InstalledMocks(stdout)
    pulumi.runtime.set_mocks(mocks, preview=False, monitor=pulumi_mocks.MockMonitor(mocks))
    seen: dict[str, Any] = {}
    try:

        @pulumi.runtime.test
        def program():
            pool = SshNodePool("onprem", args())
            return pulumi.Output.all(pool.endpoints, pool.fingerprints).apply(
                lambda both: seen.update(endpoints=both[0], fingerprints=both[1])
            )

        program()
    finally:
        pulumi.runtime.settings.reset_options()
    return seen


def test_fingerprints_are_read_from_each_install_commands_stdout() -> None:
    outputs = pool_outputs(
        {
            "a": f"gpustack-agent: TLS certificate created in /etc/gpustack-agent/tls\n"
            f"GPUSTACK_AGENT_FINGERPRINT={FINGERPRINT_A}\ngpustack-agent: healthy at https://10.0.0.11:10150/healthz\n",
            "b": f"GPUSTACK_AGENT_FINGERPRINT={FINGERPRINT_B}\n",
        }
    )
    assert outputs["fingerprints"] == {"a": FINGERPRINT_A, "b": FINGERPRINT_B}
    assert set(outputs["endpoints"]) == set(outputs["fingerprints"])
    # Not run yet (no stdout): the node has no fingerprint yet.
    assert pool_outputs({"a": f"GPUSTACK_AGENT_FINGERPRINT={FINGERPRINT_A}\n"})["fingerprints"] == {"a": FINGERPRINT_A}


def test_an_install_output_without_a_fingerprint_is_an_error_naming_the_node() -> None:
    with pytest.raises(Exception, match="node 'b' printed no GPUSTACK_AGENT_FINGERPRINT line"):
        pool_outputs({"a": f"GPUSTACK_AGENT_FINGERPRINT={FINGERPRINT_A}\n", "b": "gpustack-agent: nothing changed\n"})


def test_plain_text_key_and_token_are_made_secret() -> None:
    plain = args(private_key=PRIVATE_KEY, agent_token=TOKEN)
    resources, _ = register_under_mocks(lambda: SshNodePool("onprem", plain).endpoints)
    for resource in resources:
        for text, secret in walk(resource.inputs):
            if PRIVATE_KEY in text or TOKEN in text:
                assert secret, f"{resource.name}: a secret in plaintext"
    assert is_secret(by_name(resources)["onprem-a-agent"].inputs["stdin"])


def test_agent_version_defaults_to_this_package_version() -> None:
    from gpustack_pulumi import __version__

    defaults = args()
    del defaults["agent_version"]
    (first, *_) = plan_ssh_hosts("onprem", defaults)  # type: ignore[arg-type]
    assert f"--source=gpustack-runtime=={__version__}" in render_install_command(first.spec)
