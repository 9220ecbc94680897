"""The `local` stack brought up through the engine harness on this machine: the agent starts, placement comes from
its live capacity, llama.cpp serves /v1/completions at the output endpoint; a changed replica count adds a replica
without touching the other; refresh after killing an engine reports it; destroy leaves no process behind."""

from __future__ import annotations

import os
import runpy
import signal
import time
from pathlib import Path

import httpx
import pytest
from harness.pulumi_engine import StackHarness
from llama_support import requires_llama_cpp

from gpustack_pulumi.localhost import has_nvidia_gpu
from gpustack_pulumi.pools.local.provider import process_start_time

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "stacks" / "local" / "__main__.py"

pytestmark = [
    pytest.mark.skipif(has_nvidia_gpu(), reason="on a GPU machine the local stack serves a real model"),
]


def run_stack() -> None:
    runpy.run_path(str(STACK), run_name="__main__")


def alive(pid: int) -> bool:
    return process_start_time(pid) is not None and not Path(f"/proc/{pid}/status").read_text().count("zombie")


@requires_llama_cpp
def test_local_stack_end_to_end(tmp_path: Path) -> None:
    config = {"gpustack:stateDir": str(tmp_path / "state"), "gpustack:replicas": "1"}
    harness = StackHarness(
        run_stack,
        state_path=tmp_path / "pulumi-state.json",
        config=config,
        cwd=REPO,
        project="gpustack-pulumi",
        stack="local",
    )
    preview = harness.preview()
    everything = ["agent-token", "chat-r0", "default-key", "gateway-master-key", "gateway-server", "local-agent",
                  "local-plan"]  # fmt: skip
    assert sorted(preview.ops("would-create")) == everything
    # The agent does not exist yet: the plan uses the capacity this machine will report (read directly).
    [planned] = preview.outputs["placements"]
    assert planned["engine"] == "llama.cpp" and planned["placements"][0]["device_indices"] == []

    pids: list[int] = []
    try:
        up = harness.up()
        assert sorted(up.ops("create")) == everything
        [endpoint] = up.outputs["endpoints"]
        [placement] = up.outputs["placements"]
        assert placement["engine"] == "llama.cpp"
        assert placement["placements"][0]["device_indices"] == []  # CPU-only node
        assert "llama.cpp" in placement["reason"] or placement["reason"]
        reply = httpx.post(f"{endpoint}/completions", json={"prompt": "hello gpu node", "max_tokens": 8}, timeout=60)
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] is not None

        state = {r.name: r for r in harness.load_state()}
        agent_pid = int(state["local-agent"].outputs["pid"])
        r0 = state["chat-r0"].outputs
        r0_pid = int(r0["instances"][0]["pid"])
        pids += [agent_pid, r0_pid]

        # Two replicas: only the new one is created; r0 keeps its process.
        harness.config["gpustack:replicas"] = "2"
        scaled = harness.up()
        assert scaled.ops("create") == ["chat-r1"]
        # The plan claims r1's capacity before r1 starts; the gateway routes to both afterwards.
        assert sorted(scaled.ops("update")) == ["gateway-server", "local-plan"]
        assert "chat-r0" not in scaled.ops("replace") + scaled.ops("update") + scaled.ops("delete")
        state = {r.name: r for r in harness.load_state()}
        assert int(state["chat-r0"].outputs["instances"][0]["pid"]) == r0_pid
        r1_pid = int(state["chat-r1"].outputs["instances"][0]["pid"])
        pids.append(r1_pid)
        assert len(set(scaled.outputs["endpoints"])) == 2

        # Kill r1's engine: the agent restarts it, and refresh reports the restart.
        os.kill(r1_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        refreshed = harness.refresh()
        while "chat-r1" not in refreshed.drift and time.monotonic() < deadline:
            time.sleep(0.5)
            refreshed = harness.refresh()
        drift = refreshed.drift["chat-r1"]
        assert drift.get("restarts", 0) >= 1 or drift.get("state") in ("restarting", "starting")
        assert "chat-r0" not in refreshed.drift
    finally:
        destroyed = harness.destroy()
    assert sorted(destroyed.ops("delete")) == sorted([*everything, "chat-r1"])
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if alive(pid)]


def test_impossible_model_fails_the_first_preview_with_the_numbers(tmp_path: Path) -> None:
    from harness.pulumi_engine import CheckFailed

    # The tiny GGUF with a million full-length sequences: a KV cache far larger than this machine's memory.
    config = {"gpustack:stateDir": str(tmp_path / "state"), "gpustack:concurrency": "1000000"}
    harness = StackHarness(
        run_stack,
        state_path=tmp_path / "pulumi-state.json",
        config=config,
        cwd=REPO,
        project="gpustack-pulumi",
        stack="local",
    )
    try:
        # The very first preview, before the agent exists, already fails: the plan runs on this machine's
        # capacity read directly.
        with pytest.raises(CheckFailed) as failure:
            harness.preview()
        message = str(failure.value)
        assert "on the capacity the pools will create" in message
        assert "chat replica 0 cannot be placed" in message
        assert "GiB" in message  # needed vs available, with numbers
        with pytest.raises(CheckFailed) as failure:
            harness.up()
        assert "chat replica 0 cannot be placed" in str(failure.value)
        assert "chat-r0" not in [r.name for r in harness.load_state()]  # nothing half-created for the replica
    finally:
        harness.destroy()


@requires_llama_cpp
def test_destroy_after_an_agent_crash_never_forgets_the_engine(tmp_path: Path) -> None:
    """kill -9 of the agent leaves its engine serving: destroy must fail clearly instead of reporting success;
    once the agent is back (on another port, found by node name), destroy stops the engine."""
    from harness.pulumi_engine import ProviderError

    config = {"gpustack:stateDir": str(tmp_path / "state"), "gpustack:deleteTimeout": "3"}
    harness = StackHarness(
        run_stack, state_path=tmp_path / "pulumi-state.json", config=config, cwd=REPO, project="gpustack-pulumi",
        stack="local",
    )  # fmt: skip
    engine_pid = 0
    try:
        harness.up()
        state = {r.name: r for r in harness.load_state()}
        agent_pid = int(state["local-agent"].outputs["pid"])
        old_url = state["local-agent"].outputs["endpoint"]
        engine_pid = int(state["chat-r0"].outputs["instances"][0]["pid"])
        os.kill(agent_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive(engine_pid)  # the engine outlives its agent (it keeps serving)

        with pytest.raises(ProviderError, match="cannot stop instance .* may still be running"):
            harness.destroy()
        assert alive(engine_pid)
        assert "chat-r0" in [r.name for r in harness.load_state()]  # not forgotten

        # The agent comes back (a new process, a new port); the replica follows its node's agent.
        harness.refresh()
        harness.up()
        state = {r.name: r for r in harness.load_state()}
        assert state["local-agent"].outputs["endpoint"] != old_url
        assert state["chat-r0"].outputs["agents"] == {state["local-agent"].outputs["node_name"]:
                                                      state["local-agent"].outputs["endpoint"]}  # fmt: skip
        assert int(state["chat-r0"].outputs["instances"][0]["pid"]) == engine_pid  # adopted, not restarted
    finally:
        harness.destroy()
    deadline = time.monotonic() + 20
    while engine_pid and alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(engine_pid)
