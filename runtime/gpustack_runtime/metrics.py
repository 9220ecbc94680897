"""Prometheus metrics of the agent, in their own :class:`~prometheus_client.CollectorRegistry` (never the
process-global one, so two apps in one test process do not collide).

Device and instance gauges are computed on each scrape from the same sources the API serves (device snapshot,
ledger, supervisor), so ``/metrics`` and ``/v1/capacity`` cannot disagree. ``GET /metrics`` needs the bearer
token like the rest of the API: Prometheus sends it when the scrape config has
``authorization: {type: Bearer, credentials_file: /etc/prometheus/agent-token}``.

Names follow the Prometheus conventions: base units (bytes, seconds), ``_total`` for counters, ratios 0-1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import get_args

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpustack_runtime.devices.base import DeviceSnapshot
from gpustack_runtime.ledger import DeviceUsage
from gpustack_runtime.wire import InstanceState, InstanceStatus

METRIC_PREFIX = "gpustack_agent"

INSTANCE_STATES: tuple[str, ...] = get_args(InstanceState)

REQUEST_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds. The API answers from memory, so most requests land in the millisecond buckets; the long tail is
instance PUTs that start a process, and followed log streams."""

UNMATCHED_ROUTE = "<unmatched>"
"""Route label of requests no route matched: one label value, so scanners cannot blow up the cardinality."""


@dataclass(frozen=True)
class ScrapeView:
    """What one scrape reports, read at scrape time."""

    snapshots: Sequence[DeviceSnapshot]
    usages: Sequence[DeviceUsage]
    allocated_by_device: dict[int, int]
    instances: Sequence[InstanceStatus]


class AgentCollector(Collector):
    """Device and instance gauges, read fresh on each scrape."""

    def __init__(self, read_view: Callable[[], ScrapeView]) -> None:
        self._read_view = read_view

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed per scrape; nothing to register up front

    def collect(self) -> Iterator[Metric]:
        view = self._read_view()
        device_labels = ["index", "uuid", "product"]
        total = GaugeMetricFamily(
            f"{METRIC_PREFIX}_device_memory_total_bytes", "Device memory size.", labels=device_labels
        )
        used = GaugeMetricFamily(
            f"{METRIC_PREFIX}_device_memory_used_bytes",
            "Device memory in use by all processes (driver).",
            labels=device_labels,
        )
        allocated = GaugeMetricFamily(
            f"{METRIC_PREFIX}_device_memory_allocated_bytes",
            "Device memory claimed by this agent's instances and live reservations.",
            labels=device_labels,
        )
        foreign = GaugeMetricFamily(
            f"{METRIC_PREFIX}_device_memory_foreign_bytes",
            "Device memory held by processes outside every instance of this agent.",
            labels=device_labels,
        )
        utilization = GaugeMetricFamily(
            f"{METRIC_PREFIX}_device_utilization_ratio",
            "Fraction of time the device was busy over the driver's last sample period (0-1).",
            labels=device_labels,
        )
        foreign_by_index = {usage.index: usage.foreign_bytes for usage in view.usages}
        for snapshot in view.snapshots:
            labels = [str(snapshot.index), snapshot.uuid, snapshot.product]
            total.add_metric(labels, snapshot.memory_total)
            used.add_metric(labels, snapshot.memory_used)
            allocated.add_metric(labels, view.allocated_by_device.get(snapshot.index, 0))
            foreign.add_metric(labels, foreign_by_index.get(snapshot.index, 0))
            if snapshot.utilization_gpu is not None:
                utilization.add_metric(labels, snapshot.utilization_gpu / 100.0)
        yield from (total, used, allocated, foreign, utilization)

        instance_labels = ["instance", "owner"]
        state = GaugeMetricFamily(
            f"{METRIC_PREFIX}_instance_state",
            "1 for the instance's current state, 0 for the others.",
            labels=[*instance_labels, "state"],
        )
        ready = GaugeMetricFamily(
            f"{METRIC_PREFIX}_instance_ready",
            "1 when the engine answers its health path.",
            labels=instance_labels,
        )
        restarts = CounterMetricFamily(
            f"{METRIC_PREFIX}_instance_restarts",
            "Restarts of the engine since the instance was created.",
            labels=instance_labels,
        )
        for instance in view.instances:
            labels = [instance.id, instance.owner]
            for name in INSTANCE_STATES:
                state.add_metric([*labels, name], 1.0 if instance.state == name else 0.0)
            ready.add_metric(labels, 1.0 if instance.state == "ready" else 0.0)
            restarts.add_metric(labels, instance.restarts)
        yield from (state, ready, restarts)


class RequestLatencyMiddleware:
    """Observes each HTTP request's duration, labelled by method, route template and status code.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``) so streamed responses are timed to their last byte and
    nothing is buffered.
    """

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500  # what the client sees if the app raises before answering

        async def send_and_record_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            template = route.path if isinstance(route, BaseRoute) and hasattr(route, "path") else UNMATCHED_ROUTE
            self.histogram.labels(scope["method"], template, str(status_code)).observe(time.perf_counter() - started)


def new_request_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        f"{METRIC_PREFIX}_http_request_duration_seconds",
        "Time from request to the last byte of the response.",
        labelnames=["method", "route", "status"],
        buckets=REQUEST_LATENCY_BUCKETS,
        registry=registry,
    )
