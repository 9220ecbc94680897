"""A small stand-in for the Pulumi engine, for tests on machines without the Pulumi CLI.

It runs a stack program the way the engine would, as far as it matters for gpustack-pulumi:

- resources register through Pulumi's own mocks (``pulumi.runtime.set_mocks``), so components, parents, names and
  secrets behave as in a real program;
- every **dynamic** resource (``pulumi-python:dynamic...``) is executed by the real SDK provider host,
  ``python -m pulumi.dynamic``, over gRPC — the exact process the CLI starts — with ``Configure`` carrying the stack
  config, then ``Check``; ``Create`` on a new resource, ``Diff`` and ``Update`` (or replace) on a changed one
  during ``up``; ``Read`` on ``refresh``; ``Delete`` on ``destroy`` and for resources the program no longer declares;
- state (ids, inputs, outputs, creation order) is kept in a JSON file between runs.

- like the engine, resources whose registrations arrive together (independent of each other) are all **checked
  before any of them is created**, and their creates, updates and replaces **run concurrently** (each registration
  runs in its own thread; a create waits until every registration that has arrived is checked and no new one
  came for a moment). A provider that places at check time without seeing its siblings fails here as it would
  under ``pulumi up``.

What it does not do: dependency-ordered deletes beyond reverse creation order, real URNs of nested types, policy
packs, secrets encryption in state. It is a test tool, not a product.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import pulumi
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE_SIG = "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
PROVIDER_KEY = "__provider"


class ProviderError(RuntimeError):
    """A provider method failed; ``details`` holds the Python traceback the host sent back."""

    def __init__(self, method: str, details: str) -> None:
        self.method = method
        self.details = details
        # The traceback's last lines name the exception; pydantic puts its explanation on several lines.
        tail = "\n".join(details.strip().splitlines()[-8:])
        super().__init__(f"{method} failed:\n{tail}")


class CheckFailed(RuntimeError):
    def __init__(self, name: str, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        super().__init__(f"check of '{name}' failed: " + "; ".join(f"{p}: {r}" for p, r in failures))


def unwrap_secrets(value: Any) -> Any:
    """Strip Pulumi's secret envelopes (the engine does this before calling a provider that does not accept
    secrets, as the dynamic host declares)."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE_SIG:
            return unwrap_secrets(value.get("value"))
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    if isinstance(value, pulumi.output.Unknown):
        return UNKNOWN
    return value


def serialize_for_host(provider: Any) -> dict[str, str]:
    """The ``__provider`` input a dynamic resource carries, for calling the host directly."""
    from pulumi.dynamic.dynamic import serialize_provider

    return {PROVIDER_KEY: serialize_provider(provider)}


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(json.loads(json.dumps(value)))
    return message


def _dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


class ProviderHost:
    """One ``python -m pulumi.dynamic`` process and a gRPC client to it."""

    def __init__(self, *, cwd: Path, config: dict[str, str], project: str, env: dict[str, str] | None = None):
        host_env = {**os.environ, **(env or {}), "PULUMI_PROJECT": project}
        # The engine address argument is unused by the dynamic host but required on its command line.
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "pulumi.dynamic", "127.0.0.1:1"],
            cwd=cwd,
            env=host_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError(f"dynamic provider host did not start: {line!r}")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{line}")
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)
        self.stub.Configure(provider_pb2.ConfigureRequest(args=_struct(config)))

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=600)
        except grpc.RpcError as exc:
            raise ProviderError(method, exc.details() or str(exc)) from None

    def check(self, urn: str, olds: dict, news: dict) -> tuple[dict, list[tuple[str, str]]]:
        response = self._call("Check", provider_pb2.CheckRequest(urn=urn, olds=_struct(olds), news=_struct(news)))
        return _dict(response.inputs), [(f.property, f.reason) for f in response.failures]

    def diff(self, id_: str, urn: str, olds: dict, news: dict) -> dict[str, Any]:
        response = self._call("Diff", provider_pb2.DiffRequest(id=id_, urn=urn, olds=_struct(olds), news=_struct(news)))
        return {
            "changes": response.changes,
            "replaces": list(response.replaces),
            "delete_before_replace": response.deleteBeforeReplace,
        }

    def create(self, urn: str, props: dict) -> tuple[str, dict]:
        response = self._call("Create", provider_pb2.CreateRequest(urn=urn, properties=_struct(props)))
        return response.id, _dict(response.properties)

    def update(self, id_: str, urn: str, olds: dict, news: dict) -> dict:
        request = provider_pb2.UpdateRequest(id=id_, urn=urn, olds=_struct(olds), news=_struct(news))
        return _dict(self._call("Update", request).properties)

    def read(self, id_: str, urn: str, props: dict, inputs: dict) -> tuple[str, dict, dict | None]:
        request = provider_pb2.ReadRequest(id=id_, urn=urn, properties=_struct(props), inputs=_struct(inputs))
        response = self._call("Read", request)
        new_inputs = _dict(response.inputs) if response.HasField("inputs") else None
        return response.id, _dict(response.properties), new_inputs

    def delete(self, id_: str, urn: str, props: dict) -> None:
        self._call("Delete", provider_pb2.DeleteRequest(id=id_, urn=urn, properties=_struct(props)))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


class CheckGate:
    """Checks before creates: a create waits until every registration that arrived has been checked and none
    arrived for ``quiet_s`` (the SDK sends independent registrations at once, as the program declares them)."""

    def __init__(self, quiet_s: float = 0.1) -> None:
        self.quiet_s = quiet_s
        self._cond = threading.Condition()
        self._unchecked = 0
        self._last_arrival = time.monotonic()
        self.checks_before_first_create: int | None = None
        self._checked = 0

    def arrived(self) -> None:
        with self._cond:
            self._unchecked += 1
            self._last_arrival = time.monotonic()

    def checked(self) -> None:
        with self._cond:
            self._unchecked -= 1
            self._checked += 1
            self._cond.notify_all()

    def wait_for_checks(self) -> None:
        with self._cond:
            while True:
                quiet = time.monotonic() - self._last_arrival
                if self._unchecked == 0 and quiet >= self.quiet_s:
                    break
                self._cond.wait(timeout=max(0.01, self.quiet_s - quiet))
            if self.checks_before_first_create is None:
                self.checks_before_first_create = self._checked


class ExtraEngine(Protocol):
    """Runs resources of other (non-dynamic) providers for real, e.g. ``pulumi_command.remote``."""

    def handles(self, typ: str) -> bool: ...

    def known(self) -> set[str]:
        """Names of the resources applied so far (at preview the others have no id yet)."""
        ...

    def apply(self, name: str, typ: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Create or update the resource now; its outputs."""
        ...

    def prune(self, registered: set[str]) -> None:
        """Delete what was applied before and is not registered any more."""
        ...


@dataclass
class ResourceState:
    urn: str
    type: str
    name: str
    id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class RunResult:
    """What one operation did: the stack's exports and the provider operations, in order."""

    outputs: dict[str, Any] = field(default_factory=dict)
    operations: list[tuple[str, str]] = field(default_factory=list)  # (op, resource name)
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)  # refresh: name -> changed output keys

    def ops(self, op: str) -> list[str]:
        return [name for o, name in self.operations if o == op]


class StackHarness:
    """Runs one stack program through preview / up / refresh / destroy with persistent state."""

    def __init__(
        self,
        program: Callable[[], None],
        *,
        state_path: Path,
        config: dict[str, str] | None = None,
        secret_config_keys: tuple[str, ...] = (),
        project: str = "gpustack-pulumi",
        stack: str = "test",
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        extra_engine: ExtraEngine | None = None,
    ) -> None:
        self.program = program
        self.extra_engine = extra_engine
        self.state_path = state_path
        self.config = dict(config or {})
        self.secret_config_keys = secret_config_keys
        self.project = project
        self.stack = stack
        self.cwd = cwd or Path.cwd()
        self.env = env or {}

    # ----- state ----------------------------------------------------------------------------------------
    def load_state(self) -> list[ResourceState]:
        if not self.state_path.exists():
            return []
        return [ResourceState(**entry) for entry in json.loads(self.state_path.read_text())["resources"]]

    def _save_state(self, resources: list[ResourceState]) -> None:
        data = {"resources": [r.__dict__ for r in resources]}
        self.state_path.write_text(json.dumps(data, indent=2, sort_keys=True))

    def _urn(self, typ: str, name: str) -> str:
        return f"urn:pulumi:{self.stack}::{self.project}::{typ}::{name}"

    @contextlib.contextmanager
    def _host(self) -> Iterator[ProviderHost]:
        host = ProviderHost(cwd=self.cwd, config=self.config, project=self.project, env=self.env)
        try:
            yield host
        finally:
            host.close()

    # ----- operations ------------------------------------------------------------------------------------
    def preview(self) -> RunResult:
        return self._run(preview=True)

    def up(self) -> RunResult:
        return self._run(preview=False)

    def refresh(self) -> RunResult:
        result = RunResult()
        resources = self.load_state()
        kept: list[ResourceState] = []
        with self._host() as host:
            for res in resources:
                new_id, outs, new_inputs = host.read(res.id, res.urn, res.outputs, res.inputs)
                result.operations.append(("read", res.name))
                if not new_id:
                    result.drift[res.name] = {"deleted": True}
                    continue
                changed = {k: outs.get(k) for k in set(outs) | set(res.outputs) if outs.get(k) != res.outputs.get(k)}
                if changed:
                    result.drift[res.name] = changed
                kept.append(ResourceState(res.urn, res.type, res.name, new_id, new_inputs or res.inputs, outs))
        self._save_state(kept)
        return result

    def destroy(self) -> RunResult:
        result = RunResult()
        resources = self.load_state()
        remaining = list(resources)
        with self._host() as host:
            for res in reversed(resources):
                host.delete(res.id, res.urn, res.outputs)
                result.operations.append(("delete", res.name))
                remaining.remove(res)
                self._save_state(remaining)
        if self.extra_engine is not None:
            self.extra_engine.prune(set())
        return result

    def _run(self, *, preview: bool) -> RunResult:
        result = RunResult()
        old = {r.name: r for r in self.load_state()}
        new_state: list[ResourceState] = []
        with self._host() as host:
            mocks = _EngineMocks(self, host, old, new_state, result, preview=preview)
            try:
                result.outputs = self._execute_program(mocks, preview=preview)
            except BaseException:
                if not preview:
                    # Like the engine, keep what was created before the failure (and what was not touched), so
                    # a later destroy removes it.
                    touched = {r.name for r in new_state}
                    self._save_state(new_state + [r for n, r in old.items() if n not in touched])
                raise
            if not preview:
                declared = {r.name for r in new_state}
                for name, res in reversed(list(old.items())):
                    if name not in declared and not mocks.replaced_before.get(name):
                        host.delete(res.id, res.urn, res.outputs)
                        result.operations.append(("delete", name))
                self._save_state(new_state)
                if self.extra_engine is not None:
                    # Like the engine: resources no longer declared go last, after replicas moved off them.
                    self.extra_engine.prune({a.name for a in mocks.registered})
        return result

    def _execute_program(self, mocks: _EngineMocks, *, preview: bool) -> dict[str, Any]:
        config_env = {f"{self.project}:{k}" if ":" not in k else k: v for k, v in self.config.items()}
        saved_env = {k: os.environ.get(k) for k in ("PULUMI_CONFIG", "PULUMI_CONFIG_SECRET_KEYS")}
        os.environ["PULUMI_CONFIG"] = json.dumps(config_env)
        os.environ["PULUMI_CONFIG_SECRET_KEYS"] = json.dumps(list(self.secret_config_keys))
        exports: dict[str, Any] = {}
        resolved: dict[str, Any] = {}
        original_export = pulumi.export
        pulumi.export = lambda name, value: exports.__setitem__(name, value)  # type: ignore[assignment]
        monitor = pulumi_mocks.MockMonitor(mocks)
        pulumi.runtime.set_mocks(mocks, project=self.project, stack=self.stack, preview=preview, monitor=monitor)
        failure: list[BaseException] = []
        mocks.failure = failure
        # The SDK sends registrations through the loop's default executor: enough threads that every independent
        # registration is in flight at once, as with the engine.
        executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="register")
        try:

            @pulumi.runtime.test
            def run() -> Any:
                asyncio.get_event_loop().set_default_executor(executor)
                self.program()

                async def collect() -> None:
                    for key, value in exports.items():
                        output = pulumi.Output.from_input(value)
                        if await output.is_known():
                            resolved[key] = unwrap_secrets(await output.future())
                        else:
                            resolved[key] = UNKNOWN

                return collect()

            run()
        finally:
            # The loop outlives this run (the SDK keeps one per thread): give it back an ordinary executor.
            asyncio.get_event_loop().set_default_executor(ThreadPoolExecutor())
            executor.shutdown(wait=False)
            pulumi.export = original_export  # type: ignore[assignment]
            pulumi.runtime.settings.reset_options()
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if failure:
            raise failure[0]
        return resolved


class _EngineMocks(pulumi.runtime.Mocks):
    """Mocks that hand dynamic resources to the real provider host and echo everything else."""

    def __init__(
        self,
        harness: StackHarness,
        host: ProviderHost,
        old: dict[str, ResourceState],
        new_state: list[ResourceState],
        result: RunResult,
        *,
        preview: bool,
    ) -> None:
        self.harness = harness
        self.host = host
        self.old = old
        self.new_state = new_state
        self.result = result
        self.preview = preview
        self.replaced_before: dict[str, bool] = {}
        self.failure: list[BaseException] = []
        self.registered: list[pulumi_mocks.MockResourceArgs] = []
        self.gate = CheckGate()
        self.state_lock = threading.Lock()

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list | None]:
        return {}, None

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        self.registered.append(args)
        extra = self.harness.extra_engine
        if extra is not None and extra.handles(args.typ):
            if self.preview:  # a resource not created yet has no id at preview: what depends on it is unknown
                return (f"{args.name}-id" if args.name in extra.known() else None), dict(args.inputs)
            try:
                outputs = extra.apply(args.name, args.typ, dict(args.inputs))
            except BaseException as exc:
                self.failure.append(exc)
                raise
            self.result.operations.append(("apply", args.name))
            return f"{args.name}-id", {**dict(args.inputs), **outputs}
        if not args.typ.startswith("pulumi-python:dynamic"):
            return (f"{args.name}-id" if args.custom else None), dict(args.inputs)
        try:
            return self._dynamic(args)
        except BaseException as exc:  # surfaced after the program finishes
            self.failure.append(exc)
            raise

    def _dynamic(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict]:
        name = args.name
        urn = self.harness._urn(args.typ, name)
        news = unwrap_secrets(dict(args.inputs))
        old = self.old.get(name)
        self.gate.arrived()
        try:
            checked, failures = self.host.check(urn, old.inputs if old else {}, news)
            self.result.operations.append(("check", name))
        finally:
            self.gate.checked()
        if failures:
            raise CheckFailed(name, failures)
        if self.preview:
            if old is None:
                self.result.operations.append(("would-create", name))
                return "", checked
            diff = self.host.diff(old.id, urn, old.outputs, checked)
            self.result.operations.append(("diff", name))
            if diff["changes"] == provider_pb2.DiffResponse.DIFF_SOME:
                op = "would-replace" if diff["replaces"] else "would-update"
                self.result.operations.append((op, name))
                return old.id, {**old.outputs, **checked}
            return old.id, old.outputs
        if old is None:
            self.gate.wait_for_checks()
            id_, outs = self.host.create(urn, checked)
            self.result.operations.append(("create", name))
        else:
            diff = self.host.diff(old.id, urn, old.outputs, checked)
            self.result.operations.append(("diff", name))
            if diff["changes"] == provider_pb2.DiffResponse.DIFF_SOME:
                self.gate.wait_for_checks()
            if diff["changes"] != provider_pb2.DiffResponse.DIFF_SOME:
                id_, outs = old.id, old.outputs
            elif diff["replaces"]:
                if diff["delete_before_replace"]:
                    self.host.delete(old.id, urn, old.outputs)
                    self.result.operations.append(("delete", name))
                id_, outs = self.host.create(urn, checked)
                self.result.operations.append(("replace", name))
                if not diff["delete_before_replace"]:
                    self.host.delete(old.id, urn, old.outputs)
                    self.result.operations.append(("delete", name))
                self.replaced_before[name] = True
            else:
                outs = self.host.update(old.id, urn, old.outputs, checked)
                id_ = old.id
                self.result.operations.append(("update", name))
        with self.state_lock:
            self.new_state.append(ResourceState(urn, args.typ, name, id_, checked, outs))
        return id_, outs


__all__ = [
    "CheckFailed",
    "ExtraEngine",
    "ProviderError",
    "ProviderHost",
    "RunResult",
    "StackHarness",
    "serialize_for_host",
]
