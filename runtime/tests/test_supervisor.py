"""The supervisor with real engine processes (a tiny HTTP engine, see engines/http_engine.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpustack_runtime.supervisor import NoFreePortError, Supervisor, container_run_argv
from gpustack_runtime.supervisor.procfs import process_start_time
from gpustack_runtime.supervisor.state import PersistedInstance, SupervisorState, save_state
from supervisor_fixtures import (
    READY_TIMEOUT_SECONDS,
    SupervisorHarness,
    http_get_json,
    is_running,
)

READY = {"ready"}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[SupervisorHarness]:
    harness = SupervisorHarness(tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


async def get_json(port: int, path: str) -> object:
    return await asyncio.to_thread(http_get_json, port, path)


def test_engine_becomes_ready_on_an_assigned_port_with_placeholders_and_devices(
    harness: SupervisorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUSTACK_RUNTIME_TOKEN", "agent-bearer-secret")

    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            body = harness.body(
                "--ready-after", "0.3", env={"ENGINE_URL": "http://127.0.0.1:{port}/v1"}, device_indices=[0, 2]
            )
            status, changed = await supervisor.put("gpu-engine", body)
            assert changed
            assert status.state == "starting"
            low, high = harness.port_range
            assert status.port is not None and low <= status.port <= high
            assert status.device_indices == [0, 2]
            ready = await supervisor.wait_state("gpu-engine", READY, READY_TIMEOUT_SECONDS)
            assert ready.pid == status.pid and ready.restarts == 0 and ready.started_at is not None

            port = status.port
            argv = await get_json(port, "/argv")
            assert isinstance(argv, list)
            assert argv[argv.index("--port") + 1] == str(port)
            env = await get_json(port, "/env")
            assert isinstance(env, dict)
            assert env["ENGINE_URL"] == f"http://127.0.0.1:{port}/v1"
            assert env["CUDA_VISIBLE_DEVICES"] == "0,2"
            assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,2"
            assert "GPUSTACK_RUNTIME_TOKEN" not in env

            cpu, _ = await supervisor.put("cpu-engine", harness.body())
            assert cpu.port != port  # ports of other instances are skipped
            await supervisor.wait_state("cpu-engine", READY, READY_TIMEOUT_SECONDS)
            cpu_env = await get_json(cpu.port, "/env")
            assert isinstance(cpu_env, dict)
            assert cpu_env["CUDA_VISIBLE_DEVICES"] == ""

            assert [s.id for s in supervisor.list()] == ["cpu-engine", "gpu-engine"]
            assert supervisor.instance_pids() == {"cpu-engine": cpu.pid, "gpu-engine": status.pid}
            saved = json.loads((harness.state_dir / "instances.json").read_text())
            assert {i["id"]: i["port"] for i in saved["instances"]} == {"cpu-engine": cpu.port, "gpu-engine": port}
            assert all(i["pid_start_time"] for i in saved["instances"])
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_ready_is_seen_soon_after_the_engine_answers_even_with_a_slow_health_interval(
    harness: SupervisorHarness,
) -> None:
    async def scenario() -> float:
        # The default 1 s interval is for ready engines; starting ones are probed every 0.25 s.
        supervisor = harness.supervisor(health_interval=1.0)
        await supervisor.start()
        try:
            status, _ = await supervisor.put("slow", harness.body("--ready-after", "0.5"))
            assert status.port is not None
            answered_at = None
            while supervisor.get("slow").state != "ready":  # type: ignore[union-attr]
                if answered_at is None:
                    try:
                        await get_json(status.port, "/v1/models")
                        answered_at = time.monotonic()
                    except OSError:
                        pass
                await asyncio.sleep(0.01)
            assert answered_at is not None
            return time.monotonic() - answered_at
        finally:
            await supervisor.close()

    assert harness.run(scenario()) <= 0.5


def test_same_body_again_changes_nothing(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            body = harness.body()
            first, changed = await supervisor.put("a", body)
            assert changed
            await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            again, changed_again = await supervisor.put("a", harness.body())  # equal, not the same object
            assert not changed_again
            assert again.pid == first.pid and again.state == "ready" and again.restarts == 0
            assert supervisor.logs("a", previous=True) == []  # no second start happened
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_changed_body_replaces_the_engine_and_keeps_its_port(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            old, _ = await supervisor.put("a", harness.body("--say", "old body"))
            await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            new, changed = await supervisor.put("a", harness.body("--say", "new body"))
            assert changed
            assert new.pid != old.pid
            assert not is_running(old.pid)  # stopped before the new one started
            assert new.port == old.port
            await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            assert "new body" in supervisor.logs("a")
            assert "old body" in supervisor.logs("a", previous=True)
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_fixed_port_taken_by_another_instance_is_refused(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            first, _ = await supervisor.put("a", harness.body())
            with pytest.raises(ValueError, match=f"launch.port {first.port} is already used by instance 'a'"):
                await supervisor.put("b", harness.body(port=first.port))  # type: ignore[arg-type]
            assert supervisor.get("b") is None
            running, _ = await supervisor.put("c", harness.body())
            with pytest.raises(ValueError, match="already used by instance 'a'"):
                await supervisor.put("c", harness.body(port=first.port))  # type: ignore[arg-type]
            unchanged = supervisor.get("c")
            assert unchanged is not None and unchanged.pid == running.pid  # refused before stopping it
            assert is_running(running.pid)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="instance id"):
                await supervisor.put("no/slashes", harness.body())
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_port_range_exhausted_says_so(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        low = harness.port_range[0]
        supervisor = harness.supervisor(port_range=(low, low))
        await supervisor.start()
        try:
            await supervisor.put("a", harness.body())
            with pytest.raises(NoFreePortError, match=f"no free port in the engine port range {low}-{low}"):
                await supervisor.put("b", harness.body())
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_killed_engine_is_restarted_and_becomes_ready_again(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            first, _ = await supervisor.put("a", harness.body("--say", "first start"))
            await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            os.kill(first.pid, signal.SIGKILL)  # type: ignore[arg-type]
            restarting = await supervisor.wait_state("a", {"restarting", "starting"}, 5)
            assert restarting.last_exit_code == -signal.SIGKILL
            again = await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            assert again.restarts == 1
            assert again.pid != first.pid
            assert again.port == first.port
            assert again.last_exit_code == -9
            assert "first start" in supervisor.logs("a", previous=True)
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_crash_loop_ends_failed_after_the_consecutive_failure_limit(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()  # FAST_BACKOFF: 3 consecutive failures
        await supervisor.start()
        try:
            await supervisor.put("crashy", harness.body("--exit-code", "3"))
            failed = await supervisor.wait_state("crashy", {"failed"}, READY_TIMEOUT_SECONDS)
            assert failed.restarts == 2  # 3 starts: the first and 2 restarts
            assert failed.last_exit_code == 3
            assert failed.pid is None
            assert "3 consecutive failures" in (failed.message or "")
            assert supervisor.logs("crashy") == ["exiting with code 3"]
            await asyncio.sleep(0.5)  # nothing restarts a failed instance
            assert supervisor.get("crashy").restarts == 2  # type: ignore[union-attr]
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_reaching_ready_resets_the_consecutive_failure_count(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()  # gives up after 3 failures in a row
        await supervisor.start()
        try:
            await supervisor.put("a", harness.body())
            for _ in range(4):  # more kills than the limit, each after the engine became ready
                status = await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
                os.kill(status.pid, signal.SIGKILL)  # type: ignore[arg-type]
                while supervisor.get("a").pid == status.pid:  # type: ignore[union-attr]
                    await asyncio.sleep(0.01)  # until the supervisor saw the exit
            final = await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            assert final.restarts == 4
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_a_program_that_cannot_start_fails_at_once_with_the_reason(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            status, _ = await supervisor.put("missing", harness.body(argv=["/nonexistent/engine", "--x"]))
            assert status.state == "failed"
            assert "No such file or directory" in (status.message or "")
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_a_new_supervisor_adopts_a_running_engine_without_restarting_it(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        first = harness.supervisor()
        await first.start()
        status, _ = await first.put("a", harness.body())
        await first.wait_state("a", READY, READY_TIMEOUT_SECONDS)
        await first.close()
        assert is_running(status.pid)  # type: ignore[arg-type]  # close() keeps engines serving

        second = harness.supervisor()
        await second.start()
        try:
            adopted = second.get("a")
            assert adopted is not None
            assert adopted.pid == status.pid and adopted.restarts == 0 and adopted.port == status.port
            assert "adopted" in (adopted.message or "")
            served = await get_json(status.port, "/v1/models")  # type: ignore[arg-type]
            assert isinstance(served, dict) and served["pid"] == status.pid
            await second.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            again, changed = await second.put("a", harness.body())  # same body: still the adopted engine
            assert not changed and again.pid == status.pid
        finally:
            await second.close()

    harness.run(scenario())


def test_an_interrupted_delete_is_finished_by_the_next_supervisor(harness: SupervisorHarness) -> None:
    """The agent died after marking the instance stopped but before its engine was gone."""

    async def scenario() -> None:
        first = harness.supervisor()
        await first.start()
        status, _ = await first.put("a", harness.body())
        await first.close()
        state_path = harness.state_dir / "instances.json"
        saved = json.loads(state_path.read_text())
        saved["instances"][0]["state"] = "stopped"
        state_path.write_text(json.dumps(saved))

        second = harness.supervisor()
        await second.start()
        try:
            assert second.get("a") is None
            assert not is_running(status.pid)  # type: ignore[arg-type]
            assert json.loads(state_path.read_text())["instances"] == []
        finally:
            await second.close()

    harness.run(scenario())


def test_pids_from_before_a_reboot_are_neither_adopted_nor_signalled(harness: SupervisorHarness) -> None:
    """After a reboot an equal (pid, start time) pair can name a stranger; the boot id tells."""

    async def scenario() -> None:
        first = harness.supervisor()
        await first.start()
        stranger, _ = await first.put("a", harness.body())  # stands for "some process after the reboot"
        await first.close()
        state_path = harness.state_dir / "instances.json"
        saved = json.loads(state_path.read_text())
        assert saved["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        saved["boot_id"] = "a-boot-before-this-one"
        state_path.write_text(json.dumps(saved))

        second = harness.supervisor()
        await second.start()
        try:
            status = second.get("a")
            assert status is not None
            assert status.pid != stranger.pid and status.restarts == 1
            assert is_running(stranger.pid)  # type: ignore[arg-type]  # not ours: left alone
        finally:
            await second.close()

    harness.run(scenario())


AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from gpustack_runtime.supervisor import Supervisor
    from gpustack_runtime.wire import InstanceBody

    async def main():
        state_dir, low, high, body_json = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        supervisor = Supervisor(Path(state_dir), port_range=(low, high), health_interval=0.1)
        await supervisor.start()
        await supervisor.put("a", InstanceBody.model_validate_json(body_json))
        status = await supervisor.wait_state("a", {"ready"}, 15)
        await supervisor.close()
        print(status.model_dump_json())

    asyncio.run(main())
    """
)


def test_engine_of_an_agent_that_exited_is_adopted_and_its_crash_detected(harness: SupervisorHarness) -> None:
    """The real agent restart: the first agent is another process that exits, so the engine is no longer a
    child of anyone here; its exit can only be seen in /proc."""
    low, high = harness.port_range
    body_json = harness.body().model_dump_json()
    agent = subprocess.run(
        [sys.executable, "-c", AGENT_SCRIPT, str(harness.state_dir), str(low), str(high), body_json],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    original = json.loads(agent.stdout)
    assert is_running(original["pid"])

    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            adopted = await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            assert adopted.pid == original["pid"] and adopted.restarts == 0
            os.kill(original["pid"], signal.SIGKILL)
            restarted = await supervisor.wait_state("a", {"restarting", "starting"}, 5)
            assert restarted.last_exit_code is None  # not our child: its exit status went to its parent
            ready = await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            assert ready.restarts == 1 and ready.pid != original["pid"]
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_a_reused_pid_is_not_adopted_and_not_signalled(harness: SupervisorHarness) -> None:
    """State says pid P runs the engine, but P is now an unrelated process (its start time differs)."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        real_start_time = process_start_time(stranger.pid)
        assert real_start_time is not None
        harness.state_dir.mkdir(parents=True)
        body = harness.body()
        save_state(
            harness.state_dir / "instances.json",
            SupervisorState(
                instances=[
                    PersistedInstance(
                        id="a",
                        body=body,
                        port=harness.port_range[0],
                        state="ready",
                        pid=stranger.pid,
                        pid_start_time=real_start_time - 1,
                    )
                ]
            ),
        )

        async def scenario() -> None:
            supervisor = harness.supervisor()
            await supervisor.start()
            try:
                status = supervisor.get("a")
                assert status is not None
                assert status.pid != stranger.pid
                assert status.restarts == 1
                assert f"engine pid {stranger.pid} was gone" in (status.message or "")
                await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
                assert stranger.poll() is None  # the stranger was left alone
            finally:
                await supervisor.close()

        harness.run(scenario())
    finally:
        stranger.kill()
        stranger.wait()


def test_delete_stops_the_whole_process_group_including_a_child_that_ignores_sigterm(
    harness: SupervisorHarness, tmp_path: Path
) -> None:
    child_pid_file = tmp_path / "child.pid"

    async def scenario() -> None:
        supervisor = harness.supervisor(stop_grace_seconds=0.5)
        await supervisor.start()
        try:
            status, _ = await supervisor.put(
                "a", harness.body("--spawn-child", str(child_pid_file), "--child-ignores-sigterm")
            )
            await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            child_pid = int(child_pid_file.read_text())
            assert supervisor.process_tree(status.pid) == {status.pid, child_pid}  # type: ignore[arg-type]

            started = time.monotonic()
            assert await supervisor.delete("a")
            took = time.monotonic() - started
            assert not is_running(status.pid)  # type: ignore[arg-type]
            assert not is_running(child_pid)  # SIGKILLed after the grace period
            assert took >= 0.5
            assert supervisor.get("a") is None
            assert supervisor.instance_pids() == {}
            assert json.loads((harness.state_dir / "instances.json").read_text())["instances"] == []
            assert not list((harness.state_dir / "logs").glob("a.*.log"))
            assert not await supervisor.delete("a")
            with pytest.raises(KeyError):
                supervisor.logs("a")
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_delete_of_a_well_behaved_engine_does_not_wait_for_the_grace_period(harness: SupervisorHarness) -> None:
    async def scenario() -> float:
        supervisor = harness.supervisor(stop_grace_seconds=10.0)
        await supervisor.start()
        try:
            await supervisor.put("a", harness.body())
            await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            started = time.monotonic()
            await supervisor.delete("a")
            return time.monotonic() - started
        finally:
            await supervisor.close()

    assert harness.run(scenario()) < 5.0


def test_logs_tail_and_follow_across_a_restart_until_delete(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            status, _ = await supervisor.put("a", harness.body("--say", "hello", "--say", "world"))
            await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            port = status.port
            assert supervisor.logs("a")[:3] == ["hello", "world", f"listening on 127.0.0.1:{port}"]
            assert supervisor.logs("a", tail=2)[0] == "world" or len(supervisor.logs("a", tail=2)) == 2
            assert supervisor.logs("a", tail=1) == supervisor.logs("a")[-1:]

            seen: list[str] = []

            async def follow() -> None:
                async for line in supervisor.follow_logs("a", tail=None):
                    seen.append(line)

            follower = asyncio.create_task(follow())
            os.kill(status.pid, signal.SIGKILL)  # type: ignore[arg-type]
            await supervisor.wait_state("a", {"starting", "restarting"}, 5)
            await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            await get_json(port, "/v1/models")  # type: ignore[arg-type]  # logs a request line
            await asyncio.sleep(0.3)
            assert await supervisor.delete("a")
            await asyncio.wait_for(follower, 5)  # the follow ends with the instance
            assert seen[:2] == ["hello", "world"]
            assert seen.count(f"listening on 127.0.0.1:{port}") == 2  # first start and restart
            assert any("GET /v1/models" in line for line in seen)
        finally:
            await supervisor.close()

    harness.run(scenario())


def test_concurrent_puts_of_one_id_leave_exactly_one_engine(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            results = await asyncio.gather(
                supervisor.put("a", harness.body("--say", "one")),
                supervisor.put("a", harness.body("--say", "two")),
                supervisor.put("a", harness.body("--say", "three")),
            )
            assert all(changed for _, changed in results)  # each was a different body: each replaced
            final = await supervisor.wait_state("a", READY, READY_TIMEOUT_SECONDS)
            assert final.pid == results[-1][0].pid  # serialised in call order
            assert harness.marked_pids() == {final.pid}
        finally:
            await supervisor.close()

    harness.run(scenario())


FAKE_CLI = Path(__file__).parent / "engines" / "fake_container_cli.py"


def test_container_instance_runs_through_the_cli_in_the_foreground(harness: SupervisorHarness, tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    cli = tmp_path / "bin" / "docker"  # the file name selects the docker flavour
    cli.parent.mkdir()
    cli.write_text(f'#!/bin/sh\nFAKE_CONTAINER_CLI_RECORD={record} exec {sys.executable} {FAKE_CLI} "$@"\n')
    cli.chmod(0o755)

    async def scenario() -> None:
        supervisor = harness.supervisor(container_cli=str(cli))
        await supervisor.start()
        try:
            body = harness.body(image="example.com/engine:1", env={"HF_TOKEN": "hf-secret"}, device_indices=[1])
            status, _ = await supervisor.put("boxed", body)
            await supervisor.wait_state("boxed", READY, READY_TIMEOUT_SECONDS)
            env = await get_json(status.port, "/env")  # type: ignore[arg-type]
            assert isinstance(env, dict)
            assert env["FAKE_CONTAINER_IMAGE"] == "example.com/engine:1"
            assert env["FAKE_CONTAINER_NAME"] == "gpustack-boxed"
            assert env["HF_TOKEN"] == "hf-secret"  # passed by name through the CLI's environment
            assert "CUDA_VISIBLE_DEVICES" not in env  # the container renumbers its GPUs from 0
            await supervisor.delete("boxed")
        finally:
            await supervisor.close()

    harness.run(scenario())
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert calls[0] == ["rm", "-f", "gpustack-boxed"]  # a kept container of an earlier start goes first
    port = int(calls[1][calls[1].index("-p") + 1].split(":")[0])
    expected = container_run_argv(
        str(cli),
        "boxed",
        "example.com/engine:1",
        [sys.executable, str(Path(__file__).parent / "engines" / "http_engine.py"), "--port", str(port)],
        env_names=["HF_TOKEN", "GPUSTACK_TEST_ENGINE_MARKER"],
        device_indices=[1],
        port=port,
    )
    assert [str(cli), *calls[1]] == expected
    assert not any("hf-secret" in argument for call in calls for argument in call)
    assert calls[-1] == ["rm", "-f", "gpustack-boxed"]  # delete removes the container


def test_put_before_start_is_an_error(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    harness = SupervisorHarness(tmp_path)
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(supervisor.put("a", harness.body()))


def test_headless_worker_without_health_path_is_ready_while_running(harness: SupervisorHarness) -> None:
    """Multi-node workers (vLLM --headless, SGLang node-rank > 0) serve no HTTP: running is ready."""

    async def scenario() -> None:
        supervisor = harness.supervisor()
        await supervisor.start()
        try:
            sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
            status, _ = await supervisor.put("worker", harness.body(argv=sleeper, health_path=None))
            ready = await supervisor.wait_state("worker", READY, READY_TIMEOUT_SECONDS)
            assert ready.pid == status.pid and ready.state == "ready"
        finally:
            await supervisor.delete("worker")
            await supervisor.close()

    harness.run(scenario())
