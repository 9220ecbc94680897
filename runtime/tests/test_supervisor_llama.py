"""The supervisor with a real inference engine: llama.cpp's OpenAI-compatible server on CPU, serving a tiny
generated GGUF (random weights: the text is gibberish, the process and its API are real)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervisor_fixtures import READY_TIMEOUT_SECONDS, SupervisorHarness, http_get_json, http_post_json, is_running

from gpustack_pulumi.tinymodel import write_tiny_gguf  # test code only: the runtime never imports gpustack_pulumi

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="run .ci/llama-cpp.sh"),
    pytest.mark.slow,
]

LLAMA_READY_TIMEOUT_SECONDS = max(READY_TIMEOUT_SECONDS, 60.0)
"""Measured 0.55-0.73 s from exec to /v1/models 200 on an idle 2-core box; a loaded CI box is slower."""

LLAMA_STOP_GRACE_SECONDS = 10.0
"""The server exits ~2 s after SIGTERM (uvicorn's graceful shutdown); the grace must not cut that short."""


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[SupervisorHarness]:
    harness = SupervisorHarness(tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


def llama_server_argv(model: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--n_ctx",
        "256",
        "--n_threads",
        "1",
        "--model_alias",
        "tiny",
    ]


async def complete(port: int) -> dict[str, object]:
    payload = {"model": "tiny", "prompt": "hello gpu node", "max_tokens": 8, "seed": 1, "temperature": 0}
    return await asyncio.to_thread(http_post_json, port, "/v1/completions", payload)


def test_llama_cpp_server_is_supervised_restarted_and_adopted(harness: SupervisorHarness, tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf")

    async def scenario() -> None:
        first = harness.supervisor(stop_grace_seconds=LLAMA_STOP_GRACE_SECONDS)
        await first.start()
        body = harness.body(argv=llama_server_argv(model), health_path="/v1/models")
        status, changed = await first.put("tiny", body)
        assert changed
        ready = await first.wait_state("tiny", {"ready"}, LLAMA_READY_TIMEOUT_SECONDS)
        port = ready.port
        assert port is not None
        models = await asyncio.to_thread(http_get_json, port, "/v1/models")
        assert [entry["id"] for entry in models["data"]] == ["tiny"]
        completion = await complete(port)
        assert completion["object"] == "text_completion"
        assert completion["model"] == "tiny"
        assert isinstance(completion["choices"][0]["text"], str)  # type: ignore[index]

        # A crash: restarted with backoff, ready again, serving again on the same port.
        os.kill(status.pid, signal.SIGKILL)  # type: ignore[arg-type]
        while first.get("tiny").pid == status.pid:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
        restarted = await first.wait_state("tiny", {"ready"}, LLAMA_READY_TIMEOUT_SECONDS)
        assert restarted.restarts == 1 and restarted.last_exit_code == -signal.SIGKILL
        assert restarted.port == port
        assert (await complete(port))["object"] == "text_completion"
        assert any("llama" in line.lower() for line in first.logs("tiny"))  # the engine's own output

        # An agent restart: the engine keeps serving and the new supervisor takes it over.
        await first.close()
        assert is_running(restarted.pid)  # type: ignore[arg-type]
        second = harness.supervisor(stop_grace_seconds=LLAMA_STOP_GRACE_SECONDS)
        await second.start()
        try:
            adopted = await second.wait_state("tiny", {"ready"}, LLAMA_READY_TIMEOUT_SECONDS)
            assert adopted.pid == restarted.pid and adopted.restarts == 1
            assert (await complete(port))["object"] == "text_completion"
            assert await second.delete("tiny")
            assert not is_running(restarted.pid)  # type: ignore[arg-type]
        finally:
            await second.close()

    harness.run(scenario(), timeout=180)
