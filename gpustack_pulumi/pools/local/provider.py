"""Dynamic provider: the node agent running on *this* machine (the ``local`` stack's only node).

``create`` starts ``gpustack-agent`` as a detached process (its own session, so it outlives the provider host),
with the token in a 0600 file under the state directory, and waits until ``/healthz`` answers. ``read`` reports
the agent gone when its process (pid + start time) no longer runs. ``delete`` stops it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider

AGENT_START_TIMEOUT_S = 30.0
AGENT_STOP_GRACE_S = 15.0
# Inputs whose change needs a new agent process (everything else, e.g. labels, too: the agent reads them at start).
RESTART_KEYS = ("host", "port", "state_dir", "devices", "labels", "node_name", "port_range", "token")


def process_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) from /proc/<pid>/stat, or None when the pid does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of stat(5), counted from field 3 here


def same_process_running(pid: int | None, start_time: int | None) -> bool:
    return bool(pid) and start_time is not None and process_start_time(int(pid)) == start_time  # type: ignore[arg-type]


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# What `gpustack-runtime[agent]` brings beyond the wire contract: the agent cannot start without them.
AGENT_MODULES = ("fastapi", "uvicorn", "pynvml")


class LocalAgentProvider(ResourceProvider):
    """Plain data only: nothing on ``self`` (the object is pickled into state)."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        port = news.get("port")
        if port is not None and not (0 <= int(port) <= 65535):
            failures.append(CheckFailure("port", f"port must be 0 (pick one) or 1-65535, got {port}"))
        if news.get("devices") not in ("auto", "nvml", "ascend", "none"):
            failures.append(CheckFailure("devices", "devices must be one of auto, nvml, ascend, none"))
        if not news.get("state_dir"):
            failures.append(CheckFailure("state_dir", "state_dir is required (where the agent keeps its state)"))
        missing = [name for name in AGENT_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            failures.append(
                CheckFailure(
                    "devices",
                    f"the local pool runs the node agent in this Python environment, which lacks {', '.join(missing)}: "
                    "pip install 'gpustack-pulumi[local]' (gpustack-runtime[agent])",
                )
            )
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # Outputs hold the port that was picked; a requested port of 0 ("any") matches it.
        wanted = {**news, "port": news.get("port") or olds.get("port")}
        changed = [key for key in RESTART_KEYS if olds.get(key) != wanted.get(key)]
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        host = str(props.get("host") or "127.0.0.1")
        port = int(props.get("port") or 0) or free_port(host)
        state_dir = Path(props["state_dir"]).expanduser().resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        token_file = state_dir / "token"
        token_file.touch(mode=0o600, exist_ok=True)
        token_file.chmod(0o600)
        token_file.write_text(str(props["token"]) + "\n")
        log_path = state_dir / "agent.log"
        argv = [
            sys.executable, "-m", "gpustack_runtime",
            "--host", host, "--port", str(port),
            "--token-file", str(token_file),
            "--state-dir", str(state_dir),
            "--devices", str(props.get("devices") or "auto"),
            "--node-name", str(props["node_name"]),
        ]  # fmt: skip
        if props.get("labels"):
            argv += ["--labels", ",".join(f"{k}={v}" for k, v in sorted(dict(props["labels"]).items()))]
        if props.get("port_range"):
            argv += ["--port-range", str(props["port_range"])]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        endpoint = f"http://{host}:{port}"
        _wait_healthy(endpoint, process, log_path)
        start_time = process_start_time(process.pid)
        outs = {**props, "endpoint": endpoint, "port": port, "pid": process.pid, "pid_start_time": start_time}
        return CreateResult(id_=f"{props['node_name']}@{endpoint}", outs=outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if not same_process_running(props.get("pid"), props.get("pid_start_time")):
            return ReadResult(id_="", outs={})
        return ReadResult(id_=id_, outs=props)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        pid, start_time = props.get("pid"), props.get("pid_start_time")
        if not same_process_running(pid, start_time):
            return  # already gone
        os.kill(int(pid), signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + AGENT_STOP_GRACE_S
        while time.monotonic() < deadline and same_process_running(pid, start_time):
            time.sleep(0.1)
        if same_process_running(pid, start_time):
            os.kill(int(pid), signal.SIGKILL)  # type: ignore[arg-type]


def _wait_healthy(endpoint: str, process: subprocess.Popen, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{endpoint}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    if process.poll() is None:
        process.kill()
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"the local agent did not become healthy at {endpoint}; last log lines:\n{tail}")
