"""The `local` stack with its gateway, through the engine harness: the agent runs the gateway (LiteLLM proxy) like
an engine in front of two llama.cpp replicas; the stack exports one endpoint and a key; the README's call goes
through it; a new key limit and a revoked key are applied at the next up without restarting the gateway (same
pid); destroy stops every process."""

from __future__ import annotations

import runpy
import time
from pathlib import Path

import httpx
import pytest
from harness.pulumi_engine import StackHarness
from llama_support import llama_cpp_available

from gpustack_pulumi.components.gateway import default_gateway_python
from gpustack_pulumi.localhost import has_nvidia_gpu
from gpustack_pulumi.providers.local_agent import process_start_time

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "stacks" / "local" / "__main__.py"


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(has_nvidia_gpu(), reason="on a GPU machine the local stack serves a real model"),
    pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python missing: run .ci/llama-cpp.sh"),
    pytest.mark.skipif(
        not Path(default_gateway_python()).exists(),
        reason="the gateway's virtualenv is missing: run scripts/setup.sh (it installs .cache/gateway-venv)",
    ),
]


def run_stack() -> None:
    runpy.run_path(str(STACK), run_name="__main__")


def alive(pid: int) -> bool:
    return process_start_time(pid) is not None and not Path(f"/proc/{pid}/status").read_text().count("zombie")


def test_local_stack_serves_through_one_gateway_endpoint(tmp_path: Path) -> None:
    config = {"gpustack:stateDir": str(tmp_path / "state"), "gpustack:replicas": "2"}
    harness = StackHarness(
        run_stack, state_path=tmp_path / "state.json", config=config, cwd=REPO, project="gpustack-pulumi", stack="local"
    )
    pids: list[int] = []
    try:
        up = harness.up()
        assert {"gateway-server", "default-key", "gateway-master-key"} <= set(up.ops("create"))
        endpoint, key = up.outputs["endpoint"], up.outputs["api_key"]
        assert endpoint.startswith("http://127.0.0.1:") and endpoint.endswith("/v1")
        assert key.startswith("sk-gps-")
        state = {r.name: r for r in harness.load_state()}
        gateway_pid = int(state["gateway-server"].outputs["pid"])
        pids += [gateway_pid, int(state["local-agent"].outputs["pid"])]
        pids += [int(state[f"chat-r{i}"].outputs["instances"][0]["pid"]) for i in (0, 1)]
        # Two replicas behind the one model name.
        assert len(state["gateway-server"].outputs["routes"]) == 2

        # The README's call, through the gateway.
        headers = {"Authorization": f"Bearer {key}"}
        reply = httpx.post(
            f"{endpoint}/completions", json={"model": "chat", "prompt": "hello", "max_tokens": 8}, headers=headers,
            timeout=60,
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        assert (
            httpx.post(f"{endpoint}/completions", json={"model": "chat", "prompt": "x"}, timeout=30).status_code == 401
        )
        models = httpx.get(f"{endpoint}/models", headers=headers, timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["chat"]

        # Refresh reads the gateway's usage: the tokens the engine reported.
        harness.refresh()
        state = {r.name: r for r in harness.load_state()}
        counted = state["gateway-server"].outputs["usage"]["keys"]["default-key"]["chat"]
        assert counted["prompt_tokens"] == usage["prompt_tokens"]
        assert counted["completion_tokens"] == usage["completion_tokens"]

        # A new rpm limit is an update of the key and of the gateway's config; the gateway keeps its process.
        harness.config["gpustack:keyRpm"] = "1"
        limited = harness.up()
        assert "gateway-server" in limited.ops("update") and "gateway-server" not in limited.ops("replace")
        state = {r.name: r for r in harness.load_state()}
        assert int(state["gateway-server"].outputs["pid"]) == gateway_pid
        body = {"model": "chat", "prompt": "hi", "max_tokens": 2}
        statuses = [
            httpx.post(f"{endpoint}/completions", json=body, headers=headers, timeout=60).status_code for _ in range(3)
        ]
        assert 429 in statuses  # the limit applies from the next request (this minute already holds one)
    finally:
        destroyed = harness.destroy()
    assert "gateway-server" in destroyed.ops("delete")
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if alive(pid)]
