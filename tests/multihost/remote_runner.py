"""Run what ``pulumi_command.remote`` resources would run, over real SSH with paramiko.

Under Pulumi mocks, ``CopyToRemote`` and ``Command`` are only registered: the mocks hand their inputs back and
nothing runs. This runner takes those registered inputs (the exact strings and connection the component built)
and does what the pulumi-command provider does with them (provider/pkg/provider/remote in pulumi/pulumi-command):

- connection: user, private key, port, optional proxy (jump host), and the pinned ``hostKey``; a host that shows
  another key is refused (paramiko ``RejectPolicy`` with only the pinned key known);
- ``CopyToRemote``: SFTP upload of a ``FileAsset`` to ``remotePath``, parent directories created;
- ``Command``: ``create`` on create, ``update`` (or ``create``) on update, ``delete`` on delete, each through
  one SSH exec with ``stdin`` written to the command's standard input; a non-zero exit fails the step.
"""

from __future__ import annotations

import base64
import hashlib
import io
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pulumi

SECRET_SIG = "4dabf18193072939515e22adb298388d"
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 180.0


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value


def reveal(value: Any) -> Any:
    """The value inside Pulumi's secret envelope (mock inputs keep the envelope; the engine strips it)."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {key: reveal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [reveal(item) for item in value]
    return value


@dataclass
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return self.stdout.strip().splitlines()


class RemoteCommandError(RuntimeError):
    pass


def _private_key(text: str) -> paramiko.PKey:
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text))
        except paramiko.SSHException:
            continue
    raise RemoteCommandError("the private key is not an OpenSSH ed25519, ECDSA or RSA key")


def _pinned_client(address: str, port: int, host_key: str) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    key_type, blob = host_key.split()[:2]
    entry = address if port == 22 else f"[{address}]:{port}"
    client.get_host_keys().add(entry, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(blob)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def connect(connection: dict[str, Any]) -> paramiko.SSHClient:
    """An SSH client for a registered ``connection`` input (secrets revealed), host key pinned."""
    connection = reveal(connection)
    if not connection.get("hostKey"):
        raise RemoteCommandError("connection has no hostKey: refusing to connect to an unpinned host")
    sock = None
    jump = None
    address, port = connection["host"], int(connection.get("port") or 22)
    if connection.get("proxy"):
        proxy = connection["proxy"]
        jump = _pinned_client(proxy["host"], int(proxy.get("port") or 22), proxy["hostKey"])
        jump.connect(
            proxy["host"],
            port=int(proxy.get("port") or 22),
            username=proxy.get("user") or "root",
            pkey=_private_key(proxy["privateKey"]),
            look_for_keys=False,
            allow_agent=False,
            timeout=CONNECT_TIMEOUT_S,
        )
        transport = jump.get_transport()
        assert transport is not None
        sock = transport.open_channel("direct-tcpip", (address, port), ("127.0.0.1", 0))
    client = _pinned_client(address, port, connection["hostKey"])
    client.connect(
        address,
        port=port,
        username=connection.get("user") or "root",
        pkey=_private_key(connection["privateKey"]),
        look_for_keys=False,
        allow_agent=False,
        timeout=CONNECT_TIMEOUT_S,
        sock=sock,
    )
    if jump is not None:
        client._gpustack_jump = jump  # type: ignore[attr-defined]  # closed with the client below
    return client


def _close(client: paramiko.SSHClient) -> None:
    client.close()
    jump = getattr(client, "_gpustack_jump", None)
    if jump is not None:
        jump.close()


def copy_to_remote(inputs: dict[str, Any]) -> None:
    source = inputs["source"]
    if not isinstance(source, pulumi.FileAsset):
        raise RemoteCommandError(f"only FileAsset sources are run here, got {type(source).__name__}")
    client = connect(inputs["connection"])
    try:
        sftp = client.open_sftp()
        remote_path = reveal(inputs["remotePath"])
        # Parents first, as the provider does ("Any necessary parent directories will be created").
        parts = posixpath.dirname(remote_path).split("/")
        for depth in range(2, len(parts) + 1):
            directory = "/".join(parts[:depth])
            try:
                sftp.stat(directory)
            except FileNotFoundError:
                try:
                    sftp.mkdir(directory)
                except OSError:
                    sftp.stat(directory)  # made meanwhile by a parallel copy (like MkdirAll); else it raises
        sftp.put(str(source.path), remote_path)
        sftp.close()
    finally:
        _close(client)


def run_command(inputs: dict[str, Any], step: str) -> CommandResult:
    """Run the ``create``, ``update`` (falls back to create) or ``delete`` string of a registered Command."""
    command = inputs.get(step) or (inputs.get("create") if step == "update" else None)
    if not command:
        return CommandResult(0, "", "")
    command = reveal(command)
    client = connect(inputs["connection"])
    try:
        stdin, stdout, stderr = client.exec_command(command, timeout=COMMAND_TIMEOUT_S)
        if inputs.get("stdin") is not None:
            stdin.write(reveal(inputs["stdin"]))
        stdin.channel.shutdown_write()
        out, err = stdout.read().decode(), stderr.read().decode()
        result = CommandResult(stdout.channel.recv_exit_status(), out, err)
    finally:
        _close(client)
    if result.exit_status != 0:
        raise RemoteCommandError(f"{step} exited {result.exit_status}:\n{result.stdout}\n{result.stderr}")
    return result


def _comparable(value: Any) -> Any:
    """Inputs in a form that compares by content: an asset by its path and file hash, as the engine diffs it."""
    if isinstance(value, pulumi.FileAsset):
        return ("file-asset", str(value.path), hashlib.sha256(Path(str(value.path)).read_bytes()).hexdigest())
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


COPY_TYPE = "command:remote:CopyToRemote"
COMMAND_TYPE = "command:remote:Command"


class RemoteCommandApplier:
    """The engine's part for ``pulumi_command.remote`` resources across runs of a program under mocks.

    ``apply(resources)`` compares the registered resources with the last applied ones, by name: a new resource is
    created, one whose inputs changed is updated (a ``Command`` runs ``update``; a ``CopyToRemote`` copies again),
    one no longer registered is deleted (a ``Command`` runs the ``delete`` of its last applied inputs; a copy has
    nothing to delete). Copies run before commands, as the commands depend on them; resources of one kind run in
    parallel, as the engine runs independent resources. Other resource types are left alone.
    """

    def __init__(self) -> None:
        self.applied: dict[str, tuple[str, dict[str, Any]]] = {}
        """Resource name → (type, inputs) as last applied."""

    def apply_one(self, name: str, typ: str, inputs: dict[str, Any]) -> CommandResult | None:
        """Create or update one resource now, if it is new or its inputs changed (None: nothing to do). A test
        harness can call this as each remote resource registers, and :meth:`prune` at the end of a run."""
        previous = self.applied.get(name)
        if previous is not None and _comparable(previous[1]) == _comparable(inputs):
            return None
        if typ == COPY_TYPE:
            copy_to_remote(inputs)
            result = CommandResult(0, "", "")
        else:
            result = run_command(inputs, "create" if previous is None else "update")
        self.applied[name] = (typ, inputs)
        return result

    def prune(self, registered: set[str]) -> dict[str, CommandResult]:
        """Delete what was applied before but is no longer registered, latest first."""
        return {name: self.delete(name) for name in reversed(list(self.applied)) if name not in registered}

    def apply(self, resources: list[Any]) -> dict[str, CommandResult]:
        import concurrent.futures

        wanted = {r.name: (r.typ, r.inputs) for r in resources if r.typ in (COPY_TYPE, COMMAND_TYPE)}
        results: dict[str, CommandResult] = {}
        for kind in (COPY_TYPE, COMMAND_TYPE):
            names = [name for name, (typ, _) in wanted.items() if typ == kind]
            if not names:
                continue
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
                outcomes = pool.map(lambda name: self.apply_one(name, *wanted[name]), names)
                results.update({name: r for name, r in zip(names, outcomes, strict=True) if r is not None})
        results.update(self.prune(set(wanted)))
        return results

    def delete(self, name: str) -> CommandResult:
        typ, inputs = self.applied.pop(name)
        return run_command(inputs, "delete") if typ == COMMAND_TYPE else CommandResult(0, "", "")

    def destroy(self) -> dict[str, CommandResult]:
        """Delete everything applied, latest first."""
        return self.prune(set())
