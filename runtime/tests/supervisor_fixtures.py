"""Helpers for the supervisor tests: real engine processes, and a harness that cleans every one of them up.

Imported explicitly by ``test_supervisor*.py`` (``runtime/tests/conftest.py`` belongs to the API tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gpustack_runtime.supervisor import BackoffPolicy, Supervisor
from gpustack_runtime.supervisor.procfs import PROC_ROOT, read_stat
from gpustack_runtime.wire import InstanceBody, LaunchBody

ENGINE_SCRIPT = Path(__file__).parent / "engines" / "http_engine.py"

FAST_BACKOFF = BackoffPolicy(base_seconds=0.05, max_seconds=0.2, max_consecutive_failures=3)
"""Restart within 50-200 ms and give up after 3 failures, so crash tests take well under a second."""

TEST_HEALTH_INTERVAL = 0.1
TEST_STOP_GRACE_SECONDS = 1.0
SCENARIO_TIMEOUT_SECONDS = 60.0
READY_TIMEOUT_SECONDS = 15.0
"""Generous: other engineers run tests on the same 2 cores; a healthy run becomes ready in ~0.2 s."""

MARKER_ENV = "GPUSTACK_TEST_ENGINE_MARKER"
"""Every engine a harness starts carries this variable, so cleanup finds it (and its children) in /proc."""

PORT_BLOCK = 32
EPHEMERAL_PORT_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")

T = TypeVar("T")


def http_get_json(port: int, path: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        return json.load(response)


def http_post_json(port: int, path: str, payload: dict[str, Any], timeout: float = 30.0) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def is_running(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.running


async def wait_until_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class SupervisorHarness:
    """Makes supervisors on one state directory with test timings and a port block of their own, and at the
    end kills every process that carries its marker (engines, their children, restarted ones, adopted ones)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.state_dir = tmp_path / "state"
        self.marker = uuid.uuid4().hex
        # A random block (other tests on this machine start servers too) below the kernel's ephemeral range:
        # a port the kernel may hand to any outgoing connection can be taken between bind-test and listen.
        ephemeral_low = int(EPHEMERAL_PORT_RANGE_PATH.read_text().split()[0])
        low = random.randrange(20000, max(20000 + PORT_BLOCK, ephemeral_low - PORT_BLOCK), PORT_BLOCK)
        self.port_range = (low, low + PORT_BLOCK - 1)

    def supervisor(self, **overrides: Any) -> Supervisor:
        options: dict[str, Any] = {
            "port_range": self.port_range,
            "backoff": FAST_BACKOFF,
            "health_interval": TEST_HEALTH_INTERVAL,
            "stop_grace_seconds": TEST_STOP_GRACE_SECONDS,
        }
        options.update(overrides)
        return Supervisor(self.state_dir, **options)

    def body(
        self,
        *engine_args: str,
        env: dict[str, str] | None = None,
        port: int = 0,
        device_indices: list[int] | None = None,
        owner: str = "test/engine",
        image: str | None = None,
        argv: list[str] | None = None,
        health_path: str | None = "/v1/models",
    ) -> InstanceBody:
        """A body running the test HTTP engine (or ``argv``) on ``{port}``, marked for cleanup."""
        command = argv or [sys.executable, str(ENGINE_SCRIPT), "--port", "{port}", *engine_args]
        return InstanceBody(
            owner=owner,
            launch=LaunchBody(
                argv=command,
                env={**(env or {}), MARKER_ENV: self.marker},
                port=port,
                health_path=health_path,
                image=image,
            ),
            device_indices=device_indices or [],
        )

    def run(self, scenario: Coroutine[Any, Any, T], timeout: float = SCENARIO_TIMEOUT_SECONDS) -> T:
        return asyncio.run(asyncio.wait_for(scenario, timeout))

    def marked_pids(self) -> set[int]:
        needle = f"{MARKER_ENV}={self.marker}".encode()
        found: set[int] = set()
        for entry in PROC_ROOT.iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
        return {pid for pid in found if is_running(pid)}

    def cleanup(self) -> None:
        killed = self.marked_pids()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.marked_pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        # Engines this test process started are its children: collect them so no zombie outlives the test.
        for pid in killed:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
