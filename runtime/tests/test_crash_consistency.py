"""Nothing lost, nothing leaked (issue 11, items 2-4): state and reality agree after a crash, a full disk or a
helper that escapes its engine's process group.

- kill -9 of the agent with instance PUTs in flight, over 20 runs: after a restart and the client's retries,
  every instance has exactly one engine, and no engine runs that the agent does not know (0 duplicates,
  0 orphans);
- the intent (instance, claim, this start's marker) is written before the engine is spawned, so a crash in
  between is adopted, not duplicated;
- a full disk (a real 512 KiB tmpfs when this runs as root, else an injected ENOSPC): a PUT that fails leaves
  no engine and no claim, a DELETE that fails leaves the engine running and recorded;
- a grandchild that calls setsid stops with its engine.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_fixtures import TOKEN, engine_body, live_agent
from gpustack_runtime.supervisor import procfs
from gpustack_runtime.supervisor.state import STATE_FILE_NAME, load_state, save_state
from supervisor_fixtures import SupervisorHarness, is_running, wait_until_gone
from test_api_cli import running_agent

KILL9_RUNS = 20
WRITES_IN_FLIGHT = 30


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[SupervisorHarness]:
    made = SupervisorHarness(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


# --- containment (item 4) ------------------------------------------------------------------------------


def test_a_grandchild_that_calls_setsid_stops_with_its_engine(harness: SupervisorHarness, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"

    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            await supervisor.put("ray", harness.body("--spawn-setsid-grandchild", str(pid_file)))
            await supervisor.wait_state("ray", {"ready"}, 15)
            grandchild = int(pid_file.read_text())
            engine = supervisor.get("ray")
            assert engine is not None and engine.pid is not None
            stat = procfs.read_stat(grandchild)
            assert stat is not None and stat.pgrp != engine.pid, "the helper left the engine's group"
            assert grandchild not in procfs.process_tree(engine.pid), "and its tree"
            assert await supervisor.delete("ray")
            assert await wait_until_gone(grandchild, 5), "the setsid grandchild survived DELETE"
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_a_setsid_grandchild_of_a_crashed_engine_is_killed_before_the_restart(
    harness: SupervisorHarness, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"

    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            await supervisor.put("ray", harness.body("--spawn-setsid-grandchild", str(pid_file)))
            first = await supervisor.wait_state("ray", {"ready"}, 15)
            grandchild = int(pid_file.read_text())
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            assert await wait_until_gone(grandchild, 5), "the helper outlived its crashed engine"
        finally:
            await supervisor.close()

    harness.run(scenario())


# --- intent before spawn (item 2) ----------------------------------------------------------------------


def forget_pids(state_dir: Path) -> None:
    """Rewrite the state as an agent that died right after spawning would have left it: intent, no pid."""
    path = state_dir / STATE_FILE_NAME
    state = load_state(path)
    for record in state.instances:
        record.pid = record.pid_start_time = None
    save_state(path, state)


def test_a_crash_between_spawn_and_recording_the_pid_adopts_the_engine(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        first = harness.supervisor()
        await first.start()
        await first.put("a", harness.body())
        started = await first.wait_state("a", {"ready"}, 15)
        await first.close()
        forget_pids(harness.state_dir)

        second = harness.supervisor()
        await second.start()
        try:
            adopted = second.get("a")
            assert adopted is not None and adopted.pid == started.pid, "found by its marker, not started again"
            assert len(harness.marked_pids()) == 1, "no duplicate"
            _, changed = await second.put("a", harness.body())  # the client's retry
            assert not changed and len(harness.marked_pids()) == 1
        finally:
            await second.delete("a")
            await second.close()

    harness.run(scenario())


def test_an_engine_the_state_does_not_know_is_killed_when_the_agent_starts(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        first = harness.supervisor()
        await first.start()
        await first.put("a", harness.body())
        started = await first.wait_state("a", {"ready"}, 15)
        await first.close()
        save_state(
            harness.state_dir / STATE_FILE_NAME,
            load_state(harness.state_dir / STATE_FILE_NAME).model_copy(update={"instances": []}),
        )

        second = harness.supervisor()
        await second.start()
        try:
            assert second.list() == []
            assert started.pid is not None and await wait_until_gone(started.pid, 5), "the orphan was killed"
        finally:
            await second.close()

    harness.run(scenario())


# --- full disk (item 3) --------------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(path: Path) -> Iterator[None]:
    path.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(path)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


class Disk:
    """Fills a file system, or injects ENOSPC into every state write, and frees it again."""

    def __init__(self, state_dir: Path, monkeypatch: pytest.MonkeyPatch | None) -> None:
        self.state_dir = state_dir
        self.full = False
        if monkeypatch is not None:
            import gpustack_runtime.ledger as ledger_module
            import gpustack_runtime.supervisor.core as core_module

            real_save, real_write = core_module.save_state, ledger_module.write_atomically

            def save_state_or_fail(*args: object) -> None:
                if self.full:
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")
                real_save(*args)  # type: ignore[arg-type]

            def write_or_fail(*args: object) -> None:
                if self.full:
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")
                real_write(*args)  # type: ignore[arg-type]

            monkeypatch.setattr(core_module, "save_state", save_state_or_fail)
            monkeypatch.setattr(ledger_module, "write_atomically", write_or_fail)
        self.injected = monkeypatch is not None

    def fill(self) -> None:
        self.full = True
        if not self.injected:
            descriptor = os.open(self.state_dir / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                with contextlib.suppress(OSError):
                    while True:
                        os.write(descriptor, b"\0" * 4096)
            finally:
                os.close(descriptor)

    def free(self) -> None:
        self.full = False
        if not self.injected:
            (self.state_dir / "filler").unlink()


@pytest.mark.parametrize("disk_kind", ["tmpfs", "injected"])
def test_a_full_disk_leaves_state_equal_to_reality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_kind: str
) -> None:
    state_dir = tmp_path / "state"
    mount = tiny_tmpfs(state_dir) if disk_kind == "tmpfs" else contextlib.nullcontext()
    with mount:
        disk = Disk(state_dir, monkeypatch if disk_kind == "injected" else None)
        with live_agent(state_dir) as agent:
            supervisor = agent.server.config.app.state.runtime.supervisor  # type: ignore[attr-defined]

            def engines() -> dict[int, tuple[str, procfs.ProcessStat]]:
                return procfs.marked_processes(supervisor.marker_prefix())

            body = engine_body(memory=1024**3).model_dump(mode="json")

            disk.fill()
            refused = agent.client.put("/v1/instances/a", json=body)
            assert refused.status_code == 503, refused.text
            assert "could not write its state" in refused.json()["detail"]
            assert engines() == {}, "a PUT that failed left an engine running"
            assert agent.client.get("/v1/instances").json() == []
            assert agent.client.get("/v1/capacity").json()["allocations"] == [], "and no claim"
            lease = agent.client.put("/v1/reservations/r", json={"owner": "o", "device_indices": [0]})
            assert lease.status_code == 503 and agent.client.get("/v1/reservations").json() == []

            disk.free()
            assert agent.client.put("/v1/instances/a", json=body).status_code == 201
            running = agent.wait_state("a", {"ready"})
            assert list(engines()) == [running.pid]

            disk.fill()
            refused = agent.client.delete("/v1/instances/a")
            assert refused.status_code == 503, refused.text
            assert running.pid is not None and is_running(running.pid), "the engine still runs"
            assert agent.client.get("/v1/instances/a").json()["state"] in {"ready", "starting"}, "and is recorded"
            assert len(agent.client.get("/v1/capacity").json()["allocations"]) == 1, "with its claim"

            disk.free()
            assert agent.client.delete("/v1/instances/a").status_code == 204
            assert engines() == {}


# --- kill -9 with writes in flight (item 2) ------------------------------------------------------------


def put_all(url: str, ids: list[str], body: dict[str, object]) -> list[int]:
    """PUT every id at once; the status of each (0 when the connection broke)."""

    def put(instance_id: str) -> int:
        try:
            return httpx.put(
                f"{url}/v1/instances/{instance_id}",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            ).status_code
        except httpx.TransportError:
            return 0

    with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:
        return list(pool.map(put, ids))


def test_kill9_with_writes_in_flight_leaves_no_orphan_and_no_duplicate(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    state_dir = tmp_path / "state"
    args = ["--token-file", str(token_file), "--state-dir", str(state_dir), "--devices", "none"]
    args += ["--port-range", "41000-41199"]
    body = {"owner": "crash/test", "launch": {"argv": ["sleep", "600"], "health_path": None}}
    prefix = f"{hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:16]}/"
    rng = random.Random(11)
    totals = {"orphans": 0, "duplicates": 0, "killed_mid_write": 0}
    try:
        for run in range(KILL9_RUNS):
            ids = [f"r{run}-{n}" for n in range(WRITES_IN_FLIGHT)]
            with running_agent(args) as (process, client):
                with concurrent.futures.ThreadPoolExecutor(1) as background:
                    writes = background.submit(put_all, str(client.base_url), ids, body)
                    time.sleep(rng.uniform(0.05, 0.6))
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    statuses = writes.result()
                totals["killed_mid_write"] += statuses.count(0)
            with running_agent(args) as (_, client):
                # The client retries every write it did not see succeed (and the others: PUT is idempotent).
                assert all(status in (200, 201) for status in put_all(str(client.base_url), ids, body))
                known = {item["id"]: item["pid"] for item in client.get("/v1/instances").json()}
                assert set(known) == set(ids)
                engines = procfs.marked_processes(prefix)
                by_instance: dict[str, list[int]] = {}
                for pid, (marker, _) in engines.items():
                    by_instance.setdefault(marker.split("/")[1], []).append(pid)
                totals["orphans"] += sum(len(pids) for iid, pids in by_instance.items() if iid not in known)
                totals["duplicates"] += sum(len(pids) - 1 for pids in by_instance.values() if len(pids) > 1)
                assert {iid: pids for iid, pids in by_instance.items()} == {iid: [pid] for iid, pid in known.items()}, (
                    totals
                )
                for instance_id in ids:
                    assert client.delete(f"/v1/instances/{instance_id}").status_code == 204
                assert procfs.marked_processes(prefix) == {}
    finally:
        for pid in procfs.marked_processes(prefix):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert totals["orphans"] == 0 and totals["duplicates"] == 0, totals
    assert totals["killed_mid_write"] > 0, "the kills should land while writes are in flight"


def test_engine_logs_are_0600_and_state_dirs_0700(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            await supervisor.put("a", harness.body())
            await supervisor.wait_state("a", {"ready"}, 15)
            logs = harness.state_dir / "logs"
            assert (harness.state_dir.stat().st_mode & 0o777, logs.stat().st_mode & 0o777) == (0o700, 0o700)
            assert {path.stat().st_mode & 0o777 for path in logs.iterdir()} == {0o600}
        finally:
            await supervisor.delete("a")
            await supervisor.close()

    harness.run(scenario())
