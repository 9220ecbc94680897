"""Engine log files: ``{logs_dir}/{id}.{n}.log``, one per start, the current and the previous one kept
(as GPUStack keeps ``{id}.{restart_count}.log`` for the current and the previous restart)."""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path

KEPT_GENERATIONS = 2
"""Current and previous: the previous start's log usually holds the crash that caused the restart."""

_TAIL_BLOCK_BYTES = 64 * 1024


def log_path(logs_dir: Path, instance_id: str, generation: int) -> Path:
    return logs_dir / f"{instance_id}.{generation}.log"


def log_generations(logs_dir: Path, instance_id: str) -> dict[int, Path]:
    """Existing log files of an instance by generation. ``a.1.log`` belongs to ``a``, not to ``a.1``'s
    ``a.1.{n}.log``: the part after the id must be a bare number."""
    found: dict[int, Path] = {}
    prefix = f"{instance_id}."
    for name in glob.glob(glob.escape(prefix) + "*.log", root_dir=logs_dir):
        middle = name[len(prefix) : -len(".log")]
        if middle.isdigit():
            found[int(middle)] = logs_dir / name
    return found


def prune_logs(logs_dir: Path, instance_id: str, current_generation: int) -> None:
    for generation, path in log_generations(logs_dir, instance_id).items():
        if generation <= current_generation - KEPT_GENERATIONS:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def remove_logs(logs_dir: Path, instance_id: str) -> None:
    for path in log_generations(logs_dir, instance_id).values():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def split_lines(data: bytes) -> list[str]:
    return [line.decode("utf-8", errors="replace") for line in data.splitlines()]


def read_tail(path: Path, tail: int | None) -> tuple[list[str], int]:
    """The last ``tail`` lines of a file (all when None) and the byte offset they end at, so a follower can
    continue exactly there. Reads backwards in blocks: a long-running engine's log can be large."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return [], 0
    with file:
        end = os.fstat(file.fileno()).st_size
        if tail is not None and tail <= 0:
            return [], end
        if tail is None:
            return split_lines(file.read(end)), end
        start = end
        data = b""
        # tail + 1 newlines guarantee `tail` complete lines (the file may end without a newline).
        while start > 0 and data.count(b"\n") <= tail:
            start = max(0, start - _TAIL_BLOCK_BYTES)
            file.seek(start)
            data = file.read(end - start)
        return split_lines(data)[-tail:], end
