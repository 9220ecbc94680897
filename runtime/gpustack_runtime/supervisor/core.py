"""The engine supervisor: start engines, watch them, restart them with backoff, adopt them after an agent
restart, stop them.

The shape follows uvicorn's multiprocess supervisor (``uvicorn/supervisors/multiprocess.py``): one loop polls
every engine; an engine counts as ready only while its process runs *and* its health endpoint answers. Added
here: exponential restart backoff with a give-up threshold, and adoption: the supervisor's state survives the
agent in ``instances.json``, and a new agent takes over engines that still run instead of killing them.

Identity of a process is (pid, start time), never the pid alone (see :mod:`.procfs`), so a pid reused by an
unrelated process is neither adopted nor signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gpustack_runtime.supervisor import procfs
from gpustack_runtime.supervisor.backoff import BackoffPolicy
from gpustack_runtime.supervisor.health import probe_http_ok
from gpustack_runtime.supervisor.launch import (
    body_environment,
    container_remove_argv,
    container_run_argv,
    engine_argv,
    find_container_cli,
    inherited_environment,
    process_environment,
    validate_instance_id,
)
from gpustack_runtime.supervisor.logfiles import (
    log_path,
    prune_logs,
    read_tail,
    remove_logs,
    split_lines,
)
from gpustack_runtime.supervisor.state import (
    STATE_FILE_NAME,
    PersistedInstance,
    SupervisorState,
    load_state,
    save_state,
)
from gpustack_runtime.wire import InstanceBody, InstanceState, InstanceStatus

logger = logging.getLogger(__name__)

STARTING_PROBE_INTERVAL_SECONDS = 0.25
"""A starting engine is probed at least this often (more often when ``health_interval`` is smaller), so
``ready`` shows within ~0.25 s of the engine answering even with a 1 s ``health_interval`` for ready ones."""

UNREADY_AFTER_FAILED_PROBES = 3
"""A ready engine whose health check fails this many times in a row goes back to ``starting`` (not ready):
one slow answer under load is not an outage, three in a row are. Its process is left alone."""

CONTAINER_CLI_TIMEOUT_SECONDS = 60.0
"""``docker rm -f`` of a running container waits for it to stop; bounded so a stuck daemon cannot hang us."""

WAIT_STATE_POLL_SECONDS = 0.02
FOLLOW_POLL_SECONDS = 0.1

DEFAULT_START_TIMEOUT_SECONDS = 1800.0
"""An engine that has not answered its health check 30 min after a start is ``failed``: loading the largest
models from a local disk takes minutes, not half an hour; a download of hundreds of GB may need more
(``--engine-start-timeout``)."""

_RUNNING_STATES: frozenset[InstanceState] = frozenset({"starting", "ready"})


class NoFreePortError(RuntimeError):
    """Every port of the agent's engine port range is taken."""


def spawn_engine(argv: list[str], environment: dict[str, str], log_file: Path) -> int:
    """Start ``argv`` in a new session with stdout and stderr to ``log_file``; return its pid.

    ``posix_spawn`` rather than :class:`subprocess.Popen`: the supervisor tracks every engine by pid and start
    time, whether it started it or adopted it, and an engine must outlive the supervisor object (``close()``
    leaves it running), which a Popen object treats as a leak. The program is looked up on the engine's own
    ``PATH``, as Popen does. Raises OSError when it cannot be executed.
    """
    program = argv[0]
    if os.sep not in program:
        found = shutil.which(program, path=environment.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, f"{program!r} not found on the engine's PATH")
        program = found
    log_descriptor = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        return os.posix_spawn(
            program,
            argv,
            environment,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_descriptor, 1),
                (os.POSIX_SPAWN_DUP2, log_descriptor, 2),
            ],
            # Own session and process group: the group is signalled as a whole on stop, and a signal to the
            # agent's terminal (Ctrl-C) does not reach the engines.
            setsid=True,
        )
    finally:
        os.close(log_descriptor)


@dataclass
class _Instance:
    """The supervisor's live record of one instance (mutable; persisted as :class:`PersistedInstance`)."""

    id: str
    body: InstanceBody
    port: int
    state: InstanceState = "starting"
    pid: int | None = None
    pid_start_time: int | None = None
    restarts: int = 0
    consecutive_failures: int = 0
    last_exit_code: int | None = None
    started_at: float | None = None
    log_generation: int = -1
    container_cli: str | None = None
    message: str | None = None
    restart_due: float | None = None
    """``loop.time()`` at which a ``restarting`` instance is started again."""
    launch_token: str | None = None
    start_due: float | None = None
    """``loop.time()`` by which this start must have answered its health check once."""
    exit_times: list[float] = field(default_factory=list)
    """``loop.time()`` of recent exits, for the restart window."""
    failed_probes: int = 0
    next_probe_due: float = 0.0
    probe_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def persisted(self) -> PersistedInstance:
        return PersistedInstance(
            id=self.id,
            body=self.body,
            port=self.port,
            state=self.state,
            pid=self.pid,
            pid_start_time=self.pid_start_time,
            restarts=self.restarts,
            consecutive_failures=self.consecutive_failures,
            last_exit_code=self.last_exit_code,
            started_at=self.started_at,
            log_generation=self.log_generation,
            container_cli=self.container_cli,
            message=self.message,
            launch_token=self.launch_token,
        )

    @classmethod
    def from_persisted(cls, saved: PersistedInstance) -> _Instance:
        return cls(
            id=saved.id,
            body=saved.body,
            port=saved.port,
            state=saved.state,
            pid=saved.pid,
            pid_start_time=saved.pid_start_time,
            restarts=saved.restarts,
            consecutive_failures=saved.consecutive_failures,
            last_exit_code=saved.last_exit_code,
            started_at=saved.started_at,
            log_generation=saved.log_generation,
            container_cli=saved.container_cli,
            message=saved.message,
            launch_token=saved.launch_token,
        )

    def status(self) -> InstanceStatus:
        return InstanceStatus(
            id=self.id,
            owner=self.body.owner,
            state=self.state,
            pid=self.pid,
            port=self.port,
            restarts=self.restarts,
            last_exit_code=self.last_exit_code,
            started_at=self.started_at,
            device_indices=self.body.device_indices,
            memory_bytes_per_device=self.body.memory_bytes_per_device,
            message=self.message,
        )


class Supervisor:
    """Runs engine instances on this node and keeps them running.

    ``start()`` must be awaited before ``put``/``delete``; ``close()`` stops supervising but leaves engines
    running, so the next agent adopts them. All methods run on one event loop; a lock per instance id
    serialises ``put``/``delete`` and the monitor's actions on the same instance.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port_range: tuple[int, int] = (40000, 40063),
        backoff: BackoffPolicy = BackoffPolicy(),  # noqa: B008 - frozen dataclass, safe to share
        health_interval: float = 1.0,
        stop_grace_seconds: float = 10.0,
        host: str = "127.0.0.1",
        container_cli: str | None = None,
        start_timeout_seconds: float = DEFAULT_START_TIMEOUT_SECONDS,
    ) -> None:
        low, high = port_range
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"port_range {port_range} must be (low, high) with 1 <= low <= high <= 65535")
        if health_interval <= 0:
            raise ValueError(f"health_interval must be > 0 seconds, got {health_interval}")
        if stop_grace_seconds < 0:
            raise ValueError(f"stop_grace_seconds must be >= 0, got {stop_grace_seconds}")
        self._state_dir = Path(state_dir)
        self._logs_dir = self._state_dir / "logs"
        self._state_path = self._state_dir / STATE_FILE_NAME
        self._port_range = (low, high)
        self._backoff = backoff
        self._health_interval = health_interval
        self._tick = min(health_interval, STARTING_PROBE_INTERVAL_SECONDS)
        self._stop_grace_seconds = stop_grace_seconds
        if start_timeout_seconds <= 0:
            raise ValueError(f"start_timeout_seconds must be > 0, got {start_timeout_seconds}")
        self._start_timeout_seconds = start_timeout_seconds
        self._host = host
        self._container_cli = container_cli
        self._instances: dict[str, _Instance] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._monitor_task: asyncio.Task[None] | None = None
        self._boot_id = procfs.boot_id()
        # Identifies this agent's engines among all marked processes of the host (tests run many agents).
        self._trust_markers = True
        self._agent_key = hashlib.sha256(str(self._state_dir.absolute()).encode()).hexdigest()[:16]

    def marker_prefix(self, instance_id: str | None = None, launch_token: str | None = None) -> str:
        """The marker prefix of this agent's engines, of one instance's, or of one start's."""
        if instance_id is None:
            return f"{self._agent_key}/"
        if launch_token is None:
            return f"{self._agent_key}/{instance_id}/"
        return f"{self._agent_key}/{instance_id}/{launch_token}"

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the saved state, adopt engines that still run, restart those that died meanwhile, and start
        monitoring."""
        if self._monitor_task is not None:
            return
        # Engine logs may hold secrets an engine prints: readable by the agent's user only.
        self._logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (self._state_dir, self._logs_dir):
            os.chmod(directory, 0o700)
        saved = load_state(self._state_path)
        # Markers, like pids, only mean something within the boot that wrote the state.
        self._trust_markers = saved.boot_id is None or saved.boot_id == self._boot_id
        if not self._trust_markers:
            # The machine rebooted: no engine survived, and any pid in the file now names a stranger.
            logger.info("state was written before a reboot: starting every engine anew")
            for record in saved.instances:
                record.pid = record.pid_start_time = None
                record.launch_token = None
        for record in saved.instances:
            instance = _Instance.from_persisted(record)
            if instance.state == "stopped":
                # The previous agent died while deleting or replacing it: finish the stop, forget it.
                if instance.pid is not None:
                    await procfs.terminate_group(instance.pid, instance.pid_start_time, self._stop_grace_seconds)
                if self._trust_markers:
                    await procfs.kill_marked(self.marker_prefix(instance.id))
                continue
            self._instances[instance.id] = instance
            await self._resume(instance)
        if self._trust_markers:
            await self._kill_orphans()
        self._persist_quietly()
        self._monitor_task = asyncio.create_task(self._monitor(), name="gpustack-supervisor-monitor")

    async def close(self) -> None:
        """Stop monitoring and save the state. Engines keep running: the next agent adopts them."""
        tasks = [self._monitor_task] if self._monitor_task is not None else []
        tasks += [i.probe_task for i in self._instances.values() if i.probe_task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._monitor_task = None
        if self._state_dir.exists():
            self._persist_quietly()

    async def _resume(self, instance: _Instance) -> None:
        """Take over one saved instance after an agent restart."""
        if instance.state == "failed":
            return
        if instance.pid is None and instance.launch_token is not None:
            # The previous agent recorded the intent and may have spawned the engine without recording its
            # pid (it died in between): the engine is the session leader carrying this start's marker.
            marked = procfs.marked_processes(self.marker_prefix(instance.id, instance.launch_token))
            leaders = [stat for _, stat in marked.values() if stat.pgrp == stat.pid]
            if len(leaders) == 1:
                instance.pid, instance.pid_start_time = leaders[0].pid, leaders[0].start_time
        if instance.pid is not None and procfs.is_same_running_process(instance.pid, instance.pid_start_time):
            # Not our child: its exit is detected through /proc (see _poll_exit).
            instance.message = f"adopted running engine pid {instance.pid} after an agent restart"
            if instance.state == "starting":
                instance.start_due = asyncio.get_running_loop().time() + self._start_timeout_seconds
            logger.info("instance %s: %s", instance.id, instance.message)
            return
        gone_pid = instance.pid
        if gone_pid is not None:
            procfs.kill_leftovers(gone_pid, instance.pid_start_time)
        if self._trust_markers:
            await procfs.kill_marked(self.marker_prefix(instance.id))
        instance.pid = None
        instance.pid_start_time = None
        instance.restarts += 1
        try:
            await self._launch(instance)
        except OSError as error:
            # The intent cannot be written (full disk): nothing was spawned; the monitor tries again.
            instance.state = "restarting"
            instance.restart_due = asyncio.get_running_loop().time() + 1.0
            instance.message = f"cannot record the engine's start ({error.strerror or error}); retrying"
            logger.error("instance %s: %s", instance.id, instance.message)
            return
        if instance.state != "failed":
            instance.message = (
                f"engine pid {gone_pid} was gone when the agent started; restarted"
                if gone_pid is not None
                else "restarted when the agent started"
            )
        logger.info("instance %s: %s", instance.id, instance.message)

    async def _kill_orphans(self) -> None:
        """Stop every process marked by this agent that belongs to no current start of a known instance:
        engines of an instance the state does not hold, or of an earlier start of one it does."""
        current = {
            self.marker_prefix(instance.id, instance.launch_token)
            for instance in self._instances.values()
            if instance.launch_token is not None and instance.pid is not None
        }
        orphans = {
            marker.rsplit("/", 1)[0] + "/"
            for marker, _ in procfs.marked_processes(self.marker_prefix()).values()
            if marker not in current
        }
        for marker in sorted(orphans):
            stray = {pid for pid, (found, _) in procfs.marked_processes(marker).items() if found not in current}
            logger.warning("killing orphaned engine processes %s (marker %s...)", sorted(stray), marker)
            for pid in stray:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                procfs.collect_exit(pid)

    def _require_started(self) -> None:
        if self._monitor_task is None:
            raise RuntimeError("Supervisor.start() must be awaited before changing instances")

    # --- the API ---------------------------------------------------------------------------------------

    async def put(self, instance_id: str, body: InstanceBody) -> tuple[InstanceStatus, bool]:
        """Create or replace an instance. Returns (status, changed).

        Idempotent: the same body again changes nothing (a ``failed`` instance stays failed; delete it to
        retry). A different body stops the old engine and starts the new one; with ``port: 0`` it keeps
        its port when that is still free.
        """
        validate_instance_id(instance_id)
        self._require_started()
        async with self._lock(instance_id):
            current = self._instances.get(instance_id)
            if current is not None and current.body == body:
                return current.status(), False
            if body.launch.port:
                # Refuse a taken fixed port before the old engine is stopped, not after.
                self._assign_port(instance_id, body.launch.port, preferred=None)
            previous_port: int | None = None
            log_generation = -1
            if current is not None:
                previous_port = current.port
                log_generation = current.log_generation
                saved_state, saved_message = current.state, current.message
                current.state = "stopped"
                current.message = "replacing with a new body"
                try:
                    self._persist()
                except OSError:
                    current.state, current.message = saved_state, saved_message
                    raise  # nothing changed: the old engine runs and is recorded
                await self._stop(current)
                del self._instances[instance_id]
            port = self._assign_port(instance_id, body.launch.port, preferred=previous_port)
            instance = _Instance(id=instance_id, body=body, port=port, log_generation=log_generation)
            self._instances[instance_id] = instance
            try:
                await self._launch(instance)
            except OSError:
                # The intent could not be written, so nothing was spawned: forget the instance.
                del self._instances[instance_id]
                raise
            self._persist_quietly()
            return instance.status(), True

    def get(self, instance_id: str) -> InstanceStatus | None:
        instance = self._instances.get(instance_id)
        return instance.status() if instance is not None else None

    def list(self) -> list[InstanceStatus]:
        return [self._instances[instance_id].status() for instance_id in sorted(self._instances)]

    async def delete(self, instance_id: str) -> bool:
        """Stop the engine (SIGTERM to its process group, SIGKILL after the grace period) and forget the
        instance. Returns once every process of the group is gone; False when the id is unknown."""
        validate_instance_id(instance_id)
        async with self._lock(instance_id):
            instance = self._instances.get(instance_id)
            if instance is None:
                return False
            saved_state, saved_message = instance.state, instance.message
            instance.state = "stopped"
            instance.message = "deleting"
            try:
                self._persist()  # an agent that dies now finishes the stop when it starts again
            except OSError:
                instance.state, instance.message = saved_state, saved_message
                raise  # nothing changed: the engine runs and is recorded
            await self._stop(instance)
            del self._instances[instance_id]
            # The file says "stopped" already; if this write fails, the next start finishes the job.
            self._persist_quietly()
            with contextlib.suppress(OSError):
                remove_logs(self._logs_dir, instance_id)
        # The lock stays: a put waiting on it must serialise with any later caller of the same id.
        return True

    def logs(self, instance_id: str, tail: int | None = None, *, previous: bool = False) -> list[str]:
        """Lines of the current start's log (``previous``: of the start before), the last ``tail`` ones when
        given. Raises KeyError for an unknown instance."""
        instance = self._require(instance_id)
        generation = instance.log_generation - (1 if previous else 0)
        if generation < 0:
            return []
        lines, _ = read_tail(log_path(self._logs_dir, instance_id, generation), tail)
        return lines

    async def follow_logs(
        self, instance_id: str, *, tail: int | None = 0, poll_interval: float = FOLLOW_POLL_SECONDS
    ) -> AsyncIterator[str]:
        """Yield log lines as the engine writes them (``tail -f``), across restarts, until the instance is
        deleted. ``tail``: how many existing lines to yield first (0: only new ones, None: all), read in the
        same step as the follow position so no line is lost or repeated. Raises KeyError for an unknown id."""
        instance = self._require(instance_id)
        generation = instance.log_generation
        lines, offset = read_tail(log_path(self._logs_dir, instance_id, generation), tail)
        for line in lines:
            yield line
        # The file stays open: delete() unlinks it right after the engine is gone, and the open handle still
        # reads what the engine wrote last.
        log_file: BinaryIO | None = None
        pending = b""
        try:
            while True:
                current = self._instances.get(instance_id)
                if current is not instance and (current is None or current.log_generation <= generation):
                    current = None  # deleted (and perhaps created anew: a new instance, not this one's log)
                if current is not None:
                    instance = current  # replaced by a different body: its log continues the numbering
                newest_generation = current.log_generation if current is not None else generation
                if log_file is None:
                    log_file = self._open_at(log_path(self._logs_dir, instance_id, generation), offset)
                chunk = log_file.read() if log_file is not None else b""
                pending += chunk
                complete, _, pending = pending.rpartition(b"\n")
                for line in split_lines(complete) if complete else ():
                    yield line
                if newest_generation > generation or current is None:
                    # The engine restarted (go on with the next start's file) or the instance is gone (done).
                    if pending:
                        yield pending.decode("utf-8", errors="replace")
                        pending = b""
                    if current is None:
                        return
                    if log_file is not None:
                        log_file.close()
                        log_file = None
                    generation, offset = generation + 1, 0
                    continue
                await asyncio.sleep(poll_interval)
        finally:
            if log_file is not None:
                log_file.close()

    def instance_pids(self) -> dict[str, int]:
        """Root pid of every instance whose engine runs now (to attribute GPU processes to instances)."""
        return {
            instance_id: instance.pid
            for instance_id, instance in sorted(self._instances.items())
            if instance.pid is not None
        }

    def process_tree(self, pid: int) -> set[int]:
        """``pid`` and all its descendants (engines fork workers that hold GPU memory too).

        For a container instance the tree holds only the docker/podman CLI: the container's processes are
        children of the container runtime, not of the CLI."""
        return procfs.process_tree(pid)

    async def wait_state(self, instance_id: str, states: set[str], timeout: float) -> InstanceStatus:
        """Wait until the instance is in one of ``states``. Raises TimeoutError (with the last status) or
        KeyError when the instance does not exist (or is deleted meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = self.get(instance_id)
            if status is None:
                raise KeyError(f"instance {instance_id!r} does not exist")
            if status.state in states:
                return status
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"instance {instance_id!r} did not reach {sorted(states)} within {timeout} s: "
                    f"state {status.state}, restarts {status.restarts}, "
                    f"last exit code {status.last_exit_code}, message {status.message!r}"
                )
            await asyncio.sleep(WAIT_STATE_POLL_SECONDS)

    # --- starting and stopping -------------------------------------------------------------------------

    async def _launch(self, instance: _Instance) -> None:
        """Start the engine of ``instance`` with a fresh log file. A start that cannot even exec (missing
        program, no container CLI) makes the instance ``failed``: retrying would not help."""
        saved = (instance.log_generation, instance.state, instance.launch_token, instance.message)
        instance.log_generation += 1
        instance.state = "starting"
        instance.launch_token = secrets.token_hex(8)
        instance.pid = None
        instance.pid_start_time = None
        try:
            # The intent (this instance, its claim, this start's marker) is on disk before the engine exists.
            self._persist()
        except OSError:
            instance.log_generation, instance.state, instance.launch_token, instance.message = saved
            raise
        instance.failed_probes = 0
        instance.next_probe_due = 0.0
        instance.restart_due = None
        with contextlib.suppress(OSError):
            self._logs_dir.mkdir(parents=True, exist_ok=True)
            prune_logs(self._logs_dir, instance.id, instance.log_generation)
        reason: str | None = None
        argv = instance.body.launch.argv
        try:
            argv, environment = await self._command(instance)
            log_file = log_path(self._logs_dir, instance.id, instance.log_generation)
            pid = spawn_engine(argv, environment, log_file)
        except ValueError as error:
            reason = str(error)
        except OSError as error:
            reason = f"{argv[0]!r}: {error.strerror or error}"
        if reason is not None:
            instance.state = "failed"
            instance.pid = None
            instance.pid_start_time = None
            instance.message = f"cannot start the engine: {reason}"
            logger.warning("instance %s: %s", instance.id, instance.message)
            return
        instance.pid = pid
        instance.pid_start_time = procfs.process_start_time(pid)
        instance.started_at = time.time()
        instance.start_due = asyncio.get_running_loop().time() + self._start_timeout_seconds
        instance.message = None
        logger.info("instance %s: started pid %s on port %s", instance.id, pid, instance.port)

    async def _command(self, instance: _Instance) -> tuple[list[str], dict[str, str]]:
        launch = instance.body.launch
        argv = engine_argv(launch.argv, instance.port)
        marker = {procfs.ENGINE_MARK_ENV: self.marker_prefix(instance.id, instance.launch_token)}
        if launch.image is None:
            environment = process_environment(os.environ, launch.env, instance.body.device_indices, instance.port)
            return argv, environment | marker
        cli = self._container_cli or find_container_cli()
        if cli is None:
            raise ValueError(
                f"launch.image is {launch.image!r} but neither docker nor podman is on PATH; install one "
                "or start the agent with a container CLI"
            )
        instance.container_cli = cli
        container_env = body_environment(launch.env, instance.port)
        # A container of an earlier start (kept for its logs) holds the name: remove it first.
        await self._run_container_cli(container_remove_argv(cli, instance.id))
        command = container_run_argv(
            cli,
            instance.id,
            launch.image,
            argv,
            env_names=list(container_env),
            device_indices=instance.body.device_indices,
            port=instance.port,
        )
        # The values of `-e NAME` come from the CLI's environment (see container_run_argv).
        return command, inherited_environment(os.environ) | container_env | marker

    async def _run_container_cli(self, argv: list[str]) -> None:
        def run() -> None:
            subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=CONTAINER_CLI_TIMEOUT_SECONDS,
                check=False,
            )

        try:
            await asyncio.to_thread(run)
        except (OSError, subprocess.TimeoutExpired) as error:
            logger.warning("%s failed: %s", " ".join(argv[:3]), error)

    async def _stop(self, instance: _Instance) -> None:
        """Stop the engine's process group and wait until it is gone."""
        if instance.probe_task is not None:
            instance.probe_task.cancel()
            instance.probe_task = None
        pid = instance.pid
        marker = self.marker_prefix(instance.id)
        # Helpers that left the group (setsid) get SIGTERM with it, and SIGKILL after it is gone.
        procfs.signal_marked(marker, signal.SIGTERM)
        if pid is not None:
            exit_code = await procfs.terminate_group(pid, instance.pid_start_time, self._stop_grace_seconds)
            instance.last_exit_code = exit_code if exit_code is not None else instance.last_exit_code
        await procfs.kill_marked(marker)
        if instance.container_cli is not None and instance.body.launch.image is not None:
            # SIGKILL to the CLI does not stop the container: make sure it is gone.
            await self._run_container_cli(container_remove_argv(instance.container_cli, instance.id))
        instance.pid = None
        instance.pid_start_time = None

    # --- monitoring ------------------------------------------------------------------------------------

    async def _monitor(self) -> None:
        while True:
            try:
                await self._monitor_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad pass (a /proc race, a full disk) must not end supervision of every engine.
                logger.exception("supervisor monitor pass failed")
            await asyncio.sleep(self._tick)

    async def _monitor_pass(self) -> None:
        loop = asyncio.get_running_loop()
        changed = False
        for instance_id, instance in list(self._instances.items()):
            lock = self._lock(instance_id)
            if lock.locked():
                continue  # put/delete is changing it; look again next tick
            async with lock:
                if self._instances.get(instance_id) is not instance:
                    continue
                now = loop.time()
                if instance.state in _RUNNING_STATES:
                    exited, exit_code = self._poll_exit(instance)
                    if exited:
                        self._on_exit(instance, exit_code, now)
                        changed = True
                    elif instance.state == "starting" and instance.start_due is not None and now >= instance.start_due:
                        await self._fail_start_deadline(instance)
                        changed = True
                elif (
                    instance.state == "restarting" and instance.restart_due is not None and now >= instance.restart_due
                ):
                    instance.restarts += 1
                    try:
                        await self._launch(instance)
                    except OSError as error:
                        instance.restart_due = now + 1.0
                        instance.message = f"cannot record the engine's start ({error.strerror or error}); retrying"
                        logger.error("instance %s: %s", instance_id, instance.message)
                    changed = True
                if (
                    instance.state in _RUNNING_STATES
                    and now >= instance.next_probe_due
                    and (instance.probe_task is None or instance.probe_task.done())
                ):
                    interval = self._tick if instance.state == "starting" else self._health_interval
                    instance.next_probe_due = now + interval
                    instance.probe_task = asyncio.create_task(
                        self._probe(instance, instance.log_generation), name=f"probe-{instance_id}"
                    )
        if changed:
            self._persist_quietly()

    def _poll_exit(self, instance: _Instance) -> tuple[bool, int | None]:
        """(exited, exit code), from /proc by pid and start time. The exit code is known when this process
        is the engine's parent (it started it); an adopted engine's status goes to its own parent."""
        if instance.pid is None:
            return True, None
        stat = procfs.read_stat(instance.pid)
        if stat is None or stat.start_time != instance.pid_start_time:
            return True, None  # gone and collected by its parent, or the pid is another process's now
        if stat.running:
            return False, None
        return procfs.collect_exit(instance.pid)  # a zombie: collect it if it is our child

    def _on_exit(self, instance: _Instance, exit_code: int | None, now: float) -> None:
        if instance.pid is not None:
            procfs.kill_leftovers(instance.pid, instance.pid_start_time)
        # Helpers that escaped the group would keep holding memory the restarted engine needs.
        procfs.signal_marked(self.marker_prefix(instance.id), signal.SIGKILL)
        if instance.probe_task is not None:
            instance.probe_task.cancel()
            instance.probe_task = None
        exited_pid = instance.pid
        instance.pid = None
        instance.pid_start_time = None
        instance.last_exit_code = exit_code
        instance.consecutive_failures += 1
        code_text = f"exit code {exit_code}" if exit_code is not None else "unknown exit code"
        failures = instance.consecutive_failures
        window = self._backoff.restart_window_seconds
        instance.exit_times = [t for t in instance.exit_times if t > now - window] + [now]
        if len(instance.exit_times) >= self._backoff.max_restarts_in_window:
            instance.state = "failed"
            instance.restart_due = None
            instance.message = (
                f"engine pid {exited_pid} exited ({code_text}); it exited {len(instance.exit_times)} times within "
                f"{window:g} s (flapping), giving up; see logs (previous=True for the start before)"
            )
        elif failures >= self._backoff.max_consecutive_failures:
            instance.state = "failed"
            instance.restart_due = None
            instance.message = (
                f"engine pid {exited_pid} exited ({code_text}); {failures} consecutive failures without "
                f"becoming ready, giving up; see logs (previous=True for the start before)"
            )
        else:
            delay = self._backoff.delay(failures)
            instance.state = "restarting"
            instance.restart_due = now + delay
            instance.message = (
                f"engine pid {exited_pid} exited ({code_text}); restarting in {delay:g} s "
                f"(failure {failures} of {self._backoff.max_consecutive_failures})"
            )
        logger.warning("instance %s: %s", instance.id, instance.message)

    async def _fail_start_deadline(self, instance: _Instance) -> None:
        """The engine runs but never answered its health check within the start deadline: stop it, ``failed``."""
        await self._stop(instance)
        instance.state = "failed"
        instance.start_due = None
        instance.message = (
            f"engine did not become ready within {self._start_timeout_seconds:g} s (GET "
            f"{instance.body.launch.health_path} never answered 200); stopped it. See the logs; raise the agent's "
            "--engine-start-timeout if the model needs longer to load"
        )
        logger.warning("instance %s: %s", instance.id, instance.message)

    async def _probe(self, instance: _Instance, generation: int) -> None:
        health_path = instance.body.launch.health_path
        # No health path: a headless worker (multi-node vLLM/SGLang); running is all it can show.
        healthy = True if health_path is None else await probe_http_ok(self._host, instance.port, health_path)
        if (
            self._instances.get(instance.id) is not instance
            or instance.log_generation != generation
            or instance.state not in _RUNNING_STATES
            or self._lock(instance.id).locked()
        ):
            return  # the instance changed while the probe ran; the result is about something else
        if healthy:
            instance.failed_probes = 0
            if instance.state == "starting":
                instance.state = "ready"
                instance.start_due = None
                instance.consecutive_failures = 0
                instance.message = None
                logger.info("instance %s: ready on port %s", instance.id, instance.port)
                self._persist_quietly()
            return
        instance.failed_probes += 1
        if instance.state == "ready" and instance.failed_probes >= UNREADY_AFTER_FAILED_PROBES:
            instance.state = "starting"
            instance.message = (
                f"health check GET {instance.body.launch.health_path} failed {instance.failed_probes} times "
                "in a row; not ready until it answers 200 again"
            )
            logger.warning("instance %s: %s", instance.id, instance.message)
            self._persist_quietly()

    # --- helpers ---------------------------------------------------------------------------------------

    def _lock(self, instance_id: str) -> asyncio.Lock:
        lock = self._locks.get(instance_id)
        if lock is None:
            lock = self._locks[instance_id] = asyncio.Lock()
        return lock

    def _require(self, instance_id: str) -> _Instance:
        instance = self._instances.get(instance_id)
        if instance is None:
            raise KeyError(f"instance {instance_id!r} does not exist")
        return instance

    def _assign_port(self, instance_id: str, requested: int, *, preferred: int | None) -> int:
        """``requested`` when not 0 (refusing one another instance uses), else the first free port of the
        range, ``preferred`` first (a replaced instance keeps its address)."""
        used = {other.port: other.id for other in self._instances.values() if other.id != instance_id}
        if requested:
            if requested in used:
                raise ValueError(
                    f"launch.port {requested} is already used by instance {used[requested]!r}; "
                    "choose another port or use 0 to let the agent pick one"
                )
            return requested
        low, high = self._port_range
        candidates = list(range(low, high + 1))
        if preferred is not None and low <= preferred <= high:
            candidates.insert(0, preferred)
        for port in candidates:
            if port not in used and self._port_is_free(port):
                return port
        raise NoFreePortError(
            f"no free port in the engine port range {low}-{high} ({len(used)} used by instances); "
            "delete an instance or widen the agent's port range"
        )

    def _port_is_free(self, port: int) -> bool:
        """Bind-test on the agent's host and on the wildcard address: an engine may listen on either."""
        for address in {self._host, ""}:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # Like the servers engines use (uvicorn), so a port in TIME_WAIT counts as free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((address, port))
                except OSError:
                    return False
        return True

    @staticmethod
    def _open_at(path: Path, offset: int) -> BinaryIO | None:
        try:
            file = path.open("rb")
        except FileNotFoundError:
            return None
        file.seek(offset)
        return file

    def _persist_quietly(self) -> None:
        """Write the state where a failure only delays the record (the intent is on disk already, or the
        next write carries the change): log it instead of failing the caller."""
        try:
            self._persist()
        except OSError as error:
            logger.error("could not write %s (%s); it is written again with the next change", self._state_path, error)

    def _persist(self) -> None:
        state = SupervisorState(
            boot_id=self._boot_id,
            instances=[self._instances[instance_id].persisted() for instance_id in sorted(self._instances)],
        )
        save_state(self._state_path, state)
