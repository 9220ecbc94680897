"""The agent's HTTP API: :func:`create_app` wires config, device backend and supervisor into a FastAPI app.

Endpoints (all but ``/healthz`` need ``Authorization: Bearer <token>``; the OpenAPI document is at
``/openapi.json`` and the interactive docs at ``/docs``, both behind the token too):

=========================================  =========================================================
``GET /healthz``                           liveness, ``{"status": "ok"}``
``GET /v1/node``                           host facts and full device snapshots
``GET /v1/capacity``                       :class:`~gpustack_runtime.wire.CapacityDocument`
``GET|PUT|DELETE /v1/reservations/{id}``   leases on device memory (``GET /v1/reservations`` lists)
``GET|PUT|DELETE /v1/instances/{id}``      engine instances (``GET /v1/instances`` lists)
``GET /v1/instances/{id}/logs``            ``?tail=N&follow=true``, text/plain
``GET /metrics``                           Prometheus text format
=========================================  =========================================================

Admission (409) follows :mod:`gpustack_runtime.ledger`. The app owns the lifecycle of the supervisor and the
backend: its lifespan starts the supervisor and closes both on shutdown (closing the supervisor leaves the
engines running, so an agent restart adopts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from gpustack_runtime.auth import TokenCheck
from gpustack_runtime.capacity import (
    HostFacts,
    NodeInfo,
    attribute_external,
    build_capacity_document,
    read_host_facts,
    split_device_usage,
)
from gpustack_runtime.config import AgentConfig, agent_version
from gpustack_runtime.devices.base import DeviceBackend, DeviceQueryError, DeviceSnapshot
from gpustack_runtime.guard import RequestGuard, StrictJSONResponse, render_validation_error
from gpustack_runtime.ledger import Admitted, DeviceUsage, DuplicateDeviceError, Ledger
from gpustack_runtime.metrics import (
    AgentCollector,
    RequestLatencyMiddleware,
    ScrapeView,
    new_request_histogram,
)
from gpustack_runtime.supervisor import NoFreePortError, procfs
from gpustack_runtime.supervisor.launch import INSTANCE_ID_PATTERN
from gpustack_runtime.wire import (
    INSTANCE_ID_ENV,
    AdmissionRejection,
    CapacityDocument,
    InstanceBody,
    InstanceStatus,
    ReservationBody,
    ReservationStatus,
)

logger = logging.getLogger(__name__)

HTTP_422_UNPROCESSABLE = 422
"""Starlette renamed its constant (``..._ENTITY`` -> ``..._CONTENT``); the number is stable."""

DEFAULT_LOG_TAIL_LINES = 100
MAX_LOG_TAIL_LINES = 100_000
"""Bounds one non-followed log response to a size a client can hold in memory."""


class InstanceSupervisor(Protocol):
    """What the API needs from :class:`gpustack_runtime.supervisor.Supervisor`."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Stop supervising; leaves the engines running."""
        ...

    async def put(self, instance_id: str, body: InstanceBody) -> tuple[InstanceStatus, bool]: ...

    def get(self, instance_id: str) -> InstanceStatus | None: ...

    def list(self) -> list[InstanceStatus]: ...

    async def delete(self, instance_id: str) -> bool: ...

    def logs(self, instance_id: str, tail: int | None = None) -> list[str]:
        """The last ``tail`` lines (no newline at the end); KeyError for an unknown id."""
        ...

    def follow_logs(self, instance_id: str, *, tail: int | None = 0) -> AsyncIterator[str]:
        """``tail`` existing lines, then new ones as they come, until the instance is deleted."""
        ...

    def instance_pids(self) -> dict[str, int]: ...

    def process_tree(self, pid: int) -> set[int]: ...


CAPACITY_MAX_AGE_SECONDS = 0.25
"""How long a rendered capacity document is reused while nothing changes through the API: under 50
concurrent readers, rendering each one kept ``/healthz`` waiting behind them."""

PROCESS_SCAN_MAX_AGE_SECONDS = 1.0
"""How old the cached process trees may be before a background rescan (item 11 of issue 11)."""


class ProcessTreeCache:
    """The process trees of the instances' engines, from one /proc scan for all of them, in a worker thread,
    at most once per ``max_age`` (and at once when an engine started or stopped). Requests never walk /proc on
    the event loop: a capacity read used to scan /proc once per instance (120 ms at 20 instances)."""

    def __init__(self, supervisor: InstanceSupervisor, max_age: float = PROCESS_SCAN_MAX_AGE_SECONDS) -> None:
        self._supervisor = supervisor
        self._max_age = max_age
        self._pids: dict[str, int] = {}
        self._trees: dict[str, set[int]] = {}
        self._scanned_at = float("-inf")
        self._scan: asyncio.Task[None] | None = None
        self._scan_pids: dict[str, int] | None = None
        self.scans = 0

    def last(self) -> dict[str, set[int]]:
        """The trees of the last scan (for the synchronous metrics collector)."""
        return self._trees

    async def trees(self) -> dict[str, set[int]]:
        pids = self._supervisor.instance_pids()
        loop = asyncio.get_running_loop()
        if pids != self._pids:
            # An engine started, restarted or stopped: its processes must be attributed now, or its memory
            # would count as foreign. Concurrent callers share one scan.
            if self._scan is None or self._scan.done() or self._scan_pids != pids:
                self._start_scan(pids)
            assert self._scan is not None
            await asyncio.shield(self._scan)
        elif loop.time() - self._scanned_at > self._max_age and (self._scan is None or self._scan.done()):
            self._start_scan(pids)  # refresh in the background; this request uses the last scan
        return self._trees

    def _start_scan(self, pids: dict[str, int]) -> None:
        self._scan_pids = dict(pids)
        self._scan = asyncio.get_running_loop().create_task(self._run_scan(dict(pids)))

    async def _run_scan(self, pids: dict[str, int]) -> None:
        roots = await asyncio.to_thread(procfs.process_trees, pids.values())
        self.scans += 1
        self._trees = {instance_id: roots.get(pid, set()) | {pid} for instance_id, pid in pids.items()}
        self._pids = pids
        self._scanned_at = asyncio.get_running_loop().time()


# --- response bodies that are not wire models ------------------------------------------------------------


class HealthStatus(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorMessage(BaseModel):
    detail: str


class AdmissionConflict(BaseModel):
    """409 of an instance or reservation PUT: ``detail`` is an admission rejection (memory, missing device),
    or a message when the supervisor refuses the instance (its fixed port is taken, no port is free)."""

    detail: AdmissionRejection | str


# --- helpers ---------------------------------------------------------------------------------------------


class KeyedLocks:
    """One :class:`asyncio.Lock` per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass
class AgentRuntime:
    """Everything the routes share; one per app."""

    config: AgentConfig
    backend: DeviceBackend
    supervisor: InstanceSupervisor
    ledger: Ledger
    host: HostFacts
    registry: CollectorRegistry
    instance_locks: KeyedLocks = field(default_factory=KeyedLocks)
    trees: ProcessTreeCache | None = None
    generation: int = 0
    """Bumped by every change through the API (the rendered capacity document is stale after one)."""

    def __post_init__(self) -> None:
        if self.trees is None:
            self.trees = ProcessTreeCache(self.supervisor)

    async def read_devices(self) -> tuple[list[DeviceSnapshot], list[DeviceUsage]]:
        """The device snapshot and who uses each device's memory. Process trees come from the cache, and
        only when some device lists processes."""
        assert self.trees is not None
        snapshots = self.backend.snapshot()
        trees: dict[str, set[int]] = {}
        if any(snapshot.processes for snapshot in snapshots):
            trees = self._with_external(snapshots, await self.trees.trees())
        return snapshots, split_device_usage(snapshots, trees)

    def _with_external(self, snapshots: list[DeviceSnapshot], trees: dict[str, set[int]]) -> dict[str, set[int]]:
        external = [record.id for record in self.ledger.reservations() if record.external]
        return attribute_external(
            snapshots, trees, external, lambda pid: procfs.read_environ_value(pid, INSTANCE_ID_ENV)
        )

    async def capacity(self) -> CapacityDocument:
        snapshots, usages = await self.read_devices()
        return build_capacity_document(
            name=self.config.node_name,
            labels=self.config.labels,
            host=self.host,
            snapshots=snapshots,
            usages=usages,
            allocations=self.ledger.allocations(),
            available_by_device=self.ledger.available_bytes(usages),
        )

    def scrape_view(self) -> ScrapeView:
        assert self.trees is not None
        snapshots = self.backend.snapshot()
        trees = self._with_external(snapshots, self.trees.last()) if any(s.processes for s in snapshots) else {}
        usages = split_device_usage(snapshots, trees)
        return ScrapeView(
            snapshots=snapshots,
            usages=usages,
            allocated_by_device=self.ledger.allocated_bytes_by_device(),
            instances=self.supervisor.list(),
        )


class AdmissionRefused(Exception):
    """Raised by a route when the ledger rejects a claim; rendered as 409 with the rejection as ``detail``."""

    def __init__(self, rejection: AdmissionRejection) -> None:
        super().__init__(rejection.message)
        self.rejection = rejection


def _render_admission_refused(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, AdmissionRefused)
    return JSONResponse(
        status_code=status.HTTP_409_CONFLICT,
        content={"detail": error.rejection.model_dump(mode="json")},
    )


def _render_device_query_error(_: Request, error: Exception) -> JSONResponse:
    """A device that was there at start fails a query (fallen off the bus, driver reset): the node cannot
    say what it has, which is the node's trouble, not the client's (503, so clients retry or alert)."""
    logger.error("device backend failed: %s", error)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={"detail": f"the device backend failed: {error}; check the GPUs and the driver on this node"},
    )


def _render_state_write_error(request: Request, error: Exception) -> JSONResponse:
    """The agent could not write its state (a full disk, a read-only file system). Every route undoes its
    change before this reaches the client, so state and reality still agree; the client may retry."""
    assert isinstance(error, OSError)
    logger.error("%s %s: could not write the agent's state: %s", request.method, request.url.path, error)
    return StrictJSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={
            "detail": f"the agent could not write its state ({error.strerror or error}); nothing was changed. "
            "Free disk space in the agent's state directory and retry"
        },
    )


def _duplicate_device(error: DuplicateDeviceError) -> HTTPException:
    return HTTPException(
        HTTP_422_UNPROCESSABLE,
        detail=[{"loc": ["body", "device_indices"], "msg": str(error), "type": "value_error"}],
    )


def _not_found(kind: str, item_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no {kind} {item_id!r} on this node")


ItemId = Annotated[
    str,
    Path(
        pattern=f"^{INSTANCE_ID_PATTERN.pattern}$",
        description="Client-chosen id: 1-128 characters from A-Z, a-z, 0-9, '.', '_' and '-'.",
    ),
]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {"model": ErrorMessage, "description": "Missing or wrong bearer token."},
}
ADMISSION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    status.HTTP_409_CONFLICT: {
        "model": AdmissionConflict,
        "description": "A device is missing or lacks the memory; every shortfall is listed.",
    },
}
NOT_FOUND_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    status.HTTP_404_NOT_FOUND: {"model": ErrorMessage, "description": "No such id on this node."},
}


# --- the app ---------------------------------------------------------------------------------------------


def create_app(config: AgentConfig, backend: DeviceBackend, supervisor: InstanceSupervisor) -> FastAPI:
    """The agent's FastAPI app. Serve it with uvicorn; its lifespan starts ``supervisor`` and, on shutdown,
    closes it (engines keep running) and closes ``backend``."""
    runtime = AgentRuntime(
        config=config,
        backend=backend,
        supervisor=supervisor,
        ledger=Ledger(
            safety_margin_bytes=config.memory_safety_margin_bytes,
            reservations_file=config.reservations_file,
        ),
        host=read_host_facts(),
        registry=CollectorRegistry(auto_describe=False),
    )
    runtime.registry.register(AgentCollector(runtime.scrape_view))
    request_histogram = new_request_histogram(runtime.registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        runtime.ledger.load()
        await supervisor.start()
        runtime.ledger.sync_instances(supervisor.list())
        sweeper = asyncio.create_task(_sweep_reservations(runtime.ledger, config.reservation_sweep_seconds))
        logger.info(
            "agent %s serving node %s with the %s device backend", agent_version(), config.node_name, backend.name
        )
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await supervisor.close()
            backend.close()
            logger.info("agent stopped; %d engine instance(s) left running for the next agent", len(supervisor.list()))

    authenticated = [Depends(TokenCheck(config.token))]
    app = FastAPI(
        title="gpustack-agent",
        version=agent_version(),
        description=__doc__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.runtime = runtime
    app.add_exception_handler(AdmissionRefused, _render_admission_refused)
    app.add_exception_handler(DeviceQueryError, _render_device_query_error)
    app.add_exception_handler(OSError, _render_state_write_error)
    app.add_exception_handler(RequestValidationError, render_validation_error)
    app.add_middleware(RequestLatencyMiddleware, histogram=request_histogram)
    # Outermost: the token and the body cap are checked before anything reads the body.
    app.add_middleware(RequestGuard, token=config.token.get_secret_value(), max_body_bytes=config.max_body_bytes)

    # Every route is ``async def``: FastAPI would run plain ``def`` routes in a thread pool, and the supervisor
    # may only be used from its event loop. What the routes do synchronously (ledger, device snapshot) takes
    # well under a millisecond.

    @app.get("/openapi.json", include_in_schema=False, dependencies=authenticated)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=authenticated)
    async def interactive_docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="gpustack-agent")

    @app.get("/healthz", tags=["agent"])
    async def healthz() -> HealthStatus:
        """Liveness; the only endpoint without a token."""
        return HealthStatus()

    @app.get(
        "/metrics",
        tags=["agent"],
        dependencies=authenticated,
        responses={**ERROR_RESPONSES, 200: {"content": {CONTENT_TYPE_LATEST: {}}}},
        response_class=Response,
    )
    async def metrics() -> Response:
        """Prometheus text format: device memory and utilisation, instance state, request latency."""
        return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/node", tags=["node"], dependencies=authenticated, responses=ERROR_RESPONSES)
    async def node() -> NodeInfo:
        """Host facts and the full device snapshots (processes, utilisation, power)."""
        snapshots, _ = await runtime.read_devices()
        return NodeInfo(
            name=config.node_name,
            labels=config.labels,
            host=runtime.host,
            backend=backend.name,
            # Every backend of gpustack_runtime.devices has it; the DeviceBackend protocol does not require it.
            driver_version=getattr(backend, "driver_version", None),
            devices=snapshots,
        )

    rendered_capacity: dict[str, Any] = {"body": b"", "at": float("-inf"), "generation": -1}

    @app.get(
        "/v1/capacity",
        tags=["node"],
        dependencies=authenticated,
        responses={**ERROR_RESPONSES, 200: {"model": CapacityDocument}},
        response_class=Response,
    )
    async def capacity() -> Response:
        """Devices with live and allocated memory, and the allocations of instances and reservations.

        The rendered document is reused for up to ``CAPACITY_MAX_AGE_SECONDS`` unless a reservation or an
        instance changed through the API meanwhile: live device memory may lag by that much, allocations
        never do. Admission never uses it (it reads the devices itself)."""
        now = asyncio.get_running_loop().time()
        if (
            now - rendered_capacity["at"] > CAPACITY_MAX_AGE_SECONDS
            or rendered_capacity["generation"] != runtime.generation
        ):
            generation = runtime.generation
            document = await runtime.capacity()
            rendered_capacity.update(body=document.model_dump_json().encode(), at=now, generation=generation)
        return Response(rendered_capacity["body"], media_type="application/json")

    # --- reservations ----------------------------------------------------------------------------------

    @app.get("/v1/reservations", tags=["reservations"], dependencies=authenticated, responses=ERROR_RESPONSES)
    async def list_reservations() -> list[ReservationStatus]:
        """Live reservations, confirmed or not."""
        return [record.to_status() for record in runtime.ledger.reservations()]

    @app.get(
        "/v1/reservations/{reservation_id}",
        tags=["reservations"],
        dependencies=authenticated,
        responses=NOT_FOUND_RESPONSES,
    )
    async def get_reservation(reservation_id: ItemId) -> ReservationStatus:
        for record in runtime.ledger.reservations():
            if record.id == reservation_id:
                return record.to_status()
        raise _not_found("reservation", reservation_id)

    @app.put(
        "/v1/reservations/{reservation_id}",
        tags=["reservations"],
        dependencies=authenticated,
        responses={**ADMISSION_RESPONSES, 201: {"model": ReservationStatus, "description": "Created."}},
    )
    async def put_reservation(reservation_id: ItemId, body: ReservationBody, response: Response) -> ReservationStatus:
        runtime.generation += 1
        """Create (201), renew or replace (200) a lease. It expires ``ttl_seconds`` after this PUT unless an
        instance with the same id confirms it."""
        _, usages = await runtime.read_devices()
        try:
            outcome = runtime.ledger.put_reservation(reservation_id, body, usages)
        except DuplicateDeviceError as error:
            raise _duplicate_device(error) from None
        if isinstance(outcome, AdmissionRejection):
            raise AdmissionRefused(outcome)
        response.status_code = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
        return outcome.status

    @app.delete(
        "/v1/reservations/{reservation_id}",
        tags=["reservations"],
        dependencies=authenticated,
        status_code=status.HTTP_204_NO_CONTENT,
        responses=NOT_FOUND_RESPONSES,
    )
    async def delete_reservation(reservation_id: ItemId) -> Response:
        runtime.generation += 1
        if not runtime.ledger.delete_reservation(reservation_id):
            raise _not_found("reservation", reservation_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    # --- instances -------------------------------------------------------------------------------------

    @app.get("/v1/instances", tags=["instances"], dependencies=authenticated, responses=ERROR_RESPONSES)
    async def list_instances() -> list[InstanceStatus]:
        return sorted(supervisor.list(), key=lambda instance: instance.id)

    @app.get(
        "/v1/instances/{instance_id}",
        tags=["instances"],
        dependencies=authenticated,
        responses=NOT_FOUND_RESPONSES,
    )
    async def get_instance(instance_id: ItemId) -> InstanceStatus:
        found = supervisor.get(instance_id)
        if found is None:
            raise _not_found("instance", instance_id)
        return found

    @app.put(
        "/v1/instances/{instance_id}",
        tags=["instances"],
        dependencies=authenticated,
        responses={**ADMISSION_RESPONSES, 201: {"model": InstanceStatus, "description": "Created."}},
    )
    async def put_instance(
        instance_id: ItemId, body: InstanceBody, request: Request, response: Response
    ) -> InstanceStatus:
        """Create (201) or keep/replace (200) an instance. Idempotent: the same body changes nothing. The
        memory claim is admitted first (409 when it does not fit); it confirms reservation ``{id}``."""
        _refuse_agent_port(body, config, request)
        runtime.generation += 1
        try:
            return await _put_instance(instance_id, body, response)
        finally:
            runtime.generation += 1

    async def _put_instance(instance_id: str, body: InstanceBody, response: Response) -> InstanceStatus:
        async with runtime.instance_locks.hold(instance_id):
            existed = supervisor.get(instance_id) is not None
            _, usages = await runtime.read_devices()
            try:
                outcome = runtime.ledger.admit_instance(instance_id, body, usages)
            except DuplicateDeviceError as error:
                raise _duplicate_device(error) from None
            if isinstance(outcome, AdmissionRejection):
                raise AdmissionRefused(outcome)
            try:
                instance = await _put_or_undo(supervisor, runtime.ledger, instance_id, body, outcome)
            except (ValueError, NoFreePortError) as error:
                # The supervisor's refusals that the client can fix: a fixed launch.port another instance
                # holds, or a full port range.
                raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from None
        created = not existed and outcome.previous_instance is None
        response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return instance

    @app.delete(
        "/v1/instances/{instance_id}",
        tags=["instances"],
        dependencies=authenticated,
        status_code=status.HTTP_204_NO_CONTENT,
        responses=NOT_FOUND_RESPONSES,
    )
    async def delete_instance(instance_id: ItemId) -> Response:
        """Stop the engine and free its memory claim (and the reservation it confirmed)."""
        runtime.generation += 1
        try:
            return await _delete_instance(instance_id)
        finally:
            runtime.generation += 1

    async def _delete_instance(instance_id: str) -> Response:
        async with runtime.instance_locks.hold(instance_id):
            deleted = await supervisor.delete(instance_id)
            released = runtime.ledger.release_instance(instance_id)
        if not deleted and released is None:
            raise _not_found("instance", instance_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get(
        "/v1/instances/{instance_id}/logs",
        tags=["instances"],
        dependencies=authenticated,
        response_class=PlainTextResponse,
        responses={**NOT_FOUND_RESPONSES, 200: {"content": {"text/plain": {}}}},
    )
    async def instance_logs(
        instance_id: ItemId,
        tail: Annotated[int, Query(ge=0, le=MAX_LOG_TAIL_LINES)] = DEFAULT_LOG_TAIL_LINES,
        follow: bool = False,
    ) -> Response:
        """The last ``tail`` lines of the engine's output; with ``follow=true`` the response stays open and
        streams new lines until the client disconnects or the instance is deleted."""
        if supervisor.get(instance_id) is None:
            raise _not_found("instance", instance_id)
        if follow:
            return StreamingResponse(
                _terminated_async(supervisor.follow_logs(instance_id, tail=tail)),
                media_type="text/plain; charset=utf-8",
            )
        try:
            lines = supervisor.logs(instance_id, tail)
        except KeyError:
            raise _not_found("instance", instance_id) from None  # deleted since the check above
        return PlainTextResponse("".join(_terminated(lines)))

    return app


# --- background work and small pieces --------------------------------------------------------------------


async def _put_or_undo(
    supervisor: InstanceSupervisor,
    ledger: Ledger,
    instance_id: str,
    body: InstanceBody,
    admitted: Admitted,
) -> InstanceStatus:
    """Hand the admitted instance to the supervisor; if it refuses, the ledger forgets the claim."""
    try:
        instance, _changed = await supervisor.put(instance_id, body)
    except BaseException:
        ledger.undo(admitted)
        if supervisor.get(instance_id) is None:
            # A replacement that failed after the old engine was stopped: no engine, so no claim.
            ledger.release_instance(instance_id)
        raise
    return instance


def _refuse_agent_port(body: InstanceBody, config: AgentConfig, request: Request) -> None:
    """An engine on the agent's own port would take it over after the next agent restart (422)."""
    server = request.scope.get("server")
    own_ports = {config.port} | ({server[1]} if server and server[1] else set())
    if body.launch.port and body.launch.port in own_ports:
        raise HTTPException(
            HTTP_422_UNPROCESSABLE,
            detail=[
                {
                    "loc": ["body", "launch", "port"],
                    "msg": f"launch.port {body.launch.port} is the agent's own port; choose another or use 0",
                    "type": "value_error",
                }
            ],
        )


async def _sweep_reservations(ledger: Ledger, interval_seconds: float) -> None:
    """Drop expired leases. Never ends on an error: a sweeper that died silently would leave expired leases
    in the file until the next request."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            ledger.expire()
        except Exception:
            logger.exception("reservation sweep failed; retrying in %.0f s", interval_seconds)


def _terminated(lines: list[str]) -> Iterator[str]:
    for line in lines:
        yield line + "\n"


async def _terminated_async(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for line in lines:
            yield line + "\n"
    except KeyError:
        return  # the instance was deleted before the stream started: an empty, finished stream
