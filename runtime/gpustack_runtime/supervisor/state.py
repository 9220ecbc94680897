"""What the supervisor keeps on disk (``{state_dir}/instances.json``) so a restarted agent can adopt its
engines instead of killing or duplicating them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from gpustack_runtime.wire import InstanceBody, InstanceState

STATE_FILE_NAME = "instances.json"


class PersistedInstance(BaseModel):
    """One instance as the supervisor last knew it."""

    # A newer agent may add fields; an older one reading its file should not refuse to start.
    model_config = ConfigDict(extra="ignore")

    id: str
    body: InstanceBody
    port: int
    state: InstanceState
    pid: int | None = None
    pid_start_time: int | None = Field(
        default=None,
        description="/proc/<pid>/stat starttime (clock ticks since boot): tells a reused pid apart.",
    )
    restarts: NonNegativeInt = 0
    consecutive_failures: NonNegativeInt = 0
    last_exit_code: int | None = None
    started_at: float | None = None
    log_generation: int = Field(default=-1, description="n of the current log file {id}.{n}.log; -1: none yet.")
    container_cli: str | None = Field(default=None, description="The CLI that runs the container, if any.")
    message: str | None = None
    launch_token: str | None = Field(
        default=None,
        description="Random per start, part of the engine's marker (procfs.ENGINE_MARK_ENV). Written before the "
        "engine is spawned, so an agent that dies between spawning and recording the pid finds it by marker.",
    )


class SupervisorState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal[1] = 1
    boot_id: str | None = Field(
        default=None, description="/proc/sys/kernel/random/boot_id when written: pids are only valid within it."
    )
    instances: list[PersistedInstance] = Field(default_factory=list)


def load_state(path: Path) -> SupervisorState:
    """The saved state, or an empty one when the file does not exist yet.

    A file that does not parse is an error, not an empty state: starting empty would orphan running engines
    that still hold GPU memory.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return SupervisorState()
    try:
        return SupervisorState.model_validate_json(text)
    except ValidationError as error:
        raise ValueError(
            f"{path} is not a valid supervisor state file ({error.error_count()} errors: {error}); "
            "fix or move it away, then stop any engines it listed by hand"
        ) from error


def save_state(path: Path, state: SupervisorState) -> None:
    """Write atomically: a crash leaves either the old or the new file, never a torn one."""
    data = state.model_dump_json(indent=2).encode("utf-8")
    directory = path.parent
    descriptor, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as temporary:
            temporary.write(data)
            temporary.flush()
            os.fsync(temporary.fileno())
        os.replace(temporary_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary_name)
        raise
    # The rename itself is durable only once the directory entry is on disk.
    directory_descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)
