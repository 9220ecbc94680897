"""Helpers for the agent API tests: a static device backend, a live agent on a loopback port, engine bodies.

The live agent is the real app (:func:`gpustack_runtime.app.create_app`) served by a real uvicorn server on
127.0.0.1 with an ephemeral port, in a background thread, with the real :class:`Supervisor` running real
engine processes (``engines/http_engine.py``). Only the device backend is a stand-in (there is no GPU here):
:class:`StaticBackend` serves snapshots the test sets, processes included, which is how foreign GPU memory
is simulated.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from gpustack_runtime.app import create_app
from gpustack_runtime.config import AgentConfig
from gpustack_runtime.devices.base import DeviceProcess, DeviceSnapshot
from gpustack_runtime.supervisor import BackoffPolicy, Supervisor
from gpustack_runtime.wire import InstanceBody, InstanceState, InstanceStatus, LaunchBody

GIB = 1024**3
MIB = 1024**2
TOKEN = "test-token-8c1f0e4d"
ENGINE_SCRIPT = Path(__file__).parent / "engines" / "http_engine.py"
SERVER_START_TIMEOUT_SECONDS = 15.0


class StaticBackend:
    """A device backend whose devices the test sets (``backend.devices = [...]``); otherwise it behaves like
    a real one: :meth:`snapshot` returns the current list, :meth:`close` is idempotent."""

    name = "static"

    def __init__(self, devices: Sequence[DeviceSnapshot] = ()) -> None:
        self.devices = list(devices)
        self.failure: Exception | None = None
        """Raised by :meth:`snapshot` while set, as a driver error would be."""
        self.closed = False

    def snapshot(self) -> list[DeviceSnapshot]:
        if self.failure is not None:
            raise self.failure
        return list(self.devices)

    def close(self) -> None:
        self.closed = True


def gpu(
    index: int,
    *,
    total: int = 80 * GIB,
    used: int = 0,
    processes: Sequence[tuple[int, int]] = (),
    utilization: float | None = 12.5,
) -> DeviceSnapshot:
    """An H100-like device; ``processes`` are (pid, used bytes)."""
    return DeviceSnapshot(
        index=index,
        uuid=f"GPU-{index:08d}-0000-0000-0000-000000000000",
        vendor="nvidia",
        product="NVIDIA H100 80GB HBM3",
        memory_total=total,
        memory_used=used,
        compute_capability="9.0",
        topology_group="nvlink-0",
        utilization_gpu=utilization,
        processes=[DeviceProcess(pid=pid, used_memory=memory) for pid, memory in processes],
    )


def engine_body(
    owner: str = "stack/dep",
    *,
    devices: Sequence[int] = (0,),
    memory: int = 10 * GIB,
    extra_args: Sequence[str] = (),
    port: int = 0,
) -> InstanceBody:
    """An instance running the tiny HTTP engine on the port the agent assigns."""
    return InstanceBody(
        owner=owner,
        launch=LaunchBody(
            argv=[sys.executable, str(ENGINE_SCRIPT), "--port", "{port}", *extra_args],
            port=port,
            health_path="/v1/models",
        ),
        device_indices=list(devices),
        memory_bytes_per_device=memory,
    )


def agent_config(state_dir: Path, **overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "node_name": "node-a",
        "labels": {"zone": "test"},
        "token": TOKEN,
        "state_dir": state_dir,
        "memory_safety_margin_bytes": 256 * MIB,
        "reservation_sweep_seconds": 0.2,
    }
    values.update(overrides)
    return AgentConfig.model_validate(values)


def fast_supervisor(state_dir: Path, port_range: tuple[int, int] = (40500, 40599)) -> Supervisor:
    """The real supervisor with short intervals so tests are quick."""
    return Supervisor(
        state_dir,
        port_range=port_range,
        backoff=BackoffPolicy(base_seconds=0.2, max_seconds=1.0, max_consecutive_failures=3),
        health_interval=0.1,
        stop_grace_seconds=2.0,
    )


class LiveAgent:
    """A running agent: ``url``, an authenticated ``client``, the ``backend`` to change devices, and the
    ``supervisor`` (read it only from the server's loop via :meth:`call`)."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, backend: StaticBackend) -> None:
        self.server = server
        self.thread = thread
        self.backend = backend
        port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30.0)

    def wait_state(self, instance_id: str, states: set[InstanceState], timeout: float = 15.0) -> InstanceStatus:
        """Poll ``GET /v1/instances/{id}`` until the state is one of ``states``."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.client.get(f"/v1/instances/{instance_id}")
            response.raise_for_status()
            status = InstanceStatus.model_validate(response.json())
            if status.state in states:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"instance {instance_id} stayed {status.state}: {status.message}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the agent's server thread did not stop"


@contextmanager
def live_agent(
    state_dir: Path,
    backend: StaticBackend | None = None,
    *,
    config: AgentConfig | None = None,
    delete_instances_on_exit: bool = True,
) -> Iterator[LiveAgent]:
    """Serve the agent on 127.0.0.1:<ephemeral>; on exit delete every instance (so no engine outlives the
    test) and shut the server down."""
    backend = backend if backend is not None else StaticBackend([gpu(0), gpu(1)])
    config = config if config is not None else agent_config(state_dir)
    app = create_app(config, backend, fast_supervisor(state_dir))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", loop="asyncio")
    )
    thread = threading.Thread(target=server.run, name="live-agent", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the agent did not start")
        time.sleep(0.01)
    agent = LiveAgent(server, thread, backend)
    try:
        yield agent
    finally:
        if delete_instances_on_exit:
            for instance in agent.client.get("/v1/instances").json():
                agent.client.delete(f"/v1/instances/{instance['id']}")
        agent.stop()


def put_concurrently(url: str, requests: Sequence[tuple[str, InstanceBody]]) -> list[httpx.Response]:
    """Send the PUTs at the same moment (one event loop, one connection each); responses in order."""

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30.0
        ) as client:
            return await asyncio.gather(
                *(client.put(path, json=body.model_dump(mode="json")) for path, body in requests)
            )

    return asyncio.run(send_all())


def put_json(client: httpx.Client, path: str, body: InstanceBody) -> httpx.Response:
    return client.put(path, json=body.model_dump(mode="json"))
