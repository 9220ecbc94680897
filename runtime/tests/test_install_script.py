"""runtime/install/install.sh and uninstall.sh, run for real with bash into a temporary prefix, --no-systemd.

pip installs the local runtime/ source (built with build isolation, as on a real host) into a fresh venv,
without the network: ``--no-index --find-links`` points pip at a wheelhouse that this test fills from the
distributions already installed in the test's own environment (the agent's dependencies and the build
backend), repacked as wheels. Installing, re-running, upgrading and uninstalling are all real.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

RUNTIME_DIR = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = RUNTIME_DIR / "install" / "install.sh"
UNINSTALL_SCRIPT = RUNTIME_DIR / "install" / "uninstall.sh"
ENGINE_SCRIPT = Path(__file__).parent / "engines" / "http_engine.py"
TOKEN = "install-test-token-51b2"

pytestmark = pytest.mark.slow

# --- an offline wheelhouse from the installed distributions -------------------------------------------


def _wheel_tags(dist: importlib.metadata.Distribution) -> str:
    """The compressed tag set of the wheel the distribution came from, read from its WHEEL file."""
    tags = [
        line.split(":", 1)[1].strip()
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    if not tags:
        return "py3-none-any"
    parts = [tag.split("-") for tag in tags]
    return "-".join(".".join(sorted({p[i] for p in parts})) for i in range(3))


def repack_as_wheel(dist: importlib.metadata.Distribution, wheelhouse: Path) -> Path:
    """Zip an installed distribution back into a wheel: its files under site-packages and its dist-info,
    with a RECORD of fresh hashes. Scripts outside site-packages are left out (pip regenerates console
    scripts from entry_points.txt)."""
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    target = wheelhouse / f"{name}-{dist.version}-{_wheel_tags(dist)}.whl"
    skipped_metadata = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    records: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files or []:
            relative = file.as_posix()
            if relative.startswith("..") or "__pycache__" in relative or file.name in skipped_metadata:
                continue
            data = Path(str(dist.locate_file(file))).read_bytes()
            wheel.writestr(relative, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append((relative, f"sha256={digest}", str(len(data))))
        info_dir = next(f.parts[0] for f in dist.files or [] if f.parts[0].endswith(".dist-info"))
        record_text = io.StringIO()
        csv.writer(record_text, lineterminator="\n").writerows([*records, (f"{info_dir}/RECORD", "", "")])
        wheel.writestr(f"{info_dir}/RECORD", record_text.getvalue())
    return target


def dependency_closure(roots: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``roots`` need (markers evaluated here, extras not followed). Fails the
    test, naming the package, when this environment lacks one or has a version the requirement excludes."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = list(roots)
    while pending:
        requirement = Requirement(pending.pop())
        key = canonicalize_name(requirement.name)
        if key in found or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"the offline wheelhouse needs {requirement}: pip install it into the test environment")
        if not requirement.specifier.contains(dist.version, prereleases=True):
            pytest.fail(f"the offline wheelhouse needs {requirement}, this environment has {dist.version}")
        found[key] = dist
        pending += dist.requires or []
    return list(found.values())


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheelhouse")
    # The source's own lists (what pip will resolve, and the build backend pip installs into its isolated build
    # environment), not the metadata of the editable install, which may lag behind the file.
    pyproject = tomllib.loads((RUNTIME_DIR / "pyproject.toml").read_text())
    agent = pyproject["project"]["optional-dependencies"]["agent"]
    roots = [*pyproject["project"]["dependencies"], *agent, *pyproject["build-system"]["requires"]]
    for dist in dependency_closure(roots):
        repack_as_wheel(dist, directory)
    return directory


# --- running the scripts --------------------------------------------------------------------------------


class Layout:
    """Where one test's installation lives."""

    def __init__(self, root: Path, wheelhouse: Path) -> None:
        self.root = root
        self.prefix = root / "opt" / "gpustack-agent"
        self.venv = self.prefix / "venv"
        self.config_dir = root / "etc" / "gpustack-agent"
        self.token = self.config_dir / "token"
        self.tls_dir = self.config_dir / "tls"
        self.state_dir = root / "var" / "lib" / "gpustack-agent"
        self.unit_dir = root / "etc" / "systemd" / "system"
        self.unit = self.unit_dir / "gpustack-agent.service"
        self.wheelhouse = wheelhouse

    def place_args(self) -> list[str]:
        return [
            f"--prefix={self.prefix}",
            f"--config-dir={self.config_dir}",
            f"--state-dir={self.state_dir}",
            f"--unit-dir={self.unit_dir}",
            "--no-systemd",
        ]

    def install(
        self, *args: str, source: Path, token: str | None = TOKEN, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [
            "bash",
            str(INSTALL_SCRIPT),
            *self.place_args(),
            f"--source={source}",
            "--pip-arg=--no-index",
            f"--pip-arg=--find-links={self.wheelhouse}",
            f"--python={sys.executable}",
            *args,
        ]
        if token is not None:
            command.append("--token-stdin")
        result = subprocess.run(
            command, input=(token + "\n") if token else "", capture_output=True, text=True, env=offline_env()
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def uninstall(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", str(UNINSTALL_SCRIPT), *self.place_args(), *args], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def tree_snapshot(self) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) of every installed file: a second run must leave all of them untouched."""
        return {
            str(path): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in self.root.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }


def offline_env() -> dict[str, str]:
    """The test's environment without pip settings that point at an index or extra wheel folders."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def copy_runtime_source(destination: Path, version: str) -> Path:
    """A copy of runtime/ (package and pyproject only) that declares ``version``."""
    shutil.copytree(
        RUNTIME_DIR / "gpustack_runtime", destination / "gpustack_runtime", ignore=shutil.ignore_patterns("__pycache__")
    )
    pyproject = (RUNTIME_DIR / "pyproject.toml").read_text()
    (destination / "pyproject.toml").write_text(
        re.sub(r'^version = ".*"$', f'version = "{version}"', pyproject, count=1, flags=re.MULTILINE)
    )
    return destination


def runs(pid: int) -> bool:
    """True while ``pid`` runs. A zombie does not: the orphaned engine's exit status waits for whatever
    reaps orphans here (init, or a sandbox's PID 1 that may not)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def layout(tmp_path: Path, wheelhouse: Path) -> Layout:
    return Layout(tmp_path / "root", wheelhouse)


@pytest.fixture(scope="module")
def runtime_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local runtime/ source, copied so pip's in-tree build writes nothing into the repository."""
    return copy_runtime_source(tmp_path_factory.mktemp("source"), current_version())


@pytest.fixture(scope="module")
def runtime_wheel(runtime_source: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the local source, built once like a release wheel, for the tests that are not about
    building (installing a wheel is the quick path)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-index",
            f"--find-links={wheelhouse}",
            f"--wheel-dir={out}",
            str(runtime_source),
        ],
        check=True,
        env=offline_env(),
    )
    [wheel] = out.glob("gpustack_runtime-*.whl")
    return wheel


def current_version() -> str:
    return tomllib.loads((RUNTIME_DIR / "pyproject.toml").read_text())["project"]["version"]


# --- tests ----------------------------------------------------------------------------------------------


def test_install_from_the_local_source_then_rerun_changes_nothing(layout: Layout, runtime_source: Path) -> None:
    flags = ("--labels=zone=a,tier=gpu", "--node-name=gpu-01", "--memory-safety-margin-mib=512")
    first = layout.install(*flags, source=runtime_source)

    version = current_version()
    assert f"package installed (gpustack-runtime {version})" in first.stdout
    assert "token written" in first.stdout and "unit written" in first.stdout
    assert TOKEN not in first.stdout + first.stderr
    assert f"TLS certificate created in {layout.tls_dir}" in first.stdout

    # The TLS certificate: made at install, key root-only, its fingerprint printed as one machine-readable line.
    fingerprint = printed_fingerprint(first.stdout)
    assert fingerprint == certificate_fingerprint(layout.tls_dir / "cert.pem")
    assert (layout.tls_dir / "fingerprint").read_text() == fingerprint + "\n"
    assert stat.S_IMODE((layout.tls_dir / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.tls_dir.stat().st_mode) == 0o700
    san = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", layout.tls_dir / "cert.pem"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    assert "DNS:gpu-01" in san or not san, san  # the node name is one of its names (when openssl is there)

    # The venv works: its own gpustack-agent runs from the venv's own copy of the package.
    agent = layout.venv / "bin" / "gpustack-agent"
    help_text = subprocess.run([agent, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--token-file" in help_text and "--memory-safety-margin-mib" in help_text
    where = subprocess.run(
        [layout.venv / "bin" / "python", "-c", "import gpustack_runtime; print(gpustack_runtime.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(layout.venv)), where

    # The token: root-only file and directory, exact content.
    assert layout.token.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(layout.token.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.config_dir.stat().st_mode) == 0o700

    # The unit.
    unit = layout.unit.read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        f"ExecStart={agent} --host 0.0.0.0 --port 10150 --token-file {layout.token} --tls-dir {layout.tls_dir} "
        f"--state-dir {layout.state_dir} --devices auto --port-range 40000-40063 --labels zone=a,tier=gpu "
        "--node-name gpu-01 --memory-safety-margin-mib 512"
    )
    for line in ("Restart=always", "KillMode=process", "WantedBy=multi-user.target", "[Service]"):
        assert line in unit.splitlines()
    assert "# KillMode=process: " in unit, "the reason for KillMode=process is written next to it"
    assert TOKEN not in unit
    assert stat.S_IMODE(layout.state_dir.stat().st_mode) == 0o700

    before = layout.tree_snapshot()
    second = layout.install(*flags, source=runtime_source)

    assert second.stdout.strip().splitlines()[-1] == "gpustack-agent: nothing changed", second.stdout
    assert "TLS certificate unchanged" in second.stdout
    assert printed_fingerprint(second.stdout) == fingerprint, "every run prints the (same) fingerprint"
    assert f"package unchanged (gpustack-runtime {version})" in second.stdout
    assert layout.tree_snapshot() == before, "a second run must not touch any file"


def test_a_later_run_keeps_the_token_and_reports_changed_flags(layout: Layout, runtime_wheel: Path) -> None:
    layout.install(source=runtime_wheel)

    changed = layout.install("--port=10222", source=runtime_wheel, token=None)

    assert "token unchanged (kept" in changed.stdout
    assert "unit written" in changed.stdout
    assert "--port 10222" in layout.unit.read_text()
    assert layout.token.read_text() == TOKEN + "\n"

    new_token = layout.install("--port=10222", source=runtime_wheel, token="rotated-token-7")
    assert "token written" in new_token.stdout and "unit unchanged" in new_token.stdout
    assert layout.token.read_text() == "rotated-token-7\n"
    token_file = layout.root / "new-token"
    token_file.write_text("from-a-file-9\n")
    from_file = layout.install("--port=10222", "--token-file", str(token_file), source=runtime_wheel, token=None)
    assert "token written" in from_file.stdout
    assert layout.token.read_text() == "from-a-file-9\n"
    assert stat.S_IMODE(layout.token.stat().st_mode) == 0o600


def test_upgrade_installs_the_new_version_into_the_same_venv(
    layout: Layout, runtime_wheel: Path, tmp_path: Path
) -> None:
    fingerprint = printed_fingerprint(layout.install(source=runtime_wheel).stdout)
    python_before = (layout.venv / "bin" / "python").resolve()
    newer = copy_runtime_source(tmp_path / "newer-source", "99.0.1")

    upgraded = layout.install(source=newer, token=None)

    old = current_version()
    assert f"package upgraded (gpustack-runtime {old} -> 99.0.1)" in upgraded.stdout
    assert (layout.venv / "bin" / "python").resolve() == python_before
    version = subprocess.run(
        [layout.venv / "bin" / "gpustack-agent", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert version.strip() == "gpustack-agent 99.0.1"
    assert printed_fingerprint(upgraded.stdout) == fingerprint, "an upgrade keeps the certificate, so the pin holds"
    again = layout.install(source=newer, token=None)
    assert "nothing changed" in again.stdout


def test_bad_input_is_refused_naming_the_flag(layout: Layout, runtime_wheel: Path) -> None:
    cases = {
        "--port=99999": "--port",
        "--devices=tpu": "--devices",
        "--labels=a b": "--labels",
        "--node-name=$(reboot)": "--node-name",
        "--memory-safety-margin-mib=-5": "--memory-safety-margin-mib",
        "--port-range=1": "--port-range",
        "--tls-dir=relative/tls": "--tls-dir",
        "--host=": "--host",
        "--bogus": "unknown option --bogus",
    }
    for argument, complaint in cases.items():
        result = layout.install(argument, source=runtime_wheel, check=False)
        assert result.returncode == 2, (argument, result.stdout)
        assert complaint in result.stderr, (argument, result.stderr)
    missing_token = layout.install(source=runtime_wheel, token=None, check=False)
    assert missing_token.returncode == 2 and "--token-stdin" in missing_token.stderr
    empty_token = layout.install(source=runtime_wheel, token="", check=False)
    assert empty_token.returncode == 2 and "token is empty" in empty_token.stderr
    assert not layout.venv.exists(), "bad input is refused before anything is installed"


def test_print_unit_renders_the_unit_without_installing(layout: Layout) -> None:
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), *layout.place_args(), "--print-unit", "--devices=nvml", "--port=10333"],
        capture_output=True,
        text=True,
        check=True,
    )

    assert f"ExecStart={layout.venv}/bin/gpustack-agent --host 0.0.0.0 --port 10333 " in result.stdout
    assert f"--tls-dir {layout.tls_dir} " in result.stdout
    assert "--devices nvml" in result.stdout and "KillMode=process" in result.stdout
    assert not layout.root.exists(), "--print-unit installs nothing"


def printed_fingerprint(stdout: str) -> str:
    """The fingerprint of install.sh's one ``GPUSTACK_AGENT_FINGERPRINT=`` line."""
    [line] = [line for line in stdout.splitlines() if line.startswith("GPUSTACK_AGENT_FINGERPRINT=")]
    value = line.split("=", 1)[1]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", value), line
    return value


def certificate_fingerprint(cert_pem: Path) -> str:
    return "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.read_text())).hexdigest()


def pinning_context() -> ssl.SSLContext:
    """Takes any certificate; :func:`installed_agent` compares the digest itself, as a pinning client does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def installed_agent(layout: Layout) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    """The installed agent, started like the unit starts it (its ExecStart: HTTPS with the installed
    certificate), on a free loopback port; the client checks that the certificate is the installed one."""
    port = free_port()
    process = subprocess.Popen(
        [
            layout.venv / "bin" / "gpustack-agent",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--token-file={layout.token}",
            f"--tls-dir={layout.tls_dir}",
            f"--state-dir={layout.state_dir}",
            "--devices=none",
            "--port-range=40700-40749",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pin = (layout.tls_dir / "fingerprint").read_text().strip()
    client = httpx.Client(
        base_url=f"https://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, verify=pinning_context()
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                health = client.get("/healthz")
                peer = health.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)
                assert "sha256:" + hashlib.sha256(peer).hexdigest() == pin
                if health.status_code == 200:
                    break
            assert process.poll() is None and time.monotonic() < deadline, "the installed agent did not start"
            time.sleep(0.1)
        yield process, client
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(15)


def test_uninstall_stops_engines_and_removes_everything(layout: Layout, runtime_wheel: Path) -> None:
    layout.install(source=runtime_wheel)
    engine_pid = None
    try:
        with installed_agent(layout) as (_, client):
            body = {
                "owner": "t",
                "launch": {"argv": [sys.executable, str(ENGINE_SCRIPT), "--port", "{port}"]},
            }
            assert client.put("/v1/instances/e1", json=body).status_code == 201
            deadline = time.monotonic() + 15
            while (status := client.get("/v1/instances/e1").json())["state"] != "ready":
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            engine_pid = status["pid"]
        assert runs(engine_pid), "the agent stopped; its engine still runs (as under KillMode=process)"

        removed = layout.uninstall("--purge")

        assert f"stopped engine e1 (pid {engine_pid})" in removed.stdout
        assert not runs(engine_pid)
        engine_pid = None
        paths = (layout.venv, layout.prefix, layout.token, layout.tls_dir, layout.config_dir, layout.unit,
                 layout.state_dir)  # fmt: skip
        for path in paths:
            assert not path.exists(), path
        assert "uninstalled" in layout.uninstall().stdout, "a second uninstall is a no-op"
    finally:
        if engine_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine_pid, signal.SIGKILL)
