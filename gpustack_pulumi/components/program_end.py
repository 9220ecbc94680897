"""Run a callback once the stack program's body has finished declaring resources.

The cluster plan places every deployment of a cluster together, so it must know all of them, and Pulumi has no
"program finished" hook. A Pulumi Python program's body runs synchronously inside the SDK's
``run_pulumi_func``; the event loop only runs callbacks once the body returns — except while a synchronous
invoke pumps the loop mid-program (``pulumi.runtime.sync_await``). So the callback is scheduled on the loop, and
when it runs it checks whether any frame of the program body (the frames between ``run_pulumi_func`` and the
caller, outside the Pulumi SDK) is still executing; if so, the body is paused inside a nested pump and the
callback waits a little and checks again.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pulumi

_SDK_DIR = str(Path(pulumi.__file__).resolve().parent)
_OWN_DIR = str(Path(__file__).resolve().parent)
RECHECK_DELAY_S = 0.01


def _program_frames(start: FrameType | None) -> list[FrameType]:
    """The frames of the program body above ``start``, up to the SDK's ``run_pulumi_func``."""
    frames: list[FrameType] = []
    frame = start
    while frame is not None:
        code = frame.f_code
        if code.co_name == "run_pulumi_func" and code.co_filename.startswith(_SDK_DIR):
            return frames
        filename = str(Path(code.co_filename).resolve()) if not code.co_filename.startswith("<") else ""
        if filename and not filename.startswith((_SDK_DIR, _OWN_DIR)):
            frames.append(frame)
        frame = frame.f_back
    return []  # not under the SDK's runner (plain Python): the first loop iteration is the end


def _running(frames: list[FrameType]) -> bool:
    if not frames:
        return False
    wanted = {id(frame) for frame in frames}
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if id(frame) in wanted and any(frame is f for f in frames):
            return True
        frame = frame.f_back
    return False


def call_when_program_ends(callback: Callable[[], None]) -> None:
    """Call ``callback`` on the event loop once the program body that is running now has returned."""
    loop = asyncio.get_event_loop()
    frames = _program_frames(sys._getframe(1))

    def attempt() -> None:
        if _running(frames):
            loop.call_later(RECHECK_DELAY_S, attempt)
            return
        frames.clear()  # let the program's frames go
        callback()

    loop.call_soon(attempt)
