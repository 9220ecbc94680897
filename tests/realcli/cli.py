"""Find the Pulumi CLI that scripts/pulumi-cli.sh provides, and run it against a throw-away project and backend.

Nothing here reaches the network: the backend is a `file://` directory under the test's tmp_path, PULUMI_HOME is
private to the test, the update check and automatic plugin acquisition are off, and the secrets passphrase is
empty.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "pulumi-cli.sh"
TOOLS = ("pulumi", "pulumi-language-python")


def pinned_version() -> str:
    """The CLI version scripts/pulumi-cli.sh builds (GPUSTACK_PULUMI_VERSION overrides it there too)."""
    if os.environ.get("GPUSTACK_PULUMI_VERSION"):
        return os.environ["GPUSTACK_PULUMI_VERSION"]
    match = re.search(r"GPUSTACK_PULUMI_VERSION:-(v[0-9.]+)\}", SCRIPT.read_text())
    if not match:
        raise AssertionError(f"no pinned version in {SCRIPT}")
    return match.group(1)


def cache_bin_dir() -> Path:
    root = Path(os.environ.get("GPUSTACK_PULUMI_CACHE") or Path.home() / ".cache" / "gpustack-pulumi")
    return root / f"pulumi-{pinned_version()}" / "bin"


def find_cli() -> tuple[Path | None, str]:
    """The directory holding `pulumi` and `pulumi-language-python` (PATH first, then the build cache), or None with
    the reason."""
    on_path = [shutil.which(tool) for tool in TOOLS]
    if all(on_path):
        return Path(on_path[0]).parent, "PATH"  # type: ignore[arg-type]
    cached = cache_bin_dir()
    if all(os.access(cached / tool, os.X_OK) for tool in TOOLS):
        return cached, "cache"
    return None, (
        f"the Pulumi CLI and pulumi-language-python are neither on PATH nor in {cached}: "
        "run `bash scripts/pulumi-cli.sh` (what .ci/run does) to build them"
    )


def make_project(project_dir: Path) -> Path:
    """A copy of the repository's Pulumi project whose stack config files land in project_dir, not in the
    checkout: Pulumi.yaml copied, the programs and the virtualenv linked.

    The copy names the virtualenv by its absolute path: the engine starts the Python dynamic-provider plugin
    (`pulumi-resource-pulumi-python`) in the program directory (`main: stacks/local/`) and hands it the
    `virtualenv` option as written, so a relative `.venv` resolves to stacks/local/.venv there while the language
    host resolves it against the project root (the same split as upstream pulumi/pulumi#7907)."""
    project_dir.mkdir(parents=True, exist_ok=True)
    text = (REPO / "Pulumi.yaml").read_text()
    text = re.sub(r"(?m)^(\s*virtualenv:\s*)\.venv\s*$", lambda m: f"{m.group(1)}{REPO / '.venv'}", text)
    (project_dir / "Pulumi.yaml").write_text(text)
    (project_dir / "stacks").symlink_to(REPO / "stacks", target_is_directory=True)
    (project_dir / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)
    return project_dir


class PulumiFailed(AssertionError):
    pass


@dataclass
class PulumiCli:
    """`pulumi …` in `project_dir`, with a private PULUMI_HOME and a file backend under `work`."""

    bin_dir: Path
    project_dir: Path
    work: Path
    timeout_s: float = 900.0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home = self.work / "pulumi-home"
        self.backend = self.work / "backend"
        self.home.mkdir(parents=True, exist_ok=True)
        self.backend.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
        env.update(
            PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
            PULUMI_HOME=str(self.home),
            PULUMI_BACKEND_URL=f"file://{self.backend}",
            PULUMI_CONFIG_PASSPHRASE="",
            PULUMI_SKIP_UPDATE_CHECK="1",
            PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
            PULUMI_SKIP_CONFIRMATIONS="true",
        )
        return env

    def run(
        self, *args: str, check: bool = True, timeout_s: float | None = None, quiet: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Runs `pulumi ARGS`; the command and its output go to `log` (only the command when quiet)."""
        cmd = ["pulumi", *args, "--non-interactive", "--color", "never"]
        done = subprocess.run(
            [str(self.bin_dir / "pulumi"), *cmd[1:]],
            cwd=self.project_dir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s or self.timeout_s,
            stdin=subprocess.DEVNULL,
        )
        shown = done.stderr if quiet else done.stdout + done.stderr
        self.log.append(f"$ {' '.join(cmd)}  (exit {done.returncode})\n{shown}")
        if check and done.returncode != 0:
            raise PulumiFailed(f"`{' '.join(cmd)}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def output(self, name: str) -> Any:
        return self.json("stack", "output", name, "--show-secrets")

    def resources(self) -> list[dict[str, Any]]:
        """The stack's resources as `pulumi stack export` writes them (empty before the first update)."""
        exported = json.loads(self.run("stack", "export", quiet=True).stdout)
        return list((exported.get("deployment") or {}).get("resources") or [])

    def resource_names(self) -> set[str]:
        """Names (the URN's last part) of the stack's custom resources, providers and the stack itself left out."""
        names = set()
        for resource in self.resources():
            urn = str(resource.get("urn", ""))
            kind = str(resource.get("type", ""))
            if kind.startswith("pulumi:providers:") or kind == "pulumi:pulumi:Stack":
                continue
            names.add(urn.rsplit("::", 1)[-1])
        return names

    def last_update_changes(self) -> dict[str, int]:
        """`resourceChanges` of the newest entry of `pulumi stack history` (create/same/update/delete counts)."""
        history = self.json("stack", "history")
        return dict(history[0].get("resourceChanges") or {})


def pids_in(value: Any) -> Iterator[int]:
    """Every integer under a key named `pid` in a resource's outputs (agents and engine instances)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "pid" and isinstance(item, int) and item > 0:
                yield item
            else:
                yield from pids_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from pids_in(item)


def processes_mentioning(text: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if text in cmdline and "zombie" not in status:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status
