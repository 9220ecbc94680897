"""Deadlines (issue 11, item 5): an engine that never becomes healthy is stopped and ``failed`` with a reason
after the start deadline; a flapping engine (here one without a health path, which counts as ready while it
runs, so the consecutive-failure rule never fires) is ``failed`` after N exits within the window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gpustack_runtime.supervisor import BackoffPolicy
from supervisor_fixtures import SupervisorHarness, wait_until_gone


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[SupervisorHarness]:
    made = SupervisorHarness(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


def test_an_engine_that_never_becomes_healthy_fails_after_the_start_deadline(harness: SupervisorHarness) -> None:
    async def scenario() -> None:
        supervisor = harness.supervisor(start_timeout_seconds=1.0)
        await supervisor.start()
        try:
            await supervisor.put("slow", harness.body("--ready-after", "120"))
            started = supervisor.get("slow")
            assert started is not None and started.pid is not None
            failed = await supervisor.wait_state("slow", {"failed"}, 10)
            assert failed.message is not None and "did not become ready within 1 s" in failed.message
            assert "GET /v1/models" in failed.message and "--engine-start-timeout" in failed.message
            assert failed.pid is None and await wait_until_gone(started.pid), "the stuck engine was stopped"
        finally:
            await supervisor.delete("slow")
            await supervisor.close()

    harness.run(scenario())


def test_a_flapping_engine_without_a_health_path_fails_after_n_exits_in_the_window(
    harness: SupervisorHarness,
) -> None:
    policy = BackoffPolicy(
        base_seconds=0.05,
        max_seconds=0.1,
        max_consecutive_failures=3,
        max_restarts_in_window=4,
        restart_window_seconds=60,
    )

    async def scenario() -> None:
        supervisor = harness.supervisor(backoff=policy)
        await supervisor.start()
        try:
            body = harness.body(argv=["sh", "-c", "sleep 0.4; exit 3"], health_path=None)
            await supervisor.put("flappy", body)
            failed = await supervisor.wait_state("flappy", {"failed"}, 20)
            assert failed.restarts == 3 and failed.last_exit_code == 3
            assert failed.message is not None and "exited 4 times within 60 s (flapping)" in failed.message
        finally:
            await supervisor.delete("flappy")
            await supervisor.close()

    harness.run(scenario())


def test_the_start_deadline_and_the_window_are_validated() -> None:
    with pytest.raises(ValueError, match="max_restarts_in_window"):
        BackoffPolicy(max_restarts_in_window=0)
