"""Several hosts end to end through the engine harness: an SshNodePool of four network-namespace hosts (2×H100,
4×L40S, two CPU-only; fake GPUs, real sshd, the install script run over real SSH) and three deployments. Replicas land
according to the hosts' devices and every endpoint answers; a host taken down is reported by refresh and the next
update re-places its replica on the remaining hosts without moving the others; two stacks racing for the same GPU
never double-book it; destroy leaves no process and no namespace behind."""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pulumi
import pytest
from harness.pulumi_engine import StackHarness
from llama_support import llama_cpp_available
from multihost.netns import (
    HostGroup,
    HostSpec,
    NetnsHost,
    _kill_namespace_processes,
    _wait_for_tcp,
    namespace_exists,
    netns_hosts,
    run,
)
from multihost.remote_runner import COMMAND_TYPE, COPY_TYPE, RemoteCommandApplier
from multihost.support import HOST_SPECS, TOKEN, build_fake_nvml, build_wheelhouse, pool_args

from gpustack_pulumi.components import GpuCluster, ModelDeployment, SshNodePool
from gpustack_pulumi.providers.agent_client import AgentClient
from gpustack_pulumi.providers.cluster_plan import ClusterPlanProvider
from gpustack_pulumi.tinymodel import write_tiny_gguf

REPO = Path(__file__).resolve().parents[1]
VERSION = "0.1.0"
# The shared three hosts and a second CPU-only host, so a CPU replica has somewhere to go when its host dies.
E2E_HOST_SPECS = [*HOST_SPECS, HostSpec("cpu-d", None)]

pytestmark = pytest.mark.slow


class RemoteEngine:
    """The harness's part for pulumi_command.remote resources: run them over real SSH (see remote_runner). A
    command's ``stdout`` output is its last run's, kept while it does not run again (as the engine keeps it in
    state): the pool reads each agent's certificate fingerprint from it."""

    def __init__(self) -> None:
        self.applier = RemoteCommandApplier()
        self.stdout: dict[str, str] = {}

    def handles(self, typ: str) -> bool:
        return typ in (COPY_TYPE, COMMAND_TYPE)

    def known(self) -> set[str]:
        return set(self.applier.applied)

    def apply(self, name: str, typ: str, inputs: dict[str, Any]) -> dict[str, Any]:
        result = self.applier.apply_one(name, typ, inputs)
        if result is not None:
            self.stdout[name] = result.stdout
        return {"stdout": self.stdout[name]} if name in self.stdout else {}

    def prune(self, registered: set[str]) -> None:
        self.applier.prune(registered)
        for name in set(self.stdout) - set(self.applier.applied):
            del self.stdout[name]


class Lab:
    def __init__(self, group: HostGroup, wheelhouse: Path, fake_nvml: Path, model: Path, state: Path) -> None:
        self.group, self.wheelhouse, self.fake_nvml, self.model = group, wheelhouse, fake_nvml, model
        self.hosts: list[str] | None = None  # None: every host of the group
        self.harness = StackHarness(
            self.program, state_path=state, cwd=REPO, stack="onprem", extra_engine=RemoteEngine()
        )

    def program(self) -> None:
        args = pool_args(self.group, self.wheelhouse, self.fake_nvml, VERSION)
        if self.hosts is not None:
            args["hosts"] = [host for host in args["hosts"] if host["node_name"] in self.hosts]
        pool = SshNodePool("onprem", args)
        cluster = GpuCluster("onprem", {"pools": [pool], "agent_token": pulumi.Output.secret(TOKEN)})
        options = {"container": False, "python": sys.executable, "host": "0.0.0.0"}
        common = {"cluster": cluster, "model": str(self.model), "engine": "llama.cpp", "max_model_len": 256,
                  "engine_options": options, "ready_timeout_s": 120}  # fmt: skip
        deployments = [
            # latency: llama.cpp prefers a GPU (offload); the selectors pick the product.
            ModelDeployment("alpha", {**common, "mode": "latency", "gpu_selector": ["NVIDIA H100 80GB HBM3"]}),
            ModelDeployment("beta", {**common, "mode": "latency", "gpu_selector": ["NVIDIA L40S"], "replicas": 2}),
            # No layer offloaded: llama.cpp on the CPU of a CPU-only node.
            ModelDeployment("gamma", {**common, "mode": "balanced", "engine_options": {**options, "n_gpu_layers": 0}}),
        ]
        pulumi.export("fingerprints", pool.fingerprints)
        for deployment in deployments:
            pulumi.export(f"{deployment._name}_endpoints", deployment.endpoints)
            pulumi.export(f"{deployment._name}_placements", deployment.placements)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not llama_cpp_available():
        pytest.skip("llama-cpp-python missing: run .ci/llama-cpp.sh")
    base = tmp_path_factory.mktemp("multihost-e2e")
    wheelhouse = build_wheelhouse(base / "wheelhouse", [VERSION])
    fake_nvml = build_fake_nvml(base / "fakenvml")
    model = write_tiny_gguf(base / "tiny.gguf")
    with netns_hosts(E2E_HOST_SPECS, base, fake_nvml) as group:
        yield Lab(group, wheelhouse, fake_nvml, model, base / "pulumi-state.json")


def nodes_of(placements: list[dict]) -> list[str]:
    return [p["placements"][0]["node"] for p in placements]


def completes(endpoint: str) -> bool:
    reply = httpx.post(f"{endpoint}/completions", json={"prompt": "hello", "max_tokens": 4}, timeout=60)
    return reply.status_code == 200 and "choices" in reply.json()


def state_by_name(lab: Lab) -> dict[str, Any]:
    return {r.name: r for r in lab.harness.load_state()}


def restart_sshd(host: NetnsHost) -> None:
    run("ip", "netns", "exec", host.namespace, "/usr/sbin/sshd", "-f", str(host.root / "sshd_config"),
        "-E", str(host.root / "sshd.log"))  # fmt: skip
    _wait_for_tcp(host.address, 22, 10)


def test_hosts_end_to_end(lab: Lab) -> None:
    preview = lab.harness.preview()
    assert preview.outputs["alpha_placements"] == [{"status": "decided at update"}]  # agents not installed yet
    try:
        up = lab.harness.up()
        out = up.outputs
        # Placement follows the devices each agent reports.
        assert nodes_of(out["alpha_placements"]) == ["gpu-a"]
        assert nodes_of(out["beta_placements"]) == ["gpu-b", "gpu-b"]
        [gamma_host] = nodes_of(out["gamma_placements"])
        assert gamma_host in ("cpu-c", "cpu-d")  # n_gpu_layers 0: a CPU-only host
        other_cpu = "cpu-d" if gamma_host == "cpu-c" else "cpu-c"
        assert out["alpha_placements"][0]["placements"][0]["device_indices"] in ([0], [1])
        assert out["gamma_placements"][0]["placements"][0]["device_indices"] == []
        endpoints = out["alpha_endpoints"] + out["beta_endpoints"] + out["gamma_endpoints"]
        assert len(set(endpoints)) == 4
        assert all(completes(endpoint) for endpoint in endpoints)
        before = {name: r.outputs["instances"][0]["pid"] for name, r in state_by_name(lab).items()
                  if name.startswith(("alpha", "beta"))}  # fmt: skip

        # gamma's host goes down: every process of its namespace (sshd, agent, engine) is killed.
        _kill_namespace_processes(lab.group.by_name(gamma_host))
        refreshed = lab.harness.refresh()
        assert refreshed.drift["gamma-r0"]["state"] == "unreachable"
        assert not [name for name in refreshed.drift if name.startswith(("alpha", "beta"))]

        # The next update re-places gamma on a remaining host; alpha and beta do not move.
        moved = lab.harness.up()
        assert "gamma-r0" in moved.ops("replace")
        assert not [n for n in moved.ops("replace") + moved.ops("update") if n.startswith(("alpha", "beta"))]
        assert nodes_of(moved.outputs["gamma_placements"]) == [other_cpu]  # the CPU-only host left
        assert completes(moved.outputs["gamma_endpoints"][0])
        after = {name: r.outputs["instances"][0]["pid"] for name, r in state_by_name(lab).items()
                 if name.startswith(("alpha", "beta"))}  # fmt: skip
        assert after == before
    finally:
        for host in lab.group.hosts:  # the host comes back, so its agent can be uninstalled
            if not host.pids():
                restart_sshd(host)
        lab.harness.destroy()
    for host in lab.group.hosts:  # only each host's sshd is left: no agent, no engine
        leftovers = [
            pid for pid in host.pids() if "sshd" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        ]
        assert leftovers == [], f"{host.name} still runs {leftovers}"


def test_two_stacks_racing_for_one_gpu_never_double_book(lab: Lab) -> None:
    """Two stacks' cluster plans, both checked against the same free capacity, put their replica on the same
    L40S, each claiming 60 % of it. Their updates claim concurrently: the agents let exactly one plan through;
    the other fails before starting anything, names the contended device, and leaves no reservation behind."""
    fingerprints = lab.harness.up().outputs["fingerprints"]
    try:
        agents = {r.name: r for r in lab.harness.load_state()}["alpha-r0"].outputs["agents"]
        assert set(fingerprints) == set(agents) and all(url.startswith("https://") for url in agents.values())
        provider = ClusterPlanProvider()
        big = int(0.6 * 48_305_799_168)

        def checked_plan(stack: str) -> dict[str, Any]:
            news = {
                "deployments": [{"name": "race", "model": str(lab.model), "engine": "llama.cpp", "mode": "latency",
                                 "max_model_len": 256, "gpu_selector": ["NVIDIA L40S"], "replicas": 1,
                                 "engine_options": {"container": False, "python": sys.executable, "host": "0.0.0.0"}}],
                "agents": agents, "fingerprints": fingerprints, "token": TOKEN, "planned": None,
                "owner_prefix": f"gpustack-pulumi/{stack}/",
                "strategy": "binpack", "time_budget_s": 2,
            }  # fmt: skip
            checked = provider.check({}, news)
            assert not checked.failures, checked.failures
            inputs = checked.inputs
            (launch,) = inputs["plan"]["replicas"]["race/0"]["launch"]
            assert launch["node"] == "gpu-b" and launch["visible_devices"]
            launch["memory_bytes_per_device"] = big
            return inputs

        first, second = checked_plan("stack-one"), checked_plan("stack-two")
        device = first["plan"]["replicas"]["race/0"]["launch"][0]["visible_devices"]
        assert second["plan"]["replicas"]["race/0"]["launch"][0]["visible_devices"] == device  # both chose it

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(provider.create, plan) for plan in (first, second)]
            outcomes: list[Any] = []
            for future in futures:
                try:
                    outcomes.append(future.result())
                except RuntimeError as error:
                    outcomes.append(error)
        failed = [o for o in outcomes if isinstance(o, RuntimeError)]
        assert len(failed) == 1 and len(outcomes) == 2
        message = str(failed[0])
        assert "cannot claim the plan's capacity" in message and "nothing was started" in message
        requested = f"{big / 2**30:.2f}"
        assert f"race/0 on gpu-b: contended devices: GPU {int(device[0])} (requested {requested} GiB" in message
        with AgentClient(agents["gpu-b"], TOKEN, fingerprints["gpu-b"]) as gpu_b:
            reservations = gpu_b._request("GET", "/v1/reservations", "listing reservations").json()
        owners = [r["owner"] for r in reservations if r["owner"].endswith("/race/r0/")]
        assert len(owners) == 1  # the winner's only: the loser released what it made
        winner = "stack-one" if failed[0] is outcomes[1] else "stack-two"
        assert owners[0] == f"gpustack-pulumi/{winner}/race/r0/"
        with AgentClient(agents["gpu-b"], TOKEN, fingerprints["gpu-b"]) as gpu_b:
            for reservation in reservations:
                if reservation["owner"].endswith("/race/r0/"):
                    gpu_b.delete_reservation(reservation["id"])
    finally:
        restart_needed = [h for h in lab.group.hosts if not h.pids()]
        for host in restart_needed:
            restart_sshd(host)
        lab.harness.destroy()
    for host in lab.group.hosts:
        assert namespace_exists(host.namespace)  # the fixture removes them at the end of the module


def test_removing_a_host_drains_it_before_its_agent_goes(lab: Lab) -> None:
    lab.hosts = None
    lab.harness.up()
    try:
        [gamma_host] = nodes_of(lab.harness.up().outputs["gamma_placements"])
        other_cpu = "cpu-d" if gamma_host == "cpu-c" else "cpu-c"
        leaving = lab.group.by_name(gamma_host)
        assert leaving.agent_pids()
        lab.hosts = ["gpu-a", "gpu-b", other_cpu]
        drained = lab.harness.up()
        # gamma moved first (its replacement ran while the old host's agent still answered), then that agent went.
        assert "gamma-r0" in drained.ops("replace")
        assert nodes_of(drained.outputs["gamma_placements"]) == [other_cpu]
        assert completes(drained.outputs["gamma_endpoints"][0])
        assert not leaving.agent_pids()  # uninstalled
        assert f"onprem-{gamma_host}-agent" not in lab.harness.extra_engine.known()  # type: ignore[union-attr]
    finally:
        lab.hosts = None
        lab.harness.destroy()
