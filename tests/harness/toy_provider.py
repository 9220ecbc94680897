"""A toy dynamic provider (a file on disk) used to test the engine harness itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)


class FileProvider(ResourceProvider):
    """Keeps a file with some content; the path forces a replacement, the content an update."""

    serialize_as_secret_always = False

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        if not news.get("path"):
            failures.append(CheckFailure("path", "path is required"))
        if "forbidden" in str(news.get("content", "")):
            failures.append(CheckFailure("content", "content may not say 'forbidden' (needed 0, found 1)"))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        Path(props["path"]).write_text(props["content"])
        return CreateResult(id_=props["path"], outs={**props, "size": len(props["content"])})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = ["path"] if olds.get("path") != news.get("path") else []
        changes = bool(replaces) or olds.get("content") != news.get("content")
        return DiffResult(changes=changes, replaces=replaces, delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        Path(news["path"]).write_text(news["content"])
        return UpdateResult(outs={**news, "size": len(news["content"])})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        path = Path(id_)
        if not path.exists():
            return ReadResult(id_="", outs={})
        content = path.read_text()
        return ReadResult(id_=id_, outs={**props, "content": content, "size": len(content)})

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        Path(id_).unlink(missing_ok=True)


class FileResource(Resource, module="toy", name="File"):
    size: pulumi.Output[int]

    def __init__(self, name: str, path: str, content: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None):
        super().__init__(FileProvider(), name, {"path": path, "content": content, "size": None}, opts)


class GreedySlotProvider(ResourceProvider):
    """Places itself at check, alone, as ModelReplica once did: the first free slot (a file in ``dir``) it sees;
    create claims that slot exclusively, failing when another resource took it since (the agent's 409). Every
    check and create appends ``(event, name, start, end)`` to ``dir/events.log``."""

    serialize_as_secret_always = False

    def _log(self, directory: str, event: str, name: str, start: float) -> None:
        import time

        with open(Path(directory) / "events.log", "a") as log:
            log.write(f"{event} {name} {start:.6f} {time.monotonic():.6f}\n")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        import time

        start = time.monotonic()
        directory = Path(news["dir"])
        taken = {p.name for p in directory.glob("slot-*")}
        slot = next(f"slot-{i}" for i in range(100) if f"slot-{i}" not in taken)
        self._log(news["dir"], "check", news["name"], start)
        return CheckResult({**news, "slot": slot}, [])

    def create(self, props: dict[str, Any]) -> CreateResult:
        import os
        import time

        start = time.monotonic()
        time.sleep(0.3)  # an engine starting: long enough to see whether creates overlap
        try:
            fd = os.open(Path(props["dir"]) / props["slot"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise RuntimeError(f"{props['slot']} is taken (409): {props['name']} was placed alone") from None
        os.close(fd)
        self._log(props["dir"], "create", props["name"], start)
        return CreateResult(id_=props["name"], outs=props)


class GreedySlot(Resource, module="toy", name="GreedySlot"):
    slot: pulumi.Output[str]

    def __init__(self, name: str, directory: str) -> None:
        super().__init__(GreedySlotProvider(), name, {"name": name, "dir": directory, "slot": None})
