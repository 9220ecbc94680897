"""Process facts from Linux ``/proc``: identity (pid + start time), groups, descendants, signals.

A pid alone does not identify a process: the kernel reuses pids. The pair (pid, start time) does, because
``/proc/<pid>/stat`` field 22 (``starttime``, clock ticks since boot, see proc(5)) never changes for a process
and a reused pid belongs to a process that started later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC_ROOT = Path("/proc")
BOOT_ID_PATH = PROC_ROOT / "sys" / "kernel" / "random" / "boot_id"

_STAT_STATE = 3
_STAT_PPID = 4
_STAT_PGRP = 5
_STAT_STARTTIME = 22
"""Field numbers of ``/proc/<pid>/stat`` as proc(5) counts them (1-based; field 2 is ``(comm)``)."""

_GONE_STATES = frozenset("ZXx")
"""Zombie or dead: the process no longer runs, only its exit status waits to be collected."""

GROUP_POLL_SECONDS = 0.05
"""How often a stopping process group is checked; stopping is rare, so a /proc scan every 50 ms is cheap."""

KILL_WAIT_SECONDS = 5.0
"""How long SIGKILLed processes may take to vanish (the kernel frees their memory first)."""


@dataclass(frozen=True)
class ProcessStat:
    """The fields of ``/proc/<pid>/stat`` the supervisor needs."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    start_time: int

    @property
    def running(self) -> bool:
        return self.state not in _GONE_STATES


def read_stat(pid: int) -> ProcessStat | None:
    """The stat of ``pid``, or None when no such process exists."""
    try:
        raw = (PROC_ROOT / str(pid) / "stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    # comm (field 2) may contain spaces and parentheses; it ends at the last ')'.
    fields_from_state = raw[raw.rindex(b")") + 2 :].split()

    def field(number: int) -> bytes:
        return fields_from_state[number - _STAT_STATE]

    return ProcessStat(
        pid=pid,
        state=field(_STAT_STATE).decode(),
        ppid=int(field(_STAT_PPID)),
        pgrp=int(field(_STAT_PGRP)),
        start_time=int(field(_STAT_STARTTIME)),
    )


def boot_id() -> str | None:
    """This boot's random id (proc(5)). Start times count from boot, so they only identify a process within
    one boot: after a reboot a pid with an equal start time is a stranger."""
    try:
        return BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """``starttime`` of ``pid`` in clock ticks since boot, None when it does not exist."""
    stat = read_stat(pid)
    return stat.start_time if stat is not None else None


def is_same_running_process(pid: int, start_time: int | None) -> bool:
    """True when ``pid`` runs and is the process that started at ``start_time`` (not a reused pid)."""
    if start_time is None:
        return False
    stat = read_stat(pid)
    return stat is not None and stat.running and stat.start_time == start_time


def all_stats() -> list[ProcessStat]:
    """Every process visible in /proc (processes that exit during the scan are skipped)."""
    stats: list[ProcessStat] = []
    for entry in PROC_ROOT.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats.append(stat)
    return stats


def process_tree(pid: int) -> set[int]:
    """``pid`` and all its running descendants (empty when ``pid`` does not run)."""
    stats = all_stats()
    children: dict[int, list[int]] = {}
    running: set[int] = set()
    for stat in stats:
        if stat.running:
            running.add(stat.pid)
            children.setdefault(stat.ppid, []).append(stat.pid)
    if pid not in running:
        return set()
    tree: set[int] = set()
    pending = [pid]
    while pending:
        current = pending.pop()
        if current in tree:
            continue
        tree.add(current)
        pending.extend(children.get(current, ()))
    return tree


def group_members(pgid: int) -> list[int]:
    """Running processes of process group ``pgid``."""
    return [stat.pid for stat in all_stats() if stat.pgrp == pgid and stat.running]


def collect_exit(pid: int) -> tuple[bool, int | None]:
    """Collect the exit status of ``pid`` if it is a child of this process. Returns (finished, exit code):

    - (True, code): our child exited; the code as :mod:`subprocess` reports it (-N for signal N);
    - (False, None): our child has not finished. That includes a leader that already shows as a zombie while
      the other threads of a multi-threaded engine are still exiting: the kernel lets it be collected only
      after the last thread is gone;
    - (True, None): not our child (or collected already); whoever is its parent collects it.
    """
    try:
        waited_pid, wait_status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True, None
    if waited_pid == 0:
        return False, None
    return True, os.waitstatus_to_exitcode(wait_status)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def group_is_ours(pgid: int, leader_start_time: int | None) -> bool:
    """Whether signalling group ``pgid`` can only hit the engine we started.

    The engine was started as a session leader, so its pid is its group id. While the leader runs, it must be
    the same process (start time). Once the leader is gone, Linux does not hand its pid to a new process while
    the group still has members, so the members left over are the engine's workers. A pid taken by another
    process means our group is gone and the group id now belongs to someone else.
    """
    leader = read_stat(pgid)
    if leader is None or not leader.running:
        return True
    return leader.start_time == leader_start_time


async def terminate_group(pgid: int, leader_start_time: int | None, grace_seconds: float) -> int | None:
    """SIGTERM the process group, wait up to ``grace_seconds`` for every member to exit, then SIGKILL.

    Returns once no member runs. Returns the leader's exit code when this process could collect it.
    """
    exit_code: int | None = None
    if not group_is_ours(pgid, leader_start_time):
        return None
    _signal_group(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_seconds
    killed = False
    leader_finished = False
    while True:
        if not leader_finished:
            leader_finished, exit_code = collect_exit(pgid)
        if leader_finished and not group_members(pgid):
            return exit_code
        if not killed and loop.time() >= deadline:
            _signal_group(pgid, signal.SIGKILL)
            killed = True
            deadline = loop.time() + KILL_WAIT_SECONDS
        elif killed and loop.time() >= deadline:
            raise TimeoutError(f"process group {pgid} still runs {KILL_WAIT_SECONDS} s after SIGKILL")
        await asyncio.sleep(GROUP_POLL_SECONDS)


def kill_leftovers(pgid: int, leader_start_time: int | None) -> None:
    """SIGKILL what is left of a group whose leader exited: forked workers would keep holding GPU memory and
    make the restarted engine run out of it."""
    if group_is_ours(pgid, leader_start_time) and group_members(pgid):
        _signal_group(pgid, signal.SIGKILL)


# --- containment: every process an engine starts carries its marker --------------------------------------

ENGINE_MARK_ENV = "GPUSTACK_ENGINE_MARK"
"""Set in every engine's environment to ``{agent key}/{instance id}/{launch token}``. Children inherit it, so
it finds the whole engine even where the process tree and the process group do not: a helper that calls
``setsid`` (Ray does) leaves the group and, once its parent exits, the tree too, but keeps its environment.
(A process that execs with an emptied environment escapes it; cgroups would catch that one.)"""


def read_marker(pid: int) -> str | None:
    """The value of :data:`ENGINE_MARK_ENV` in ``pid``'s initial environment, None when absent or
    unreadable (the process exited, or it is another user's and we are not root)."""
    return read_environ_value(pid, ENGINE_MARK_ENV)


def read_environ_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in ``pid``'s initial environment, None when absent or unreadable."""
    try:
        raw = (PROC_ROOT / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    key = name.encode() + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key) :].decode("utf-8", errors="replace")
    return None


def marked_processes(prefix: str) -> dict[int, tuple[str, ProcessStat]]:
    """Running processes whose marker starts with ``prefix``: pid -> (marker, stat)."""
    found: dict[int, tuple[str, ProcessStat]] = {}
    own_pid = os.getpid()
    for entry in PROC_ROOT.iterdir():
        if not entry.name.isdigit() or int(entry.name) == own_pid:
            continue
        pid = int(entry.name)
        marker = read_marker(pid)
        if marker is None or not marker.startswith(prefix):
            continue
        stat = read_stat(pid)
        if stat is not None and stat.running:
            found[pid] = (marker, stat)
    return found


def signal_marked(prefix: str, signum: signal.Signals) -> list[int]:
    """Send ``signum`` to every running process marked with ``prefix``; returns their pids."""
    pids = list(marked_processes(prefix))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
    return pids


async def kill_marked(prefix: str, wait_seconds: float = KILL_WAIT_SECONDS) -> None:
    """SIGKILL every process marked with ``prefix`` and wait until none runs (our own children among them
    are collected). Raises TimeoutError when some still run after ``wait_seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        pids = signal_marked(prefix, signal.SIGKILL)
        for pid in pids:
            collect_exit(pid)
        if not pids:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"processes {sorted(pids)} marked {prefix!r} still run {wait_seconds} s after SIGKILL")
        await asyncio.sleep(GROUP_POLL_SECONDS)


def process_trees(roots: Iterable[int]) -> dict[int, set[int]]:
    """:func:`process_tree` of every root from one scan of /proc (a scan per root costs the same as one for
    all of them)."""
    children: dict[int, list[int]] = {}
    running: set[int] = set()
    for stat in all_stats():
        if stat.running:
            running.add(stat.pid)
            children.setdefault(stat.ppid, []).append(stat.pid)
    trees: dict[int, set[int]] = {}
    for root in roots:
        tree: set[int] = set()
        pending = [root] if root in running else []
        while pending:
            current = pending.pop()
            if current not in tree:
                tree.add(current)
                pending.extend(children.get(current, ()))
        trees[root] = tree
    return trees
