"""Agent benchmark: capacity latency, memory footprint, readiness delay. Prints a table.

    .venv/bin/python runtime/bench/agent_bench.py [--requests 2000] [--instances 8]

What it measures, all on loopback against a real agent process (``python -m gpustack_runtime``, the program
behind the ``gpustack-agent`` script):

* ``GET /v1/capacity`` latency, p50/p99 over ``--requests`` sequential keep-alive requests, with 8 simulated
  GPUs: the real NVML backend (pynvml) reading the fake ``libnvidia-ml.so.1`` that the tests build
  (runtime/tests/fakenvml; needs gcc). With ``--static`` (or without gcc) it falls back to ``--devices none``
  and says so in the table; then there are no GPUs and the number means less. ``--real-nvml`` uses the
  host's real driver and GPUs instead.
* the agent's resident memory (VmRSS of the agent process alone, engines excluded): idle, and with
  ``--instances`` tiny Python HTTP engines (runtime/tests/engines/http_engine.py) running;
* the delay from an engine answering its health path to the agent reporting it ``ready``: the benchmark
  polls both the engine's port and ``GET /v1/instances/{id}`` every ``POLL_SECONDS`` and reports the gap
  (mean and max over the instances; resolution about ``POLL_SECONDS``). The supervisor probes starting
  engines every 0.25 s (``STARTING_PROBE_INTERVAL_SECONDS``), so the expected mean is about 0.13 s.

Everything it starts (agent, engines) is stopped at the end, and its temporary directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

RUNTIME_DIR = Path(__file__).resolve().parents[1]
ENGINE_SCRIPT = RUNTIME_DIR / "tests" / "engines" / "http_engine.py"
AGENT_COMMAND = [sys.executable, "-m", "gpustack_runtime"]
"""The same program as the ``gpustack-agent`` console script, also where the package is only on PYTHONPATH."""
TOKEN = "bench-token"
GPU_COUNT = 8
H100_MEMORY_BYTES = 85_520_809_984  # what NVML reports for an H100 80GB HBM3
POLL_SECONDS = 0.005
ENGINE_READY_AFTER_SECONDS = 1.0
"""The engines wait this long before listening, so the benchmark is already polling when they come up."""
ENGINE_PORT_RANGE = "40800-40863"


@dataclass
class Row:
    metric: str
    value: str
    note: str = ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def fake_nvml_environment(work: Path) -> dict[str, str] | None:
    """Environment that makes the agent's NVML backend read 8 fake H100s, or None when the fake cannot be
    built (no C compiler)."""
    sys.path.insert(0, str(RUNTIME_DIR / "tests"))
    try:
        from fakenvml.build import FakeNvmlBuildError, build_fake_nvml
    finally:
        sys.path.pop(0)
    try:
        library = build_fake_nvml(work / "fakenvml")
    except FakeNvmlBuildError as error:
        print(f"note: {error}; using --devices none", file=sys.stderr)
        return None
    machine = work / "machine.json"
    devices = [
        {
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": f"GPU-bench-{index:04d}",
            "memory_total": H100_MEMORY_BYTES,
            "memory_used": 512 * 1024 * 1024,
            "utilization": 10 * index,
            "cc_major": 9,
            "cc_minor": 0,
            "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
            "nvlink_peers": [peer for peer in range(GPU_COUNT) if peer != index],
            # A listed GPU process makes the agent attribute device memory to instances' process trees (the
            # path that walked /proc per instance): pid 1 stands for a foreign process.
            "processes": [{"pid": 1, "used_memory": 256 * 1024 * 1024}],
        }
        for index in range(GPU_COUNT)
    ]
    machine.write_text(json.dumps({"driver_version": "550.54.15", "devices": devices}))
    return {"GPUSTACK_RUNTIME_NVML_LIBRARY": str(library), "FAKE_NVML_CONFIG": str(machine)}


@contextlib.contextmanager
def running_agent(work: Path, devices: str, extra_env: dict[str, str]) -> Iterator[tuple[int, httpx.Client]]:
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    process = subprocess.Popen(
        [
            *AGENT_COMMAND,
            "--host=127.0.0.1",
            f"--port={port}",
            f"--token-file={token_file}",
            f"--state-dir={work / 'state'}",
            f"--devices={devices}",
            f"--port-range={ENGINE_PORT_RANGE}",
            "--log-level=warning",
        ],
        env={**os.environ, **extra_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent did not start")
            time.sleep(0.05)
        yield process.pid, client
    finally:
        with contextlib.suppress(httpx.HTTPError):
            for instance in client.get("/v1/instances").json():
                client.delete(f"/v1/instances/{instance['id']}")
        client.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def capacity_latencies(client: httpx.Client, requests: int) -> list[float]:
    for _ in range(50):  # warm-up: first-request imports, connection set-up
        client.get("/v1/capacity").raise_for_status()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get("/v1/capacity")
        samples.append(time.perf_counter() - started)
        response.raise_for_status()
    return samples


def start_engines_and_time_readiness(client: httpx.Client, count: int, gpus: int) -> list[float]:
    """Start ``count`` engines, one per GPU (or none with no GPUs); returns, per engine, the seconds from its
    first 200 on the health path to the agent's first ``ready``."""
    ports: dict[str, int] = {}
    for n in range(count):
        body = {
            "owner": "bench/engines",
            "launch": {
                "argv": [
                    sys.executable,
                    str(ENGINE_SCRIPT),
                    "--port",
                    "{port}",
                    "--ready-after",
                    str(ENGINE_READY_AFTER_SECONDS),
                ],
            },
            "device_indices": [n % gpus] if gpus else [],
            "memory_bytes_per_device": 8 * 1024**3 if gpus else 0,
        }
        response = client.put(f"/v1/instances/bench-{n}", json=body)
        response.raise_for_status()
        ports[f"bench-{n}"] = response.json()["port"]
    engine_up: dict[str, float] = {}
    agent_ready: dict[str, float] = {}
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=1) as engine_client:
        while len(agent_ready) < count and time.monotonic() < deadline:
            for instance_id, port in ports.items():
                now = time.monotonic()
                if instance_id not in engine_up:
                    with contextlib.suppress(httpx.TransportError):
                        if engine_client.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                            engine_up[instance_id] = now
                if (
                    instance_id not in agent_ready
                    and instance_id in engine_up
                    and client.get(f"/v1/instances/{instance_id}").json()["state"] == "ready"
                ):
                    agent_ready[instance_id] = time.monotonic()
            time.sleep(POLL_SECONDS)
    if len(agent_ready) < count:
        raise RuntimeError(f"only {len(agent_ready)} of {count} engines became ready")
    return [agent_ready[i] - engine_up[i] for i in ports]


@contextlib.contextmanager
def host_processes(count: int) -> Iterator[None]:
    """``count`` idle processes on the host, so each /proc scan reads as many entries as a busy node."""
    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(count)]
    try:
        yield
    finally:
        for sleeper in sleepers:
            sleeper.kill()
        for sleeper in sleepers:
            sleeper.wait()


def start_cheap_instances(client: httpx.Client, count: int) -> None:
    """``count`` instances whose engine is ``sleep`` (no health path): cheap on 2 cores, real processes."""
    for n in range(count):
        body = {"owner": "bench/load", "launch": {"argv": ["sleep", "3600"], "health_path": None}}
        client.put(f"/v1/instances/load-{n}", json=body).raise_for_status()


LOAD_PROCESSES = 2
"""The capacity readers run in this many separate processes, and the /healthz probe in the benchmark's own: a
probe sharing an event loop (or a GIL) with 50 busy clients would time its own queueing, not the agent's."""


def _hammer(url: str, clients: int, seconds: float, answers: multiprocessing.Queue) -> None:
    """A load process: ``clients`` concurrent readers of ``/v1/capacity`` for ``seconds``; puts its count."""
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def run() -> int:
        answered = 0
        deadline = time.monotonic() + seconds

        async def reader(client: httpx.AsyncClient) -> None:
            nonlocal answered
            while time.monotonic() < deadline:
                (await client.get("/v1/capacity")).raise_for_status()
                answered += 1

        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
            await asyncio.gather(*(reader(client) for _ in range(clients)))
        return answered

    answers.put(asyncio.run(run()))


def healthz_under_load(url: str, clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` concurrent clients (in ``LOAD_PROCESSES`` processes) read ``/v1/capacity`` for ``seconds``
    while this process times ``/healthz`` every 20 ms. Returns the /healthz latencies and the number of capacity
    answers."""
    answers: multiprocessing.Queue = multiprocessing.Queue()
    shares = [clients // LOAD_PROCESSES + (1 if i < clients % LOAD_PROCESSES else 0) for i in range(LOAD_PROCESSES)]
    loaders = [
        multiprocessing.Process(target=_hammer, args=(url, share, seconds, answers)) for share in shares if share
    ]
    for loader in loaders:
        loader.start()
    samples: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as prober:
        time.sleep(0.5)  # the readers connect
        deadline = time.monotonic() + seconds - 1.0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            prober.get("/healthz").raise_for_status()
            samples.append(time.perf_counter() - started)
            time.sleep(0.02)
    answered = sum(answers.get(timeout=seconds + 60) for _ in loaders)
    for loader in loaders:
        loader.join(timeout=30)
    return samples, answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--load-instances", type=int, default=20, help="instances in the load section")
    parser.add_argument("--host-processes", type=int, default=300, help="extra idle host processes")
    parser.add_argument("--clients", type=int, default=50, help="concurrent capacity readers")
    parser.add_argument("--load-seconds", type=float, default=10.0)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--static", action="store_true", help="no fake NVML: --devices none")
    source.add_argument("--real-nvml", action="store_true", help="this host's real NVML and GPUs")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    rows: list[Row] = []
    try:
        nvml_env = None if options.static or options.real_nvml else fake_nvml_environment(work)
        if options.real_nvml:
            devices, backend_note = "nvml", "NVML backend on this host's real driver"
        elif nvml_env is not None:
            devices, backend_note = "nvml", "NVML backend on the fake libnvidia-ml (8 x H100)"
        else:
            devices, backend_note = "none", "devices none: no GPUs (fake NVML not used)"
        with running_agent(work, devices, nvml_env or {}) as (agent_pid, client):
            capacity = client.get("/v1/capacity").json()
            gpu_count = len(capacity["devices"])
            gpus = gpu_count
            if capacity["devices"]:
                backend_note += f", {capacity['devices'][0]['product']}"
            idle = capacity_latencies(client, options.requests)
            rows.append(Row("backend", devices, f"{backend_note}; capacity lists {gpu_count} devices"))
            rows.append(Row("GET /v1/capacity p50, idle", f"{percentile(idle, 0.5) * 1e3:.2f} ms", f"n={len(idle)}"))
            rows.append(Row("GET /v1/capacity p99, idle", f"{percentile(idle, 0.99) * 1e3:.2f} ms", f"n={len(idle)}"))
            rows.append(Row("agent RSS, idle", f"{rss_mib(agent_pid):.1f} MiB", "after the latency run"))

            delays = start_engines_and_time_readiness(client, options.instances, gpus)
            busy = capacity_latencies(client, options.requests)
            rows.append(
                Row(
                    f"GET /v1/capacity p50, {options.instances} instances",
                    f"{percentile(busy, 0.5) * 1e3:.2f} ms",
                    f"n={len(busy)}",
                )
            )
            rows.append(
                Row(
                    f"GET /v1/capacity p99, {options.instances} instances",
                    f"{percentile(busy, 0.99) * 1e3:.2f} ms",
                    f"n={len(busy)}",
                )
            )
            rows.append(
                Row(f"agent RSS, {options.instances} instances", f"{rss_mib(agent_pid):.1f} MiB", "engines excluded")
            )
            rows.append(
                Row(
                    "engine ready -> agent ready, mean",
                    f"{statistics.mean(delays) * 1e3:.0f} ms",
                    f"over {len(delays)} engines; poll resolution {POLL_SECONDS * 1e3:.0f} ms",
                )
            )
            rows.append(Row("engine ready -> agent ready, max", f"{max(delays) * 1e3:.0f} ms"))

        with (
            host_processes(options.host_processes),
            running_agent(work, devices, nvml_env or {}) as (agent_pid, client),
        ):
            start_cheap_instances(client, options.load_instances)
            procs = sum(1 for entry in os.listdir("/proc") if entry.isdigit())
            context = f"{options.load_instances} instances, {procs} host processes"
            loaded = capacity_latencies(client, options.requests)
            for name, fraction in (("p50", 0.5), ("p99", 0.99)):
                rows.append(
                    Row(
                        f"GET /v1/capacity {name}, {context}",
                        f"{percentile(loaded, fraction) * 1e3:.2f} ms",
                        f"n={len(loaded)}, sequential",
                    )
                )
            health, answered = healthz_under_load(str(client.base_url), options.clients, options.load_seconds)
            note = f"{options.clients} clients reading capacity for {options.load_seconds:g} s"
            rows.append(
                Row(f"GET /healthz p99 under load, {context}", f"{percentile(health, 0.99) * 1e3:.1f} ms", note)
            )
            rows.append(
                Row(f"GET /healthz max under load, {context}", f"{max(health) * 1e3:.1f} ms", f"n={len(health)}")
            )
            rows.append(
                Row(
                    f"GET /v1/capacity throughput under load, {context}",
                    f"{answered / options.load_seconds:.0f} req/s",
                    note,
                )
            )
            rows.append(Row(f"agent RSS, {context}", f"{rss_mib(agent_pid):.1f} MiB", "after the load"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    machine = f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.machine()}"
    print(f"agent benchmark on {machine}, load average {os.getloadavg()[0]:.2f}")
    width = max(len(row.metric) for row in rows)
    value_width = max(len(row.value) for row in rows)
    print(f"| {'metric'.ljust(width)} | {'value'.ljust(value_width)} | note")
    print(f"|-{'-' * width}-|-{'-' * value_width}-|-----")
    for row in rows:
        print(f"| {row.metric.ljust(width)} | {row.value.ljust(value_width)} | {row.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
