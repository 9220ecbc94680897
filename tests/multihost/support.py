"""Shared pieces of the multi-host tests: the three test hosts, an offline wheelhouse with two agent versions, the
fake NVML library, and running an SshNodePool under Pulumi mocks to get the resources it registers."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks

from multihost.netns import HostGroup, HostSpec

REPO = Path(__file__).resolve().parents[2]
RUNTIME_DIR = REPO / "runtime"
AGENT_PORT = 10151
TOKEN = "multihost-token-7f3a91"

L40S_MEMORY_TOTAL = 48_305_799_168
"""Bytes an L40S reports as total (nvidia-smi: 46068 MiB)."""
L40S_POWER_LIMIT_MW = 350_000
"""L40S board power: 350 W."""


def _load(name: str, path: Path) -> ModuleType:
    """Load a module of runtime/tests by path (that directory is not a package, and its name clashes with ours)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fakenvml = _load("_multihost_fakenvml", RUNTIME_DIR / "tests" / "fakenvml" / "__init__.py")
fakenvml_build = _load("_multihost_fakenvml_build", RUNTIME_DIR / "tests" / "fakenvml" / "build.py")
# The install-script tests' offline wheelhouse (repacking installed distributions as wheels): reused, not copied.
install_test = _load("_multihost_install_test", RUNTIME_DIR / "tests" / "test_install_script.py")


def l40s(index: int) -> dict[str, Any]:
    return fakenvml.fake_gpu(
        index,
        name="NVIDIA L40S",
        uuid=f"GPU-{0xB0 + index:08x}-4040-4040-4040-4040aaaabbbb",
        memory_total=L40S_MEMORY_TOTAL,
        power_limit_mw=L40S_POWER_LIMIT_MW,
        cc_major=8,
        cc_minor=9,
    )


HOST_SPECS = [
    # Two H100 SXM joined by NVLink: one topology group.
    HostSpec("gpu-a", [fakenvml.fake_gpu(0, nvlink_peers=[1]), fakenvml.fake_gpu(1, nvlink_peers=[0])]),
    # Four PCIe L40S: no NVLink.
    HostSpec("gpu-b", [l40s(index) for index in range(4)]),
    # CPU only.
    HostSpec("cpu-c", None),
]


def build_wheelhouse(directory: Path, versions: list[str]) -> Path:
    """Wheels of the agent's dependencies (from this environment) and of gpustack-runtime at each version, so
    install.sh's pip runs with --no-index."""
    directory.mkdir(parents=True, exist_ok=True)
    pyproject = tomllib.loads((RUNTIME_DIR / "pyproject.toml").read_text())
    agent = pyproject["project"]["optional-dependencies"]["agent"]
    for dist in install_test.dependency_closure([*pyproject["project"]["dependencies"], *agent]):
        install_test.repack_as_wheel(dist, directory)
    for version in versions:
        source = install_test.copy_runtime_source(directory.parent / f"runtime-src-{version}", version)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(directory),
             str(source)],
            check=True, capture_output=True, env=install_test.offline_env(),
        )  # fmt: skip
        shutil.rmtree(source)
    return directory


def build_fake_nvml(directory: Path) -> Path:
    return fakenvml_build.build_fake_nvml(directory)


def pool_args(group: HostGroup, wheelhouse: Path, fake_nvml: Path, version: str, **overrides: Any) -> dict[str, Any]:
    """SshNodePool args for the namespace hosts: keys pinned through the group's known_hosts, each agent under the
    host's own root, bound to the host's veth address, with its fake GPUs."""
    hosts = []
    for host in group.hosts:
        environment = {}
        if host.fake_nvml_config is not None:
            environment = {
                "GPUSTACK_RUNTIME_NVML_LIBRARY": str(fake_nvml),
                fakenvml_build.CONFIG_ENV: str(host.fake_nvml_config),
            }
        hosts.append(
            {
                "address": host.address,
                "node_name": host.name,
                "labels": {"site": "lab", "host": host.name},
                "devices": "nvml" if host.fake_nvml_config is not None else "none",
                "bind_address": host.address,
                "agent_root": str(host.agent_root),
                "environment": environment,
            }
        )
    args: dict[str, Any] = {
        "hosts": hosts,
        "agent_token": pulumi.Output.secret(TOKEN),
        "private_key": pulumi.Output.secret(group.client_key_text),
        "known_hosts": group.known_hosts.read_text(),
        "agent_version": version,
        "agent_port": AGENT_PORT,
        "pip_args": ["--no-index", f"--find-links={wheelhouse}"],
        "python": sys.executable,
    }
    args.update(overrides)
    return args


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi_mocks.MockResourceArgs] = []

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.resources.append(args)
        return (f"{args.name}-id" if args.custom else None), dict(args.inputs)

    def call(self, args: pulumi_mocks.MockCallArgs) -> dict[str, Any]:
        return {}


def register_under_mocks(program: Any) -> tuple[list[pulumi_mocks.MockResourceArgs], Any]:
    """Run ``program()`` (which builds components) under Pulumi mocks; return the registered resources and the
    program's return value (Outputs resolved)."""
    recorder = RecordingMocks()
    monitor = pulumi_mocks.MockMonitor(recorder)
    pulumi.runtime.set_mocks(recorder, preview=False, monitor=monitor)
    resolved: list[Any] = []
    try:

        @pulumi.runtime.test
        def run() -> Any:
            return pulumi.Output.from_input(program()).apply(resolved.append)

        run()
    finally:
        pulumi.runtime.settings.reset_options()
    return recorder.resources, resolved[0] if resolved else None


def by_name(resources: list[pulumi_mocks.MockResourceArgs]) -> dict[str, pulumi_mocks.MockResourceArgs]:
    return {resource.name: resource for resource in resources}


def host_resources(resources: list[pulumi_mocks.MockResourceArgs], pool: str, node: str) -> dict[str, Any]:
    """The inputs of one host's install-script copy, uninstall-script copy and agent command."""
    named = by_name(resources)
    return {
        suffix: named[f"{pool}-{node}-{suffix}"].inputs for suffix in ("install-script", "uninstall-script", "agent")
    }
