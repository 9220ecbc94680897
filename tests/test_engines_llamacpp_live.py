"""The llama.cpp launch spec, really launched: the argv we generate starts llama-cpp-python's server on a
generated tiny GGUF on 127.0.0.1, which answers /v1/models and /v1/completions; then it is stopped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gpustack_pulumi.analysis import analyze
from gpustack_pulumi.engines import EngineOptions, NodeAccelerator
from gpustack_pulumi.engines.launch import launch_specs
from gpustack_pulumi.engines.versions import engine_version
from gpustack_pulumi.placement.models import Deployment, NodePlacement, PlacedReplica
from gpustack_pulumi.tinymodel import write_tiny_gguf

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed in this environment")

STARTUP_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def test_generated_llamacpp_argv_serves_the_tiny_gguf(tiny_gguf: Path) -> None:
    profile = analyze(str(tiny_gguf))
    deployment = Deployment(name="tiny", model=str(tiny_gguf), engine="llama.cpp", max_model_len=256)
    replica = PlacedReplica(
        deployment="tiny",
        replica=0,
        engine="llama.cpp",
        placements=[NodePlacement(node="local", device_indices=[], memory_bytes_per_device=64 * 2**20)],
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        memory_fraction=None,
        reason="test",
    )
    options = EngineOptions(host="127.0.0.1", python=sys.executable, extra_args=["--n_threads", "1"])
    (spec,) = launch_specs(replica, profile, deployment, accelerators={"local": NodeAccelerator.cpu()}, options=options)
    assert spec.image is None and spec.visible_devices == [] and spec.health_path == "/v1/models"
    assert engine_version("llama.cpp", spec.engine_version).flag_table.problems(spec.argv[spec.command_length :]) == []

    body = spec.to_launch_body()
    port = _free_port()
    argv = [argument.replace("{port}", str(port)) for argument in body.argv]  # what the agent does
    environment = {**os.environ, **body.env, "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(argv, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        status = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{output[-4000:]}")
            try:
                status, models = _get(f"http://127.0.0.1:{port}{body.health_path}")
                break
            except OSError:
                time.sleep(0.25)
        assert status == 200, "the server never answered its health path"
        assert [model["id"] for model in models["data"]] == ["tiny"]  # --model_alias is the served name

        status, completion = _post(
            f"http://127.0.0.1:{port}/v1/completions", {"model": "tiny", "prompt": "hello world", "max_tokens": 4}
        )
        assert status == 200
        assert completion["object"] == "text_completion" and completion["usage"]["completion_tokens"] >= 1
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()
