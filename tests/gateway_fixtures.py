"""Real processes for the gateway tests and benchmark: llama.cpp replicas of the tiny GGUF and the gateway (LiteLLM
proxy started from the same instance body the agent runs), all on 127.0.0.1, each stopped by its owner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from gpustack_pulumi.components.gateway import default_gateway_python
from gpustack_pulumi.gateway.client import push_config
from gpustack_pulumi.gateway.config import GatewayConfig
from gpustack_pulumi.gateway.launch import gateway_instance_body

START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def llama_replica(model: Path, alias: str, workdir: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A llama-cpp-python server serving ``model`` as ``alias``; yields (OpenAI base URL, process)."""
    port = free_port()
    log = workdir / f"llama-{alias}-{port}.log"
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--model_alias", alias]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", process, log)
        yield f"http://127.0.0.1:{port}/v1", process
    finally:
        stop(process)


@contextmanager
def gateway_process(
    state_dir: Path, master_key: str, config: GatewayConfig | None = None, pids: list[int] | None = None
) -> Iterator[str]:
    """The gateway started from its agent instance body; yields its root URL (``http://127.0.0.1:PORT``). Its pid
    (the proxy's: the launcher execs it) is appended to ``pids`` when given."""
    port = free_port()
    body = gateway_instance_body(
        owner="test/gateway", python=default_gateway_python(), state_dir=str(state_dir), host="127.0.0.1",
        port=port, master_key=master_key,
    )  # fmt: skip
    log = state_dir.parent / f"gateway-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            body.launch.argv, env={**os.environ, **body.launch.env}, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    if pids is not None:
        pids.append(process.pid)
    try:
        wait_http(f"{base}{body.launch.health_path}", process, log)
        if config is not None:
            push_config(base, master_key, config)
        yield base
    finally:
        stop(process)
        text = log.read_text()
        assert master_key not in text, "the master key appeared in the gateway's log"
