"""The README's main job with the real Pulumi CLI: the `local` stack through `pulumi preview`, `up`, a completion at
the exported endpoint, scaling to two replicas, `refresh` and `destroy`, asserting what the README says the user
sees. The CLI and the Python language host come from scripts/pulumi-cli.sh (PATH or its cache); without them the
test skips with the reason. The SDK-host harness (tests/harness) stays the fast path; this is the real engine's
ordering and concurrency."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from llama_support import requires_llama_cpp
from realcli.cli import PulumiCli, alive, find_cli, make_project, pids_in, processes_mentioning

from gpustack_pulumi.localhost import has_nvidia_gpu

BIN_DIR, WHERE = find_cli()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BIN_DIR is None, reason=WHERE),
    pytest.mark.skipif(has_nvidia_gpu(), reason="on a GPU machine the local stack serves a real model"),
]


def _complete(endpoint: str) -> str:
    host = urlparse(endpoint).hostname
    assert host in ("127.0.0.1", "localhost", "::1"), f"endpoint {endpoint} is not on loopback"
    reply = httpx.post(f"{endpoint}/completions", json={"prompt": "hello gpu node", "max_tokens": 8}, timeout=120)
    assert reply.status_code == 200, reply.text
    text = reply.json()["choices"][0]["text"]
    assert isinstance(text, str)
    return text


@requires_llama_cpp
def test_readme_main_job_with_the_real_cli(tmp_path: Path) -> None:
    assert BIN_DIR is not None
    state_dir = tmp_path / "state"
    cli = PulumiCli(BIN_DIR, make_project(tmp_path / "project"), tmp_path)
    pids: set[int] = set()
    destroyed = False
    try:
        cli.run("login", f"file://{cli.backend}")
        cli.run("stack", "select", "--create", "local")
        cli.run("config", "set", "gpustack:stateDir", str(state_dir))

        # First preview: the agent does not exist yet; the replica is still listed.
        preview = cli.run("preview")
        assert "chat-r0" in preview.stdout, preview.stdout

        up = cli.run("up", "--yes")
        assert "chat-r0" in up.stdout, up.stdout
        agents = cli.output("agents")
        endpoints = cli.output("endpoints")
        placements = cli.output("placements")
        assert isinstance(agents, dict) and len(agents) == 1, agents
        assert isinstance(endpoints, list) and len(endpoints) == 1, endpoints
        assert isinstance(placements, list) and len(placements) == 1, placements
        assert placements[0]["engine"] == "llama.cpp", placements
        assert placements[0].get("reason"), placements
        assert "chat-r0" in cli.resource_names()
        _complete(endpoints[0])
        for resource in cli.resources():
            pids.update(pids_in(resource.get("outputs")))

        # Every later preview shows where the replica lands, and changes nothing.
        again = cli.run("preview", "--expect-no-changes")
        assert "chat-r0" in again.stdout or "unchanged" in again.stdout, again.stdout

        # Scale to two: only the new replica is created; the first keeps serving at the same endpoint.
        before = cli.resource_names()
        cli.run("config", "set", "gpustack:replicas", "2")
        cli.run("up", "--yes")
        changes = cli.last_update_changes()
        assert changes.get("create") == 1, changes
        assert not changes.get("delete") and not changes.get("replace"), changes
        assert cli.resource_names() - before == {"chat-r1"}
        scaled = cli.output("endpoints")
        assert len(scaled) == 2 and len(set(scaled)) == 2, scaled
        assert scaled[0] == endpoints[0], (scaled, endpoints)
        assert len(cli.output("placements")) == 2
        for endpoint in scaled:
            _complete(endpoint)
        for resource in cli.resources():
            pids.update(pids_in(resource.get("outputs")))

        cli.run("refresh", "--yes")
        assert cli.resource_names() >= {"chat-r0", "chat-r1"}

        cli.run("destroy", "--yes")
        destroyed = True
        assert cli.resource_names() == set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ([p for p in pids if alive(p)] or processes_mentioning(str(state_dir))):
            time.sleep(0.2)
        assert pids, "the stack's outputs named no process"
        assert not [p for p in pids if alive(p)], "engine or agent processes survived destroy"
        assert not processes_mentioning(str(state_dir)), "a process still uses the stack's state dir"
    finally:
        # Shown by pytest when the test fails (captured otherwise): every command with its output.
        print("\n\n".join(cli.log))
        if not destroyed:
            cli.run("destroy", "--yes", check=False)
        # Anything still running from this test's state dir was started by this test: stop it.
        for pid in processes_mentioning(str(state_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
