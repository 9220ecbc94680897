"""The AWS pool's boot script (user data) run for real: as root, inside network-namespace hosts of the SSH pool's
multi-host harness, against moto as EC2 and SSM and a small IMDSv2 server, with the agent installed by the
embedded install.sh from an offline wheelhouse and fake GPUs.

Why: the boot script is what brings an instance of the pool to a serving agent, and the cluster trusts what it
publishes (the fingerprint it pins, the node name it places on). Rendering tests only see text; these run it: the
IMDSv2 token dance, the agent token read from an SSM SecureString (never in user data or the log), the slot claim
(one winner per slot, a terminated holder's slot taken over), the tags, install.sh, and the fingerprint published
to SSM and as a tag, checked against the certificate the agent really serves.

What is not the real thing: the instance is a namespace (shared filesystem, so the script's ``agent_root`` puts
everything under the host's own directory and the agent runs detached instead of under systemd, see
``render_user_data``), EC2 and SSM are moto (instances that exist only as records), the metadata service is
tests/imds_server.py, NVML is the fake library. moto and the metadata service listen only on the root-namespace
end of the first host's veth pair; the second host gets a /32 route to it over its own veth.

The tests of this module run in order and share the hosts and servers (each boot installs an agent: most of the
time), as the stages of one pool's life: first node, second node, a replacement taking a dead node's slot.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from imds_server import FakeImds
from moto.server import ThreadedMotoServer
from multihost.netns import NAMESPACE_PREFIX, HostGroup, HostSpec, NetnsHost, namespace_exists, netns_hosts, run
from multihost.support import RUNTIME_DIR, build_fake_nvml, build_wheelhouse, fakenvml, fakenvml_build

from gpustack_pulumi.catalog import gpu as catalog_gpu
from gpustack_pulumi.pools.aws import render
from gpustack_pulumi.providers.agent_client import AgentCertificateMismatch, AgentClient, AgentError

pytestmark = pytest.mark.slow

REGION = "us-east-1"
INSTANCE_TYPE = "g5.xlarge"  # 1× A10G: the fake NVML of each host carries the catalog's A10G
POOL = "boot"
VERSION = "0.1.0"
AGENT_PORT = 10152
BOOT_TIMEOUT_S = 300
VENV_BIN = Path(sys.executable).parent
"""The test venv's bin: its `aws` (the dev extra's awscli) is the CLI the boot script runs."""
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
SYSTEM_PATHS = (
    "/var/log/gpustack-boot.log",
    "/var/lib/gpustack-agent-installer",
    "/opt/gpustack-agent",
    "/etc/gpustack-agent",
    "/var/lib/gpustack-agent",
    "/etc/systemd/system/gpustack-agent.service",
)
"""Where the boot script and install.sh write on a real instance: a test boot must write none of them."""


def a10g(index: int) -> dict[str, Any]:
    spec = catalog_gpu("A10G")
    major, minor = spec.compute_capability.split(".")
    return fakenvml.fake_gpu(
        index,
        name=spec.names[0],
        uuid=f"GPU-{0xA1 + index:08x}-1010-1010-1010-1010aaaabbbb",
        memory_total=spec.memory_bytes,
        power_limit_mw=300_000,
        cc_major=int(major),
        cc_minor=int(minor),
    )


@dataclass
class Boot:
    """One run of the user data on one host for one instance."""

    host: NetnsHost
    instance_id: str
    user_data: str
    result: subprocess.CompletedProcess[str]
    seconds: float

    @property
    def log(self) -> str:
        return (self.host.root / "var" / "log" / "gpustack-boot.log").read_text()

    @property
    def url(self) -> str:
        return f"https://{self.host.address}:{AGENT_PORT}"


@dataclass
class Lab:
    group: HostGroup
    wheelhouse: Path
    fake_nvml: Path
    moto_url: str
    imds: FakeImds
    server_address: str
    ec2: Any
    ssm: Any
    subnet: str
    image: str
    token: str
    spec: render.PoolSpec
    boots: list[Boot] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    system_paths_before: set[str] = field(default_factory=lambda: {p for p in SYSTEM_PATHS if Path(p).exists()})
    shutdown: Any = None
    """Stops the servers, forgets this module's moto records and removes the hosts (the fixture's exit stack)."""

    def launch(self) -> str:
        """An instance as the pool's Auto Scaling group would start it (tagged with the pool)."""
        tags = [{"Key": key, "Value": value} for key, value in render.resource_tags(self.spec).items()]
        reservation = self.ec2.run_instances(
            ImageId=self.image, InstanceType=INSTANCE_TYPE, MinCount=1, MaxCount=1, SubnetId=self.subnet,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )  # fmt: skip
        instance_id = reservation["Instances"][0]["InstanceId"]
        self.instances.append(instance_id)
        return instance_id

    def boot(self, host: NetnsHost, instance_id: str) -> Boot:
        """Render the user data, make ``host`` that instance (its IMDS answers), run the script in its namespace."""
        self.imds.instances[host.address] = {"instance-id": instance_id, "placement/region": REGION}
        user_data = render.render_user_data(
            self.spec, (RUNTIME_DIR / "install" / "install.sh").read_text(), imds_url=self.imds.url,
            agent_root=str(host.root),
        )  # fmt: skip
        script = host.root / "user-data.sh"
        script.write_text(user_data)
        script.chmod(0o700)
        home = host.root / "home"
        home.mkdir(exist_ok=True)
        environment = {
            # cloud-init's environment is bare; the CLI is the test venv's awscli.
            "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "AWS_ENDPOINT_URL": self.moto_url,
            **DUMMY_CREDENTIALS,
            # Nothing from this machine's AWS setup: no config or credentials files, no real metadata service.
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            # The instance's "driver": the agent, started by the script, inherits these and finds the fake A10G.
            "GPUSTACK_RUNTIME_NVML_LIBRARY": str(self.fake_nvml),
            fakenvml_build.CONFIG_ENV: str(host.fake_nvml_config),
        }
        started = time.monotonic()
        result = subprocess.run(
            ["ip", "netns", "exec", host.namespace, "bash", str(script)],
            env=environment, capture_output=True, text=True, timeout=BOOT_TIMEOUT_S, check=False,
        )  # fmt: skip
        boot = Boot(host, instance_id, user_data, result, time.monotonic() - started)
        self.boots.append(boot)
        return boot

    def new_system_paths(self) -> set[str]:
        return {path for path in SYSTEM_PATHS if Path(path).exists()} - self.system_paths_before

    def parameter(self, name: str, decrypt: bool = False) -> str:
        return self.ssm.get_parameter(Name=name, WithDecryption=decrypt)["Parameter"]["Value"]

    def tags(self, instance_id: str) -> dict[str, str]:
        described = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return {tag["Key"]: tag["Value"] for tag in described.get("Tags", [])}


def _route_to(host: NetnsHost, address: str, gateway: str) -> None:
    """Let ``host`` reach ``address`` (on another veth of the root namespace) through its own veth peer."""
    run("ip", "netns", "exec", host.namespace, "ip", "route", "add", f"{address}/32", "via", gateway)


def _host_side(host: NetnsHost) -> str:
    """The root-namespace end of the host's veth pair (netns.py: namespace .4i+2, host side .4i+1)."""
    prefix, last = host.address.rsplit(".", 1)
    return f"{prefix}.{int(last) - 1}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not (VENV_BIN / "aws").is_file():
        pytest.fail(f"no AWS CLI at {VENV_BIN / 'aws'}: install the dev extra (pip install -e '.[dev]')")
    base = tmp_path_factory.mktemp("aws-boot")
    wheelhouse = build_wheelhouse(base / "wheelhouse", [VERSION])
    fake_nvml = build_fake_nvml(base / "fakenvml")
    specs = [HostSpec("node-a", [a10g(0)]), HostSpec("node-b", [a10g(0)])]
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(netns_hosts(specs, base, fake_nvml))
        first, second = group.hosts
        server_address = _host_side(first)
        _route_to(second, server_address, _host_side(second))
        moto = ThreadedMotoServer(ip_address=server_address, port=0, verbose=False)
        moto.start()
        stack.callback(_stop_moto, moto)
        host, port = moto.get_host_and_port()
        moto_url = f"http://{host}:{port}"
        imds = stack.enter_context(FakeImds(server_address, {}))
        clients = {"endpoint_url": moto_url, "region_name": REGION, **_boto_credentials()}
        ec2, ssm = boto3.client("ec2", **clients), boto3.client("ssm", **clients)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        spec = render.PoolSpec(
            name=POOL, region=REGION, instances=(render.instance_choice(INSTANCE_TYPE),),
            subnet_ids=(subnet["SubnetId"],), vpc_id=vpc, max_nodes=2, agent_port=AGENT_PORT,
            agent_version=VERSION, pip_args=("--no-index", f"--find-links={wheelhouse}"), python=sys.executable,
            labels={"site": "moto"}, parameter_prefix=f"/gpustack/test-boot/{os.getpid()}",
        )  # fmt: skip
        token = f"boot-token-{secrets.token_hex(16)}"
        ssm.put_parameter(Name=spec.token_parameter, Type="SecureString", Value=token)
        lab = Lab(group, wheelhouse, fake_nvml, moto_url, imds, server_address, ec2, ssm, subnet["SubnetId"],
                  image, token, spec)  # fmt: skip

        def forget_moto_records() -> None:
            # moto's backends are process-wide: leave nothing for the other AWS tests of this pytest run.
            with contextlib.suppress(Exception):
                if lab.instances:
                    ec2.terminate_instances(InstanceIds=lab.instances)
                names = [p["Name"] for p in ssm.describe_parameters(
                    ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [spec.parameter_prefix]}]
                )["Parameters"]]  # fmt: skip
                for name in names:
                    ssm.delete_parameter(Name=name)
                ec2.delete_subnet(SubnetId=subnet["SubnetId"])
                ec2.delete_vpc(VpcId=vpc)

        stack.callback(forget_moto_records)
        lab.shutdown = stack.close  # idempotent: the last test calls it to check what it leaves
        yield lab


def _stop_moto(server: ThreadedMotoServer) -> None:
    server.stop()
    # stop() shuts the serve loop down but leaves the listening socket open: close it.
    if server._server is not None:
        server._server.server_close()


def _listening(address: str, port: int) -> bool:
    """Whether any socket of the root namespace listens on ``address:port`` (also one whose address is gone)."""
    out = subprocess.run(["ss", "-Hltn", f"src {address}:{port}"], capture_output=True, text=True, check=True)
    return bool(out.stdout.strip())


def _running(pid: int, wait_s: float = 5.0) -> bool:
    """Whether ``pid`` still runs after ``wait_s``: a killed agent whose parent (the boot script) is gone may sit
    as a zombie until init reaps it; a zombie runs nothing."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line[:6] == "State:")
        except (OSError, StopIteration):
            return False
        if state.split()[1] in ("Z", "X") or time.monotonic() > deadline:
            return state.split()[1] not in ("Z", "X")
        time.sleep(0.05)


def _boto_credentials() -> dict[str, str]:
    return {"aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip


def _ok(boot: Boot) -> Boot:
    result = boot.result
    assert result.returncode == 0, f"boot failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return boot


def capacity(boot: Boot, token: str, fingerprint: str) -> dict[str, Any]:
    with AgentClient(boot.url, token, fingerprint, timeout_s=5) as client:
        return client.capacity().model_dump(mode="json")


def test_agent_root_keeps_every_path_under_it_and_the_default_is_the_system_layout() -> None:
    """What makes the boots below hermetic, checked on the text: with ``agent_root`` every system path the
    script names is below it and install.sh gets the root's paths and --no-systemd; without it, the script is
    the instance's (system paths, systemd runs the agent, no detached start)."""
    spec = render.PoolSpec(
        name=POOL, region=REGION, instances=(render.instance_choice(INSTANCE_TYPE),), subnet_ids=("subnet-1",),
        vpc_id="vpc-1",
    )  # fmt: skip
    install_sh = (RUNTIME_DIR / "install" / "install.sh").read_text()
    root = "/srv/test-host"
    rooted = render.render_user_data(spec, install_sh, agent_root=root)
    default = render.render_user_data(spec, install_sh)
    for text in (rooted, default):
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)
        assert len(text.encode()) <= render.USER_DATA_LIMIT_BYTES
    # A system path not preceded by a directory name: one outside the root.
    system_path = re.compile(r"(?<![\w.-])/(?:var|etc|opt|run)/[\w./-]+")
    assert set(system_path.findall(rooted)) == set()
    assert {"/var/log/gpustack-boot.log", "/var/lib/gpustack-agent-installer/install.sh"} <= set(
        system_path.findall(default)
    )
    assert f"bash {root}/var/lib/gpustack-agent-installer/install.sh --prefix={root}/opt/gpustack-agent" in rooted
    for flag in ("--prefix", "--config-dir", "--state-dir", "--unit-dir"):
        assert f" {flag}={root}/" in rooted
    assert " --no-systemd " in rooted and "setsid $exec_start" in rooted
    assert f"exec > >(tee -a {root}/var/log/gpustack-boot.log) 2>&1" in rooted
    assert "exec > >(tee -a /var/log/gpustack-boot.log) 2>&1" in default
    assert "bash /var/lib/gpustack-agent-installer/install.sh --source=" in default
    assert "--no-systemd" not in default and "setsid" not in default and root not in default


def test_the_servers_listen_only_where_the_hosts_reach_them(lab: Lab) -> None:
    """moto and the metadata service are bound to the first host's veth end only, not to every address."""
    for url in (lab.moto_url, lab.imds.url):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection((lab.server_address, port), timeout=2):
            pass
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    # From inside a host: the metadata service wants IMDSv2 (no token: 401), and a forged token is refused too.
    first = lab.group.hosts[0]
    lab.imds.instances[first.address] = {"instance-id": "i-none", "placement/region": REGION}
    for headers in ([], ["-H", "X-aws-ec2-metadata-token: forged"]):
        probe = first.exec_in("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *headers,
                              f"{lab.imds.url}/latest/meta-data/instance-id")  # fmt: skip
        assert probe.stdout == "401", probe
    lab.imds.requests.clear()


def test_user_data_brings_a_namespace_host_to_a_serving_agent(lab: Lab) -> None:
    """First instance: slot 0, node ``boot-0``; the agent serves its capacity over HTTPS at the host's address
    with the certificate whose fingerprint the script published to SSM and as the instance's tag."""
    host = lab.group.hosts[0]
    instance = lab.launch()
    boot = _ok(lab.boot(host, instance))
    node = lab.spec.node_name(0)
    published = lab.parameter(f"{lab.spec.parameter_prefix}/nodes/{node}/fingerprint")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", published)
    last = boot.result.stdout.splitlines()[-1]
    assert last == f"gpustack-boot: {node} ({instance}) serves at https://0.0.0.0:{AGENT_PORT} with {published}"
    tags = lab.tags(instance)
    assert tags[render.TAG_FINGERPRINT] == published
    assert tags[render.TAG_NODE] == node and tags["Name"] == node
    assert lab.parameter(f"{lab.spec.parameter_prefix}/slots/0") == instance
    # The certificate the agent serves is the one published (AgentClient pins it: a mismatch raises).
    tls_dir = host.root / "etc" / "gpustack-agent" / "tls"
    assert (tls_dir / "fingerprint").read_text().strip() == published

    document = capacity(boot, lab.parameter(lab.spec.token_parameter, decrypt=True), published)
    assert document["name"] == node
    assert document["labels"] == render.node_labels(lab.spec)
    assert document["labels"]["node.kubernetes.io/instance-type"] == INSTANCE_TYPE
    # What the plan placed on before the instance existed: the catalog's GPUs of the type; the agent reports them.
    (planned,) = [d for d in render.planned_capacity(lab.spec) if d["name"] == node]
    live = [(d["product"], d["memory_total"], d["compute_capability"]) for d in document["devices"]]
    assert live == [(d["product"], d["memory_total"], d["compute_capability"]) for d in planned["devices"]]

    # The agent runs in the host's namespace, bound to every address there (0.0.0.0), so nothing in the root
    # namespace: its loopback has no agent.
    (pid,) = host.agent_pids()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--node-name") + 1] == node.encode()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", AGENT_PORT), timeout=2):
        pass
    # Everything the boot wrote is under the host's own directory.
    assert lab.new_system_paths() == set()


def test_the_ssm_token_is_the_agents_and_is_never_written_out(lab: Lab) -> None:
    """The agent accepts the SecureString's token and refuses another; the token is in the agent's root-only
    token file and nowhere the boot leaves text: user data, boot log, the script's output, command lines."""
    (boot,) = lab.boots
    published = lab.parameter(f"{lab.spec.parameter_prefix}/nodes/{lab.spec.node_name(0)}/fingerprint")
    assert capacity(boot, lab.token, published)["name"] == lab.spec.node_name(0)
    with AgentClient(boot.url, f"{lab.token}x", published) as client, pytest.raises(AgentError, match="HTTP 401"):
        client.capacity()
    response = httpx.get(f"{boot.url}/v1/capacity", verify=False, timeout=5)
    assert response.status_code == 401  # no token at all

    token_file = boot.host.root / "etc" / "gpustack-agent" / "token"
    assert token_file.read_text().strip() == lab.token
    assert token_file.stat().st_mode & 0o777 == 0o600
    for text, where in (
        (boot.user_data, "user data"),
        (boot.log, "boot log"),
        (boot.result.stdout + boot.result.stderr, "script output"),
        ((boot.host.root / "var" / "lib" / "gpustack-agent" / "agent.log").read_text(), "agent log"),
        ((boot.host.root / "etc" / "systemd" / "system" / "gpustack-agent.service").read_text(), "unit"),
    ):
        assert lab.token not in text, where
    for pid in boot.host.pids():
        with contextlib.suppress(OSError):
            assert lab.token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # The boot log is the script's whole output (tee), so the checks above saw what an operator would.
    assert "gpustack-boot:" in boot.log and "GPUSTACK_AGENT_FINGERPRINT=" in boot.log


def test_imds_v2_token_first_then_metadata_with_it(lab: Lab) -> None:
    """The script asked for a session token (PUT) before any metadata, and every GET carried it (a GET without
    it gets 401 from this server, which the script would not survive)."""
    (boot,) = lab.boots
    seen = [(r.method, r.path, r.status) for r in lab.imds.requests if r.client == boot.host.address]
    assert seen[0] == ("PUT", "/latest/api/token", 200)
    assert seen[1:] == [
        ("GET", "/latest/meta-data/instance-id", 200),
        ("GET", "/latest/meta-data/placement/region", 200),
    ]


def test_a_second_instance_claims_the_next_slot(lab: Lab) -> None:
    """Slot 0 is held by a running instance: the second instance, on a second host, becomes ``boot-1`` with its
    own certificate."""
    host = lab.group.hosts[1]
    instance = lab.launch()
    boot = _ok(lab.boot(host, instance))
    node = lab.spec.node_name(1)
    assert lab.parameter(f"{lab.spec.parameter_prefix}/slots/0") == lab.boots[0].instance_id  # kept
    assert lab.parameter(f"{lab.spec.parameter_prefix}/slots/1") == instance
    published = lab.parameter(f"{lab.spec.parameter_prefix}/nodes/{node}/fingerprint")
    first = lab.parameter(f"{lab.spec.parameter_prefix}/nodes/{lab.spec.node_name(0)}/fingerprint")
    assert published != first
    assert lab.tags(instance)[render.TAG_NODE] == node
    assert lab.tags(instance)[render.TAG_FINGERPRINT] == published
    assert capacity(boot, lab.token, published)["name"] == node
    # Each agent answers only with its own certificate: the first host's pin does not fit the second.
    with AgentClient(boot.url, lab.token, first) as client, pytest.raises(AgentCertificateMismatch):
        client.capacity()


def test_a_replacement_takes_over_the_slot_of_a_terminated_instance(lab: Lab) -> None:
    """Both slots held, the first instance terminated: its replacement finds slot 0's holder not running, takes
    the slot over and publishes for ``boot-0``. It boots on the first host's disk (the agent is already there,
    so install.sh changes nothing and the agent keeps running): what this checks is the slot takeover."""
    first = lab.boots[0]
    lab.ec2.terminate_instances(InstanceIds=[first.instance_id])
    pid_before = first.host.agent_pids()
    replacement = lab.launch()
    boot = _ok(lab.boot(first.host, replacement))
    node = lab.spec.node_name(0)
    assert lab.parameter(f"{lab.spec.parameter_prefix}/slots/0") == replacement
    assert lab.parameter(f"{lab.spec.parameter_prefix}/slots/1") == lab.boots[1].instance_id
    assert lab.tags(replacement)[render.TAG_NODE] == node
    published = lab.parameter(f"{lab.spec.parameter_prefix}/nodes/{node}/fingerprint")
    assert lab.tags(replacement)[render.TAG_FINGERPRINT] == published
    assert "gpustack-agent: nothing changed" in boot.result.stdout
    assert first.host.agent_pids() == pid_before
    assert capacity(boot, lab.token, published)["name"] == node


def test_every_slot_held_by_running_instances_fails_the_boot(lab: Lab) -> None:
    """A third running instance for a pool of two: no slot to claim, the boot fails saying so and installs
    nothing (the check happens before install.sh)."""
    extra = lab.launch()
    host = lab.group.hosts[1]
    pid_before = host.agent_pids()
    boot = lab.boot(host, extra)
    assert boot.result.returncode != 0
    assert f"every slot of {POOL} (max 2) is held" in boot.result.stdout + boot.result.stderr
    assert render.TAG_NODE not in lab.tags(extra)
    assert host.agent_pids() == pid_before


def test_teardown_leaves_no_process_no_namespace_and_no_server(lab: Lab) -> None:
    """The module's hosts go away with every process in them (the agents the boots started included), and both
    servers stop listening; what the fixture's exit runs, run here to check it."""
    namespaces = [host.namespace for host in lab.group.hosts]
    agents = [pid for host in lab.group.hosts for pid in host.agent_pids()]
    assert len(agents) == 2
    ports = [int(url.rsplit(":", 1)[1]) for url in (lab.moto_url, lab.imds.url)]
    assert all(_listening(lab.server_address, port) for port in ports)
    lab.shutdown()
    for namespace in namespaces:
        assert namespace.startswith(NAMESPACE_PREFIX) and not namespace_exists(namespace)
    for pid in agents:
        assert not _running(pid), pid
    assert not any(_listening(lab.server_address, port) for port in ports)
    assert lab.new_system_paths() == set()
